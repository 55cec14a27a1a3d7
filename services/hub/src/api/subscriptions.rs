//! `/fhir/Subscription`: create, read, update, delete and search.
//!
//! The hub owns `id`, `meta.versionId`, `meta.lastUpdated`, `error` and the server-driven
//! part of `status`: a client sends `requested` (or `off`); the hub makes it `active` after a
//! successful handshake, `error` while deliveries fail, `off` on 410 Gone or when retries run
//! out. Each subscription has a Standard Webhooks signing secret: the client's (extension
//! `urn:fhir-hub:webhook-secret` on `channel`), or one the hub generates and shows once, in
//! the answer to the create.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_fhir::event::is_fhir_id;
use hub_fhir::subscription::{self, ChannelType, Status};
use hub_fhir::{IssueType, OperationOutcome};
use hub_store::{SubscriptionRow, SubscriptionWrite};
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::{FhirJson, RawBody};
use crate::delivery::sign;
use crate::{Hub, model};

/// Map a validation outcome to 400 (malformed) or 422 (well-formed but refused).
fn validation_error(oo: OperationOutcome) -> ApiError {
    let malformed = oo
        .issues
        .iter()
        .any(|i| matches!(i.code, IssueType::Structure | IssueType::Required));
    if malformed {
        ApiError::bad_request(oo)
    } else {
        ApiError::unprocessable(oo)
    }
}

/// A validated write and whether the hub generated its signing secret (then shown once).
struct Prepared {
    write: SubscriptionWrite,
    generated_secret: bool,
}

/// The stored form: client content with hub-owned fields removed, the status settled, the
/// endpoint checked against the egress policy, and a signing secret (the client's, the one
/// already stored, or a new one).
async fn prepare(
    hub: &Hub,
    tenant: &str,
    body: &Value,
    existing: Option<&SubscriptionRow>,
) -> Result<Prepared, ApiError> {
    let spec = subscription::validate(body).map_err(validation_error)?;
    if let Some(t) = &spec.topic {
        check_topic(hub, tenant, t).await?;
    }
    let websocket = spec.channel.kind == ChannelType::Websocket;
    if spec.channel.kind.calls_out() {
        hub.egress
            .check(&spec.channel.endpoint)
            .await
            .map_err(|why| {
                ApiError::unprocessable(
                    OperationOutcome::error(
                        IssueType::Value,
                        format!("channel.endpoint refused: {why}"),
                    )
                    .at("Subscription.channel.endpoint"),
                )
            })?;
    }
    if let Some(pem) = &spec.channel.client_certificate {
        reqwest::Identity::from_pem(pem.as_bytes())
            .and_then(|id| reqwest::Client::builder().identity(id).build())
            .map_err(|e| {
                ApiError::unprocessable(
                    OperationOutcome::error(
                        IssueType::Value,
                        format!("the client certificate cannot be used: {e}"),
                    )
                    .at("Subscription.channel.extension"),
                )
            })?;
    }
    // A client asks (requested) or stops (off); the hub activates a rest-hook after the
    // handshake, a websocket subscription at once (its client connects to the hub and gets
    // the handshake when it binds).
    let status = match spec.status {
        Status::Off => Status::Off,
        _ if websocket => Status::Active,
        Status::Requested | Status::Active | Status::Error => Status::Requested,
    };
    let mut resource = body.clone();
    // Secrets go to their own columns; the stored resource never holds one.
    let sent = model::take_secrets(&mut resource);
    if let Some(s) = &sent.secret
        && !sign::valid_secret(s)
    {
        return Err(ApiError::unprocessable(
            OperationOutcome::error(
                IssueType::Value,
                "the webhook secret must be 'whsec_' followed by 24 to 64 bytes in base64",
            )
            .at("Subscription.channel.extension"),
        ));
    }
    // Reads never show the secret or the client certificate, so an update that omits them
    // keeps the stored ones.
    let kept_secret = existing.and_then(|row| row.secret.clone());
    let generated_secret = sent.secret.is_none() && kept_secret.is_none();
    let secret = sent
        .secret
        .or(kept_secret)
        .unwrap_or_else(sign::generate_secret);
    let client_certificate = sent
        .client_certificate
        .or_else(|| existing.and_then(|row| row.client_certificate.clone()));
    if let Some(obj) = resource.as_object_mut() {
        obj.remove("id");
        obj.remove("meta");
        obj.remove("error");
        obj.insert("status".into(), json!(status.as_str()));
    }
    Ok(Prepared {
        write: SubscriptionWrite {
            status: status.as_str().to_owned(),
            criteria: spec.criteria,
            channel_type: spec.channel.kind.as_str().to_owned(),
            endpoint: spec.channel.endpoint,
            resource: resource.to_string(),
            secret: Some(secret),
            client_certificate,
        },
        generated_secret,
    })
}

/// A topic-based subscription must name a topic this tenant has, and filter only as the
/// topic's canFilterBy allows (the Backport IG: reject what cannot be honoured).
async fn check_topic(
    hub: &Hub,
    tenant: &str,
    t: &subscription::TopicSubscription,
) -> Result<(), ApiError> {
    let refuse = |msg: String, at: &str| {
        ApiError::unprocessable(
            OperationOutcome::error(IssueType::NotSupported, msg).at(at.to_owned()),
        )
    };
    let Some(row) = hub.store.topic_by_url(tenant, &t.topic).await? else {
        return Err(refuse(
            format!(
                "topic '{}' is not supported: this hub has no SubscriptionTopic with that url (GET /fhir/SubscriptionTopic lists them)",
                t.topic
            ),
            "Subscription.criteria",
        ));
    };
    let resource: Value = serde_json::from_str(&row.resource)
        .map_err(|e| ApiError::internal(format!("stored topic {} is not JSON: {e}", row.id)))?;
    let topic = hub_fhir::topic::parse(&resource).map_err(|oo| {
        ApiError::internal(format!(
            "stored topic {} no longer validates: {}",
            row.id,
            oo.summary()
        ))
    })?;
    if topic.status == "retired" {
        return Err(refuse(
            format!("topic '{}' is retired", t.topic),
            "Subscription.criteria",
        ));
    }
    for f in &t.filters {
        hub_fhir::topic::parse_filter(&topic, f, "Subscription.criteria.extension")
            .map_err(ApiError::unprocessable)?;
    }
    Ok(())
}

/// Put the signing secret into a rendered resource (the one answer that reveals it).
fn show_secret(resource: &mut Value, secret: &str) {
    // the R4 form keeps it on channel, the R5 form (no channel element) on the resource
    let holder = if resource.get("channel").is_some() {
        resource.get_mut("channel")
    } else {
        Some(&mut *resource)
    };
    let Some(channel) = holder.and_then(Value::as_object_mut) else {
        return;
    };
    let ext = channel.entry("extension").or_insert_with(|| json!([]));
    if let Some(list) = ext.as_array_mut() {
        list.push(json!({"url": model::SECRET_EXTENSION, "valueString": secret}));
    }
}

/// The resource as clients see it.
pub fn to_resource(row: &SubscriptionRow) -> Result<Value, ApiError> {
    let mut out = stored_resource(
        "Subscription",
        &row.id,
        row.version_id,
        &row.last_updated,
        &row.resource,
    )?;
    out.insert("status".into(), json!(row.status));
    if let Some(e) = &row.error {
        out.insert("error".into(), json!(e));
    }
    let mut v = Value::Object(out);
    // stored resources hold no secrets; this keeps a row written by hand from leaking one
    model::take_secrets(&mut v);
    Ok(v)
}

/// A stored resource as clients see it: `resourceType`, the hub's `id` and `meta` first, then
/// the stored content (which keeps neither).
pub(crate) fn stored_resource(
    resource_type: &str,
    id: &str,
    version_id: i64,
    last_updated: &str,
    stored: &str,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_str(stored)
        .map_err(|e| ApiError::internal(format!("stored {resource_type}/{id} is not JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::internal(format!(
            "stored {resource_type}/{id} is not an object"
        )));
    };
    let mut out = serde_json::Map::new();
    out.insert("resourceType".into(), json!(resource_type));
    out.insert("id".into(), json!(id));
    out.insert(
        "meta".into(),
        json!({"versionId": version_id.to_string(), "lastUpdated": last_updated}),
    );
    for (k, val) in obj {
        if k != "resourceType" {
            out.insert(k, val);
        }
    }
    Ok(out)
}

/// The resource with its secret, for the one answer that reveals a generated secret.
fn with_secret(row: &SubscriptionRow) -> Result<Value, ApiError> {
    let mut v = to_resource(row)?;
    if let Some(secret) = &row.secret {
        show_secret(&mut v, secret);
    }
    Ok(v)
}

fn with_version_headers(status: StatusCode, row: &SubscriptionRow, body: Value) -> Response {
    let mut res = (status, FhirJson(body)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", row.version_id)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "/fhir/Subscription/{}/_history/{}",
        row.id, row.version_id
    )) {
        if status == StatusCode::CREATED {
            h.insert(header::LOCATION, v.clone());
        }
        h.insert(header::CONTENT_LOCATION, v);
    }
    res
}

/// The caller's subscription `id`, or 404.
pub(crate) async fn existing(
    hub: &Hub,
    tenant: &str,
    id: &str,
) -> Result<SubscriptionRow, ApiError> {
    hub.store
        .get_subscription(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Subscription/{id} is not known")))
}

/// The caller's subscription `id`, typed, or 404.
pub(crate) async fn typed(
    hub: &Hub,
    tenant: &str,
    id: &str,
) -> Result<model::Subscription, ApiError> {
    hub.subscriptions
        .get(&hub.store, tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Subscription/{id} is not known")))
}

/// 400 unless `id` is a FHIR id.
pub(crate) fn check_id(id: &str) -> Result<(), ApiError> {
    if is_fhir_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::Invalid,
            format!("'{id}' is not a valid FHIR id"),
        )))
    }
}

/// `POST /fhir/Subscription`.
pub async fn create(
    State(hub): State<Hub>,
    caller: Caller,
    body: RawBody,
) -> Result<Response, ApiError> {
    let body = body.json()?;
    let prepared = prepare(&hub, &caller.tenant, &body, None).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let row = hub
        .store
        .create_subscription(&caller.tenant, &id, &prepared.write)
        .await?;
    tracing::info!(subscription = %id, tenant = %caller.tenant, subject = %caller.subject, criteria = %row.criteria, "subscription created");
    let resource = if prepared.generated_secret {
        with_secret(&row)?
    } else {
        to_resource(&row)?
    };
    Ok(with_version_headers(StatusCode::CREATED, &row, resource))
}

/// `GET /fhir/Subscription/{id}`.
pub async fn read(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let row = existing(&hub, &caller.tenant, &id).await?;
    let resource = to_resource(&row)?;
    Ok(with_version_headers(StatusCode::OK, &row, resource))
}

/// `W/"3"` or `"3"` → 3.
fn parse_if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    s.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .map(Some)
        .map_err(|_| {
            ApiError::bad_request(OperationOutcome::error(
                IssueType::Invalid,
                format!("If-Match '{s}' is not a version ETag like W/\"1\""),
            ))
        })
}

/// `PUT /fhir/Subscription/{id}`: update, or create with that id.
pub async fn update(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let if_version = parse_if_match(&headers)?;
    let body = body.json()?;
    match body.get("id").and_then(Value::as_str) {
        Some(b) if b == id => {}
        Some(b) => {
            return Err(ApiError::bad_request(
                OperationOutcome::error(
                    IssueType::Invalid,
                    format!("the body's id '{b}' does not match the URL's id '{id}'"),
                )
                .at("Subscription.id"),
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                OperationOutcome::error(
                    IssueType::Required,
                    "an update must carry the resource id",
                )
                .at("Subscription.id"),
            ));
        }
    }
    let existing = hub.store.get_subscription(&caller.tenant, &id).await?;
    let prepared = prepare(&hub, &caller.tenant, &body, existing.as_ref()).await?;
    let write = &prepared.write;
    match hub
        .store
        .update_subscription(&caller.tenant, &id, if_version, write)
        .await
    {
        Ok(row) => {
            // Reactivating a subscription that was off: what it missed is readable with
            // $events rather than replayed as a flood.
            if existing
                .as_ref()
                .is_some_and(|e| e.status == Status::Off.as_str())
                && row.status == Status::Requested.as_str()
            {
                hub.store.skip_backlog(&caller.tenant, &id).await?;
            }
            tracing::info!(subscription = %id, tenant = %caller.tenant, version = row.version_id, status = %row.status, "subscription updated");
            let resource = to_resource(&row)?;
            Ok(with_version_headers(StatusCode::OK, &row, resource))
        }
        Err(hub_store::StoreError::NotFound) if if_version.is_none() => {
            let row = hub
                .store
                .create_subscription(&caller.tenant, &id, write)
                .await?;
            tracing::info!(subscription = %id, tenant = %caller.tenant, "subscription created by update");
            let resource = if prepared.generated_secret {
                with_secret(&row)?
            } else {
                to_resource(&row)?
            };
            Ok(with_version_headers(StatusCode::CREATED, &row, resource))
        }
        Err(hub_store::StoreError::NotFound) => Err(ApiError::not_found(format!(
            "Subscription/{id} is not known, so If-Match cannot hold"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /fhir/Subscription/{id}`.
pub async fn delete(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    if !hub.store.delete_subscription(&caller.tenant, &id).await? {
        return Err(ApiError::not_found(format!(
            "Subscription/{id} is not known"
        )));
    }
    tracing::info!(subscription = %id, tenant = %caller.tenant, subject = %caller.subject, "subscription deleted");
    Ok((
        StatusCode::OK,
        FhirJson(OperationOutcome::information(format!("Subscription/{id} deleted")).to_json()),
    )
        .into_response())
}

const SEARCH_PARAMS: &[&str] = &["status", "_id", "_count", "type", "url"];

/// `GET /fhir/Subscription?status=...`: a searchset Bundle.
pub async fn search(
    State(hub): State<Hub>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(unknown) = params.keys().find(|k| !SEARCH_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "search parameter '{unknown}' is not supported on Subscription (supported: {})",
                SEARCH_PARAMS.join(", ")
            ),
        )));
    }
    let statuses: Vec<String> = params
        .get("status")
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(bad) = statuses.iter().find(|s| Status::parse(s).is_none()) {
        return Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::Value,
            format!("status '{bad}' is not requested, active, error or off"),
        )));
    }
    let count = match params.get("_count") {
        None => 100,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(OperationOutcome::error(
                    IssueType::Value,
                    format!("_count '{c}' must be a number from 0 to 1000"),
                ))
            })?,
    };
    let rows = hub
        .store
        .search_subscriptions(&caller.tenant, &statuses, i64::MAX)
        .await?;
    let rows: Vec<&SubscriptionRow> = rows
        .iter()
        .filter(|r| {
            params
                .get("_id")
                .is_none_or(|ids| ids.split(',').any(|i| i == r.id))
        })
        .filter(|r| {
            params
                .get("type")
                .is_none_or(|t| t.split(',').any(|t| t == r.channel_type))
        })
        .filter(|r| params.get("url").is_none_or(|u| *u == r.endpoint))
        .collect();
    let base = &hub.base_url;
    let mut entries = Vec::new();
    for r in rows.iter().take(count as usize) {
        entries.push(json!({
            "fullUrl": format!("{base}/Subscription/{}", r.id),
            "resource": to_resource(r)?,
            "search": {"mode": "match"},
        }));
    }
    Ok(FhirJson(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": rows.len(),
        "link": [{"relation": "self", "url": format!("{base}/Subscription")}],
        "entry": entries,
    }))
    .into_response())
}
