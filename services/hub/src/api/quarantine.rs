//! `/admin/quarantine`: change events the matcher could not process, for an operator to
//! inspect, replay (publish again to the changes topic, after fixing the topic or the data
//! path that failed) or drop.
//!
//! Needs `hub/admin`, which sees its own tenant's records; `hub/operator` sees every tenant's
//! and the records whose tenant could not be read.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use hub_fhir::raw_event::{Origin, RawEvent};
use hub_log::Record;
use hub_store::{NewAudit, Quarantined};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use crate::state::Hub;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Records after this id (paging).
    #[serde(default)]
    after: i64,
    #[serde(default = "default_count")]
    count: i64,
}

fn default_count() -> i64 {
    100
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    caller.require_admin()
}

/// Whether the caller administers the record's tenant (a record without a readable tenant:
/// the operator only).
fn sees(caller: &Caller, q: &Quarantined) -> bool {
    match q.record.tenant.as_deref() {
        Some(t) => caller.administers(t),
        None => caller.scopes.is_operator(),
    }
}

/// Record that `records` (their payloads: change events, PHI) were shown to the caller;
/// with `audit.fail_closed`, nothing is shown without the rows.
async fn audit_read(hub: &Hub, caller: &Caller, records: &[&Quarantined]) -> Result<(), ApiError> {
    let rows = records
        .iter()
        .map(|q| NewAudit {
            tenant: q.record.tenant.as_ref().map_or_else(
                || hub.config.tenancy.default_tenant.clone(),
                |t| t.to_string(),
            ),
            kind: "disclosure".into(),
            action: "R".into(),
            agent: caller.subject.clone(),
            entity: Some(format!("Quarantine/{}", q.id)),
            outcome: "0".into(),
            detail: Some("quarantined change event read".into()),
            ..Default::default()
        })
        .collect();
    crate::auth::record_disclosure(hub, rows).await?;
    Ok(())
}

fn render(q: &Quarantined) -> Value {
    let r = &q.record;
    // The payload as written when it is text (it almost always is), base64 otherwise.
    let payload = match std::str::from_utf8(&r.payload) {
        Ok(text) => json!({"text": text}),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(&r.payload)}),
    };
    json!({
        "id": q.id,
        "source": r.source,
        "tenant": r.tenant,
        "eventId": r.event_id,
        "key": r.record_key,
        "stage": r.stage.as_str(),
        "reason": r.reason,
        "quarantinedAt": q.quarantined_at,
        "payload": payload,
    })
}

/// The caller's view of one record: 404 when it is unknown, the id is not a number, or it
/// belongs to a tenant the caller does not administer.
async fn visible(hub: &Hub, caller: &Caller, id: &str) -> Result<(i64, Quarantined), ApiError> {
    require_admin(caller)?;
    let missing = || ApiError::not_found(format!("no quarantined event '{id}'"));
    let id: i64 = id.parse().map_err(|_| missing())?;
    let q = match hub.store.quarantined(id).await {
        Err(hub_store::StoreError::NotFound) => return Err(missing()),
        other => other?,
    };
    if !sees(caller, &q) {
        return Err(missing());
    }
    Ok((id, q))
}

/// `GET /admin/quarantine?after=&count=`
pub async fn list(
    State(hub): State<Hub>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&caller)?;
    let caller_ref = &caller;
    let count = q.count.clamp(1, 1000);
    let own = (!caller.scopes.is_operator()).then_some(caller.tenant.as_str());
    let rows = hub.store.list_quarantined(own, q.after, count).await?;
    let shown: Vec<&Quarantined> = rows.iter().filter(|r| sees(caller_ref, r)).collect();
    audit_read(&hub, &caller, &shown).await?;
    let items: Vec<Value> = shown.into_iter().map(render).collect();
    // the count spans every tenant: the operator's to see
    if !caller.scopes.is_operator() {
        return Ok(Json(json!({"items": items})));
    }
    let total = hub.store.count_quarantined().await?;
    Ok(Json(json!({"total": total, "items": items})))
}

/// `GET /admin/quarantine/{id}`
pub async fn read(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, q) = visible(&hub, &caller, &id).await?;
    audit_read(&hub, &caller, &[&q]).await?;
    Ok(Json(render(&q)))
}

/// What a replay publishes: the record as it was read, except a bare resource. The hub
/// named a bare resource's event after the log position it was read at
/// (`log:topic:partition:offset`), so published again as it was it would be a new event at
/// a new position, and the subscriptions it had reached would get it twice: it goes out as
/// an envelope carrying the name it was quarantined under.
fn replayed(q: &Quarantined, default_tenant: &str) -> Record {
    let r = &q.record;
    let key = r
        .record_key
        .as_ref()
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default();
    if let Some(id) = &r.event_id {
        let tenant = r.tenant.as_ref().map_or(default_tenant, |t| t.as_str());
        if let Ok((mut e, Origin::Resource)) = RawEvent::parse(&r.payload, None, tenant, "") {
            e.head.id = id.as_str().to_owned();
            return Record {
                key,
                payload: e.to_json_bytes(),
            };
        }
    }
    Record {
        key,
        payload: r.payload.clone(),
    }
}

/// `POST /admin/quarantine/{id}/$replay`: publish the record again (as it was read; a bare
/// resource as an envelope under the event id it had), then release it. A replayed event
/// the matcher had partly processed adds nothing for the subscriptions it already notified
/// (the log deduplicates by event id).
pub async fn replay(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (id, q) = visible(&hub, &caller, &id).await?;
    let record = replayed(&q, &hub.config.tenancy.default_tenant);
    hub.log
        .publish(&hub.config.log.changes_topic, &[record])
        .await
        .map_err(|e| ApiError::unavailable(format!("event log: {e}")))?;
    hub.store.release_quarantined(id).await?;
    tracing::info!(id, source = %q.record.source, subject = %caller.subject, "quarantined change event replayed");
    Ok(Json(json!({"replayed": id})))
}

/// `DELETE /admin/quarantine/{id}`: drop a record for good.
pub async fn drop(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (id, q) = visible(&hub, &caller, &id).await?;
    hub.store.release_quarantined(id).await?;
    tracing::info!(id, source = %q.record.source, subject = %caller.subject, "quarantined change event dropped");
    Ok(StatusCode::NO_CONTENT)
}
