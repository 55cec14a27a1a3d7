//! `$status` (Subscriptions R5 Backport IG, R4 form): a history Bundle holding one
//! subscription-status Parameters per subscription, with the hub's delivery state
//! (last success, last error, failed attempts, queued count) as an extension.

use axum::extract::{Path, Query, State};
use hub_fhir::notification;
use hub_fhir::subscription::FhirVersion;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::FhirJson;
use crate::Hub;
use crate::channels::render::{self, Kind};
use crate::model::Subscription;

fn query_status<'a>(hub: &'a Hub, sub: &'a Subscription) -> render::Message<'a> {
    let since = sub.events_since_start;
    render::Message::new(sub, &hub.base_url, sub.status, Kind::QueryStatus, since)
}

/// The backport-subscription-status-r4 Parameters, with the hub's delivery state (the
/// rest-hook reader's cursor) as an extension.
async fn status_parameters(hub: &Hub, sub: &Subscription) -> Result<Value, ApiError> {
    let d = hub.store.delivery_state(&sub.tenant, &sub.id).await?;
    let queued = (sub.events_since_start - d.delivered_through).max(0);
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
    let message = query_status(hub, sub);
    let mut p = notification::status_parameters(&message.status_info(), &[], sub.content());
    p["extension"] = json!([{"url": "urn:fhir-hub:delivery-state", "extension": delivery}]);
    Ok(p)
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
    Path(id): Path<String>,
) -> Result<FhirJson, ApiError> {
    let sub = super::subscriptions::typed(&hub, &caller.tenant, &id).await?;
    // an R4B/R5 topic-based subscription gets its own version's SubscriptionStatus
    if sub.shape() != FhirVersion::R4 {
        return Ok(FhirJson(query_status(&hub, &sub).bundle(sub.content())));
    }
    let p = status_parameters(&hub, &sub).await?;
    Ok(FhirJson(bundle(&hub.base_url, vec![p])))
}

/// `GET /fhir/Subscription/$status[?id=a,b][&status=active,error]`.
pub async fn type_level(
    State(hub): State<Hub>,
    caller: Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<FhirJson, ApiError> {
    let statuses: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "status")
        .flat_map(|(_, v)| v.split(',').map(str::to_owned))
        .collect();
    let ids: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v.as_str())
        .collect();
    let rows = hub
        .store
        .search_subscriptions(&caller.tenant, &statuses, 1000)
        .await?;
    let mut out = Vec::new();
    // `id` may repeat and each may hold a comma-separated list
    let ids: Vec<&str> = ids.iter().flat_map(|v| v.split(',')).collect();
    for row in rows
        .into_iter()
        .filter(|r| ids.is_empty() || ids.contains(&r.id.as_str()))
    {
        let sub = hub.subscriptions.read(row)?;
        out.push(status_parameters(&hub, &sub).await?);
    }
    Ok(FhirJson(bundle(&hub.base_url, out)))
}
