//! The `fhir-hub` service: configuration, the HTTP API, and the roles that make up the
//! pipeline (`api` ingests and manages subscriptions, `matcher` turns change events into
//! logged notifications, `delivery` sends them). One process can run every role, or a
//! cluster can run them apart, coordinated only through the event log and the store.
//!
//! [`run`] is the entry point: the caller owns the listener and the shutdown signal, so
//! tests run the real server in-process on port 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod audit;
pub mod auth;
pub mod channels;
pub mod config;
pub mod data_lock;
pub mod delivery;
mod drain;
pub mod fhirpath_cmd;
pub mod housekeeping;
pub mod listener;
pub mod match_cmd;
pub mod matcher;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod retry;
pub mod telemetry;
pub mod tls;

use config::{Config, LogBackend, Role};
use hub_log::EventLog;
use hub_store::Store;

/// What every role shares.
#[derive(Clone)]
pub struct Hub {
    pub config: Arc<Config>,
    pub store: Store,
    pub log: Arc<dyn EventLog>,
    /// Per-subscription wake-ups: the matcher (and, on PostgreSQL, the `LISTEN` task) tells
    /// a subscription's readers that its log moved; nobody else wakes.
    pub wakeups: Arc<channels::wake::Wakeups>,
    /// Stored subscriptions as typed values, parsed once per version.
    pub subscriptions: Arc<model::Catalog>,
    /// Cancelled when the process stops: long-lived streams (websocket, SSE) end cleanly so
    /// their clients resume elsewhere. `run` makes it a child of its shutdown token.
    pub streams: CancellationToken,
    /// The FHIR base URL clients reach this hub at (`server.base_url`, or the address the
    /// API listens on): the one source for absolute URLs in answers and notifications.
    pub base_url: Arc<str>,
    /// Where rest-hooks may go (SSRF protection).
    pub egress: Arc<delivery::ssrf::EgressPolicy>,
    pub schedule: Arc<delivery::schedule::Schedule>,
    pub metrics: Arc<metrics::Metrics>,
    /// Extra trusted roots for rest-hook endpoints (`delivery.ca_certificates`).
    pub extra_roots: Arc<Vec<reqwest::Certificate>>,
    /// Credentials, token issuers' keys, rate limits per credential.
    pub auth: Arc<auth::Authenticator>,
    /// The audit trail's writer (group commit).
    pub audit: audit::AuditSink,
    /// Told when a client writes a subscription, in this process or (PostgreSQL `NOTIFY`)
    /// another: delivery starts (or stops) its worker at once instead of at its next poll
    /// (the poll still finds a write whose `NOTIFY` was missed).
    pub subscription_writes: Arc<tokio::sync::Notify>,
    /// Places for connections on the API and gRPC listeners, in total and per peer.
    pub connections: Arc<listener::ConnectionLimits>,
}

/// Say where a listener listens: one stdout line (`fhir-hub <what> listening on <url>`) that
/// tests and scripts read to learn a port picked with 0, and a log line.
pub(crate) fn announce(listener: &TcpListener, what: &str, scheme: &str) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    println!("fhir-hub {what}listening on {scheme}{addr}");
    tracing::info!(%addr, listener = what.trim(), "listening");
    Ok(())
}

/// Open the event log the configuration names.
pub async fn open_log(config: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    let log: Arc<dyn EventLog> = match config.log.backend {
        LogBackend::Embedded => {
            let path = config.embedded_log_path();
            Arc::new(
                hub_log::embedded::EmbeddedLog::open(&path)
                    .await
                    .with_context(|| format!("opening the embedded log {}", path.display()))?,
            )
        }
        LogBackend::Kafka => Arc::new(
            hub_log::kafka::KafkaLog::new(config.kafka_settings())
                .context("creating the Kafka client")?,
        ),
    };
    log.create_topics(&[config.log.changes_topic.as_str()])
        .await
        .with_context(|| format!("making sure topic '{}' exists", config.log.changes_topic))?;
    Ok(log)
}

impl Hub {
    /// Connect the store and the log.
    pub async fn connect(config: Config) -> anyhow::Result<Hub> {
        config.make_data_files_private()?;
        let store = Store::connect_with(&config.database_url(), config.database_timeouts())
            .await
            .context("opening the store")?;
        let sealer = config.sealer()?;
        auth::key_check::check(&store, &sealer)
            .await
            .context("checking the keys that seal secrets at rest")?;
        let log = open_log(&config).await?;
        model::move_legacy_secrets(&store)
            .await
            .context("moving subscription secrets into their columns")?;
        model::reseal_legacy(&store, &sealer)
            .await
            .context("sealing subscription secrets again, bound to their subscription")?;
        let cross_process = store.backend() == hub_store::Backend::Postgres;
        let metrics: Arc<metrics::Metrics> = Arc::default();
        let auth = Arc::new(auth::Authenticator::new(&config.auth));
        audit::flush_refusals(
            store.clone(),
            Arc::downgrade(&auth.refusals),
            Duration::from_secs(config.audit.refusal_window_secs),
        );
        Ok(Hub {
            connections: listener::ConnectionLimits::new(
                config.max_connections(),
                config.max_connections_per_peer(),
                Arc::clone(&metrics),
            ),
            wakeups: Arc::new(channels::wake::Wakeups::new(cross_process)),
            subscriptions: Arc::new(model::Catalog::new(sealer, config.has_role(Role::Matcher))),
            streams: CancellationToken::new(),
            base_url: Arc::from(config.base_url()),
            egress: Arc::new(config.egress_policy()?),
            schedule: Arc::new(config.retry_schedule()?),
            extra_roots: Arc::new(config.extra_roots()?),
            auth,
            audit: audit::AuditSink::start(store.clone()),
            config: Arc::new(config),
            store,
            log,
            metrics,
            subscription_writes: Arc::default(),
        })
    }
}

/// Run the configured roles until `shutdown` is cancelled, then finish in-flight work
/// (within `server.shutdown_grace_secs`) and return.
pub async fn run(
    config: Config,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // held until `run` returns: no second process serves the same embedded files
    let _locks = data_lock::lock(&config)?;
    let mut hub = Hub::connect(config).await?;
    let listener = match listener {
        Some(l) => Some(l),
        None if hub.config.has_role(Role::Api) => Some(
            TcpListener::bind(hub.config.listen_addr()?)
                .await
                .with_context(|| format!("binding {}", hub.config.server.listen))?,
        ),
        None => None,
    };
    hub.streams = shutdown.child_token();
    let grpc_listener = match hub.config.grpc.listen.as_str() {
        "" => None,
        addr if hub.config.has_role(Role::Api) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding grpc.listen {addr}"))?,
        ),
        _ => None,
    };
    // Without a configured base URL, the address actually bound (port 0 picks one).
    if hub.config.server.base_url.is_empty()
        && let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok())
    {
        hub.base_url = Arc::from(format!("{}://{addr}/fhir", hub.config.scheme()));
    }
    tracing::info!(
        store = ?hub.store.backend(),
        log = hub.log.backend(),
        roles = ?hub.config.server.roles,
        "fhir-hub starting"
    );
    let mut tasks = tokio::task::JoinSet::new();
    if hub.config.has_role(Role::Matcher) {
        let (h, s) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move { matcher::run(h, s).await.context("matcher role") });
    }
    if hub.config.has_role(Role::Delivery) {
        let (mut h, s) = (hub.clone(), shutdown.clone());
        h.store = hub
            .store
            .own_pool(hub.config.database.delivery_pool_size)
            .await
            .context("cannot open the delivery role's database connections")?;
        tasks.spawn(async move { delivery::run(h, s).await.context("delivery role") });
    }
    // Retention in every process, whatever its roles (one purger each).
    let (h, s) = (hub.clone(), shutdown.clone());
    tasks.spawn(async move {
        housekeeping::run(h, s).await;
        Ok(())
    });
    if hub.config.has_role(Role::Api) || hub.config.has_role(Role::Delivery) {
        // readers live in these roles (websocket clients, rest-hook workers)
        let (h, s) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move {
            channels::wake::listen(h, s).await;
            Ok(())
        });
    }
    if hub.config.has_role(Role::Api)
        && let Some(listener) = listener
    {
        let (h, s) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move { api::serve(h, listener, s).await.context("api role") });
    }
    if let Some(listener) = grpc_listener {
        let (h, s) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move {
            channels::grpc::serve(h, listener, s)
                .await
                .context("gRPC listener")
        });
    }

    // A role that fails takes the process down (so a supervisor restarts it) after the
    // others have drained.
    let grace = Duration::from_secs(hub.config.server.shutdown_grace_secs);
    let result = drain::join_roles(&mut tasks, &shutdown, grace).await;
    hub.store.close().await;
    tracing::info!("fhir-hub stopped");
    result
}
