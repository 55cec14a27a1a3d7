//! The Backport IG's websocket channel: `$get-ws-binding-token` hands out a short-lived token
//! for a websocket subscription; a client connects to `/fhir/$subscription-ws`, sends
//! `bind-with-token: <token>` (one or more times: a socket can carry several
//! subscriptions), gets a handshake bundle per binding, then each new notification as an
//! event-notification bundle in event-number order, and heartbeat bundles when the
//! subscription asks for them. Missed notifications are read with `$events`.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use hub_fhir::notification::{self, StatusInfo};
use hub_fhir::subscription::TopicSubscription;
use hub_fhir::{IssueType, OperationOutcome};
use hub_store::Notification;
use rand::RngCore;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::FhirJson;
use super::subscriptions::base_url;
use crate::Hub;
use crate::delivery::send::event_infos;

/// How long a binding token stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(600);

/// `GET|POST /fhir/Subscription/{id}/$get-ws-binding-token`.
pub async fn binding_token(
    State(hub): State<Hub>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<FhirJson, ApiError> {
    let row = super::subscriptions::existing(&hub, &caller.tenant, &id).await?;
    if row.channel_type != "websocket" {
        return Err(ApiError::unprocessable(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "Subscription/{id} uses channel type '{}'; binding tokens are for websocket subscriptions",
                row.channel_type
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
    let ws_url = base_url(&headers).replacen("http", "ws", 1) + "/$subscription-ws";
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
pub async fn connect(State(hub): State<Hub>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let base = base_url(&headers);
    ws.on_upgrade(move |socket| serve(hub, base, socket))
}

struct Binding {
    tenant: String,
    id: String,
    topic: TopicSubscription,
    status: String,
    /// The last event number sent on this socket.
    sent: i64,
    heartbeat: Option<Duration>,
    last_message: tokio::time::Instant,
}

fn outcome(msg: impl Into<String>) -> Message {
    Message::Text(
        OperationOutcome::error(IssueType::Invalid, msg)
            .to_json()
            .to_string()
            .into(),
    )
}

async fn bind(hub: &Hub, token: &str) -> Result<Binding, String> {
    let Some((tenant, id)) = hub.store.ws_token(token).await.map_err(|e| e.to_string())? else {
        return Err("unknown or expired binding token".into());
    };
    let row = hub
        .store
        .get_subscription(&tenant, &id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("Subscription/{id} no longer exists"))?;
    let resource: Value = serde_json::from_str(&row.resource).map_err(|e| e.to_string())?;
    let spec = hub_fhir::subscription::validate(&resource).map_err(|oo| oo.summary())?;
    let topic = spec
        .topic
        .ok_or_else(|| format!("Subscription/{id} is not topic-based"))?;
    if row.status == "off" {
        return Err(format!("Subscription/{id} is off"));
    }
    Ok(Binding {
        tenant,
        id,
        topic,
        status: row.status,
        sent: row.events_since_start,
        heartbeat: spec
            .channel
            .heartbeat_secs
            .map(|s| Duration::from_secs(u64::from(s))),
        last_message: tokio::time::Instant::now(),
    })
}

fn bundle(base: &str, b: &Binding, kind: &str, since: i64, notes: &[Notification]) -> Message {
    let events = event_infos(notes);
    let info = StatusInfo {
        base,
        subscription_id: &b.id,
        topic: Some(&b.topic.topic),
        status: &b.status,
        kind,
        events_since_start: since,
        error: None,
    };
    Message::Text(
        notification::bundle_for(b.topic.version, &info, &events, b.topic.content)
            .to_string()
            .into(),
    )
}

async fn serve(hub: Hub, base: String, mut socket: WebSocket) {
    let mut bindings: Vec<Binding> = Vec::new();
    let poll = Duration::from_millis(hub.config.delivery.poll_ms);
    loop {
        let wake = hub.notifications_logged.notified();
        tokio::select! {
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let Some(token) = text.trim().strip_prefix("bind-with-token:") else {
                    let _ = socket.send(outcome("expected 'bind-with-token: <token>'")).await;
                    continue;
                };
                match bind(&hub, token.trim()).await {
                    Ok(b) => {
                        let hs = bundle(&base, &b, "handshake", b.sent, &[]);
                        if socket.send(hs).await.is_err() {
                            return;
                        }
                        tracing::info!(subscription = %b.id, tenant = %b.tenant, "websocket bound");
                        bindings.retain(|x| !(x.tenant == b.tenant && x.id == b.id));
                        bindings.push(b);
                    }
                    Err(why) => {
                        let _ = socket.send(outcome(why)).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                }
            }
            _ = wake => {}
            _ = tokio::time::sleep(poll) => {}
        }
        if !send_pending(&hub, &base, &mut socket, &mut bindings).await {
            return;
        }
    }
}

/// Send what each binding has not seen yet, and heartbeats that are due; false when the
/// socket is gone.
async fn send_pending(
    hub: &Hub,
    base: &str,
    socket: &mut WebSocket,
    bindings: &mut [Binding],
) -> bool {
    for b in bindings.iter_mut() {
        let notes = match hub
            .store
            .notifications_after(&b.tenant, &b.id, b.sent, 100)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(subscription = %b.id, error = %e, "cannot read notifications for a websocket");
                continue;
            }
        };
        let before = b.sent;
        let per_message = b.topic.max_count.map_or(1, |m| m.max(1) as usize);
        for group in notes.chunks(per_message) {
            let Some(last) = group.last() else {
                continue;
            };
            if socket
                .send(bundle(
                    base,
                    b,
                    "event-notification",
                    last.event_number,
                    group,
                ))
                .await
                .is_err()
            {
                return false;
            }
            b.sent = last.event_number;
            b.last_message = tokio::time::Instant::now();
        }
        // what a socket received counts as delivered ($status, and retention may purge it)
        if b.sent > before
            && let Err(e) = hub.store.record_delivered(&b.tenant, &b.id, b.sent).await
        {
            tracing::warn!(subscription = %b.id, error = %e, "cannot record websocket delivery");
        }
        if let Some(period) = b.heartbeat
            && b.last_message.elapsed() >= period
        {
            if socket
                .send(bundle(base, b, "heartbeat", b.sent, &[]))
                .await
                .is_err()
            {
                return false;
            }
            b.last_message = tokio::time::Instant::now();
        }
    }
    true
}
