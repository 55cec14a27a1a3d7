//! `$status` (Subscriptions R5 Backport IG, R4 form): a `searchset` Bundle holding one
//! backport-subscription-status-r4 Parameters per subscription. The hub's delivery state
//! (the rest-hook reader's cursor, queued count, failed attempts, last success, last error)
//! rides in the same Parameters as one more parameter, `delivery-state`, with parts: the
//! profile slices `parameter` openly, so the status stays valid R4 and valid to the profile.

use axum::extract::{Path, Query, State};
use hub_fhir::notification;
use hub_fhir::subscription::FhirVersion;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::FhirJson;
use crate::channels::render::{self, Kind};
use crate::model::Subscription;
use crate::state::Hub;

fn query_status<'a>(hub: &'a Hub, sub: &'a Subscription) -> render::Message<'a> {
    let since = sub.events_since_start;
    render::Message::new(sub, &hub.base_url, sub.status, Kind::QueryStatus, since)
}

/// The backport-subscription-status-r4 Parameters, with the hub's delivery state (the
/// rest-hook reader's cursor) as the `delivery-state` parameter. Counters that can pass
/// 2^31 are strings, as the IG writes event numbers in R4 (which has no integer64).
async fn status_parameters(hub: &Hub, sub: &Subscription) -> Result<Value, ApiError> {
    let d = hub.store.delivery_state(sub.log_key).await?;
    let queued = (sub.events_since_start - d.delivered_through).max(0);
    let mut delivery = vec![
        json!({"name": "delivered-through", "valueString": d.delivered_through.to_string()}),
        json!({"name": "queued", "valueString": queued.to_string()}),
        json!({"name": "failed-attempts", "valueUnsignedInt": u32::try_from(d.attempts.max(0)).unwrap_or(u32::MAX)}),
    ];
    if let Some(t) = &d.last_success_at {
        delivery.push(json!({"name": "last-success", "valueInstant": t}));
    }
    if let Some(t) = &d.last_attempt_at {
        delivery.push(json!({"name": "last-attempt", "valueInstant": t}));
    }
    if let Some(e) = &d.last_error {
        delivery.push(json!({"name": "last-error", "valueString": e}));
    }
    // when the failing notification is tried again (the schedule survives restarts)
    if let Some(ms) = d.next_attempt_in_ms {
        let at = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(ms);
        if let Ok(t) = at.format(&time::format_description::well_known::Rfc3339) {
            delivery.push(json!({"name": "next-attempt", "valueInstant": t}));
        }
    }
    let message = query_status(hub, sub);
    let mut p = notification::status_parameters(&message.status_info(), &[], sub.content());
    if let Some(params) = p["parameter"].as_array_mut() {
        params.push(json!({"name": "delivery-state", "part": delivery}));
    }
    Ok(p)
}

/// The `searchset` Bundle `$status` answers (the IG's operation definition): one `match`
/// entry per subscription, without `request`/`response` (R4's bdl-3 and bdl-4 allow those
/// only in history, batch and transaction bundles).
fn bundle(statuses: Vec<Value>) -> Value {
    let total = statuses.len();
    let entries: Vec<Value> = statuses
        .into_iter()
        .map(|p| {
            json!({
                "fullUrl": format!("urn:uuid:{}", p["id"].as_str().unwrap_or_default()),
                "resource": p,
                "search": {"mode": "match"},
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "timestamp": hub_fhir::time_fmt::now_instant(),
        "total": total,
        "entry": entries,
    })
}

/// `GET /fhir/Subscription/{id}/$status`.
pub async fn instance(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<FhirJson, ApiError> {
    caller.require("Subscription", crate::auth::Perm::Read)?;
    let sub = super::subscriptions::typed(&hub, &caller.tenant, &id).await?;
    // an R4B/R5 topic-based subscription gets its own version's SubscriptionStatus
    if sub.shape() != FhirVersion::R4 {
        let message = query_status(&hub, &sub);
        let status = notification::subscription_status(&message.status_info(), &[], sub.content());
        return Ok(FhirJson(bundle(vec![status])));
    }
    let p = status_parameters(&hub, &sub).await?;
    Ok(FhirJson(bundle(vec![p])))
}

/// `GET /fhir/Subscription/$status[?id=a,b][&status=active,error]`.
pub async fn type_level(
    State(hub): State<Hub>,
    caller: Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<FhirJson, ApiError> {
    caller.require("Subscription", crate::auth::Perm::Search)?;
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
    Ok(FhirJson(bundle(out)))
}
