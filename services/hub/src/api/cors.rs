//! Cross-origin reads for browser pages: the endpoints a dashboard in a browser needs (the
//! SSE `$stream` and `$get-ws-binding-token`) answer CORS preflights and carry
//! `Access-Control-Allow-Origin` for the origins in `cors.allowed_origins` (none by default;
//! never on an open hub, see `open_mode`). No other endpoint answers across origins.
//!
//! The hub never sends `Access-Control-Allow-Credentials`: a page cannot read an answer the
//! browser obtained with its cookies or client certificate, only one to a credential or a
//! binding token the page holds itself. So `*` is never combined with credentials.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::MethodRouter;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Config;
use crate::state::Hub;

/// How long a browser may keep a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS policy of the browser endpoints, from `cors.allowed_origins` (validated by
/// `Config::validate`: exact origins, or `*` alone).
pub fn layer(config: &Config) -> CorsLayer {
    let origins = &config.cors.allowed_origins;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    // the default `Vary` names Origin and the two preflight request headers
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(MAX_AGE)
}

/// Whether `origin` is one of `cors.allowed_origins` (or they allow any).
pub fn allows(config: &Config, origin: &HeaderValue) -> bool {
    config
        .cors
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.as_bytes() == origin.as_bytes())
}

/// `routes` answering browsers across origins. Its other methods keep the API's 405 (an
/// explicit fallback inside the layer: the router-wide one would replace a layered default
/// and leave preflights unanswered).
pub fn browser(routes: MethodRouter<Hub>, config: &Config) -> MethodRouter<Hub> {
    routes
        .fallback(super::error::method_not_allowed)
        .layer(layer(config))
}
