//! `$events` (Subscriptions R5 Backport IG, R4 form): the notifications a subscription
//! generated, read back from the notification log by event number, so a client can recover
//! what it missed (while off, or after its own outage) without any gap. What it answers is
//! what the caller's own grant may see (`channels::disclosure`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use hub_fhir::subscription::Content;
use hub_fhir::{IssueType, OperationOutcome};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::FhirJson;
use crate::channels::disclosure::{Disclosure, Ended};
use crate::channels::render::{self, Kind};
use crate::state::Hub;

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
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<FhirJson, ApiError> {
    caller.require("Subscription", crate::auth::Perm::Read)?;
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
    let sub = super::subscriptions::typed(&hub, &caller.tenant, &id).await?;
    let since = number(&params, "eventsSinceNumber")?.unwrap_or(1).max(1);
    let until = number(&params, "eventsUntilNumber")?
        .unwrap_or(sub.events_since_start)
        .min(sub.events_since_start);
    let asked = match params.get("content") {
        None => None,
        Some(c) => Some(Content::parse(c).ok_or_else(|| {
            ApiError::bad_request(OperationOutcome::error(
                IssueType::Value,
                format!("content '{c}' must be empty, id-only or full-resource"),
            ))
        })?),
    };
    // the reader's grant, at no more than the subscription's content level (403 otherwise)
    let disclosure = Disclosure::for_reader(&hub, &caller, &sub, "$events", asked).await?;
    let limit = (until - since + 1).clamp(0, MAX_EVENTS);
    let notes = if limit > 0 {
        hub.store
            .notifications_after(sub.log_key, since - 1, limit)
            .await?
    } else {
        Vec::new()
    };
    let disclosed = disclosure
        .hand_over(&hub, notes)
        .await
        .map_err(|e| match e {
            Ended::Unaudited(_) => crate::audit::Unaudited.into(),
            e => ApiError::new(
                StatusCode::FORBIDDEN,
                OperationOutcome::error(IssueType::Forbidden, e.reason()),
            ),
        })?;
    let since_start = sub.events_since_start;
    let message = render::Message::new(
        &sub,
        &hub.base_url,
        sub.status,
        Kind::QueryEvent,
        since_start,
    );
    Ok(FhirJson(message.with(disclosed.all()).bundle()))
}
