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
    let (notes, purged) = if limit > 0 {
        // a purged start reads from the first event retained: never past `until`
        let mut notes = hub
            .store
            .notifications_after(sub.log_key, since - 1, limit)
            .await?;
        notes.retain(|n| n.event_number <= until);
        let first = match notes.first() {
            Some(n) if n.event_number == since => None,
            _ => hub.store.first_retained(sub.log_key).await?,
        };
        // the asked events below the first one retained are gone: say which
        let purged = match first {
            Some(f) if f > since => Some(f.min(until + 1)),
            None if notes.is_empty() => Some(until + 1),
            _ => None,
        };
        (notes, purged.map(|f| purged_notice(since, f - 1, first)))
    } else {
        (Vec::new(), None)
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
    let message = message.with(disclosed.all());
    Ok(FhirJson(match &purged {
        Some(notice) => message.with_notice(notice).bundle(),
        None => message.bundle(),
    }))
}

/// What `$events` says when events `since..=through` of the asked range were purged by
/// retention (the status's `error`): the answer holds only what is still in the log.
fn purged_notice(since: i64, through: i64, first: Option<i64>) -> String {
    let range = if since == through {
        format!("event {since} was")
    } else {
        format!("events {since} to {through} were")
    };
    match first {
        Some(f) => format!(
            "{range} purged by retention (events before {f} are no longer in the notification log)"
        ),
        None => format!(
            "{range} purged by retention (the notification log holds none of this subscription's events)"
        ),
    }
}
