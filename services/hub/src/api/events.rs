//! `$events` (Subscriptions R5 Backport IG, R4 form): the notifications a subscription
//! generated, read back from the notification log by event number, so a client can recover
//! what it missed (while off, or after its own outage) without any gap.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use hub_fhir::{IssueType, OperationOutcome};
use serde_json::{Value, json};

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
    let row = hub
        .store
        .get_subscription(&caller.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Subscription/{id} is not known")))?;
    let since = number(&params, "eventsSinceNumber")?.unwrap_or(1).max(1);
    let until = number(&params, "eventsUntilNumber")?
        .unwrap_or(row.events_since_start)
        .min(row.events_since_start);
    let resource: Value = serde_json::from_str(&row.resource).unwrap_or(Value::Null);
    let default_content = if resource.pointer("/channel/payload").is_some() {
        "full-resource"
    } else {
        "id-only"
    };
    let content = params
        .get("content")
        .map_or(default_content, String::as_str);
    if !matches!(content, "empty" | "id-only" | "full-resource") {
        return Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::Value,
            format!("content '{content}' must be empty, id-only or full-resource"),
        )));
    }
    let limit = (until - since + 1).clamp(0, MAX_EVENTS);
    let notes = if limit > 0 {
        hub.store
            .notifications_after(&caller.tenant, &id, since - 1, limit)
            .await?
    } else {
        Vec::new()
    };
    let base = base_url(&headers);
    let mut parameter = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base}/Subscription/{id}")}}),
        json!({"name": "status", "valueCode": row.status}),
        json!({"name": "type", "valueCode": "query-event"}),
        json!({"name": "events-since-subscription-start", "valueString": row.events_since_start.to_string()}),
    ];
    let mut entries = Vec::new();
    for n in &notes {
        let focus = format!("{base}/{}/{}", n.focus_type, n.focus_id);
        let mut part = vec![
            json!({"name": "event-number", "valueString": n.event_number.to_string()}),
            json!({"name": "timestamp", "valueInstant": n.occurred_at}),
        ];
        if content != "empty" {
            part.push(json!({"name": "focus", "valueReference": {"reference": focus}}));
        }
        parameter.push(json!({"name": "notification-event", "part": part}));
        if content == "full-resource"
            && let Some(r) = n
                .resource
                .as_deref()
                .and_then(|r| serde_json::from_str::<Value>(r).ok())
        {
            entries.push(json!({
                "fullUrl": focus,
                "resource": r,
                "request": {"method": "PUT", "url": format!("{}/{}", n.focus_type, n.focus_id)},
                "response": {"status": "200"},
            }));
        }
    }
    let status = json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "resource": {
            "resourceType": "Parameters",
            "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"]},
            "parameter": parameter,
        },
        "request": {"method": "GET", "url": format!("{base}/Subscription/{id}/$events")},
        "response": {"status": "200"},
    });
    entries.insert(0, status);
    Ok(FhirJson(json!({
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": hub_fhir::time_fmt::now_instant(),
        "entry": entries,
    })))
}
