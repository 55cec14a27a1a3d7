//! `/fhir/SubscriptionTopic` in the one resource API (`api/resource.rs`): the topics a
//! tenant's topic-based subscriptions can name, searchable by `url`, `status` or `resource`.
//! A topic is validated before it is stored; a topic that subscriptions use cannot be
//! deleted, nor changed so that they stop fitting it.

use axum::http::StatusCode;
use hub_fhir::subscription::Status;
use hub_fhir::{IssueType, OperationOutcome};
use hub_store::TopicRow;
use serde_json::Value;

use super::ApiError;
use super::auth::Caller;
use super::resource::{
    ResourceKind, Stored, WriteRequest, Written, stored_resource, validation_error,
};
use crate::state::Hub;

fn to_stored(row: &TopicRow) -> Result<Stored, ApiError> {
    let resource = stored_resource(
        "SubscriptionTopic",
        &row.id,
        row.version_id,
        &row.last_updated,
        &row.resource,
    )?;
    Ok(Stored {
        id: row.id.clone(),
        version: row.version_id,
        last_updated: row.last_updated.clone(),
        resource: Value::Object(resource),
    })
}

fn conflict(msg: String) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        OperationOutcome::error(IssueType::Conflict, msg).at("SubscriptionTopic"),
    )
}

/// Validate and strip hub-owned fields; returns the url and the stored JSON. The Backport
/// IG's R4 `Basic` representation is accepted and stored as the SubscriptionTopic it means.
fn validate_topic(body: &Value) -> Result<(String, String), ApiError> {
    let converted = hub_fhir::topic::from_backport_basic(body);
    let body = converted.as_ref().unwrap_or(body);
    let topic = hub_fhir::topic::parse(body).map_err(validation_error)?;
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
    let rows = hub.store.search_subscriptions(tenant, &[], 10_000).await?;
    Ok(hub
        .subscriptions
        .read_all(rows)
        .into_iter()
        .filter(|s| s.status != Status::Off)
        .filter_map(|s| {
            let t = s.topic().filter(|t| t.topic == url)?;
            Some((s.id().to_owned(), t.filters.clone()))
        })
        .collect())
}

/// An update must keep serving the subscriptions that use the topic: same url, and every
/// subscriber's filters still allowed.
async fn check_users_still_fit(
    hub: &Hub,
    tenant: &str,
    old: &TopicRow,
    url: &str,
    stored: &str,
) -> Result<(), ApiError> {
    let users = users_of(hub, tenant, &old.url).await?;
    if !users.is_empty() && old.url != url {
        return Err(conflict(format!(
            "the url cannot change while {} subscription(s) use the topic (first: {})",
            users.len(),
            users[0].0
        )));
    }
    let new_topic = serde_json::from_str::<Value>(stored)
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
    Ok(())
}

/// SubscriptionTopic in the one resource API.
pub struct TopicKind;

impl ResourceKind for TopicKind {
    const TYPE: &'static str = "SubscriptionTopic";
    const SEARCH_PARAMS: &'static [&'static str] = &["url", "status", "resource"];

    async fn read(hub: &Hub, tenant: &str, id: &str) -> Result<Option<Stored>, ApiError> {
        match hub.store.get_topic(tenant, id).await? {
            Some(row) => Ok(Some(to_stored(&row)?)),
            None => Ok(None),
        }
    }

    async fn write(hub: &Hub, req: WriteRequest<'_>) -> Result<Written, ApiError> {
        let (tenant, id) = (&req.caller.tenant, req.id);
        let (url, stored) = validate_topic(req.body)?;
        if !req.create_only
            && let Some(old) = hub.store.get_topic(tenant, id).await?
        {
            check_users_still_fit(hub, tenant, &old, &url, &stored).await?;
        }
        let (row, created) = hub
            .store
            .put_topic(tenant, id, &url, &stored, req.if_version)
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
                hub_store::StoreError::NotFound => ApiError::not_found(format!(
                    "SubscriptionTopic/{id} is not known, so If-Match cannot hold"
                )),
                e => e.into(),
            })?;
        tracing::info!(topic = %id, %tenant, %url, created, "subscription topic stored");
        Ok(Written {
            stored: to_stored(&row)?,
            created,
        })
    }

    /// Refused while live subscriptions use the topic.
    async fn delete(hub: &Hub, caller: &Caller, id: &str) -> Result<bool, ApiError> {
        let Some(row) = hub.store.get_topic(&caller.tenant, id).await? else {
            return Ok(false);
        };
        let users: Vec<String> = users_of(hub, &caller.tenant, &row.url)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if !users.is_empty() {
            return Err(conflict(format!(
                "SubscriptionTopic/{id} is used by {} subscription(s) ({}); turn them off or delete them first",
                users.len(),
                users.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(hub.store.delete_topic(&caller.tenant, id).await?)
    }

    async fn search(
        hub: &Hub,
        tenant: &str,
        params: &[(String, String)],
    ) -> Result<Vec<Stored>, ApiError> {
        let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let rows = hub.store.list_topics(Some(tenant)).await?;
        let mut out = Vec::new();
        for row in &rows {
            let s = to_stored(row)?;
            let r = &s.resource;
            if get("url").is_some_and(|u| *u != row.url) {
                continue;
            }
            if get("status")
                .is_some_and(|st| r.get("status").and_then(Value::as_str) != Some(st.as_str()))
            {
                continue;
            }
            if let Some(want) = get("resource") {
                let has = r
                    .get("resourceTrigger")
                    .and_then(Value::as_array)
                    .is_some_and(|ts| {
                        ts.iter().any(|t| {
                            t.get("resource").and_then(Value::as_str).is_some_and(|x| {
                                hub_fhir::topic::resource_of(x)
                                    == hub_fhir::topic::resource_of(want)
                            })
                        })
                    });
                if !has {
                    continue;
                }
            }
            out.push(s);
        }
        Ok(out)
    }
}
