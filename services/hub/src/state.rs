//! What every role shares: the [`Hub`] (configuration, store, event log, wake-ups, the
//! subscription catalog, security and telemetry state) and how it is made. Which roles run
//! and how they start and stop is the composition root's business (`roles`), not this
//! module's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hub_log::EventLog;
use hub_store::Store;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogBackend, Role};
use crate::{audit, auth, channels, delivery, listener, metrics, model};

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
