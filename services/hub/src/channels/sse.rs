//! The Server-Sent Events channel: `GET /fhir/Subscription/{id}/$stream` streams an SSE
//! subscription's notifications as `text/event-stream`, resumable by event number.
//!
//! - `id:` is the event number (of the bundle's last event, when `backport-max-count` groups
//!   several), so a browser `EventSource` resumes on its own with `Last-Event-ID`; a client
//!   may also ask `?from=` `earliest`, `latest`, an event number N (everything from N on) or
//!   an RFC 3339 instant (`channels::start`). `Last-Event-ID` wins over `from` (a browser
//!   reconnects to the same URL). Without either, the stream starts live, after the
//!   subscription's current count. A position beyond the head is refused before the stream
//!   starts (416, an OperationOutcome naming the first available event and the head).
//! - `event:` is `handshake` (first, without an id), `event-notification`, `heartbeat` (on
//!   the subscription's heartbeat period), `history-gone` (events after the position were
//!   purged by retention: an OperationOutcome saying from which number the stream resumes),
//!   `shutdown` (the hub is stopping: reconnect, anywhere, with `Last-Event-ID`),
//!   `access-ended` (the reader's credential was revoked, expired or lost the scopes: an
//!   OperationOutcome saying why; the stream ends), `unavailable` (the notification log or
//!   the audit trail cannot be read: reconnect later), and `too-slow` (the reader fell more
//!   than `streams.max_lag_events` behind: reconnect with `Last-Event-ID`). No event is
//!   named `error`: a browser's `EventSource` fires `onerror` for that name.
//! - What a notification shows is what the reader's own grant may see
//!   (`channels::disclosure`); a `?token=` reader is the credential the token was issued to.
//! - `data:` is the notification bundle in the subscription's shape (R4 Backport, R4B, R5)
//!   and content level; for an R4 criteria subscription, the resource when the channel has
//!   a payload.
//! - `retry:` advises 2 s; comments keep idle connections open through proxies.
//!
//! The body is pulled: the next notifications are read from the log only when the client
//! has taken the previous ones, so a connection holds at most one batch, and a slow client
//! falls behind on the log (and is told `history-gone` if retention passes it) instead of
//! growing the hub's memory. Browsers cannot set headers on an `EventSource`; they pass a
//! binding token from `$get-ws-binding-token` as `?token=`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use hub_fhir::subscription::ChannelType;
use hub_fhir::{IssueType, OperationOutcome};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::api::auth::MaybeCaller;
use crate::api::resource::check_id;
use crate::auth::holder::Holder;
use crate::channels::disclosure::{Disclosure, Ended, Shown};
use crate::channels::render::{Kind, Message};
use crate::channels::start::{self, Refused, Reset, Resolved, Start};
use crate::channels::stream::{Item, SubscriptionStream};
use crate::model::Subscription;
use crate::state::Hub;

/// Reconnection advice sent to clients.
const RETRY: Duration = Duration::from_secs(2);
/// Most notifications read from the log at a time for one connection.
const BATCH: usize = 100;

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Where to start: `earliest`, `latest`, the first event number wanted, or an instant.
    from: Option<String>,
    /// A binding token (browsers: `EventSource` cannot send headers).
    token: Option<String>,
}

fn bad(msg: String) -> ApiError {
    ApiError::bad_request(OperationOutcome::error(IssueType::Value, msg))
}

/// The asked start: `Last-Event-ID` (resume after it), else `from`, else live.
fn asked_start(headers: &HeaderMap, q: &StreamQuery) -> Result<Start, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let s = v.to_str().unwrap_or("");
        return s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Start::After)
            .ok_or_else(|| bad(format!("Last-Event-ID '{s}' is not an event number")));
    }
    match &q.from {
        Some(f) => Start::parse_from(f).map_err(bad),
        None => Ok(Start::Latest),
    }
}

/// A start beyond the head, refused before the stream starts: an `EventSource` stops on a
/// status other than 200 instead of reconnecting to the same refusal.
fn out_of_range(sub: &Subscription, refused: &Refused) -> ApiError {
    let bounds = refused.bounds();
    let outcome = OperationOutcome::error(IssueType::NotFound, refused.message(sub.id()));
    ApiError::new(axum::http::StatusCode::RANGE_NOT_SATISFIABLE, outcome)
        .with_header_name("fhir-hub-first-available", bounds.first.to_string())
        .with_header_name("fhir-hub-head", bounds.head.to_string())
}

/// The event that says the events after `after` were purged and the stream continues with
/// `resumes_at`.
fn history_gone(after: i64, resumes_at: i64) -> Event {
    let oo = OperationOutcome::error(
        IssueType::NotFound,
        format!(
            "events after {after} are no longer in the notification log (retention); the stream continues from event {resumes_at}"
        ),
    );
    Event::default()
        .event("history-gone")
        .data(oo.to_json().to_string())
}

/// `GET /fhir/Subscription/{id}/$stream`: with a credential (`Authorization`), or with a
/// binding token (`?token=`, from `$get-ws-binding-token`) for a browser `EventSource`,
/// which cannot send headers. A token stays usable until it expires, so `EventSource`'s own
/// reconnects (with `Last-Event-ID`) work.
pub async fn stream(
    State(hub): State<Hub>,
    MaybeCaller(caller): MaybeCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let refused = || {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            OperationOutcome::error(
                IssueType::Security,
                "the token is unknown, expired, or for another subscription",
            ),
        )
    };
    // the reader is the credential, or the credential the token was issued to
    let caller = match (caller, &q.token) {
        (Some(c), _) => {
            c.require("Subscription", crate::auth::Perm::Read)?;
            c
        }
        (None, Some(token)) => {
            let bound = hub.store.ws_token(token).await?.ok_or_else(refused)?;
            if bound.subscription_id != id {
                return Err(refused());
            }
            Holder::caller(&hub, &bound.tenant, bound.holder.as_deref()).await?
        }
        (None, None) => {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                OperationOutcome::error(
                    IssueType::Security,
                    "this stream needs a credential (Authorization: Bearer …) or ?token= from $get-ws-binding-token",
                ),
            ));
        }
    };
    let sub = crate::api::subscriptions::typed(&hub, &caller.tenant, &id).await?;
    if sub.channel_type() != ChannelType::Sse {
        return Err(ApiError::unprocessable(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "Subscription/{id} uses channel type '{}'; $stream serves SSE subscriptions",
                sub.channel_type().as_str()
            ),
        )));
    }
    // a token sent beside a credential must still be this subscription's
    if let Some(token) = &q.token {
        let bound = hub.store.ws_token(token).await?;
        if bound
            .as_ref()
            .map(|b| (b.tenant.as_str(), b.subscription_id.as_str()))
            != Some((sub.tenant(), sub.id()))
        {
            return Err(refused());
        }
    }
    let disclosure = Disclosure::for_reader(&hub, &caller, &sub, "sse", None).await?;
    let slot = hub.auth.stream_slot(
        &caller,
        hub.config.auth.max_streams_per_credential,
        hub.metrics.stream_open(crate::metrics::Channel::Sse),
    )?;
    // purged history: continue from the first event still in the log, and say so
    let start =
        match start::resolve(&hub, &sub, &asked_start(&headers, &q)?, Reset::Earliest).await? {
            Ok(start) => start,
            Err(refused) => return Err(out_of_range(&sub, &refused)),
        };
    let after = start.after;
    tracing::info!(subscription = %sub.id(), tenant = %sub.tenant(), after, "SSE stream opened");
    let stop = disclosure.watch(&hub, &hub.streams);
    let events = events(hub.clone(), sub, start, stop, disclosure, slot);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct Reader {
    hub: Hub,
    sub: Subscription,
    stream: SubscriptionStream,
    pending: VecDeque<Event>,
    heartbeat: Option<Duration>,
    last_sent: tokio::time::Instant,
    stop: CancellationToken,
    done: bool,
    /// The reader's right to the subscription (its grant, its audit name).
    disclosure: Disclosure,
    /// The credential's place among its open streams, held while the stream lives.
    _slot: crate::auth::StreamSlot,
}

impl Reader {
    fn message(&self, kind: Kind, since: i64, events: Option<Shown<'_>>) -> Event {
        let m = Message::new(&self.sub, &self.hub.base_url, self.sub.status, kind, since);
        let rendered = match events {
            Some(e) => m.with(e),
            None => m,
        }
        .render();
        let data = rendered
            .body
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Event::default().event(kind.code()).data(data)
    }

    /// Refill `pending` from the subscription stream; false when the stream is over.
    async fn refill(&mut self) -> bool {
        let quiet_until = self.heartbeat.map(|p| self.last_sent + p);
        match self.stream.next(BATCH, quiet_until, &self.stop).await {
            None => {
                let end = match self.disclosure.ended() {
                    Some(e) => access_ended(&e),
                    None => Event::default()
                        .event("shutdown")
                        .data("the hub is stopping; reconnect with Last-Event-ID"),
                };
                self.pending.push_back(end);
                self.done = true;
            }
            Some(Err(e)) => {
                tracing::warn!(subscription = %self.sub.id(), error = %e, "cannot read notifications for an SSE stream");
                // not `error`: a browser's EventSource takes that name for a broken connection
                let oo = OperationOutcome::error(
                    IssueType::Transient,
                    "the notification log is unavailable; reconnect with Last-Event-ID",
                );
                self.pending.push_back(
                    Event::default()
                        .event("unavailable")
                        .data(oo.to_json().to_string()),
                );
                self.done = true;
            }
            Some(Ok(Item::Lagging { behind })) => {
                crate::metrics::ConnectionClosed::Lagging.emit(&self.hub.metrics);
                let oo = OperationOutcome::error(
                    IssueType::Throttled,
                    format!(
                        "this stream fell {behind} events behind the subscription (at most {} allowed): reconnect with Last-Event-ID, or read the backlog with $events",
                        self.hub.config.streams.max_lag_events
                    ),
                );
                self.pending.push_back(
                    Event::default()
                        .event("too-slow")
                        .data(oo.to_json().to_string()),
                );
                self.done = true;
            }
            Some(Ok(Item::Deleted)) => {
                let oo = OperationOutcome::error(
                    IssueType::NotFound,
                    format!(
                        "Subscription/{} was deleted (or deleted and created again, a new log whose events start at 1): this stream ends",
                        self.sub.id()
                    ),
                );
                self.pending.push_back(
                    Event::default()
                        .event("deleted")
                        .data(oo.to_json().to_string()),
                );
                self.done = true;
            }
            Some(Ok(Item::Quiet)) => {
                let m = self.message(Kind::Heartbeat, self.stream.position(), None);
                self.pending.push_back(m);
            }
            Some(Ok(Item::HistoryGone { after, resumes_at })) => {
                self.pending.push_back(history_gone(after, resumes_at));
            }
            Some(Ok(Item::Notifications(notes))) => {
                let disclosed = match self.disclosure.hand_over(&self.hub, notes).await {
                    Ok(d) => d,
                    Err(e) => {
                        self.pending.push_back(access_ended(&e));
                        self.done = true;
                        return true;
                    }
                };
                let group = crate::channels::group_size(&self.sub);
                for g in disclosed.chunks(group) {
                    if let Some(last) = g.last() {
                        let m = self.message(Kind::EventNotification, last.event_number, Some(g));
                        self.pending.push_back(m.id(last.event_number.to_string()));
                    }
                }
            }
        }
        true
    }
}

/// The last event of a stream whose reader's credential ended: why, as an OperationOutcome.
fn access_ended(e: &Ended) -> Event {
    // not `error`: a browser's EventSource would take that for a broken connection
    let (name, issue) = match e {
        Ended::Unaudited(_) => ("unavailable", IssueType::Transient),
        _ => ("access-ended", IssueType::Security),
    };
    let oo = OperationOutcome::error(issue, e.reason());
    Event::default().event(name).data(oo.to_json().to_string())
}

/// The event stream of one connection: a handshake, then the subscription's stream.
fn events(
    hub: Hub,
    sub: Subscription,
    start: Resolved,
    stop: CancellationToken,
    disclosure: Disclosure,
    slot: crate::auth::StreamSlot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let stream = SubscriptionStream::open(&hub, &sub, start.after);
    let heartbeat = sub
        .spec
        .channel
        .heartbeat_secs
        .map(|s| Duration::from_secs(u64::from(s)));
    let mut reader = Reader {
        hub,
        sub,
        stream,
        pending: VecDeque::new(),
        heartbeat,
        last_sent: tokio::time::Instant::now(),
        stop,
        done: false,
        disclosure,
        _slot: slot,
    };
    let handshake = reader
        .message(Kind::Handshake, reader.sub.events_since_start, None)
        .retry(RETRY);
    reader.pending.push_back(handshake);
    if let Some((asked, after)) = start.reset {
        reader.pending.push_back(history_gone(asked, after + 1));
    }
    futures::stream::unfold(reader, |mut r| async move {
        while r.pending.is_empty() {
            if r.done || !r.refill().await {
                return None;
            }
        }
        let event = r.pending.pop_front()?;
        r.last_sent = tokio::time::Instant::now();
        Some((Ok(event), r))
    })
}
