//! Metrics: typed events whose `emit()` both logs and counts, so logs and metrics never
//! drift; rendered in the Prometheus text format at `GET /metrics`. Labels are low
//! cardinality (outcomes and statuses, never tenants or subscription ids).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// This process's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Unix milliseconds of the matcher's last trip round its loop (0: not running here).
    matcher_beat_ms: std::sync::atomic::AtomicI64,
    events_published: AtomicU64,
    events_consumed: AtomicU64,
    events_quarantined: AtomicU64,
    /// Records the store would not take even into quarantine: in the spool file, or lost.
    events_spooled: AtomicU64,
    events_dropped: AtomicU64,
    notifications_logged: AtomicU64,
    deliveries_delivered: AtomicU64,
    deliveries_failed: AtomicU64,
    deliveries_gone: AtomicU64,
    status_active: AtomicU64,
    status_error: AtomicU64,
    status_off: AtomicU64,
    /// rest-hook subscriptions with a worker running, and parked (no task).
    delivery_running: AtomicU64,
    delivery_parked: AtomicU64,
    /// Connections open on the API and gRPC listeners (websockets included).
    connections_open: AtomicU64,
    /// Refused connections: api/total, api/peer, grpc/total, grpc/peer.
    connections_refused: [AtomicU64; 4],
    /// Unix milliseconds of the last refusal logged (one line per 10 s at most).
    connections_refused_logged_ms: std::sync::atomic::AtomicI64,
    connections_closed_idle: AtomicU64,
    websockets_closed_unbound: AtomicU64,
    /// `LISTEN` connections replaced: gone silent (pings unanswered), or lost (an error).
    listen_silent: AtomicU64,
    listen_lost: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Change events accepted by the ingest API or `publish`.
pub struct EventsPublished {
    pub count: usize,
}

impl EventsPublished {
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(count = self.count, "change events published");
        add(&m.events_published, self.count as u64);
    }
}

/// A matcher batch: events read, events quarantined (unreadable, or matching failed),
/// notifications logged.
pub struct BatchMatched {
    pub events: usize,
    pub quarantined: usize,
    pub notifications: usize,
}

impl BatchMatched {
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            events = self.events,
            quarantined = self.quarantined,
            notifications = self.notifications,
            "batch matched"
        );
        add(&m.events_consumed, self.events as u64);
        add(&m.events_quarantined, self.quarantined as u64);
        add(&m.notifications_logged, self.notifications as u64);
    }
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
        match self.outcome {
            Parked::Spooled => {
                tracing::error!(source = %self.source, spool = %self.path.display(), "the store refused a change event even into quarantine; parked in the spool file");
                add(&m.events_spooled, 1);
            }
            Parked::Dropped => {
                tracing::error!(source = %self.source, spool = %self.path.display(), error = self.error, "the store refused a change event even into quarantine and the spool could not take it; the event is lost");
                add(&m.events_dropped, 1);
            }
        }
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
        match self {
            Self::Delivered => add(&m.deliveries_delivered, 1),
            Self::Failed => add(&m.deliveries_failed, 1),
            Self::Gone => add(&m.deliveries_gone, 1),
        }
    }
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
        match self.to {
            Status::Active | Status::Requested => {
                tracing::info!(subscription = %self.subscription, tenant = %self.tenant, "subscription active");
                add(&m.status_active, 1);
            }
            Status::Error => {
                tracing::warn!(subscription = %self.subscription, tenant = %self.tenant, error = self.error, "subscription in error");
                add(&m.status_error, 1);
            }
            Status::Off => {
                tracing::warn!(subscription = %self.subscription, tenant = %self.tenant, error = self.error, "subscription off");
                add(&m.status_off, 1);
            }
        }
    }
}

/// A connection refused at accept: the listener's limits were reached.
pub struct ConnectionRefused {
    pub listener: crate::listener::Listener,
    pub reason: crate::listener::Refusal,
}

impl ConnectionRefused {
    pub fn emit(&self, m: &Metrics) {
        use crate::listener::{Listener, Refusal};
        let i = match (self.listener, self.reason) {
            (Listener::Api, Refusal::Total) => 0,
            (Listener::Api, Refusal::Peer) => 1,
            (Listener::Grpc, Refusal::Total) => 2,
            (Listener::Grpc, Refusal::Peer) => 3,
        };
        add(&m.connections_refused[i], 1);
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
}

impl ConnectionClosed {
    pub fn emit(&self, m: &Metrics) {
        match self {
            Self::Idle => {
                tracing::debug!("closing an idle connection");
                add(&m.connections_closed_idle, 1);
            }
            Self::UnboundWebsocket => {
                tracing::debug!("closing a websocket that bound no subscription in time");
                add(&m.websockets_closed_unbound, 1);
            }
        }
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
        match self {
            Self::Silent(d) => {
                tracing::warn!(
                    silent_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                    "the LISTEN connection went silent (its pings do not come back); replacing it, readers poll meanwhile"
                );
                add(&m.listen_silent, 1);
            }
            Self::Failed(e) => {
                tracing::warn!(error = %e, "the LISTEN connection was lost; readers poll until it is back");
                add(&m.listen_lost, 1);
            }
        }
    }
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
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
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        self.delivery_running.store(n(running), Ordering::Relaxed);
        self.delivery_parked.store(n(parked), Ordering::Relaxed);
    }

    /// How many connections the listeners hold open.
    pub fn connections_open(&self, n: usize) {
        self.connections_open
            .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with `subscriptions` gauges by status.
    pub fn render(&self, subscriptions: &[(String, i64)], quarantined: Option<i64>) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "fhir_hub_events_published_total",
            "Change events published by this process.",
            &[("", get(&self.events_published))],
        );
        counter(
            "fhir_hub_events_consumed_total",
            "Change events read by the matcher.",
            &[("", get(&self.events_consumed))],
        );
        counter(
            "fhir_hub_events_quarantined_total",
            "Change events quarantined by this process's matcher (unreadable, or matching failed).",
            &[("", get(&self.events_quarantined))],
        );
        counter(
            "fhir_hub_events_parked_total",
            "Change events the store refused even into quarantine: written to the spool file, or dropped (spool full or unwritable).",
            &[
                ("{outcome=\"spooled\"}", get(&self.events_spooled)),
                ("{outcome=\"dropped\"}", get(&self.events_dropped)),
            ],
        );
        counter(
            "fhir_hub_notifications_logged_total",
            "Notifications logged (event numbers assigned).",
            &[("", get(&self.notifications_logged))],
        );
        counter(
            "fhir_hub_delivery_attempts_total",
            "rest-hook attempts by outcome (handshakes included).",
            &[
                ("{outcome=\"delivered\"}", get(&self.deliveries_delivered)),
                ("{outcome=\"failed\"}", get(&self.deliveries_failed)),
                ("{outcome=\"gone\"}", get(&self.deliveries_gone)),
            ],
        );
        counter(
            "fhir_hub_subscription_status_changes_total",
            "Hub-driven status changes by new status.",
            &[
                ("{to=\"active\"}", get(&self.status_active)),
                ("{to=\"error\"}", get(&self.status_error)),
                ("{to=\"off\"}", get(&self.status_off)),
            ],
        );
        let refused = &self.connections_refused;
        counter(
            "fhir_hub_connections_refused_total",
            "Connections refused at accept because a limit was reached (reason total: server.max_connections; peer: server.max_connections_per_peer).",
            &[
                ("{listener=\"api\",reason=\"total\"}", get(&refused[0])),
                ("{listener=\"api\",reason=\"peer\"}", get(&refused[1])),
                ("{listener=\"grpc\",reason=\"total\"}", get(&refused[2])),
                ("{listener=\"grpc\",reason=\"peer\"}", get(&refused[3])),
            ],
        );
        counter(
            "fhir_hub_connections_closed_total",
            "Connections the hub closed: idle (no request in flight for server.idle_timeout_secs), unbound_websocket (no subscription bound within server.unbound_websocket_secs).",
            &[
                ("{reason=\"idle\"}", get(&self.connections_closed_idle)),
                (
                    "{reason=\"unbound_websocket\"}",
                    get(&self.websockets_closed_unbound),
                ),
            ],
        );
        counter(
            "fhir_hub_listen_reconnects_total",
            "LISTEN connections (PostgreSQL) replaced, by why: silent (its pings went unanswered) or lost (an error).",
            &[
                ("{reason=\"silent\"}", get(&self.listen_silent)),
                ("{reason=\"lost\"}", get(&self.listen_lost)),
            ],
        );
        let _ = writeln!(
            out,
            "# HELP fhir_hub_connections_open Connections open on the API and gRPC listeners (websockets included).\n# TYPE fhir_hub_connections_open gauge\nfhir_hub_connections_open {}",
            get(&self.connections_open)
        );
        let _ = writeln!(
            out,
            "# HELP fhir_hub_delivery_subscriptions rest-hook subscriptions delivered by this process: with a worker running, or parked (idle, no task).\n# TYPE fhir_hub_delivery_subscriptions gauge\nfhir_hub_delivery_subscriptions{{state=\"running\"}} {}\nfhir_hub_delivery_subscriptions{{state=\"parked\"}} {}",
            get(&self.delivery_running),
            get(&self.delivery_parked)
        );
        let _ = writeln!(
            out,
            "# HELP fhir_hub_subscriptions Subscriptions by status, all tenants.\n# TYPE fhir_hub_subscriptions gauge"
        );
        for (status, n) in subscriptions {
            let _ = writeln!(out, "fhir_hub_subscriptions{{status=\"{status}\"}} {n}");
        }
        if let Some(n) = quarantined {
            let _ = writeln!(
                out,
                "# HELP fhir_hub_quarantined_events Change events waiting in quarantine, all tenants.\n# TYPE fhir_hub_quarantined_events gauge\nfhir_hub_quarantined_events {n}"
            );
        }
        out
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
    fn renders_prometheus_text() {
        let m = Metrics::default();
        EventsPublished { count: 3 }.emit(&m);
        DeliveryAttempt::Failed.emit(&m);
        let text = m.render(&[("active".into(), 2)], Some(1));
        assert!(text.contains("fhir_hub_events_published_total 3"));
        assert!(text.contains("fhir_hub_delivery_attempts_total{outcome=\"failed\"} 1"));
        assert!(text.contains("fhir_hub_subscriptions{status=\"active\"} 2"));
        assert!(text.contains("fhir_hub_quarantined_events 1"));
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
}
