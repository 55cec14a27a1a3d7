//! Change-event ingest: `POST /events` (one envelope, or NDJSON of envelopes and/or bare
//! resources) and `POST /fhir` (a history, transaction or batch Bundle).
//!
//! Every event of a request is validated before anything is published, so a rejected
//! request publishes nothing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hub_fhir::{ChangeEvent, IssueType, OperationOutcome};
use serde_json::json;

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::{FhirJson, RawBody, is_json_type};
use crate::Hub;

/// Log records for events: key `Type/id`, the envelope as JSON.
pub fn records(events: &[ChangeEvent]) -> Vec<hub_log::Record> {
    events
        .iter()
        .map(|e| hub_log::Record {
            key: e.key(),
            payload: e.to_json_bytes(),
        })
        .collect()
}

/// Publish validated events to the changes topic, in order.
pub async fn publish_events(hub: &Hub, events: &[ChangeEvent]) -> Result<(), hub_log::LogError> {
    let records = records(events);
    // Chunks keep one embedded-log transaction or Kafka batch bounded.
    for chunk in records.chunks(1000) {
        hub.log
            .publish(&hub.config.log.changes_topic, chunk)
            .await?;
    }
    Ok(())
}

fn check_tenants(caller: &Caller, events: &[ChangeEvent]) -> Result<(), ApiError> {
    if let Some(e) = events.iter().find(|e| !caller.may_publish_to(&e.tenant)) {
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
    body: RawBody,
) -> Result<Response, ApiError> {
    let ndjson = matches!(
        body.content_type.as_str(),
        "application/x-ndjson" | "application/ndjson" | "application/fhir+ndjson"
    );
    if !ndjson && !body.content_type.is_empty() && !is_json_type(&body.content_type) {
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
    if ndjson {
        for (i, line) in body.bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let e = ChangeEvent::from_ndjson_line(line, None, &caller.tenant).map_err(|e| {
                let oo = e.to_outcome();
                let msg = format!("line {}: {}", i + 1, oo.summary());
                ApiError::bad_request(
                    OperationOutcome::error(IssueType::Invalid, msg).at(format!("line {}", i + 1)),
                )
            })?;
            events.push(e);
        }
        if events.is_empty() {
            return Err(ApiError::bad_request(OperationOutcome::error(
                IssueType::Required,
                "the NDJSON body has no events",
            )));
        }
    } else {
        let e = ChangeEvent::from_ndjson_line(&body.bytes, None, &caller.tenant)
            .map_err(|e| ApiError::bad_request(e.to_outcome()))?;
        events.push(e);
    }
    check_tenants(&caller, &events)?;
    publish_events(&hub, &events).await?;
    crate::metrics::EventsPublished {
        count: events.len(),
    }
    .emit(&hub.metrics);
    tracing::info!(count = events.len(), subject = %caller.subject, "published change events");
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
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
    body: RawBody,
) -> Result<Response, ApiError> {
    let bundle = body.json()?;
    let out = hub_fhir::bundle::events_from_bundle(&bundle, &caller.tenant)
        .map_err(ApiError::bad_request)?;
    check_tenants(&caller, &out.events)?;
    publish_events(&hub, &out.events).await?;
    crate::metrics::EventsPublished {
        count: out.events.len(),
    }
    .emit(&hub.metrics);
    let mut msg = format!("published {} change events", out.events.len());
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
