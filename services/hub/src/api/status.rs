//! `$status` (Subscriptions R5 Backport IG, R4 form): a history Bundle holding one
//! subscription-status Parameters per subscription, with the hub's delivery state
//! (last success, last error, failed attempts, queued count) as an extension.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use hub_fhir::notification::{self, StatusInfo};
use hub_fhir::subscription::FhirVersion;
use hub_store::SubscriptionRow;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::FhirJson;
use super::subscriptions::base_url;
use crate::Hub;

async fn status_parameters(
    hub: &Hub,
    base: &str,
    row: &SubscriptionRow,
) -> Result<Value, ApiError> {
    let d = hub.store.delivery_state(&row.tenant, &row.id).await?;
    let queued = (row.events_since_start - d.delivered_through).max(0);
    let mut delivery = vec![
        json!({"url": "delivered-through", "valueInteger64": d.delivered_through.to_string()}),
        json!({"url": "queued", "valueInteger64": queued.to_string()}),
        json!({"url": "failed-attempts", "valueInteger64": d.attempts.to_string()}),
    ];
    if let Some(t) = &d.last_success_at {
        delivery.push(json!({"url": "last-success", "valueInstant": t}));
    }
    if let Some(t) = &d.last_attempt_at {
        delivery.push(json!({"url": "last-attempt", "valueInstant": t}));
    }
    if let Some(e) = &d.last_error {
        delivery.push(json!({"url": "last-error", "valueString": e}));
    }
    let mut parameter = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base}/Subscription/{}", row.id)}}),
    ];
    if hub_fhir::subscription::is_topic_canonical(&row.criteria) {
        parameter.push(json!({"name": "topic", "valueCanonical": row.criteria}));
    }
    parameter.extend([
        json!({"name": "status", "valueCode": row.status}),
        json!({"name": "type", "valueCode": "query-status"}),
        json!({"name": "events-since-subscription-start", "valueString": row.events_since_start.to_string()}),
    ]);
    if let Some(e) = &row.error {
        parameter.push(json!({"name": "error", "valueCodeableConcept": {"text": e}}));
    }
    Ok(json!({
        "resourceType": "Parameters",
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"]},
        "extension": [{"url": "urn:fhir-hub:delivery-state", "extension": delivery}],
        "parameter": parameter,
    }))
}

fn bundle(base: &str, statuses: Vec<Value>) -> Value {
    let entries: Vec<Value> = statuses
        .into_iter()
        .map(|p| {
            json!({
                "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                "resource": p,
                "request": {"method": "GET", "url": format!("{base}/Subscription/$status")},
                "response": {"status": "200"},
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": hub_fhir::time_fmt::now_instant(),
        "entry": entries,
    })
}

/// `GET /fhir/Subscription/{id}/$status`.
pub async fn instance(
    State(hub): State<Hub>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<FhirJson, ApiError> {
    let row = super::subscriptions::existing(&hub, &caller.tenant, &id).await?;
    let base = base_url(&headers);
    // an R4B/R5 topic-based subscription gets its own version's SubscriptionStatus
    let topic = serde_json::from_str::<Value>(&row.resource)
        .ok()
        .and_then(|r| hub_fhir::subscription::validate(&r).ok())
        .and_then(|s| s.topic);
    if let Some(t) = topic.filter(|t| t.version != FhirVersion::R4) {
        let info = StatusInfo {
            base: &base,
            subscription_id: &row.id,
            topic: Some(&t.topic),
            status: &row.status,
            kind: "query-status",
            events_since_start: row.events_since_start,
            error: row.error.as_deref(),
        };
        return Ok(FhirJson(notification::bundle_for(
            t.version,
            &info,
            &[],
            t.content,
        )));
    }
    let p = status_parameters(&hub, &base, &row).await?;
    Ok(FhirJson(bundle(&base, vec![p])))
}

/// `GET /fhir/Subscription/$status[?id=a,b][&status=active,error]`.
pub async fn type_level(
    State(hub): State<Hub>,
    caller: Caller,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<FhirJson, ApiError> {
    let statuses: Vec<String> = params
        .get("status")
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let rows = hub
        .store
        .search_subscriptions(&caller.tenant, &statuses, 1000)
        .await?;
    let base = base_url(&headers);
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| {
        params
            .get("id")
            .is_none_or(|ids| ids.split(',').any(|i| i == r.id))
    }) {
        out.push(status_parameters(&hub, &base, row).await?);
    }
    Ok(FhirJson(bundle(&base, out)))
}
