//! The HTTP API (axum): FHIR endpoints under `/fhir`, change-event ingest at `/events`,
//! and `/health`.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Hub;

pub mod auth;
pub mod error;
pub mod events;
pub mod fhir_json;
pub mod health;
pub mod ingest;
pub mod metadata;
pub mod quarantine;
pub mod status;
pub mod subscriptions;
pub mod topics;
pub mod websocket;

pub use error::ApiError;

/// The router, with state.
pub fn router(hub: Hub) -> Router {
    let limit = hub.config.server.max_body_bytes;
    Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/events", post(ingest::post_events))
        .route("/fhir", post(ingest::post_bundle))
        .route("/fhir/metadata", get(metadata::capability_statement))
        .route(
            "/fhir/Subscription",
            get(subscriptions::search).post(subscriptions::create),
        )
        .route("/fhir/Subscription/$status", get(status::type_level))
        .route("/fhir/Subscription/{id}/$status", get(status::instance))
        .route("/fhir/Subscription/{id}/$events", get(events::events))
        .route(
            "/fhir/Subscription/{id}/$get-ws-binding-token",
            get(websocket::binding_token).post(websocket::binding_token),
        )
        .route("/fhir/$subscription-ws", get(websocket::connect))
        .route(
            "/fhir/Subscription/{id}",
            get(subscriptions::read)
                .put(subscriptions::update)
                .delete(subscriptions::delete),
        )
        .route(
            "/fhir/SubscriptionTopic",
            get(topics::search).post(topics::create),
        )
        .route(
            "/fhir/SubscriptionTopic/{id}",
            get(topics::read).put(topics::update).delete(topics::delete),
        )
        .route("/admin/quarantine", get(quarantine::list))
        .route(
            "/admin/quarantine/{id}",
            get(quarantine::read).delete(quarantine::drop),
        )
        .route("/admin/quarantine/{id}/$replay", post(quarantine::replay))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(hub)
}

/// Serve the API on `listener` until `shutdown`, then finish in-flight requests.
pub async fn serve(
    hub: Hub,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("fhir-hub listening on http://{addr}");
    tracing::info!(%addr, "API listening");
    axum::serve(listener, router(hub))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
