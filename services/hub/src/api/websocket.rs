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
use axum::response::Response;
use base64::Engine as _;
use hub_fhir::subscription::Status;
use hub_fhir::{IssueType, OperationOutcome};
use rand::RngCore;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ApiError;
use super::auth::Caller;
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

/// `GET /fhir/$subscription-ws` (upgrade).
pub async fn connect(State(hub): State<Hub>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve(hub, socket))
}

/// Messages waiting for the socket, from all its bindings. Bounded: a client that does not
/// read makes its bindings wait instead of growing memory.
const OUTBOX: usize = 64;

fn outcome(msg: impl Into<String>) -> Message {
    Message::Text(
        OperationOutcome::error(IssueType::Invalid, msg)
            .to_json()
            .to_string()
            .into(),
    )
}

/// The subscription a token binds, if it may be bound.
async fn bind(hub: &Hub, token: &str) -> Result<Subscription, String> {
    let Some((tenant, id)) = hub.store.ws_token(token).await.map_err(|e| e.to_string())? else {
        return Err("unknown or expired binding token".into());
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

async fn serve(hub: Hub, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Message>(OUTBOX);
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
                let Some((token, last_seen)) = parse_bind(&text) else {
                    let _ = socket
                        .send(outcome("expected 'bind-with-token: <token>' or 'bind-with-token: <token> <last event number seen>'"))
                        .await;
                    continue;
                };
                match bind(&hub, token).await {
                    Ok(sub) => {
                        tracing::info!(subscription = %sub.id, tenant = %sub.tenant, "websocket bound");
                        // binding the same subscription again replaces its reader
                        let reader = stop.child_token();
                        if let Some(old) = bound.insert((sub.tenant.clone(), sub.id.clone()), reader.clone()) {
                            old.cancel();
                        }
                        tokio::spawn(read_binding(hub.clone(), sub, last_seen, tx.clone(), reader));
                    }
                    Err(why) => {
                        let _ = socket.send(outcome(why)).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { return };
                if socket.send(out).await.is_err() {
                    return;
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
async fn read_binding(
    hub: Hub,
    sub: Subscription,
    last_seen: Option<i64>,
    tx: mpsc::Sender<Message>,
    stop: CancellationToken,
) {
    let base = hub.base_url.clone();
    let text = |kind: Kind, since: i64, notes: &[hub_store::Notification]| {
        Message::Text(
            render::Message::new(&sub, &base, sub.status, kind, since)
                .with(notes)
                .bundle(sub.content())
                .to_string()
                .into(),
        )
    };
    if tx
        .send(text(Kind::Handshake, sub.events_since_start, &[]))
        .await
        .is_err()
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
    let mut stream = SubscriptionStream::open(&hub, &sub.tenant, &sub.id, after);
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let quiet_until = heartbeat.map(|p| last_sent + p);
        let msgs = match stream.next(OUTBOX * group, quiet_until, &stop).await {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(subscription = %sub.id, error = %e, "cannot read notifications for a websocket");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Some(Ok(Item::Quiet)) => vec![text(Kind::Heartbeat, stream.position(), &[])],
            Some(Ok(Item::HistoryGone { after, resumes_at })) => vec![outcome(format!(
                "events after {after} are no longer in the notification log; continuing from {resumes_at}"
            ))],
            Some(Ok(Item::Notifications(notes))) => notes
                .chunks(group)
                .filter_map(|g| Some(text(Kind::EventNotification, g.last()?.event_number, g)))
                .collect(),
        };
        for m in msgs {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        last_sent = tokio::time::Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bind;

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
    }
}
