//! The composition root: which roles this process runs, the listeners it binds, and how
//! they start, fail and drain together.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role};
use crate::state::Hub;
use crate::{api, channels, data_lock, delivery, drain, housekeeping, matcher};

/// Say where a listener listens: one stdout line (`fhir-hub <what> listening on <url>`) that
/// tests and scripts read to learn a port picked with 0, and a log line. A closed stdout
/// (`fhir-hub serve | head -1`) does not stop the server.
pub(crate) fn announce(listener: &TcpListener, what: &str, scheme: &str) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if let Err(e) = crate::stdout::line(format_args!("fhir-hub {what}listening on {scheme}{addr}"))
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e);
    }
    tracing::info!(%addr, listener = what.trim(), "listening");
    Ok(())
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
            TcpListener::bind(hub.config.listen_addrs()?.as_slice())
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
    let admin_listener = match hub.config.admin_listen() {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding admin.listen {addr}"))?,
        ),
        None => None,
    };
    // Without a configured base URL, the address actually bound (port 0 picks one).
    if hub.config.server.base_url.is_empty()
        && let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok())
    {
        hub.base_url = Arc::from(format!("{}://{addr}/fhir", hub.config.scheme()));
    }
    if let Some(w) = hub.config.base_url_warning() {
        tracing::warn!("{w}");
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

    if let Some(listener) = admin_listener {
        if hub.config.admin.listen.is_empty() {
            tracing::warn!(
                "this process runs no api role: its /health, /ready and /metrics are on a free loopback port (printed above); set admin.listen to a fixed address for probes and scrapers"
            );
        }
        let (h, s) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move {
            let app = api::admin_router(h.clone());
            crate::listener::serve(h, listener, app, crate::listener::Listener::Admin, s)
                .await
                .context("admin listener")
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
