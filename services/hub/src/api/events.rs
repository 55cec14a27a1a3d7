//! `$events` (Subscriptions R5 Backport IG, R4 form): the notifications a subscription
//! generated, read back from the notification log by event number, so a client can recover
//! what it missed (while off, or after its own outage) without any gap.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use hub_fhir::notification::{self, StatusInfo};
use hub_fhir::subscription::Content;
use hub_fhir::{IssueType, OperationOutcome};
use serde_json::Value;

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::FhirJson;
use super::subscriptions::base_url;
use crate::Hub;

/// The most events one `$events` call returns; ask again from the last number for more.
const MAX_EVENTS: i64 = 1000;

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request(OperationOutcome::error(
                    IssueType::Value,
                    format!("{name} '{v}' must be a non-negative whole number"),
                ))
            })
        })
        .transpose()
}

/// `GET /fhir/Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=`.
pub async fn events(
    State(hub): State<Hub>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<FhirJson, ApiError> {
    if let Some(unknown) = params.keys().find(|k| {
        !matches!(
            k.as_str(),
            "eventsSinceNumber" | "eventsUntilNumber" | "content"
        )
    }) {
        return Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "$events has no parameter '{unknown}' (eventsSinceNumber, eventsUntilNumber, content)"
            ),
        )));
    }
    let row = super::subscriptions::existing(&hub, &caller.tenant, &id).await?;
    let since = number(&params, "eventsSinceNumber")?.unwrap_or(1).max(1);
    let until = number(&params, "eventsUntilNumber")?
        .unwrap_or(row.events_since_start)
        .min(row.events_since_start);
    let resource: Value = serde_json::from_str(&row.resource).unwrap_or(Value::Null);
    let spec = hub_fhir::subscription::validate(&resource).ok();
    let topic = spec.as_ref().and_then(|s| s.topic.clone());
    let default_content = match &topic {
        Some(t) => t.content,
        None if resource.pointer("/channel/payload").is_some() => Content::FullResource,
        None => Content::IdOnly,
    };
    let content = match params.get("content") {
        None => default_content,
        Some(c) => Content::parse(c).ok_or_else(|| {
            ApiError::bad_request(OperationOutcome::error(
                IssueType::Value,
                format!("content '{c}' must be empty, id-only or full-resource"),
            ))
        })?,
    };
    let limit = (until - since + 1).clamp(0, MAX_EVENTS);
    let notes = if limit > 0 {
        hub.store
            .notifications_after(&caller.tenant, &id, since - 1, limit)
            .await?
    } else {
        Vec::new()
    };
    let base = base_url(&headers);
    let events = crate::delivery::send::event_infos(&notes);
    let status = StatusInfo {
        base: &base,
        subscription_id: &id,
        topic: topic.as_ref().map(|t| t.topic.as_str()),
        status: &row.status,
        kind: "query-event",
        events_since_start: row.events_since_start,
        error: None,
    };
    let version = topic
        .as_ref()
        .map_or(hub_fhir::subscription::FhirVersion::R4, |t| t.version);
    Ok(FhirJson(notification::bundle_for(
        version, &status, &events, content,
    )))
}
