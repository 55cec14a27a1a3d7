//! `/fhir/SubscriptionTopic`: the topics a tenant's topic-based subscriptions can name.
//! Create, read, update (or create with an id), delete, and search by `url`, `status` or
//! `resource`. A topic is validated before it is stored; a topic that subscriptions use
//! cannot be deleted.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_fhir::{IssueType, OperationOutcome};
use hub_store::TopicRow;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::{FhirJson, RawBody};
use super::subscriptions::check_id;
use crate::Hub;

fn to_resource(row: &TopicRow) -> Result<Value, ApiError> {
    super::subscriptions::stored_resource(
        "SubscriptionTopic",
        &row.id,
        row.version_id,
        &row.last_updated,
        &row.resource,
    )
    .map(Value::Object)
}

fn respond(status: StatusCode, row: &TopicRow) -> Result<Response, ApiError> {
    let mut res = (status, FhirJson(to_resource(row)?)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", row.version_id)) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED
        && let Ok(v) = HeaderValue::from_str(&format!(
            "/fhir/SubscriptionTopic/{}/_history/{}",
            row.id, row.version_id
        ))
    {
        h.insert(header::LOCATION, v);
    }
    Ok(res)
}

/// Validate and strip hub-owned fields; returns the url and the stored JSON. The Backport
/// IG's R4 `Basic` representation is accepted and stored as the SubscriptionTopic it means.
fn prepare(body: &Value) -> Result<(String, String), ApiError> {
    let converted = hub_fhir::topic::from_backport_basic(body);
    let body = converted.as_ref().unwrap_or(body);
    let topic = hub_fhir::topic::parse(body).map_err(|oo| {
        let malformed = oo.issues.iter().any(|i| {
            matches!(
                i.code,
                IssueType::Structure | IssueType::Required | IssueType::Invalid
            )
        });
        if malformed {
            ApiError::bad_request(oo)
        } else {
            ApiError::unprocessable(oo)
        }
    })?;
    let mut stored = body.clone();
    if let Some(obj) = stored.as_object_mut() {
        obj.remove("id");
        obj.remove("meta");
    }
    Ok((topic.url, stored.to_string()))
}

/// Live subscriptions (not `off`) naming `url`: their ids and filters.
async fn users_of(
    hub: &Hub,
    tenant: &str,
    url: &str,
) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    Ok(hub
        .store
        .search_subscriptions(tenant, &[], 10_000)
        .await?
        .into_iter()
        .filter(|s| s.criteria == url && s.status != "off")
        .map(|s| {
            let filters = serde_json::from_str::<Value>(&s.resource)
                .ok()
                .and_then(|r| hub_fhir::subscription::validate(&r).ok())
                .and_then(|spec| spec.topic)
                .map(|t| t.filters)
                .unwrap_or_default();
            (s.id, filters)
        })
        .collect())
}

async fn put(hub: &Hub, tenant: &str, id: &str, body: &Value) -> Result<Response, ApiError> {
    let (url, stored) = prepare(body)?;
    // an update must keep serving the subscriptions that use the topic
    if let Some(old) = hub.store.get_topic(tenant, id).await? {
        let users = users_of(hub, tenant, &old.url).await?;
        let conflict = |msg: String| {
            ApiError::new(
                StatusCode::CONFLICT,
                OperationOutcome::error(IssueType::Conflict, msg).at("SubscriptionTopic"),
            )
        };
        if !users.is_empty() && old.url != url {
            return Err(conflict(format!(
                "the url cannot change while {} subscription(s) use the topic (first: {})",
                users.len(),
                users[0].0
            )));
        }
        let new_topic = serde_json::from_str::<Value>(&stored)
            .ok()
            .and_then(|v| hub_fhir::topic::parse(&v).ok());
        if let Some(t) = new_topic {
            for (sub, filters) in &users {
                for f in filters {
                    if let Err(oo) = hub_fhir::topic::parse_filter(&t, f, "filter") {
                        return Err(conflict(format!(
                            "Subscription/{sub} filters on '{f}', which the updated topic would refuse ({})",
                            oo.summary()
                        )));
                    }
                }
            }
        }
    }
    let (row, created) = hub
        .store
        .put_topic(tenant, id, &url, &stored)
        .await
        .map_err(|e| match e {
            hub_store::StoreError::AlreadyExists => ApiError::new(
                StatusCode::CONFLICT,
                OperationOutcome::error(
                    IssueType::Conflict,
                    format!("another SubscriptionTopic already has url '{url}'"),
                )
                .at("SubscriptionTopic.url"),
            ),
            e => e.into(),
        })?;
    tracing::info!(topic = %id, tenant, %url, created, "subscription topic stored");
    respond(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &row,
    )
}

/// `POST /fhir/SubscriptionTopic`.
pub async fn create(
    State(hub): State<Hub>,
    caller: Caller,
    body: RawBody,
) -> Result<Response, ApiError> {
    let body = body.json()?;
    let id = uuid::Uuid::new_v4().to_string();
    put(&hub, &caller.tenant, &id, &body).await
}

/// `PUT /fhir/SubscriptionTopic/{id}`.
pub async fn update(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
    body: RawBody,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let body = body.json()?;
    if let Some(b) = body.get("id").and_then(Value::as_str)
        && b != id
    {
        return Err(ApiError::bad_request(
            OperationOutcome::error(
                IssueType::Invalid,
                format!("the body's id '{b}' does not match the URL's id '{id}'"),
            )
            .at("SubscriptionTopic.id"),
        ));
    }
    put(&hub, &caller.tenant, &id, &body).await
}

/// `GET /fhir/SubscriptionTopic/{id}`.
pub async fn read(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let row = hub
        .store
        .get_topic(&caller.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("SubscriptionTopic/{id} is not known")))?;
    respond(StatusCode::OK, &row)
}

/// `DELETE /fhir/SubscriptionTopic/{id}`: refused while live subscriptions use the topic.
pub async fn delete(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let Some(row) = hub.store.get_topic(&caller.tenant, &id).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let users: Vec<String> = users_of(&hub, &caller.tenant, &row.url)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            OperationOutcome::error(
                IssueType::Conflict,
                format!(
                    "SubscriptionTopic/{id} is used by {} subscription(s) ({}); turn them off or delete them first",
                    users.len(),
                    users.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
        ));
    }
    hub.store.delete_topic(&caller.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /fhir/SubscriptionTopic[?url=][&status=][&resource=]`: a searchset Bundle.
pub async fn search(
    State(hub): State<Hub>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<FhirJson, ApiError> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "url" | "status" | "resource" | "_count"))
    {
        return Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "SubscriptionTopic search has no parameter '{unknown}' (url, status, resource)"
            ),
        )));
    }
    let rows = hub.store.list_topics(Some(&caller.tenant)).await?;
    let mut entries = Vec::new();
    for row in &rows {
        let r = to_resource(row)?;
        if params.get("url").is_some_and(|u| *u != row.url) {
            continue;
        }
        if params
            .get("status")
            .is_some_and(|s| r.get("status").and_then(Value::as_str) != Some(s.as_str()))
        {
            continue;
        }
        if let Some(want) = params.get("resource") {
            let has = r
                .get("resourceTrigger")
                .and_then(Value::as_array)
                .is_some_and(|ts| {
                    ts.iter().any(|t| {
                        t.get("resource").and_then(Value::as_str).is_some_and(|x| {
                            hub_fhir::topic::resource_of(x) == hub_fhir::topic::resource_of(want)
                        })
                    })
                });
            if !has {
                continue;
            }
        }
        entries.push(json!({
            "fullUrl": format!("SubscriptionTopic/{}", row.id),
            "resource": r,
            "search": {"mode": "match"},
        }));
    }
    Ok(FhirJson(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    })))
}
