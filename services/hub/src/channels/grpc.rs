//! The gRPC channel: `fhirhub.v1.NotificationStream` (`proto/fhirhub/v1/stream.proto`), a
//! fourth adapter over the subscription stream, with server reflection and the standard
//! health service on its own listener (`grpc.listen`).
//!
//! - `Subscribe(subscription, start | from_event_number, auto_reset)`: the subscription's
//!   notifications from a start position (`channels::start`: earliest retained, latest, an
//!   event number, a time; `from_event_number` 0 is latest, 1 earliest), one message per
//!   event with its bundle.
//! - `Consume(consumer, subscriptions, auto_reset)`: a named consumer resumes each
//!   subscription after the offset it committed (`Commit`, kept in the store), like a Kafka
//!   consumer group of one member; where it never committed or retention purged its
//!   position, `auto_reset` decides (earliest by default), and a reset is reported in the
//!   initial metadata (`fhir-hub-reset`). A second connection with the same name is refused
//!   (`ABORTED`) while the first is open. The subscriptions take turns message by message;
//!   one named twice is read once. Each Consume starts a new generation of the consumer (in
//!   every message and the `x-consumer-generation` header); a `Commit` must carry the
//!   current one, so a connection that lost its consumer cannot move it
//!   (`FAILED_PRECONDITION` without one, `ABORTED` for an older one).
//! - Heartbeats: a message with `heartbeat` set on the subscription's `heartbeatPeriod`
//!   when no event went out; HTTP/2 PINGs keep the connection itself checked.
//! - Slow readers: a stream more than `streams.max_lag_events` behind ends with
//!   `RESOURCE_EXHAUSTED`; a connection that takes nothing for `streams.write_timeout_secs`
//!   is dropped (`crate::listener`).
//! - Errors are gRPC statuses: `NOT_FOUND`, `FAILED_PRECONDITION` (not a gRPC subscription),
//!   `OUT_OF_RANGE` (a start beyond the head, or purged numbers the policy does not reset,
//!   with a `google.rpc.ErrorInfo` naming the first available event and the head:
//!   `channels::grpc_start`), `UNAVAILABLE` (the hub is stopping,
//!   or the store is), `INVALID_ARGUMENT`, `PERMISSION_DENIED` (the caller may read none of
//!   the subscription's resource types, at the call or once its scopes were reduced),
//!   `UNAUTHENTICATED` (its credential was revoked or expired while the stream was open).
//! - A notification shows what the caller's own grant may see (`channels::disclosure`): an
//!   event it may not see keeps its number with empty `focus_type`, `focus_id`, `action` and
//!   a bundle without its focus.
//!
//! Streams are pulled: the next notifications are read from the log when the client has
//! taken the previous ones (HTTP/2 flow control), one batch ahead of what is being sent, so a
//! slow consumer lags on the log rather than in the hub's memory.

use std::collections::VecDeque;
use std::pin::Pin;

use futures::Stream;
use hub_fhir::subscription::ChannelType;
use hub_store::Notification;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::{self, Caller};
use crate::channels::disclosure::{Disclosure, Ended, Shown};
use crate::channels::grpc_start::{self, auto_reset, history_gone, report_resets, subscribe_start};
use crate::channels::render::{Kind, Message};
use crate::channels::start::{self, Reset, Resolved, Start};
use crate::channels::stream::{Item, SubscriptionStream};
use crate::model::Subscription;
use crate::state::Hub;

/// The generated protocol.
pub mod pb {
    #![allow(unreachable_pub, clippy::all)]
    tonic::include_proto!("fhirhub.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("fhirhub_descriptor");
}

use pb::notification_stream_server::{NotificationStream, NotificationStreamServer};

type Notifications = Pin<Box<dyn Stream<Item = Result<pb::Notification, Status>> + Send>>;

/// Most notifications read from the log at a time for one stream.
const BATCH: usize = 1000;
/// Most subscriptions one consumer reads at once.
const MAX_CONSUMER_SUBSCRIPTIONS: usize = 100;

/// The service.
pub struct Service {
    hub: Hub,
}

/// The caller of a gRPC request, allowed to read subscriptions.
async fn caller<T>(hub: &Hub, req: &Request<T>) -> Result<Caller, Status> {
    let headers = req.metadata().clone().into_headers();
    // the listener puts a verified client certificate and the peer's address into each
    // request
    let peer = req
        .extensions()
        .get::<crate::tls::PeerCertificate>()
        .cloned();
    let addr = req.extensions().get::<crate::auth::PeerAddr>().map(|a| a.0);
    let caller = auth::establish(hub, &headers, peer.as_ref(), addr)
        .await
        .map_err(to_status)?;
    caller
        .require("Subscription", auth::Perm::Read)
        .map_err(to_status)?;
    Ok(caller)
}

/// An API refusal as a gRPC status.
fn to_status(e: crate::api::ApiError) -> Status {
    let msg = e.outcome.summary();
    match e.status.as_u16() {
        401 => Status::unauthenticated(msg),
        403 => Status::permission_denied(msg),
        404 => Status::not_found(msg),
        429 => Status::resource_exhausted(msg),
        _ => Status::unavailable(msg),
    }
}

fn store_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("store unavailable: {e}"))
}

impl Service {
    /// A place for one more stream of the caller.
    fn slot(&self, caller: &Caller) -> Result<auth::StreamSlot, Status> {
        self.hub
            .auth
            .stream_slot(
                caller,
                self.hub.config.auth.max_streams_per_credential,
                self.hub.metrics.stream_open(crate::metrics::Channel::Grpc),
            )
            .map_err(to_status)
    }

    /// A gRPC subscription of the caller's tenant.
    async fn subscription(&self, caller: &Caller, id: &str) -> Result<Subscription, Status> {
        if !hub_fhir::event::is_fhir_id(id) {
            return Err(Status::invalid_argument(format!(
                "'{id}' is not a subscription id"
            )));
        }
        let sub = self
            .hub
            .subscriptions
            .get(&self.hub.store, &caller.tenant, id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("Subscription/{id} is not known")))?;
        if sub.channel_type() != ChannelType::Grpc {
            return Err(Status::failed_precondition(format!(
                "Subscription/{id} uses channel type '{}'; NotificationStream serves grpc subscriptions",
                sub.channel_type().as_str()
            )));
        }
        Ok(sub)
    }

    /// Where a reader of `sub` starts, or the status refusing it.
    async fn place(
        &self,
        sub: &Subscription,
        start: &Start,
        on_purged: Reset,
    ) -> Result<Resolved, Status> {
        start::resolve(&self.hub, sub, start, on_purged)
            .await
            .map_err(store_status)?
            .map_err(|refused| grpc_start::out_of_range(sub.id(), &refused))
    }

    /// Where a named consumer starts on `sub`: after its committed position, else where its
    /// auto-reset policy says.
    async fn consumer_start(
        &self,
        tenant: &str,
        consumer: &str,
        sub: &Subscription,
        policy: Reset,
    ) -> Result<Resolved, Status> {
        let committed = self
            .hub
            .store
            .committed(tenant, consumer, sub.log_key)
            .await
            .map_err(store_status)?;
        let start = match (committed, policy) {
            (Some(c), _) => Start::After(c),
            (None, Reset::Earliest) => Start::Earliest,
            (None, Reset::Latest) => Start::Latest,
            (None, Reset::Fail) => {
                return Err(grpc_start::with_error_info(
                    tonic::Code::FailedPrecondition,
                    format!(
                        "consumer '{}' has no committed position on Subscription/{} and its auto_reset is FAIL",
                        name_of(consumer),
                        sub.id()
                    ),
                    "NO_COMMITTED_POSITION",
                    &[("subscription_id", sub.id().to_owned())],
                ));
            }
        };
        self.place(sub, &start, policy).await
    }
}

/// One subscription's notifications after `after`, as protocol messages.
///
/// A task of its own reads, audits and renders the next batch while the connection sends the
/// one before: the store, the rendering and the HTTP/2 framing overlap instead of taking
/// turns. It reads a batch only when the previous one has been taken, so at most two batches
/// are in memory, each within half of `streams.max_buffer_bytes`; a slow consumer lags on the
/// log rather than in the hub's memory.
fn notifications(
    hub: Hub,
    sub: Subscription,
    after: i64,
    stop: CancellationToken,
    disclosure: Disclosure,
    generation: i64,
) -> Batches {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stop = disclosure.watch(&hub, &stop);
    let reader = Reader {
        hub,
        sub,
        disclosure,
        generation,
    };
    tokio::spawn(produce(reader, after, stop, tx));
    rx
}

/// One subscription's batches as its producer reads them; the first may be empty (the first
/// read found nothing).
type Batches = tokio::sync::mpsc::Receiver<Batch>;

/// The messages of one or more subscriptions' batches, taking turns message by message.
/// Nothing goes out before every subscription has answered its first read: a backlog read
/// first would otherwise go out whole before the others' (the client takes a window's worth
/// while the next subscription is still being read).
fn round_robin(sources: Vec<Batches>) -> Notifications {
    let mut sources: Vec<Source> = sources
        .into_iter()
        .map(|rx| Source {
            rx,
            pending: VecDeque::new(),
            primed: false,
            done: false,
        })
        .collect();
    let mut next = 0usize;
    Box::pin(futures::stream::poll_fn(move |cx| {
        use std::task::Poll;
        // take in what has been read, without waiting
        for s in &mut sources {
            while s.pending.is_empty() && !s.done {
                match s.rx.poll_recv(cx) {
                    Poll::Ready(Some(Ok(batch))) => {
                        s.primed = true;
                        s.pending.extend(batch);
                    }
                    Poll::Ready(Some(Err(status))) => {
                        s.done = true;
                        return Poll::Ready(Some(Err(status)));
                    }
                    // the producer ended without a word: only when the runtime is stopping
                    Poll::Ready(None) => s.done = true,
                    Poll::Pending => break,
                }
            }
        }
        if sources.iter().any(|s| !s.primed && !s.done) {
            return Poll::Pending;
        }
        let n = sources.len();
        for i in (0..n).map(|k| (next + k) % n) {
            if let Some(item) = sources[i].pending.pop_front() {
                next = (i + 1) % n;
                return Poll::Ready(Some(Ok(item)));
            }
        }
        if sources.iter().all(|s| s.done) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }))
}

/// One subscription in a [`round_robin`].
struct Source {
    rx: Batches,
    pending: VecDeque<pb::Notification>,
    /// Its first batch arrived (perhaps empty).
    primed: bool,
    done: bool,
}

type Batch = Result<Vec<pb::Notification>, Status>;

/// What one subscription's producer reads with.
struct Reader {
    hub: Hub,
    sub: Subscription,
    /// The reader's right to the subscription (its grant, its audit name).
    disclosure: Disclosure,
    /// The consumer's generation on a Consume stream (0 on Subscribe).
    generation: i64,
}

/// Read, audit and render batches into `tx` until the stream ends (with a status) or the
/// connection is gone; a heartbeat on the subscription's period when nothing else went.
async fn produce(
    reader: Reader,
    after: i64,
    stop: CancellationToken,
    tx: tokio::sync::mpsc::Sender<Batch>,
) {
    let Reader {
        hub,
        sub,
        disclosure,
        ..
    } = &reader;
    let budget = hub.config.streams.max_buffer_bytes / 2;
    let mut stream = SubscriptionStream::open(hub, sub, after).with_budget(budget);
    let heartbeat = sub
        .spec
        .channel
        .heartbeat_secs
        .map(|s| std::time::Duration::from_secs(u64::from(s)));
    let mut last_sent = tokio::time::Instant::now();
    // the first read answers at once, even with nothing: a consumer over several
    // subscriptions starts them together (`round_robin`)
    let mut first = true;
    loop {
        // the next batch is read once there is room for it
        let Ok(permit) = tx.reserve().await else {
            return;
        };
        let quiet_until = if first {
            Some(tokio::time::Instant::now())
        } else {
            heartbeat.map(|p| last_sent + p)
        };
        let was_first = std::mem::take(&mut first);
        let item = tokio::select! {
            _ = tx.closed() => return,
            item = stream.next(BATCH, quiet_until, &stop) => item,
        };
        let failed = match item {
            None => match disclosure.ended() {
                Some(e) => ended_status(&e),
                None => {
                    Status::unavailable("the hub is stopping; resume from the last event number")
                }
            },
            Some(Err(e)) => store_status(e),
            Some(Ok(Item::Quiet)) if was_first => {
                permit.send(Ok(Vec::new()));
                continue;
            }
            Some(Ok(Item::Quiet)) => {
                permit.send(Ok(vec![heartbeat_message(&reader, stream.position())]));
                last_sent = tokio::time::Instant::now();
                continue;
            }
            Some(Ok(Item::HistoryGone { after, resumes_at })) => {
                history_gone(sub.id(), after, resumes_at)
            }
            Some(Ok(Item::Deleted)) => Status::not_found(format!(
                "Subscription/{} was deleted, or deleted and created again (a new log whose events start at 1): this stream ends",
                sub.id()
            )),
            Some(Ok(Item::Lagging { behind })) => {
                crate::metrics::ConnectionClosed::Lagging.emit(&hub.metrics);
                Status::resource_exhausted(format!(
                    "Subscription/{}: this stream fell {behind} events behind (at most {} allowed); resume from the last event number received",
                    sub.id(),
                    hub.config.streams.max_lag_events
                ))
            }
            Some(Ok(Item::Notifications(notes))) => {
                // nothing is handed over before its disclosure is recorded
                match disclosure.hand_over(hub, notes).await {
                    Ok(disclosed) => {
                        permit.send(Ok(disclosed
                            .chunks(1)
                            .filter_map(|one| to_message(&reader, one))
                            .collect()));
                        last_sent = tokio::time::Instant::now();
                        continue;
                    }
                    Err(e) => ended_status(&e),
                }
            }
        };
        permit.send(Err(failed));
        return;
    }
}

/// A heartbeat: no event, the last event number the stream knows of, the heartbeat bundle.
fn heartbeat_message(reader: &Reader, position: i64) -> pb::Notification {
    let sub = &reader.sub;
    let bundle = Message::new(
        sub,
        &reader.hub.base_url,
        sub.status,
        Kind::Heartbeat,
        position,
    )
    .bundle_text();
    pb::Notification {
        subscription_id: sub.id().to_owned(),
        event_number: position,
        bundle_json: bundle.into_bytes(),
        heartbeat: true,
        generation: reader.generation,
        ..Default::default()
    }
}

/// The status that ends a stream whose caller's credential ended.
fn ended_status(e: &Ended) -> Status {
    match e {
        Ended::Revoked(why) => Status::unauthenticated(why.clone()),
        Ended::Forbidden(why) => Status::permission_denied(why.clone()),
        Ended::Unaudited(why) => Status::unavailable(why.clone()),
    }
}

/// One disclosed event as a protocol message (its focus fields empty when withheld).
fn to_message(reader: &Reader, one: Shown<'_>) -> Option<pb::Notification> {
    let sub = &reader.sub;
    let (n, shown): (&Notification, bool) = one.iter().next()?;
    let bundle = Message::new(
        sub,
        &reader.hub.base_url,
        sub.status,
        Kind::EventNotification,
        n.event_number,
    )
    .with(one)
    .bundle_text();
    let focus = |s: &String| if shown { s.clone() } else { String::new() };
    Some(pb::Notification {
        subscription_id: sub.id().to_owned(),
        event_number: n.event_number,
        notification_id: n.notification_id.clone(),
        focus_type: focus(&n.focus_type),
        focus_id: focus(&n.focus_id),
        action: focus(&n.action),
        occurred_at: n.occurred_at.clone(),
        bundle_json: bundle.into_bytes(),
        heartbeat: false,
        generation: reader.generation,
    })
}

/// How long a consumer claim lives without renewal (a process that died frees its
/// consumers after this); renewed every third of it.
const CLAIM_TTL_MS: i64 = 15_000;

/// A named consumer claimed in the store for one connection (exclusive across every api
/// process); renewed while the stream lives, released when it is dropped.
struct Claim {
    store: hub_store::Store,
    tenant: String,
    consumer: String,
    owner: String,
    renewal: CancellationToken,
}

impl Claim {
    /// Claim `consumer` or say who has it; the stream ends (`stop`) if the claim is lost.
    async fn take(
        hub: &Hub,
        tenant: &str,
        consumer: &str,
        stop: CancellationToken,
    ) -> Result<Claim, Status> {
        let owner = uuid::Uuid::new_v4().to_string();
        let store = hub.store.clone();
        let got = store
            .claim_consumer(tenant, consumer, &owner, CLAIM_TTL_MS)
            .await
            .map_err(store_status)?;
        if !got {
            return Err(Status::aborted(format!(
                "consumer '{}' is already being read by another connection",
                name_of(consumer)
            )));
        }
        let renewal = CancellationToken::new();
        let (r, s, t, c, o) = (
            renewal.clone(),
            store.clone(),
            tenant.to_owned(),
            consumer.to_owned(),
            owner.clone(),
        );
        tokio::spawn(async move {
            let every = std::time::Duration::from_millis((CLAIM_TTL_MS / 3) as u64);
            loop {
                tokio::select! {
                    _ = r.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match s.claim_consumer(&t, &c, &o, CLAIM_TTL_MS).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(consumer = ?c, tenant = %t, "lost a consumer claim; ending its stream");
                        stop.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew a consumer claim"),
                }
            }
        });
        Ok(Claim {
            store,
            tenant: tenant.to_owned(),
            consumer: consumer.to_owned(),
            owner,
            renewal,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.renewal.cancel();
        let (s, t, c, o) = (
            self.store.clone(),
            std::mem::take(&mut self.tenant),
            std::mem::take(&mut self.consumer),
            std::mem::take(&mut self.owner),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = s.release_consumer(&t, &c, &o).await {
                    tracing::warn!(error = %e, "cannot release a consumer claim; it expires on its own");
                }
            });
        }
    }
}

#[tonic::async_trait]
impl NotificationStream for Service {
    type SubscribeStream = Notifications;
    type ConsumeStream = Notifications;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Notifications>, Status> {
        let caller = caller(&self.hub, &req).await?;
        let r = req.into_inner();
        let sub = self.subscription(&caller, &r.subscription_id).await?;
        let asked = subscribe_start(&r)?;
        let on_purged = auto_reset(r.auto_reset, Reset::Fail)?;
        let start = self.place(&sub, &asked, on_purged).await?;
        let after = start.after;
        let resets: Vec<(String, i64, i64)> = start
            .reset
            .map(|(asked, after)| (sub.id().to_owned(), asked, after))
            .into_iter()
            .collect();
        let disclosure = Disclosure::for_reader(&self.hub, &caller, &sub, "grpc", None)
            .await
            .map_err(to_status)?;
        let slot = self.slot(&caller)?;
        tracing::info!(subscription = %sub.id(), tenant = %sub.tenant(), after, "gRPC stream opened");
        let stop = self.hub.streams.child_token();
        let stream = round_robin(vec![notifications(
            self.hub.clone(),
            sub,
            after,
            stop,
            disclosure,
            0,
        )]);
        // the stream holds the caller's place until it is dropped
        let mut response = Response::new(Box::pin(futures::StreamExt::map(stream, move |item| {
            let _hold = &slot;
            item
        })) as Notifications);
        report_resets(&mut response, &resets);
        Ok(response)
    }

    async fn consume(
        &self,
        req: Request<pb::ConsumeRequest>,
    ) -> Result<Response<Notifications>, Status> {
        let caller = caller(&self.hub, &req).await?;
        let r = req.into_inner();
        check_consumer_name(&r.consumer)?;
        // a subscription named twice is read once
        let mut ids: Vec<&String> = Vec::with_capacity(r.subscription_ids.len());
        for id in &r.subscription_ids {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if ids.is_empty() || ids.len() > MAX_CONSUMER_SUBSCRIPTIONS {
            return Err(Status::invalid_argument(format!(
                "a consumer reads 1 to {MAX_CONSUMER_SUBSCRIPTIONS} subscriptions"
            )));
        }
        let policy = auto_reset(r.auto_reset, Reset::Earliest)?;
        let name = owned(&caller, &r.consumer);
        let mut subs = Vec::with_capacity(ids.len());
        for id in ids {
            let sub = self.subscription(&caller, id).await?;
            let disclosure = Disclosure::for_reader(&self.hub, &caller, &sub, "grpc", None)
                .await
                .map_err(to_status)?;
            subs.push((sub, disclosure));
        }
        let slot = self.slot(&caller)?;
        let stop = self.hub.streams.child_token();
        let claim = Claim::take(&self.hub, &caller.tenant, &name, stop.clone()).await?;
        // from here on, commits of any earlier Consume of this name are refused; the
        // positions are read after that, so none moves under this stream unseen
        let generation = self
            .hub
            .store
            .next_consumer_generation(&caller.tenant, &name)
            .await
            .map_err(store_status)?;
        let mut streams = Vec::with_capacity(subs.len());
        let mut resets = Vec::new();
        for (sub, disclosure) in subs {
            let start = self
                .consumer_start(&caller.tenant, &name, &sub, policy)
                .await?;
            if let Some((asked, after)) = start.reset {
                resets.push((sub.id().to_owned(), asked, after));
            }
            streams.push(notifications(
                self.hub.clone(),
                sub,
                start.after,
                stop.clone(),
                disclosure,
                generation,
            ));
        }
        tracing::info!(consumer = ?r.consumer, tenant = %caller.tenant, subscriptions = streams.len(), generation, "gRPC consumer opened");
        // the claim lives as long as the merged stream
        let merged = round_robin(streams);
        let guarded = futures::StreamExt::map(merged, move |item| {
            let _hold = (&claim, &slot);
            item
        });
        let mut response = Response::new(Box::pin(guarded) as Notifications);
        report_resets(&mut response, &resets);
        // also before any message: a client may commit what it read in an earlier session
        if let Ok(v) = generation.to_string().parse() {
            response.metadata_mut().insert(GENERATION_HEADER, v);
        }
        Ok(response)
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let caller = caller(&self.hub, &req).await?;
        let r = req.into_inner();
        check_consumer_name(&r.consumer)?;
        let sub = self.subscription(&caller, &r.subscription_id).await?;
        if r.event_number < 0 || r.event_number > sub.events_since_start {
            return Err(Status::invalid_argument(format!(
                "event_number {} is not between 0 and {} (the subscription's count)",
                r.event_number, sub.events_since_start
            )));
        }
        if r.generation <= 0 {
            return Err(Status::failed_precondition(
                "a commit carries the generation of the Consume stream that read the events (Notification.generation)",
            ));
        }
        let committed = self
            .hub
            .store
            .commit_offset(
                &caller.tenant,
                &owned(&caller, &r.consumer),
                sub.log_key,
                r.event_number,
                r.generation,
            )
            .await
            .map_err(|e| match e {
                // deleted (perhaps re-created) since it was read: nothing moved
                hub_store::StoreError::NotFound => Status::not_found(format!(
                    "Subscription/{} was deleted meanwhile; nothing was committed",
                    sub.id()
                )),
                e => store_status(e),
            })?;
        match committed {
            hub_store::Commit::Committed(committed) => {
                Ok(Response::new(pb::CommitResponse { committed }))
            }
            hub_store::Commit::Fenced { current: 0 } => Err(Status::failed_precondition(format!(
                "consumer '{}' has not been read by a Consume of this credential: commit what a Consume stream read, with its generation",
                r.consumer
            ))),
            hub_store::Commit::Recreated => Err(Status::aborted(format!(
                "Subscription/{} was created again after this Consume began: the numbers read are of its old log and moved nothing; Consume again",
                sub.id()
            ))),
            hub_store::Commit::Fenced { current } => Err(Status::aborted(format!(
                "consumer '{}' is at generation {current}: a newer Consume took it over, and this commit (generation {}) moved nothing",
                r.consumer, r.generation
            ))),
        }
    }
}

/// The response header of a Consume stream that carries the consumer's generation.
const GENERATION_HEADER: &str = "x-consumer-generation";

/// A named consumer belongs to the credential that reads it: its name is kept under the
/// credential's subject, so another credential of the tenant using the same name has a
/// consumer of its own and can neither move this one's committed position (`Commit`) nor
/// take its claim (`Consume`).
fn owned(caller: &auth::Caller, name: &str) -> String {
    // names hold no control character, so the last separator splits the two unambiguously
    format!("{}\u{1f}{name}", caller.subject)
}

/// The name part of an [`owned`] consumer name, for messages.
fn name_of(owned: &str) -> &str {
    owned.rsplit_once('\u{1f}').map_or(owned, |(_, name)| name)
}

fn check_consumer_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "a consumer name of 1 to 200 characters, none of them control characters, is required",
        ));
    }
    Ok(())
}

/// Serve gRPC on `listener` until `shutdown`: the same connection limits, timeouts and TLS
/// as the HTTP API ([`crate::listener`]), HTTP/2 only.
pub async fn serve(
    hub: Hub,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<NotificationStreamServer<Service>>()
        .await;
    let service = Service { hub: hub.clone() };
    let routes = tonic::service::Routes::new(NotificationStreamServer::new(service))
        .add_service(reflection)
        .add_service(health_service)
        .prepare();
    let app = routes.into_axum_router();
    crate::listener::serve(
        hub,
        listener,
        app,
        crate::listener::Listener::Grpc,
        shutdown,
    )
    .await
}
