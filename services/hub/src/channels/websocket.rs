//! The Backport IG's websocket channel: `$get-ws-binding-token` hands out a short-lived token
//! for a websocket subscription; a client connects to `/fhir/$subscription-ws`, sends
//! `bind-with-token: <token>` (one or more times: a socket can carry several
//! subscriptions), gets a handshake bundle per binding, then each new notification as an
//! event-notification bundle in event-number order, and heartbeat bundles when the
//! subscription asks for them. Missed notifications are read with `$events`.
//!
//! Each binding is a reader of the subscription's stream (`channels::stream`) feeding the
//! socket through one bounded outbox.
//!
//! A binding reads as its reader: a token bind as the credential that asked for the token
//! (`auth::holder`), a classic `bind <id>` as the upgrade's credential, each through its own
//! `channels::disclosure::Disclosure`. A bind that fails is answered for itself (an
//! OperationOutcome, or `error <reason>` in the classic protocol) and the socket and its other
//! bindings go on; a refusal by the reader's grant on a socket with nothing else bound closes
//! it with 1008 (Policy Violation) and the reason, as does a reader's credential ending
//! (revoked, expired, scopes reduced) while bound. A binding token binds only a websocket
//! subscription.
//!
//! Slow readers: every write must be taken within `streams.write_timeout_secs` (else the
//! socket is dropped, close code 4008 if it still fits), and a binding that was live and fell
//! more than `streams.max_lag_events` behind closes the socket with 4009.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use hub_fhir::subscription::{ChannelType, Status};
use hub_fhir::{IssueType, OperationOutcome};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::api::auth::{Caller, MaybeCaller};
use crate::auth::holder::Holder;
use crate::channels::disclosure::{Disclosure, Ended};
use crate::channels::render::{self, Kind};
use crate::channels::start::{self, Refused as Unplaced, Reset, Start};
use crate::channels::stream::{Item, SubscriptionStream};
use crate::listener::Abort;
use crate::model::Subscription;
use crate::state::Hub;

/// `GET /fhir/$subscription-ws` (upgrade). The caller established on the upgrade request is
/// the one classic `bind <id>` requests are checked against.
pub async fn connect(
    State(hub): State<Hub>,
    MaybeCaller(caller): MaybeCaller,
    abort: Option<axum::Extension<Abort>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Cross-site websocket hijacking: CORS does not apply to a websocket, and a browser sends
    // a page's upgrade with whatever it holds for the hub (a client certificate). A page of
    // an origin not in `cors.allowed_origins` gets an anonymous socket: it can bind only
    // with a binding token, which it cannot get without the CORS the token endpoint applies.
    let caller = match headers.get(axum::http::header::ORIGIN) {
        Some(origin) if !crate::api::cors::allows(&hub.config, origin) => None,
        _ => caller,
    };
    // a credentialed socket counts against its credential's open streams
    let slot = match &caller {
        Some(c) => match hub.auth.stream_slot(
            c,
            hub.config.auth.max_streams_per_credential,
            hub.metrics.stream_open(crate::metrics::Channel::Websocket),
        ) {
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
            serve(hub, caller, socket, abort.map(|a| a.0).unwrap_or_default()).await;
        })
}

/// The largest message a websocket client may send (bind lines are far shorter).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// Most messages waiting for one socket (the byte budget usually binds first).
const OUTBOX: usize = 1024;

/// A queued message, with its budget and the fence of the binding that queued it.
type Queued = (Message, OwnedSemaphorePermit, CancellationToken);

/// A socket's outbox: messages from all its bindings, bounded by bytes
/// (`streams.max_buffer_bytes`). A client that does not read makes its bindings wait (each
/// then falls behind on the notification log) instead of growing the hub's memory.
///
/// Each binding sends through a copy fenced by its reader's token: when a binding is
/// replaced (the same subscription bound again) its token is cancelled, its sends fail, and
/// what it had queued is dropped unsent — the old reader's batch never reaches the socket
/// beside the new reader's.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    max: u32,
    fence: CancellationToken,
}

impl Outbox {
    fn new(max_bytes: usize) -> (Outbox, mpsc::Receiver<Queued>) {
        let max = u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1);
        let (tx, rx) = mpsc::channel(OUTBOX);
        let budget = Arc::new(Semaphore::new(max as usize));
        let fence = CancellationToken::new();
        (
            Outbox {
                tx,
                budget,
                max,
                fence,
            },
            rx,
        )
    }

    /// This outbox for one binding, fenced by its reader's token.
    fn fenced(&self, fence: CancellationToken) -> Outbox {
        Outbox {
            fence,
            ..self.clone()
        }
    }

    /// Queue a message once its bytes fit; false when the socket is gone or this binding
    /// was replaced.
    async fn send(&self, m: Message) -> bool {
        let len = match &m {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        // a message larger than the whole budget waits for an empty outbox, then goes alone
        let n = u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.max);
        let permit = tokio::select! {
            _ = self.fence.cancelled() => return false,
            p = Arc::clone(&self.budget).acquire_many_owned(n) => p,
        };
        let Ok(permit) = permit else {
            return false;
        };
        if self.fence.is_cancelled() {
            return false;
        }
        self.tx.send((m, permit, self.fence.clone())).await.is_ok()
    }
}

/// The next message to write to the socket: what a replaced binding queued is dropped
/// (its budget given back). `None` when every sender is gone.
async fn next_out(rx: &mut mpsc::Receiver<Queued>) -> Option<(Message, OwnedSemaphorePermit)> {
    loop {
        let (m, permit, fence) = rx.recv().await?;
        if !fence.is_cancelled() {
            return Some((m, permit));
        }
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

/// The message that says the events after `after` were purged and the binding continues
/// with `resumes_at`.
fn history_gone(after: i64, resumes_at: i64) -> Message {
    outcome(format!(
        "events after {after} are no longer in the notification log; continuing from {resumes_at}"
    ))
}

/// The message that refuses one binding's start (beyond the head): an OperationOutcome
/// naming the subscription, the first event still available and the head.
fn refusal(refused: &Unplaced, id: &str) -> Message {
    let bounds = refused.bounds();
    let mut oo = OperationOutcome::error(IssueType::NotFound, refused.message(id)).to_json();
    // machine-readable beside the text: which binding, and where the log is
    oo["extension"] = serde_json::json!([
        {"url": "urn:fhir-hub:subscription", "valueString": id},
        {"url": "urn:fhir-hub:first-available", "valueInteger64": bounds.first.to_string()},
        {"url": "urn:fhir-hub:head", "valueInteger64": bounds.head.to_string()}
    ]);
    Message::Text(oo.to_string().into())
}

/// Why a bind was refused: a 403 (the reader may see nothing of the subscription) closes
/// the socket with 1008, anything else as the protocol always did.
struct Refused {
    why: String,
    forbidden: bool,
}

impl From<String> for Refused {
    fn from(why: String) -> Refused {
        Refused {
            why,
            forbidden: false,
        }
    }
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Refused {
        Refused {
            forbidden: e.status == axum::http::StatusCode::FORBIDDEN,
            why: e.outcome.summary(),
        }
    }
}

/// A bound subscription and the reader's right to it.
struct Bound {
    sub: Subscription,
    disclosure: Disclosure,
    /// The token's credential's place among its open streams (a token bind acts as the
    /// credential that asked for the token).
    slot: Option<crate::auth::StreamSlot>,
}

/// The subscription a token binds, if it may be bound, read as the credential the token was
/// issued to. A token binds one socket: binding uses it up.
async fn bind(hub: &Hub, socket_caller: Option<&Caller>, token: &str) -> Result<Bound, Refused> {
    let unknown = || Refused::from("unknown, used or expired binding token".to_owned());
    // looked at before it is used up: a token of an SSE subscription tried here by mistake
    // stays good for its stream
    let peeked = hub
        .store
        .ws_token(token)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(unknown)?;
    let (tenant, id) = (peeked.tenant, peeked.subscription_id);
    let sub = hub
        .subscriptions
        .get(&hub.store, &tenant, &id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("Subscription/{id} no longer exists"))?;
    if sub.topic().is_none() {
        return Err(format!("Subscription/{id} is not topic-based").into());
    }
    if sub.channel_type() != ChannelType::Websocket {
        return Err(format!(
            "Subscription/{id} uses channel type '{}'; its binding token does not bind a websocket",
            sub.channel_type().as_str()
        )
        .into());
    }
    let bound = hub
        .store
        .take_ws_token(token)
        .await
        .map_err(|e| e.to_string())?
        .filter(|b| b.tenant == tenant && b.subscription_id == id)
        .ok_or_else(unknown)?;
    let caller = Holder::caller(hub, &bound.tenant, bound.holder.as_deref()).await?;
    if sub.status == Status::Off {
        return Err(format!("Subscription/{id} is off").into());
    }
    let disclosure = Disclosure::for_reader(hub, &caller, &sub, "websocket", None).await?;
    // a socket opened with this very credential already holds its place
    let slot = match socket_caller {
        Some(c) if c.subject == caller.subject => None,
        _ => Some(hub.auth.stream_slot(
            &caller,
            hub.config.auth.max_streams_per_credential,
            hub.metrics.stream_open(crate::metrics::Channel::Websocket),
        )?),
    };
    Ok(Bound {
        sub,
        disclosure,
        slot,
    })
}

/// What a client asked to bind.
#[derive(Debug, PartialEq, Eq)]
enum Bind<'a> {
    /// `bind-with-token: <token> [<last event number seen> | earliest | latest | from=…]`
    /// (Backport IG, with the hub's start extension).
    Backport {
        token: &'a str,
        start: Option<Start>,
    },
    /// `bind <id>`: the classic R4 protocol for criteria subscriptions (`bound <id>`, then
    /// `ping <id>` per event), as HAPI clients speak it.
    Classic { id: &'a str },
}

fn parse_message(text: &str) -> Option<Bind<'_>> {
    if let Some((token, start)) = parse_bind(text) {
        return Some(Bind::Backport { token, start });
    }
    let id = text.trim().strip_prefix("bind ")?.trim();
    (!id.is_empty() && !id.contains(char::is_whitespace)).then_some(Bind::Classic { id })
}

/// The R4 criteria subscription a classic `bind <id>` names, in the caller's tenant.
async fn bind_classic(hub: &Hub, caller: Option<&Caller>, id: &str) -> Result<Bound, Refused> {
    let Some(caller) = caller else {
        return Err(
            "'bind <id>' needs a credential on the websocket upgrade (Authorization: Bearer …)"
                .to_owned()
                .into(),
        );
    };
    caller.require("Subscription", crate::auth::Perm::Read)?;
    let sub = hub
        .subscriptions
        .get(&hub.store, &caller.tenant, id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("Subscription/{id} is not known"))?;
    if sub.topic().is_some() || sub.channel_type() != ChannelType::Websocket {
        return Err(format!(
            "Subscription/{id} is not an R4 criteria websocket subscription (topic-based ones bind with a token)"
        )
        .into());
    }
    if sub.status == Status::Off {
        return Err(format!("Subscription/{id} is off").into());
    }
    let disclosure = Disclosure::for_reader(hub, caller, &sub, "websocket", None).await?;
    Ok(Bound {
        sub,
        disclosure,
        slot: None,
    })
}

/// The close frame of a refusal the reader's grant makes (1008 Policy Violation), its
/// reason within the 123 bytes a close frame carries.
fn policy_close(why: &str) -> Message {
    close(1008, why)
}

/// A close frame; the reason cut to what a frame holds (123 bytes), on a character boundary.
fn close(code: u16, why: &str) -> Message {
    let mut reason = why.to_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// The message that ends a socket whose reader's credential ended.
fn ended_close(e: &Ended) -> Message {
    match e {
        // the audit trail is down (audit.fail_closed): a server-side condition, 1011
        Ended::Unaudited(why) => close(1011, why),
        _ => policy_close(e.reason()),
    }
}

async fn serve(hub: Hub, caller: Option<Caller>, mut socket: WebSocket, abort: Abort) {
    let (tx, mut rx) = Outbox::new(hub.config.streams.max_buffer_bytes);
    // every write must be taken within this (the slow-reader policy)
    let timeout = Duration::from_secs(hub.config.streams.write_timeout_secs);
    // every binding's reader stops with the socket, and the socket with the hub
    let stop = hub.streams.child_token();
    let _stop_readers = stop.clone().drop_guard();
    // per bound subscription: its reader's stop token, and the fence of its outbox (cancelled
    // only when the binding is replaced: a reader whose credential ended still says why)
    let mut bound: HashMap<(String, String), (CancellationToken, CancellationToken)> =
        HashMap::new();
    // a socket that binds nothing only holds a descriptor: it gets a short window
    let window = Duration::from_secs(hub.config.server.unbound_websocket_secs);
    let unbound = tokio::time::sleep(window);
    tokio::pin!(unbound);
    let failed = loop {
        let sent = tokio::select! {
            _ = &mut unbound, if bound.is_empty() => {
                crate::metrics::ConnectionClosed::UnboundWebsocket.emit(&hub.metrics);
                // 1008 Policy Violation
                let why = format!("no subscription bound within {} s", window.as_secs());
                let _ = write(&mut socket, policy_close(&why), window.min(timeout)).await;
                return;
            }
            _ = stop.cancelled() => {
                // 1001 Going Away: reconnect (anywhere) and bind again from the last number
                let _ = write(&mut socket, close(1001, "the hub is stopping"), timeout).await;
                return;
            }
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let Some(request) = parse_message(&text) else {
                    let m = outcome("expected 'bind-with-token: <token>', 'bind-with-token: <token> <last event number seen | earliest | latest | from=<number or RFC 3339 instant>>' or 'bind <id>'");
                    if let Err(e) = write(&mut socket, m, timeout).await {
                        break e;
                    }
                    continue;
                };
                let (found, start) = match &request {
                    Bind::Backport { token, start } => {
                        (bind(&hub, caller.as_ref(), token).await, start.clone())
                    }
                    Bind::Classic { id } => (bind_classic(&hub, caller.as_ref(), id).await, None),
                };
                let Bound { sub, disclosure, slot } = match found {
                    Ok(b) => b,
                    Err(Refused { why, forbidden }) => {
                        // this binding fails; the socket and its other bindings go on
                        let refusal = match request {
                            Bind::Classic { .. } => Message::Text(format!("error {why}").into()),
                            Bind::Backport { .. } => outcome(why.clone()),
                        };
                        if let Err(e) = write(&mut socket, refusal, timeout).await {
                            break e;
                        }
                        // a reader its grant refuses, on a socket with nothing else bound,
                        // has nothing to wait for
                        if forbidden && bound.is_empty() {
                            let _ = write(&mut socket, policy_close(&why), timeout).await;
                            return;
                        }
                        continue;
                    }
                };
                tracing::info!(subscription = %sub.id(), tenant = %sub.tenant(), "websocket bound");
                // binding the same subscription again replaces its reader; the reader stops
                // as well when its credential ends
                let reader = disclosure.watch(&hub, &stop);
                let fence = CancellationToken::new();
                let key = (sub.tenant().to_owned(), sub.id().to_owned());
                if let Some((old_reader, old_fence)) = bound.insert(key, (reader.clone(), fence.clone())) {
                    old_fence.cancel();
                    old_reader.cancel();
                }
                let binding = Binding { sub, start, disclosure, _slot: slot };
                if matches!(request, Bind::Classic { .. }) {
                    let m = Message::Text(format!("bound {}", binding.sub.id()).into());
                    if let Err(e) = write(&mut socket, m, timeout).await {
                        break e;
                    }
                    tokio::spawn(read_classic(hub.clone(), binding, tx.fenced(fence), reader));
                } else {
                    tokio::spawn(read_binding(hub.clone(), binding, tx.fenced(fence), reader));
                }
                Ok(())
            }
            out = next_out(&mut rx) => {
                // the permit goes back to the budget once the message is written
                let Some((out, _permit)) = out else { return };
                // a reader whose credential ended closes the socket, saying why
                let closing = matches!(out, Message::Close(_));
                match write(&mut socket, out, timeout).await {
                    Ok(()) if !closing => Ok(()),
                    Ok(()) => return,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = sent {
            break e;
        }
    };
    if let WriteFailed::NotTaken = failed {
        crate::metrics::ConnectionClosed::SlowReader.emit(&hub.metrics);
        // a reset, not a FIN: what the client never took leaves the kernel with it
        abort.on_close();
        // the frame rarely fits a socket that stopped reading: a moment for it, then the
        // socket is dropped
        let why = format!("not read for {} s (slow reader)", timeout.as_secs());
        let _ = write(
            &mut socket,
            close(SLOW_READER, &why),
            Duration::from_secs(1),
        )
        .await;
    }
}

/// Close code of a socket whose client stopped reading (`streams.write_timeout_secs`).
const SLOW_READER: u16 = 4008;
/// Close code of a socket one of whose bindings fell more than `streams.max_lag_events`
/// behind.
const LAGGING: u16 = 4009;

/// The close frame of a socket one of whose bindings fell too far behind.
fn lagging_close(hub: &Hub, sub: &Subscription, behind: i64) -> Message {
    crate::metrics::ConnectionClosed::Lagging.emit(&hub.metrics);
    close(
        LAGGING,
        &format!(
            "Subscription/{} {behind} events behind (most {}): slow reader; resume from your last event",
            sub.id(),
            hub.config.streams.max_lag_events
        ),
    )
}

/// Close code of a socket one of whose subscriptions was deleted (or re-created: a new log).
const DELETED: u16 = 4004;

/// The close frame of a socket one of whose subscriptions was deleted or re-created.
fn deleted_close(sub: &Subscription) -> Message {
    close(
        DELETED,
        &format!(
            "Subscription/{} was deleted or created again (a new log, from event 1)",
            sub.id()
        ),
    )
}

/// Why a write ended the socket.
#[derive(Debug)]
enum WriteFailed {
    /// The client is gone.
    Gone,
    /// The client did not take it within the write timeout.
    NotTaken,
}

/// Write one message, taken by the client within `timeout`.
async fn write(socket: &mut WebSocket, m: Message, timeout: Duration) -> Result<(), WriteFailed> {
    match tokio::time::timeout(timeout, socket.send(m)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteFailed::Gone),
        Err(_) => Err(WriteFailed::NotTaken),
    }
}

/// A classic R4 binding: `ping <id>` for each new event of the subscription, from the count
/// at bind time.
async fn read_classic(hub: Hub, binding: Binding, tx: Outbox, stop: CancellationToken) {
    let Binding {
        sub, disclosure, ..
    } = &binding;
    let mut stream = SubscriptionStream::open(&hub, sub, sub.events_since_start);
    loop {
        match stream.next(OUTBOX, None, &stop).await {
            None => {
                if let Some(e) = disclosure.ended() {
                    tx.send(ended_close(&e)).await;
                }
                return;
            }
            Some(Ok(Item::Notifications(notes))) => {
                let disclosed = match disclosure.hand_over(&hub, notes).await {
                    Ok(d) => d,
                    Err(e) => {
                        tx.send(ended_close(&e)).await;
                        return;
                    }
                };
                // no ping for an event the reader may not see
                for _ in disclosed.all().iter().filter(|(_, shown)| *shown) {
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
            Some(Ok(Item::Lagging { behind })) => {
                tx.send(lagging_close(&hub, sub, behind)).await;
                return;
            }
            Some(Ok(Item::Deleted)) => {
                tx.send(deleted_close(sub)).await;
                return;
            }
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

/// `bind-with-token: <token>` (the Backport IG), or with the hub's start extension
/// `bind-with-token: <token> <start>`: the last event number seen (resume after it),
/// `earliest`, `latest`, or `from=` with SSE's `from` grammar (`channels::start`).
fn parse_bind(text: &str) -> Option<(&str, Option<Start>)> {
    let rest = text.trim().strip_prefix("bind-with-token:")?.trim();
    let mut parts = rest.split_whitespace();
    let token = parts.next()?;
    let start = match parts.next() {
        None => None,
        Some("earliest") => Some(Start::Earliest),
        Some("latest") => Some(Start::Latest),
        Some(arg) => Some(match arg.strip_prefix("from=") {
            Some(from) => Start::parse_from(from).ok()?,
            None => Start::After(arg.parse::<i64>().ok().filter(|n| *n >= 0)?),
        }),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((token, start))
}

/// What one binding reads.
struct Binding {
    sub: Subscription,
    /// Where it starts (`None`: live, from the count at bind time).
    start: Option<Start>,
    /// The reader's right to the subscription (its grant, its audit name).
    disclosure: Disclosure,
    /// Held while the binding reads.
    _slot: Option<crate::auth::StreamSlot>,
}

/// One binding: a handshake, then the subscription's stream, grouped by max-count, with
/// heartbeats on the subscription's period: from its start (after the last number seen when
/// the client resumes: every later notification once, in order, before live ones), else from
/// the count at bind time (live; missed ones are read with `$events`). Purged history is
/// said with an OperationOutcome message and the stream continues from the first event
/// still in the log; a start beyond the head is refused with an OperationOutcome message
/// and this binding ends (the socket and its other bindings go on). This reader keeps no
/// cursor in the store: what a socket was sent says nothing about what the client
/// processed.
async fn read_binding(hub: Hub, binding: Binding, tx: Outbox, stop: CancellationToken) {
    let Binding {
        sub,
        start,
        disclosure,
        ..
    } = &binding;
    let start = start.clone().unwrap_or(Start::Latest);
    let start = match start::resolve(&hub, sub, &start, Reset::Earliest).await {
        Ok(Ok(start)) => start,
        Ok(Err(refused)) => {
            tx.send(refusal(&refused, sub.id())).await;
            return;
        }
        Err(e) => {
            tracing::warn!(subscription = %sub.id(), error = %e, "cannot place a websocket binding");
            tx.send(outcome(format!(
                "Subscription/{}: the notification log is unavailable; bind again",
                sub.id()
            )))
            .await;
            return;
        }
    };
    let base = hub.base_url.clone();
    let text = |m: render::Message<'_>| Message::Text(m.bundle_text().into());
    let plain = |kind: Kind, since: i64| render::Message::new(sub, &base, sub.status, kind, since);
    if !tx
        .send(text(plain(Kind::Handshake, sub.events_since_start)))
        .await
    {
        return;
    }
    if let Some((asked, after)) = start.reset
        && !tx.send(history_gone(asked, after + 1)).await
    {
        return;
    }
    let heartbeat = sub
        .spec
        .channel
        .heartbeat_secs
        .map(|s| Duration::from_secs(u64::from(s)));
    let group = crate::channels::group_size(sub);
    let mut stream = SubscriptionStream::open(&hub, sub, start.after);
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let quiet_until = heartbeat.map(|p| last_sent + p);
        let msgs = match stream.next(OUTBOX * group, quiet_until, &stop).await {
            None => {
                if let Some(e) = disclosure.ended() {
                    tx.send(ended_close(&e)).await;
                }
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(subscription = %sub.id(), error = %e, "cannot read notifications for a websocket");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Some(Ok(Item::Quiet)) => vec![text(plain(Kind::Heartbeat, stream.position()))],
            Some(Ok(Item::Lagging { behind })) => {
                tx.send(lagging_close(&hub, sub, behind)).await;
                return;
            }
            Some(Ok(Item::Deleted)) => {
                tx.send(deleted_close(sub)).await;
                return;
            }
            Some(Ok(Item::HistoryGone { after, resumes_at })) => {
                vec![history_gone(after, resumes_at)]
            }
            Some(Ok(Item::Notifications(notes))) => match disclosure.hand_over(&hub, notes).await {
                Ok(disclosed) => disclosed
                    .chunks(group)
                    .filter_map(|g| {
                        let m = plain(Kind::EventNotification, g.last()?.event_number);
                        Some(text(m.with(g)))
                    })
                    .collect(),
                Err(e) => vec![ended_close(&e)],
            },
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
    use super::{Bind, Message, Outbox, Start, next_out, parse_bind, parse_message};
    use tokio_util::sync::CancellationToken;

    /// Binding a subscription again replaces its reader: what the old reader still had
    /// queued for the socket, and anything it tries to send after, never reaches the socket
    /// beside the new reader's messages.
    #[tokio::test]
    async fn a_replaced_binding_sends_nothing_more() {
        let (tx, mut rx) = Outbox::new(1 << 20);
        let old = CancellationToken::new();
        let old_out = tx.fenced(old.clone());
        for i in 0..3 {
            assert!(old_out.send(Message::Text(format!("old {i}").into())).await);
        }
        // the same subscription bound again: the old reader is fenced off
        old.cancel();
        assert!(!old_out.send(Message::Text("old 3".into())).await);
        let new_out = tx.fenced(CancellationToken::new());
        assert!(new_out.send(Message::Text("new 0".into())).await);
        drop((tx, old_out, new_out));
        let mut written = Vec::new();
        while let Some((m, _permit)) = next_out(&mut rx).await {
            written.push(m);
        }
        assert_eq!(written, [Message::Text("new 0".into())]);
    }

    #[test]
    fn bind_lines() {
        assert_eq!(parse_bind("bind-with-token: abc"), Some(("abc", None)));
        assert_eq!(
            parse_bind(" bind-with-token:abc 41 "),
            Some(("abc", Some(Start::After(41))))
        );
        assert_eq!(
            parse_bind("bind-with-token: abc earliest"),
            Some(("abc", Some(Start::Earliest)))
        );
        assert_eq!(
            parse_bind("bind-with-token: abc from=7"),
            Some(("abc", Some(Start::From(7))))
        );
        assert_eq!(
            parse_bind("bind-with-token: abc from=2026-01-01T00:00:00Z"),
            Some(("abc", Some(Start::LoggedAt("2026-01-01T00:00:00".into()))))
        );
        assert_eq!(parse_bind("bind-with-token: abc from=0"), None);
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
                start: Some(Start::After(3))
            })
        );
    }
}
