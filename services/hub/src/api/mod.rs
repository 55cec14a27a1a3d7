//! The HTTP API (axum): FHIR endpoints under `/fhir`, change-event ingest at `/events`,
//! and `/health`.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::Hub;
use subscriptions::SubscriptionKind;
use topics::TopicKind;

pub mod admin;
pub mod auth;
pub mod cors;
pub mod error;
pub mod events;
pub mod fhir_json;
pub mod health;
pub mod ingest;
pub mod metadata;
pub mod open_mode;
pub mod quarantine;
pub mod resource;
pub mod status;
pub mod subscriptions;
pub mod topics;

pub use error::ApiError;

/// The router, with state.
pub fn router(hub: Hub) -> Router {
    let limit = hub.config.server.max_body_bytes;
    // what a browser page of another origin may read (none by default; never on an open hub)
    let browser = |routes| cors::browser(routes, &hub.config);
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/events", post(ingest::post_events))
        .route("/fhir", post(ingest::post_bundle))
        .route("/fhir/metadata", get(metadata::capability_statement))
        .route("/fhir/Subscription/$status", get(status::type_level))
        .route("/fhir/Subscription/{id}/$status", get(status::instance))
        .route("/fhir/Subscription/{id}/$events", get(events::events))
        .route(
            "/fhir/Subscription/{id}/$get-ws-binding-token",
            browser(
                get(crate::channels::tokens::binding_token)
                    .post(crate::channels::tokens::binding_token),
            ),
        )
        .route(
            "/fhir/$subscription-ws",
            get(crate::channels::websocket::connect),
        )
        .route(
            "/fhir/Subscription/{id}/$stream",
            browser(get(crate::channels::sse::stream)),
        )
        .merge(resource_routes::<SubscriptionKind>())
        .merge(resource_routes::<TopicKind>())
        .route("/admin/quarantine", get(quarantine::list))
        .route(
            "/admin/quarantine/{id}",
            get(quarantine::read).delete(quarantine::drop),
        )
        .route("/admin/quarantine/{id}/$replay", post(quarantine::replay))
        .route("/admin/keys", get(admin::list_keys).post(admin::create_key))
        .route(
            "/admin/keys/{id}",
            axum::routing::delete(admin::revoke_key).patch(admin::set_key_scopes),
        )
        .route("/fhir/AuditEvent", get(admin::audit_events))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(error::plain_text_as_outcome))
        // request ids, the access log and request metrics: `listener::timed`, on every listener
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            open_mode::loopback_only,
        ))
        .with_state(hub)
}

/// The admin listener's router (`admin.listen`): health, readiness and metrics of this
/// process, whatever its roles.
pub fn admin_router(hub: Hub) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::admin_metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(hub)
}

/// The FHIR interactions of one resource type.
fn resource_routes<K: resource::ResourceKind>() -> Router<Hub> {
    let ty = K::TYPE;
    Router::new()
        .route(
            &format!("/fhir/{ty}"),
            get(resource::search::<K>).post(resource::create::<K>),
        )
        .route(
            &format!("/fhir/{ty}/{{id}}"),
            get(resource::read::<K>)
                .put(resource::update::<K>)
                .delete(resource::delete::<K>),
        )
        .route(
            &format!("/fhir/{ty}/{{id}}/_history"),
            get(resource::history::<K>),
        )
        .route(
            &format!("/fhir/{ty}/{{id}}/_history/{{vid}}"),
            get(resource::vread::<K>),
        )
}

/// Serve the API on `listener` until `shutdown`, then finish in-flight requests; every
/// connection within the limits and timeouts of [`crate::listener`].
pub async fn serve(
    hub: Hub,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(hub.clone());
    crate::listener::serve(hub, listener, app, crate::listener::Listener::Api, shutdown).await
}
