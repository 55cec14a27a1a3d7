//! Metrics: typed events whose `emit()` both logs and counts, so logs and metrics never
//! drift; kept in a `prometheus-client` registry and rendered in the OpenMetrics text format
//! at `GET /metrics` (on the API listener, and on every role's admin listener).
//!
//! Labels are bounded: outcomes, statuses, channels, HTTP route templates, gRPC methods and
//! Kafka partitions — never tenants, subscription ids or raw paths (a per-subscription view
//! is `$status`'s job).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds: 1 ms to 5 minutes (a webhook retried for minutes, a
/// matcher batch of a large fan-out).
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_family<L: Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(latency)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToLabel {
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: Channel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    /// The matched route template (`/fhir/Subscription/{id}`), never the raw path.
    route: String,
    /// The status class: `2xx`, `4xx`, …
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    /// `/package.Service/Method`, as routed.
    method: String,
    /// The gRPC status code name (`OK`, `PERMISSION_DENIED`, …).
    code: &'static str,
}

/// A notification channel, as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Channel {
    RestHook,
    Sse,
    Websocket,
    Grpc,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::RestHook => "rest-hook",
            Channel::Sse => "sse",
            Channel::Websocket => "websocket",
            Channel::Grpc => "grpc",
        }
    }
}

impl EncodeLabelValue for Channel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// This process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Unix milliseconds of the matcher's last trip round its loop (0: not running here).
    matcher_beat_ms: AtomicI64,
    /// Unix milliseconds of the last refusal logged (one line per 10 s at most).
    connections_refused_logged_ms: AtomicI64,
    events_published: Counter,
    events_consumed: Counter,
    events_quarantined: Counter,
    events_parked: Family<OutcomeLabel, Counter>,
    notifications_logged: Counter,
    delivery_attempts: Family<OutcomeLabel, Counter>,
    status_changes: Family<ToLabel, Counter>,
    connections_refused: Family<RefusedLabels, Counter>,
    connections_closed: Family<ReasonLabel, Counter>,
    listen_reconnects: Family<ReasonLabel, Counter>,
    connections_open: Gauge,
    delivery_subscriptions: Family<StateLabel, Gauge>,
    subscriptions: Family<StatusLabel, Gauge>,
    quarantined: Gauge,
    stream_connections: Family<ChannelLabel, Gauge>,
    consumer_lag: Family<PartitionLabel, Gauge>,
    match_batch: Histogram,
    publish_to_logged: Histogram,
    logged_to_delivered: LatencyFamily<ChannelLabel>,
    http_requests: LatencyFamily<HttpLabels>,
    grpc_requests: LatencyFamily<GrpcLabels>,
    process: Process,
}

/// The `process_*` family of the Prometheus client libraries, read from `/proc/self` at
/// every scrape (Linux; elsewhere only the start time is known).
#[derive(Debug, Default)]
struct Process {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_memory_bytes: Gauge,
    virtual_memory_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time_seconds: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            matcher_beat_ms: AtomicI64::new(0),
            connections_refused_logged_ms: AtomicI64::new(0),
            events_published: Counter::default(),
            events_consumed: Counter::default(),
            events_quarantined: Counter::default(),
            events_parked: Family::default(),
            notifications_logged: Counter::default(),
            delivery_attempts: Family::default(),
            status_changes: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            listen_reconnects: Family::default(),
            connections_open: Gauge::default(),
            delivery_subscriptions: Family::default(),
            subscriptions: Family::default(),
            quarantined: Gauge::default(),
            stream_connections: Family::default(),
            consumer_lag: Family::default(),
            match_batch: latency(),
            publish_to_logged: latency(),
            logged_to_delivered: latency_family(),
            http_requests: latency_family(),
            grpc_requests: latency_family(),
            process: Process::default(),
        };
        // created as the process starts (the hub makes one `Metrics` at start-up)
        m.process.start_time_seconds.set(now_ms() / 1000);
        m.register();
        m
    }
}

impl Metrics {
    fn register(&mut self) {
        let p = &self.process;
        let root = &mut self.registry;
        root.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            p.cpu_seconds.clone(),
        );
        root.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_memory_bytes.clone(),
        );
        root.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_memory_bytes.clone(),
        );
        root.register(
            "process_open_fds",
            "Open file descriptors.",
            p.open_fds.clone(),
        );
        root.register(
            "process_max_fds",
            "The limit of open file descriptors.",
            p.max_fds.clone(),
        );
        root.register("process_threads", "OS threads.", p.threads.clone());
        root.register(
            "process_start_time_seconds",
            "Start time of the process since the unix epoch, in seconds.",
            p.start_time_seconds.clone(),
        );
        let r = root.sub_registry_with_prefix("fhir_hub");
        r.register(
            "events_published",
            "Change events published by this process.",
            self.events_published.clone(),
        );
        r.register(
            "events_consumed",
            "Change events read by this process's matcher.",
            self.events_consumed.clone(),
        );
        r.register(
            "events_quarantined",
            "Change events quarantined by this process's matcher (unreadable, or matching failed).",
            self.events_quarantined.clone(),
        );
        r.register(
            "events_parked",
            "Change events the store refused even into quarantine: written to the spool file, or dropped (spool full or unwritable).",
            self.events_parked.clone(),
        );
        r.register(
            "notifications_logged",
            "Notifications logged (event numbers assigned) by this process.",
            self.notifications_logged.clone(),
        );
        r.register(
            "delivery_attempts",
            "rest-hook attempts by outcome (handshakes included).",
            self.delivery_attempts.clone(),
        );
        r.register(
            "subscription_status_changes",
            "Hub-driven status changes by new status.",
            self.status_changes.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused at accept because a limit was reached (reason total: server.max_connections; peer: server.max_connections_per_peer).",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_closed",
            "Connections the hub closed: idle (no request in flight for server.idle_timeout_secs), unbound_websocket (no subscription bound within server.unbound_websocket_secs), slow_reader (a stream left unread for streams.write_timeout_secs), lagging (a live stream more than streams.max_lag_events behind).",
            self.connections_closed.clone(),
        );
        r.register(
            "listen_reconnects",
            "LISTEN connections (PostgreSQL) replaced, by why: silent (its pings went unanswered) or lost (an error).",
            self.listen_reconnects.clone(),
        );
        r.register(
            "connections_open",
            "Connections open on the API, gRPC and admin listeners (websockets included).",
            self.connections_open.clone(),
        );
        r.register(
            "delivery_subscriptions",
            "rest-hook subscriptions delivered by this process: with a worker running, or parked (idle, no task).",
            self.delivery_subscriptions.clone(),
        );
        r.register(
            "subscriptions",
            "Subscriptions by status, all tenants.",
            self.subscriptions.clone(),
        );
        r.register(
            "quarantined_events",
            "Change events waiting in quarantine, all tenants.",
            self.quarantined.clone(),
        );
        r.register(
            "stream_connections",
            "Stream readers connected to this process, by channel (an SSE or gRPC stream, a websocket).",
            self.stream_connections.clone(),
        );
        r.register(
            "consumer_lag",
            "Change events on the topic not yet processed by the matcher group, per partition (reported by processes that run the matcher).",
            self.consumer_lag.clone(),
        );
        r.register(
            "match_batch_seconds",
            "Time for the matcher to read, match, log and acknowledge one batch of change events.",
            self.match_batch.clone(),
        );
        r.register(
            "publish_to_logged_seconds",
            "From a change event's append to the log (Kafka record time, embedded append time) to its notifications being logged.",
            self.publish_to_logged.clone(),
        );
        r.register(
            "logged_to_delivered_seconds",
            "From a notification being logged to its delivery: a rest-hook answered 2xx, or a stream's batch handed to its writer (SSE, websocket, gRPC).",
            self.logged_to_delivered.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP requests on the API and admin listeners by method, route template and status class, until the response body ended (a stream: its whole life).",
            self.http_requests.clone(),
        );
        r.register(
            "grpc_request_duration_seconds",
            "gRPC calls by method and status code, until the response ended (a stream: its whole life).",
            self.grpc_requests.clone(),
        );
    }
}

/// Change events accepted by the ingest API or `publish`.
pub struct EventsPublished {
    pub count: usize,
}

impl EventsPublished {
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(count = self.count, "change events published");
        m.events_published.inc_by(self.count as u64);
    }
}

/// A matcher batch: events read, events quarantined (unreadable, or matching failed),
/// notifications logged, how long it took, and when each event was appended to the log.
pub struct BatchMatched<'a> {
    pub events: usize,
    pub quarantined: usize,
    pub notifications: usize,
    pub took: Duration,
    /// Unix milliseconds of each event's append to the log, where the log knows it.
    pub published_ms: &'a [i64],
}

impl BatchMatched<'_> {
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            events = self.events,
            quarantined = self.quarantined,
            notifications = self.notifications,
            took_ms = u64::try_from(self.took.as_millis()).unwrap_or(u64::MAX),
            "batch matched"
        );
        m.events_consumed.inc_by(self.events as u64);
        m.events_quarantined.inc_by(self.quarantined as u64);
        m.notifications_logged.inc_by(self.notifications as u64);
        m.match_batch.observe(self.took.as_secs_f64());
        let now = now_ms();
        for &at in self.published_ms {
            m.publish_to_logged.observe(seconds_since(at, now));
        }
    }
}

/// Seconds from `then_ms` to `now_ms` (0 for a clock that went back).
fn seconds_since(then_ms: i64, now_ms: i64) -> f64 {
    (now_ms.saturating_sub(then_ms).max(0) as f64) / 1000.0
}

/// A record the store refused even into quarantine, parked in the spool file or dropped.
/// ERROR either way: it is not in the store, and an operator must look at the spool (or
/// knows a record was lost).
pub struct RecordParked<'a> {
    pub source: &'a hub_store::Sanitized,
    pub outcome: crate::matcher::spool::Parked,
    pub error: Option<&'a str>,
    pub path: &'a std::path::Path,
}

impl RecordParked<'_> {
    pub fn emit(&self, m: &Metrics) {
        use crate::matcher::spool::Parked;
        let outcome = match self.outcome {
            Parked::Spooled => {
                tracing::error!(source = %self.source, spool = %self.path.display(), "the store refused a change event even into quarantine; parked in the spool file");
                "spooled"
            }
            Parked::Dropped => {
                tracing::error!(source = %self.source, spool = %self.path.display(), error = self.error, "the store refused a change event even into quarantine and the spool could not take it; the event is lost");
                "dropped"
            }
        };
        m.events_parked
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// One delivery attempt's outcome.
pub enum DeliveryAttempt {
    Delivered,
    Failed,
    Gone,
}

impl DeliveryAttempt {
    pub fn emit(&self, m: &Metrics) {
        let outcome = match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Gone => "gone",
        };
        m.delivery_attempts
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// Notifications handed to their reader on `channel` (a rest-hook's 2xx answer, a stream
/// frame written): how long after they were logged.
pub struct Delivered<'a> {
    pub channel: Channel,
    pub notifications: &'a [hub_store::Notification],
}

impl Delivered<'_> {
    pub fn emit(&self, m: &Metrics) {
        let histogram = m.logged_to_delivered.get_or_create(&ChannelLabel {
            channel: self.channel,
        });
        let now = now_ms();
        for n in self.notifications {
            if let Some(at) = rfc3339_ms(&n.created_at) {
                histogram.observe(seconds_since(at, now));
            }
        }
    }
}

fn rfc3339_ms(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A hub-driven status change.
pub struct StatusChanged<'a> {
    pub subscription: &'a str,
    pub tenant: &'a str,
    pub to: hub_fhir::subscription::Status,
    pub error: Option<&'a str>,
}

impl StatusChanged<'_> {
    pub fn emit(&self, m: &Metrics) {
        use hub_fhir::subscription::Status;
        let to = match self.to {
            Status::Active | Status::Requested => {
                tracing::info!(subscription = %self.subscription, tenant = %self.tenant, "subscription active");
                "active"
            }
            Status::Error => {
                tracing::warn!(subscription = %self.subscription, tenant = %self.tenant, error = self.error, "subscription in error");
                "error"
            }
            Status::Off => {
                tracing::warn!(subscription = %self.subscription, tenant = %self.tenant, error = self.error, "subscription off");
                "off"
            }
        };
        m.status_changes.get_or_create(&ToLabel { to }).inc();
    }
}

/// A connection refused at accept: the listener's limits were reached.
pub struct ConnectionRefused {
    pub listener: crate::listener::Listener,
    pub reason: crate::listener::Refusal,
}

impl ConnectionRefused {
    pub fn emit(&self, m: &Metrics) {
        m.connections_refused
            .get_or_create(&RefusedLabels {
                listener: self.listener.as_str(),
                reason: self.reason.as_str(),
            })
            .inc();
        // a flood would flood the log too: one line per 10 s, the metric counts every one
        let (now, last) = (now_ms(), &m.connections_refused_logged_ms);
        let seen = last.load(Ordering::Relaxed);
        if now - seen >= 10_000
            && last
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                listener = self.listener.as_str(),
                reason = self.reason.as_str(),
                "refusing connections: the connection limit is reached (server.max_connections, server.max_connections_per_peer; fhir_hub_connections_refused_total counts them)"
            );
        }
    }
}

/// A connection the hub closed.
pub enum ConnectionClosed {
    /// No request in flight for `server.idle_timeout_secs`.
    Idle,
    /// A websocket bound no subscription within `server.unbound_websocket_secs`.
    UnboundWebsocket,
    /// A stream's client left what was written untaken for `streams.write_timeout_secs`.
    SlowReader,
    /// A live stream fell more than `streams.max_lag_events` behind its subscription.
    Lagging,
}

impl ConnectionClosed {
    pub fn emit(&self, m: &Metrics) {
        let reason = match self {
            Self::Idle => {
                tracing::debug!("closing an idle connection");
                "idle"
            }
            Self::UnboundWebsocket => {
                tracing::debug!("closing a websocket that bound no subscription in time");
                "unbound_websocket"
            }
            Self::SlowReader => {
                tracing::info!("closing a connection whose client stopped reading a stream");
                "slow_reader"
            }
            Self::Lagging => {
                tracing::info!("ending a stream that fell too far behind its subscription");
                "lagging"
            }
        };
        m.connections_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The `LISTEN` connection (PostgreSQL) had to be replaced; readers poll until the new one
/// is up, then every reader looks once.
pub enum ListenerLost {
    /// Nothing came over it, not even its own pings, for this long: a connection dropped
    /// on the way without a reset (a NAT or a load balancer idle timeout).
    Silent(std::time::Duration),
    /// It failed with this error.
    Failed(hub_store::StoreError),
}

impl ListenerLost {
    pub fn emit(&self, m: &Metrics) {
        let reason = match self {
            Self::Silent(d) => {
                tracing::warn!(
                    silent_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                    "the LISTEN connection went silent (its pings do not come back); replacing it, readers poll meanwhile"
                );
                "silent"
            }
            Self::Failed(e) => {
                tracing::warn!(error = %e, "the LISTEN connection was lost; readers poll until it is back");
                "lost"
            }
        };
        m.listen_reconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// A stream reader connected; the gauge counts it until this is dropped.
#[derive(Debug)]
#[must_use = "the stream is counted until this is dropped"]
pub struct StreamOpen {
    gauge: Gauge,
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

/// The status class of an HTTP status, as a bounded label.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A bounded method label (anything unusual is `other`).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// gRPC status code names by number (google.rpc.Code).
fn grpc_code(code: &str) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    code.trim()
        .parse::<usize>()
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("UNKNOWN")
}

/// One request being timed: observed when its response body ends (or is dropped).
pub struct RequestTimer {
    started: Instant,
    histogram: Option<Histogram>,
    grpc: Option<(std::sync::Arc<Metrics>, String)>,
}

impl RequestTimer {
    /// The gRPC status the response carried (in its headers, or its trailers): the call is
    /// observed now, under that code.
    pub fn grpc_status(&mut self, code: &str) {
        if let Some((m, method)) = self.grpc.take() {
            let code = grpc_code(code);
            // any path reaches the server: only routed methods become label values
            let method = if code == "UNIMPLEMENTED" || method.len() > 100 {
                "unmatched".to_owned()
            } else {
                method
            };
            m.grpc_requests
                .get_or_create(&GrpcLabels { method, code })
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        if let Some(h) = &self.histogram {
            h.observe(self.started.elapsed().as_secs_f64());
        }
        // ended without a status (the client went away): a cancelled call
        self.grpc_status("1");
    }
}

impl Metrics {
    /// The matcher came round its loop.
    pub fn matcher_beat(&self) {
        self.matcher_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the matcher last came round its loop; `None` when no matcher runs
    /// in this process.
    pub fn matcher_stalled_ms(&self, now_ms: i64) -> Option<i64> {
        match self.matcher_beat_ms.load(Ordering::Relaxed) {
            0 => None,
            beat => Some((now_ms - beat).max(0)),
        }
    }

    /// How many rest-hook subscriptions this process delivers with a running worker and
    /// how many are parked.
    pub fn delivery_workers(&self, running: usize, parked: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let set = |state, v| {
            self.delivery_subscriptions
                .get_or_create(&StateLabel { state })
                .set(v)
        };
        set("running", n(running));
        set("parked", n(parked));
    }

    /// How many connections the listeners hold open.
    pub fn connections_open(&self, n: usize) {
        self.connections_open
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A stream reader connected on `channel`: counted while the guard lives.
    pub fn stream_open(&self, channel: Channel) -> StreamOpen {
        let gauge = self
            .stream_connections
            .get_or_create(&ChannelLabel { channel })
            .clone();
        gauge.inc();
        StreamOpen { gauge }
    }

    /// The matcher group's lag per partition, as last read.
    pub fn consumer_lag(&self, partitions: &[(i32, u64)]) {
        for &(partition, lag) in partitions {
            self.consumer_lag
                .get_or_create(&PartitionLabel { partition })
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }

    /// Start timing an HTTP request whose route template is `route` (`None`: no route
    /// matched).
    pub fn http_request(
        &self,
        method: &axum::http::Method,
        route: Option<&str>,
        status: u16,
        started: Instant,
    ) -> RequestTimer {
        let labels = HttpLabels {
            method: method_label(method),
            route: route.unwrap_or("unmatched").to_owned(),
            status: status_class(status),
        };
        RequestTimer {
            started,
            histogram: Some(self.http_requests.get_or_create(&labels).clone()),
            grpc: None,
        }
    }

    /// Start timing a gRPC call routed to `method` (`None`: an unknown method).
    pub fn grpc_request(
        self: &std::sync::Arc<Self>,
        method: Option<&str>,
        started: Instant,
    ) -> RequestTimer {
        RequestTimer {
            started,
            histogram: None,
            grpc: Some((
                std::sync::Arc::clone(self),
                method.unwrap_or("unmatched").to_owned(),
            )),
        }
    }

    /// The OpenMetrics text exposition, with the `subscriptions` gauges by status and the
    /// quarantine count read for this scrape.
    pub fn render(&self, subscriptions: &[(String, i64)], quarantined: Option<i64>) -> String {
        for (status, n) in subscriptions {
            self.subscriptions
                .get_or_create(&StatusLabel {
                    status: status.clone(),
                })
                .set(*n);
        }
        if let Some(n) = quarantined {
            self.quarantined.set(n);
        }
        self.process.read();
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "could not render the metrics");
        }
        out
    }
}

impl Process {
    fn read(&self) {
        #[cfg(target_os = "linux")]
        {
            // /proc/self/stat: fields after the command (which may hold spaces) in ')'
            if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
                && let Some((_, rest)) = stat.rsplit_once(')')
            {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
                // after ')': state is 0, utime 11, stime 12, threads 17, vsize 20, rss 21
                let ticks = 100.0; // USER_HZ on every Linux the hub runs on
                if let (Some(u), Some(s)) = (num(11), num(12)) {
                    let cpu = (u + s) as f64 / ticks;
                    let before = self.cpu_seconds.get();
                    if cpu > before {
                        self.cpu_seconds.inc_by(cpu - before);
                    }
                }
                let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                if let Some(t) = num(17) {
                    self.threads.set(as_i64(t));
                }
                if let Some(v) = num(20) {
                    self.virtual_memory_bytes.set(as_i64(v));
                }
                if let Some(pages) = num(21) {
                    self.resident_memory_bytes
                        .set(as_i64(pages.saturating_mul(4096)));
                }
            }
            if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
                self.open_fds
                    .set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
            }
            if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
                && let Some(line) = limits.lines().find(|l| l.starts_with("Max open files"))
                && let Some(soft) = line.split_whitespace().nth(3)
                && let Ok(v) = soft.parse::<i64>()
            {
                self.max_fds.set(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matcher_beat_tells_how_long_it_stalled() {
        let m = Metrics::default();
        assert_eq!(m.matcher_stalled_ms(now_ms()), None, "no matcher here");
        m.matcher_beat();
        let now = now_ms();
        assert!(m.matcher_stalled_ms(now).unwrap() < 1000);
        assert!(m.matcher_stalled_ms(now + 90_000).unwrap() >= 90_000);
    }

    #[test]
    fn renders_openmetrics_text() {
        let m = Metrics::default();
        EventsPublished { count: 3 }.emit(&m);
        DeliveryAttempt::Failed.emit(&m);
        let text = m.render(&[("active".into(), 2)], Some(1));
        assert!(text.contains("fhir_hub_events_published_total 3"), "{text}");
        assert!(text.contains("fhir_hub_delivery_attempts_total{outcome=\"failed\"} 1"));
        assert!(text.contains("fhir_hub_subscriptions{status=\"active\"} 2"));
        assert!(text.contains("fhir_hub_quarantined_events 1"));
        assert!(text.ends_with("# EOF\n"));
        ConnectionRefused {
            listener: crate::listener::Listener::Grpc,
            reason: crate::listener::Refusal::Peer,
        }
        .emit(&m);
        m.connections_open(7);
        let text = m.render(&[], None);
        assert!(
            text.contains(
                "fhir_hub_connections_refused_total{listener=\"grpc\",reason=\"peer\"} 1"
            )
        );
        assert!(text.contains("fhir_hub_connections_open 7"));
    }

    #[test]
    fn histograms_stream_gauges_lag_and_process_metrics_render() {
        let m = std::sync::Arc::new(Metrics::default());
        BatchMatched {
            events: 2,
            quarantined: 0,
            notifications: 4,
            took: Duration::from_millis(30),
            published_ms: &[now_ms() - 1500, now_ms()],
        }
        .emit(&m);
        let open = m.stream_open(Channel::Sse);
        m.consumer_lag(&[(0, 5), (3, 0)]);
        drop(m.http_request(
            &axum::http::Method::GET,
            Some("/fhir/Subscription/{id}"),
            200,
            Instant::now(),
        ));
        let mut call = m.grpc_request(Some("/fhirhub.v1.Notifications/Subscribe"), Instant::now());
        call.grpc_status("7");
        drop(call);
        let text = m.render(&[], None);
        for want in [
            "fhir_hub_match_batch_seconds_count 1",
            "fhir_hub_publish_to_logged_seconds_count 2",
            "fhir_hub_publish_to_logged_seconds_bucket{le=\"2.5\"} 2",
            "fhir_hub_stream_connections{channel=\"sse\"} 1",
            "fhir_hub_consumer_lag{partition=\"0\"} 5",
            "fhir_hub_consumer_lag{partition=\"3\"} 0",
            "fhir_hub_http_request_duration_seconds_count{method=\"GET\",route=\"/fhir/Subscription/{id}\",status=\"2xx\"} 1",
            "fhir_hub_grpc_request_duration_seconds_count{method=\"/fhirhub.v1.Notifications/Subscribe\",code=\"PERMISSION_DENIED\"} 1",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_open_fds"), "{text}");
        drop(open);
        let text = m.render(&[], None);
        assert!(text.contains("fhir_hub_stream_connections{channel=\"sse\"} 0"));
    }
}
