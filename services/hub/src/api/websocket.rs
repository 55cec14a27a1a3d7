//! The Backport IG's websocket channel: `$get-ws-binding-token` hands out a short-lived token
//! for a websocket subscription; a client connects to `/fhir/$subscription-ws`, sends
//! `bind-with-token: <token>` (one or more times: a socket can carry several
//! subscriptions), gets a handshake bundle per binding, then each new notification as an
//! event-notification bundle in event-number order, and heartbeat bundles when the
//! subscription asks for them. Missed notifications are read with `$events`.
//!
//! Each binding is a reader of the subscription's stream (`channels::stream`) feeding the
//! socket through one bounded outbox.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hub_fhir::subscription::{ChannelType, Status};
use hub_fhir::{IssueType, OperationOutcome};
use rand::RngCore;
use serde_json::json;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::ApiError;
use super::auth::{Caller, MaybeCaller};
use super::fhir_json::FhirJson;
use crate::Hub;
use crate::channels::render::{self, Kind};
use crate::channels::stream::{Item, SubscriptionStream};
use crate::model::Subscription;

/// How long a binding token stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(600);

/// `GET|POST /fhir/Subscription/{id}/$get-ws-binding-token`.
pub async fn binding_token(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<FhirJson, ApiError> {
    caller.require("Subscription", crate::auth::Perm::Read)?;
    let sub = super::subscriptions::typed(&hub, &caller.tenant, &id).await?;
    if sub.channel_type().calls_out() {
        return Err(ApiError::unprocessable(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "Subscription/{id} uses channel type '{}'; binding tokens are for websocket and SSE subscriptions",
                sub.channel_type().as_str()
            ),
        )));
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let expires = time::OffsetDateTime::now_utc() + TOKEN_TTL;
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(ApiError::internal)?;
    hub.store
        .create_ws_token(&token, &caller.tenant, &id, &expires)
        .await?;
    let ws_url = hub.base_url.replacen("http", "ws", 1) + "/$subscription-ws";
    Ok(FhirJson(json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "token", "valueString": token},
            {"name": "expiration", "valueDateTime": expires},
            {"name": "subscription", "valueString": format!("Subscription/{id}")},
            {"name": "websocket-url", "valueUrl": ws_url}
        ]
    })))
}

/// `GET /fhir/$subscription-ws` (upgrade). The caller established on the upgrade request is
/// the one classic `bind <id>` requests are checked against.
pub async fn connect(
    State(hub): State<Hub>,
    MaybeCaller(caller): MaybeCaller,
    ws: WebSocketUpgrade,
) -> Response {
    // a credentialed socket counts against its credential's open streams
    let slot = match &caller {
        Some(c) => match hub
            .auth
            .stream_slot(c, hub.config.auth.max_streams_per_credential)
        {
            Ok(slot) => Some(slot),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    // Clients only send short bind lines: small read buffers keep an idle socket cheap, and
    // a message limit keeps anyone from making the hub read megabytes.
    ws.read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            serve(hub, caller, socket).await;
        })
}

/// The largest message a websocket client may send (bind lines are far shorter).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// Most messages waiting for one socket (the byte budget usually binds first).
const OUTBOX: usize = 1024;

/// A socket's outbox: messages from all its bindings, bounded by bytes
/// (`streams.max_buffer_bytes`). A client that does not read makes its bindings wait (each
/// then falls behind on the notification log) instead of growing the hub's memory.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<(Message, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    max: u32,
}

impl Outbox {
    fn new(max_bytes: usize) -> (Outbox, mpsc::Receiver<(Message, OwnedSemaphorePermit)>) {
        let max = u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1);
        let (tx, rx) = mpsc::channel(OUTBOX);
        let budget = Arc::new(Semaphore::new(max as usize));
        (Outbox { tx, budget, max }, rx)
    }

    /// Queue a message once its bytes fit; false when the socket is gone.
    async fn send(&self, m: Message) -> bool {
        let len = match &m {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        // a message larger than the whole budget waits for an empty outbox, then goes alone
        let n = u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.max);
        let Ok(permit) = Arc::clone(&self.budget).acquire_many_owned(n).await else {
            return false;
        };
        self.tx.send((m, permit)).await.is_ok()
    }
}

fn outcome(msg: impl Into<String>) -> Message {
    Message::Text(
        OperationOutcome::error(IssueType::Invalid, msg)
            .to_json()
            .to_string()
            .into(),
    )
}

/// The subscription a token binds, if it may be bound. A token binds one socket: binding
/// uses it up.
async fn bind(hub: &Hub, token: &str) -> Result<Subscription, String> {
    let Some((tenant, id)) = hub
        .store
        .take_ws_token(token)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err("unknown, used or expired binding token".into());
    };
    let sub = hub
        .subscriptions
        .get(&hub.store, &tenant, &id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("Subscription/{id} no longer exists"))?;
    if sub.topic().is_none() {
        return Err(format!("Subscription/{id} is not topic-based"));
    }
    if sub.status == Status::Off {
        return Err(format!("Subscription/{id} is off"));
    }
    Ok(sub)
}

/// What a client asked to bind.
#[derive(Debug, PartialEq, Eq)]
enum Bind<'a> {
    /// `bind-with-token: <token> [<last event number seen>]` (Backport IG, with the hub's
    /// resume extension).
    Backport {
        token: &'a str,
        last_seen: Option<i64>,
    },
    /// `bind <id>`: the classic R4 protocol for criteria subscriptions (`bound <id>`, then
    /// `ping <id>` per event), as HAPI clients speak it.
    Classic { id: &'a str },
}

fn parse_message(text: &str) -> Option<Bind<'_>> {
    if let Some((token, last_seen)) = parse_bind(text) {
        return Some(Bind::Backport { token, last_seen });
    }
    let id = text.trim().strip_prefix("bind ")?.trim();
    (!id.is_empty() && !id.contains(char::is_whitespace)).then_some(Bind::Classic { id })
}

/// The R4 criteria subscription a classic `bind <id>` names, in the caller's tenant.
async fn bind_classic(
    hub: &Hub,
    caller: Option<&Caller>,
    id: &str,
) -> Result<Subscription, String> {
    let Some(caller) = caller else {
        return Err(
            "'bind <id>' needs a credential on the websocket upgrade (Authorization: Bearer …)"
                .into(),
        );
    };
    caller
        .require("Subscription", crate::auth::Perm::Read)
        .map_err(|e| e.outcome.summary())?;
    let sub = hub
        .subscriptions
        .get(&hub.store, &caller.tenant, id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("Subscription/{id} is not known"))?;
    if sub.topic().is_some() || sub.channel_type() != ChannelType::Websocket {
        return Err(format!(
            "Subscription/{id} is not an R4 criteria websocket subscription (topic-based ones bind with a token)"
        ));
    }
    if sub.status == Status::Off {
        return Err(format!("Subscription/{id} is off"));
    }
    Ok(sub)
}

async fn serve(hub: Hub, caller: Option<Caller>, mut socket: WebSocket) {
    let (tx, mut rx) = Outbox::new(hub.config.streams.max_buffer_bytes);
    // every binding's reader stops with the socket, and the socket with the hub
    let stop = hub.streams.child_token();
    let _stop_readers = stop.clone().drop_guard();
    let mut bound: HashMap<(String, String), CancellationToken> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // 1001 Going Away: reconnect (anywhere) and bind again from the last number
                let frame = CloseFrame { code: 1001, reason: "the hub is stopping".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let Some(request) = parse_message(&text) else {
                    let _ = socket
                        .send(outcome("expected 'bind-with-token: <token>', 'bind-with-token: <token> <last event number seen>' or 'bind <id>'"))
                        .await;
                    continue;
                };
                let (found, last_seen) = match request {
                    Bind::Backport { token, last_seen } => (bind(&hub, token).await, last_seen),
                    Bind::Classic { id } => (bind_classic(&hub, caller.as_ref(), id).await, None),
                };
                let sub = match found {
                    Ok(sub) => sub,
                    Err(why) => {
                        let refusal = match request {
                            Bind::Classic { .. } => Message::Text(format!("error {why}").into()),
                            Bind::Backport { .. } => outcome(why),
                        };
                        let _ = socket.send(refusal).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                };
                tracing::info!(subscription = %sub.id(), tenant = %sub.tenant(), "websocket bound");
                let agent: Arc<str> = caller
                    .as_ref()
                    .map_or_else(|| sub.owner_subject(), |c| c.subject.clone())
                    .into();
                // binding the same subscription again replaces its reader
                let reader = stop.child_token();
                if let Some(old) = bound.insert((sub.tenant().to_owned(), sub.id().to_owned()), reader.clone()) {
                    old.cancel();
                }
                if matches!(request, Bind::Classic { .. }) {
                    if socket.send(Message::Text(format!("bound {}", sub.id()).into())).await.is_err() {
                        return;
                    }
                    tokio::spawn(read_classic(hub.clone(), sub, tx.clone(), reader, agent));
                } else {
                    let binding = Binding { sub, last_seen, agent };
                    tokio::spawn(read_binding(hub.clone(), binding, tx.clone(), reader));
                }
            }
            out = rx.recv() => {
                // the permit goes back to the budget once the message is written
                let Some((out, _permit)) = out else { return };
                if socket.send(out).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A classic R4 binding: `ping <id>` for each new event of the subscription, from the count
/// at bind time.
async fn read_classic(
    hub: Hub,
    sub: Subscription,
    tx: Outbox,
    stop: CancellationToken,
    agent: Arc<str>,
) {
    let mut stream = SubscriptionStream::open(&hub, sub.tenant(), sub.id(), sub.events_since_start);
    loop {
        match stream.next(OUTBOX, None, &stop).await {
            None => return,
            Some(Ok(Item::Notifications(notes))) => {
                if crate::channels::disclose(&hub, &sub, "websocket", &agent, &notes)
                    .await
                    .is_err()
                {
                    // nothing without its audit row (classic bindings have no error message)
                    return;
                }
                for _ in &notes {
                    if !tx
                        .send(Message::Text(format!("ping {}", sub.id()).into()))
                        .await
                    {
                        return;
                    }
                }
            }
            // the classic protocol has no numbers: a purge or a quiet period changes nothing
            Some(Ok(Item::Quiet | Item::HistoryGone { .. })) => {}
            Some(Err(e)) => {
                tracing::warn!(subscription = %sub.id(), error = %e, "cannot read notifications for a websocket");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// `bind-with-token: <token>` (the Backport IG), or with the hub's resume extension
/// `bind-with-token: <token> <last event number seen>`.
fn parse_bind(text: &str) -> Option<(&str, Option<i64>)> {
    let rest = text.trim().strip_prefix("bind-with-token:")?.trim();
    let mut parts = rest.split_whitespace();
    let token = parts.next()?;
    let last_seen = match parts.next() {
        None => None,
        Some(n) => Some(n.parse::<i64>().ok().filter(|n| *n >= 0)?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((token, last_seen))
}

/// One binding: a handshake, then the subscription's stream, grouped by max-count, with
/// heartbeats on the subscription's period: after `last_seen` when the client resumes
/// (every later notification once, in order, before live ones; or a history-gone message),
/// else from the count at bind time (live; missed ones are read with `$events`). This
/// reader keeps no cursor in the store: what a socket was sent says nothing about what the
/// client processed.
/// What one Backport binding reads.
struct Binding {
    sub: Subscription,
    last_seen: Option<i64>,
    /// Who receives (the audit trail's agent).
    agent: Arc<str>,
}

async fn read_binding(hub: Hub, binding: Binding, tx: Outbox, stop: CancellationToken) {
    let Binding {
        sub,
        last_seen,
        agent,
    } = binding;
    let base = hub.base_url.clone();
    let text = |kind: Kind, since: i64, notes: &[hub_store::Notification]| {
        Message::Text(
            render::Message::new(&sub, &base, sub.status, kind, since)
                .with(notes)
                .bundle_text(sub.content())
                .into(),
        )
    };
    if !tx
        .send(text(Kind::Handshake, sub.events_since_start, &[]))
        .await
    {
        return;
    }
    let heartbeat = sub
        .spec
        .channel
        .heartbeat_secs
        .map(|s| Duration::from_secs(u64::from(s)));
    let group = crate::channels::group_size(&sub);
    let after = last_seen.unwrap_or(sub.events_since_start);
    let mut stream = SubscriptionStream::open(&hub, sub.tenant(), sub.id(), after);
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let quiet_until = heartbeat.map(|p| last_sent + p);
        let msgs = match stream.next(OUTBOX * group, quiet_until, &stop).await {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(subscription = %sub.id(), error = %e, "cannot read notifications for a websocket");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Some(Ok(Item::Quiet)) => vec![text(Kind::Heartbeat, stream.position(), &[])],
            Some(Ok(Item::HistoryGone { after, resumes_at })) => vec![outcome(format!(
                "events after {after} are no longer in the notification log; continuing from {resumes_at}"
            ))],
            Some(Ok(Item::Notifications(notes))) => {
                if let Err(e) =
                    crate::channels::disclose(&hub, &sub, "websocket", &agent, &notes).await
                {
                    // nothing without its audit row: said, and this binding ends
                    let _ = tx.send(outcome(e.to_string())).await;
                    return;
                }
                notes
                    .chunks(group)
                    .filter_map(|g| Some(text(Kind::EventNotification, g.last()?.event_number, g)))
                    .collect()
            }
        };
        for m in msgs {
            if !tx.send(m).await {
                return;
            }
        }
        last_sent = tokio::time::Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::{Bind, parse_bind, parse_message};

    #[test]
    fn bind_lines() {
        assert_eq!(parse_bind("bind-with-token: abc"), Some(("abc", None)));
        assert_eq!(
            parse_bind(" bind-with-token:abc 41 "),
            Some(("abc", Some(41)))
        );
        assert_eq!(parse_bind("bind-with-token: abc -1"), None);
        assert_eq!(parse_bind("bind-with-token: abc x"), None);
        assert_eq!(parse_bind("bind-with-token: abc 1 2"), None);
        assert_eq!(parse_bind("bind-with-token:"), None);
        assert_eq!(parse_bind("bind abc"), None);
        assert_eq!(parse_message("bind abc"), Some(Bind::Classic { id: "abc" }));
        assert_eq!(parse_message("bind  "), None);
        assert_eq!(parse_message("bind a b"), None);
        assert_eq!(
            parse_message("bind-with-token: t 3"),
            Some(Bind::Backport {
                token: "t",
                last_seen: Some(3)
            })
        );
    }
}
