//! The HTTP API (axum): FHIR endpoints under `/fhir`, change-event ingest at `/events`,
//! and `/health`.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Hub;
use subscriptions::SubscriptionKind;
use topics::TopicKind;

pub mod admin;
pub mod auth;
pub mod error;
pub mod events;
pub mod fhir_json;
pub mod health;
pub mod ingest;
pub mod metadata;
pub mod open_mode;
pub mod quarantine;
pub mod resource;
pub mod sse;
pub mod status;
pub mod subscriptions;
pub mod topics;
pub mod websocket;

pub use error::ApiError;

/// The router, with state.
pub fn router(hub: Hub) -> Router {
    let limit = hub.config.server.max_body_bytes;
    let open = hub.config.auth.mode == crate::config::AuthMode::Open;
    // browsers' EventSource reads across origins — but never from an open hub, which any
    // page the user opens could otherwise read (`open_mode`)
    let sse_route = if open {
        get(sse::stream)
    } else {
        get(sse::stream).layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods([axum::http::Method::GET])
                .allow_headers([axum::http::HeaderName::from_static("last-event-id")]),
        )
    };
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
            get(websocket::binding_token).post(websocket::binding_token),
        )
        .route("/fhir/$subscription-ws", get(websocket::connect))
        .route("/fhir/Subscription/{id}/$stream", sse_route)
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
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    // never the query: `?token=` carries a binding token
                    tracing::debug_span!("request", method = %req.method(),
                    path = %crate::telemetry::redacted_uri(req.uri()))
                },
            ),
        )
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            open_mode::loopback_only,
        ))
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

/// Serve the API on `listener` until `shutdown`, then finish in-flight requests.
///
/// Each connection must send a request's headers within `server.header_read_timeout_secs`
/// (slowloris and idle keep-alive connections are closed), and at most
/// `server.max_connections` are open at once: past that, new connections wait in the
/// kernel's accept queue instead of using up file descriptors.
pub async fn serve(
    hub: Hub,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let tls = crate::tls::server_config(&hub.config.tls, &[b"h2", b"http/1.1"])?
        .map(tokio_rustls::TlsAcceptor::from);
    crate::announce(
        &listener,
        "",
        if tls.is_some() { "https://" } else { "http://" },
    )?;
    let grace = std::time::Duration::from_secs(hub.config.server.shutdown_grace_secs);
    let header_timeout =
        std::time::Duration::from_secs(hub.config.server.header_read_timeout_secs.max(1));
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(
        hub.config.max_connections().max(1),
    ));
    let app = router(hub);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    loop {
        let permit = tokio::select! {
            p = std::sync::Arc::clone(&limit).acquire_owned() => p?,
            _ = shutdown.cancelled() => break,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => (stream, crate::auth::PeerAddr(addr.ip())),
                Err(e) => {
                    // out of file descriptors and the like: wait, never spin
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, watcher, tls) = (
            app.clone(),
            builder.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            // a connection that sends nothing at all is closed after the header timeout too
            // (hyper's own timer starts with the first byte)
            let mut first = [0u8; 1];
            let sent = matches!(
                tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                Ok(Ok(n)) if n > 0
            );
            if !sent {
                return;
            }
            match tls {
                None => {
                    // the peer's address travels with every request (refusals count per peer)
                    let service = tower::ServiceBuilder::new()
                        .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(addr);
                            req
                        })
                        .service(app);
                    let service = TowerToHyperService::new(service);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    // the handshake gets the same time as a request's headers
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    // a verified client certificate travels with every request
                    let peer = crate::tls::peer_of(tls.get_ref().1);
                    let service = tower::ServiceBuilder::new()
                        .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                            if let Some(p) = &peer {
                                req.extensions_mut().insert(p.clone());
                            }
                            req.extensions_mut().insert(addr);
                            req
                        })
                        .service(app);
                    let conn = builder
                        .serve_connection_with_upgrades(
                            TokioIo::new(tls),
                            TowerToHyperService::new(service),
                        )
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the grace period; closing them");
    }
    Ok(())
}
