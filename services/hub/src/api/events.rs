//! `$events` (Subscriptions R5 Backport IG, R4 form): the notifications a subscription
//! generated, read back from the notification log by event number, so a client can recover
//! what it missed (while off, or after its own outage) without any gap.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use hub_fhir::subscription::Content;
use hub_fhir::{IssueType, OperationOutcome};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::FhirJson;
use crate::Hub;
use crate::channels::render::{self, Kind};

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
    let content = match params.get("content") {
        None => sub.content(),
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
    if content != Content::Empty {
        crate::channels::disclose(&hub, &sub, "$events", &caller.subject, &notes).await?;
    }
    let since_start = sub.events_since_start;
    let message = render::Message::new(
        &sub,
        &hub.base_url,
        sub.status,
        Kind::QueryEvent,
        since_start,
    );
    Ok(FhirJson(message.with(&notes).bundle(content)))
}
