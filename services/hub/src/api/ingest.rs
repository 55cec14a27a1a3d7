//! Change-event ingest: `POST /events` (one envelope, or NDJSON of envelopes and/or bare
//! resources) and `POST /fhir` (a history, transaction or batch Bundle).
//!
//! Every event of a request is validated before anything is published, so a rejected
//! request publishes nothing.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hub_fhir::raw_event::RawEvent;
use hub_fhir::{IssueType, OperationOutcome};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::{FhirJson, RawBody, is_json_type};
use crate::state::Hub;

/// The log record of an event: key `Type/id`, the envelope as JSON (its resources as they
/// were written).
pub fn record(e: &RawEvent<'_>) -> hub_log::Record {
    hub_log::Record {
        key: e.key(),
        payload: e.to_json_bytes(),
    }
}

/// Log records for events.
pub fn records(events: &[RawEvent<'_>]) -> Vec<hub_log::Record> {
    events.iter().map(record).collect()
}

/// Publish validated events to the changes topic, in order.
pub async fn publish_events(hub: &Hub, events: &[RawEvent<'_>]) -> Result<(), hub_log::LogError> {
    let records = records(events);
    // Chunks keep one embedded-log transaction or Kafka batch bounded.
    for chunk in records.chunks(1000) {
        hub.log
            .publish(&hub.config.log.changes_topic, chunk)
            .await?;
    }
    Ok(())
}

/// `Idempotency-Key` (the IETF draft's header, as Stripe and Svix take it): a client that
/// retries a request after a 503, a timeout or a dropped connection sends the same key, and
/// the events the hub names (bare resources, Bundle entries) get the same ids as the first
/// time, derived from the tenant, the key and the event's place in the request. The
/// notification log deduplicates by event id, so a retry makes no second notification.
/// Envelopes keep the ids their producer gave them.
fn apply_idempotency_key(
    headers: &HeaderMap,
    tenant: &str,
    events: &mut [RawEvent<'_>],
    hub_named: &[bool],
) -> Result<(), ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(());
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(OperationOutcome::error(
                IssueType::Value,
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ))
        })?;
    for (i, (e, named)) in events.iter_mut().zip(hub_named).enumerate() {
        if *named {
            let digest = Sha256::digest(format!("fhir-hub idempotency\n{tenant}\n{key}\n{i}"));
            let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            e.head.id = format!("idem-{hex}");
        }
    }
    Ok(())
}

/// Event ids are the deduplication key. A producer below `hub/operator` gets its ids prefixed
/// with a digest of its credential, so one producer cannot suppress another's events by
/// sending their ids (its own retries still deduplicate).
fn namespace_ids(caller: &Caller, events: &mut [RawEvent<'_>]) {
    if caller.scopes.is_operator() {
        return;
    }
    let digest = Sha256::digest(format!("fhir-hub producer\n{}", caller.subject));
    let prefix: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    for RawEvent { head: e, .. } in events {
        let id = format!("p{prefix}:{}", e.id);
        e.id = if id.len() <= 128 {
            id
        } else {
            let h = Sha256::digest(e.id.as_bytes());
            let h: String = h.iter().take(20).map(|b| format!("{b:02x}")).collect();
            format!("p{prefix}:h{h}")
        };
    }
}

fn check_tenants(caller: &Caller, events: &[RawEvent<'_>]) -> Result<(), ApiError> {
    if !caller.scopes.may_publish() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            OperationOutcome::error(
                IssueType::Forbidden,
                "publishing change events needs scope hub/publish (or hub/admin)",
            ),
        ));
    }
    if let Some(e) = events
        .iter()
        .map(|e| &e.head)
        .find(|e| !caller.may_publish_to(&e.tenant))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            OperationOutcome::error(
                IssueType::Forbidden,
                format!("you may not publish events for tenant '{}'", e.tenant),
            ),
        ));
    }
    Ok(())
}

/// `POST /events`.
pub async fn post_events(
    State(hub): State<Hub>,
    caller: Caller,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    let ndjson = matches!(
        body.content_type.as_str(),
        "application/x-ndjson" | "application/ndjson" | "application/fhir+ndjson"
    );
    body.require_content_type()?;
    if !ndjson && !is_json_type(&body.content_type) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            OperationOutcome::error(
                IssueType::NotSupported,
                format!(
                    "Content-Type '{}' is not supported: send application/json (one envelope) or application/x-ndjson",
                    body.content_type
                ),
            ),
        ));
    }
    let mut events = Vec::new();
    let mut hub_named = Vec::new();
    if ndjson {
        for (i, line) in body.bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (e, named) =
                RawEvent::from_ndjson_line_named(line, None, &caller.tenant).map_err(|e| {
                    let oo = e.to_outcome();
                    let msg = format!("line {}: {}", i + 1, oo.summary());
                    ApiError::bad_request(
                        OperationOutcome::error(IssueType::Invalid, msg)
                            .at(format!("line {}", i + 1)),
                    )
                })?;
            events.push(e);
            hub_named.push(named);
        }
        if events.is_empty() {
            return Err(ApiError::bad_request(OperationOutcome::error(
                IssueType::Required,
                "the NDJSON body has no events",
            )));
        }
    } else {
        let (e, named) = RawEvent::from_ndjson_line_named(&body.bytes, None, &caller.tenant)
            .map_err(|e| ApiError::bad_request(e.to_outcome()))?;
        events.push(e);
        hub_named.push(named);
    }
    apply_idempotency_key(&headers, &caller.tenant, &mut events, &hub_named)?;
    check_tenants(&caller, &events)?;
    namespace_ids(&caller, &mut events);
    publish_events(&hub, &events).await?;
    crate::metrics::EventsPublished {
        count: events.len(),
    }
    .emit(&hub.metrics);
    tracing::info!(count = events.len(), subject = %caller.subject, "published change events");
    let ids: Vec<&str> = events.iter().map(|e| e.head.id.as_str()).collect();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"published": events.len(), "ids": ids})),
    )
        .into_response())
}

/// `POST /fhir` with a Bundle.
pub async fn post_bundle(
    State(hub): State<Hub>,
    caller: Caller,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    let bundle = body.json()?;
    let out = hub_fhir::bundle::events_from_bundle(&bundle, &caller.tenant)
        .map_err(ApiError::bad_request)?;
    let mut events = out
        .events
        .into_iter()
        .map(RawEvent::from_event)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(e.to_outcome()))?;
    // every event of a Bundle is named by the hub
    let hub_named = vec![true; events.len()];
    apply_idempotency_key(&headers, &caller.tenant, &mut events, &hub_named)?;
    check_tenants(&caller, &events)?;
    namespace_ids(&caller, &mut events);
    publish_events(&hub, &events).await?;
    crate::metrics::EventsPublished {
        count: events.len(),
    }
    .emit(&hub.metrics);
    let mut msg = format!("published {} change events", events.len());
    if out.skipped_reads > 0 {
        msg.push_str(&format!(
            "; {} read-only entries (GET/HEAD) describe no change and were skipped",
            out.skipped_reads
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        FhirJson(OperationOutcome::information(msg).to_json()),
    )
        .into_response())
}
