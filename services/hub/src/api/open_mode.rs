//! What keeps an open hub (`auth.mode = "open"`: no credential, every caller the operator)
//! to the machine it runs on. It listens on loopback only, but a web page the user opens can
//! still reach it: through CORS, or by DNS rebinding (a name the page controls made to
//! resolve to 127.0.0.1, so the browser sends the page's own `Host`). So an open hub answers
//! only requests whose `Host` is a loopback name or address, and sends no CORS headers.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hub_fhir::{IssueType, OperationOutcome};

use super::ApiError;
use crate::config::AuthMode;
use crate::state::Hub;

/// Whether `host` (a `Host` value or URI authority, with or without a port) names this
/// machine: `localhost`, `*.localhost`, 127.0.0.0/8 or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((addr, _)) => addr,
            None => return false,
        }
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// In open mode, 421 for a request whose `Host` (or HTTP/2 authority) is not loopback.
pub async fn loopback_only(State(hub): State<Hub>, req: Request, next: Next) -> Response {
    if hub.config.auth.mode != AuthMode::Open {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        // no Host at all: not a browser (every browser request names one)
        None => next.run(req).await,
        Some(h) if is_loopback_host(&h) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            OperationOutcome::error(
                IssueType::Forbidden,
                "this hub runs in open mode (no credentials) and answers only requests to a loopback host name (localhost, 127.0.0.1, [::1])",
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts_and_others() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]",
            "[::1",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
