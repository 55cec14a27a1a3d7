//! The axum side of [`crate::auth`]: extractors that establish the caller of a request.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::ApiError;
pub use crate::auth::Caller;
use crate::state::Hub;

impl FromRequestParts<Hub> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<crate::tls::PeerCertificate>();
        let addr = peer_addr(parts);
        crate::auth::establish(hub, &parts.headers, peer, addr).await
    }
}

/// The network peer of a request, when the listener recorded it.
pub fn peer_addr(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<crate::auth::PeerAddr>().map(|a| a.0)
}

/// The caller when the request carries a credential, `None` when it carries none (a
/// websocket upgrade: its binding token authenticates each bind). A credential that is
/// sent is checked like anywhere else.
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Option<Caller>);

impl FromRequestParts<Hub> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<crate::tls::PeerCertificate>();
        if crate::auth::has_credential(&parts.headers, peer)
            || hub.config.auth.mode == crate::config::AuthMode::Open
        {
            crate::auth::establish(hub, &parts.headers, peer, peer_addr(parts))
                .await
                .map(Some)
                .map(MaybeCaller)
        } else {
            Ok(MaybeCaller(None))
        }
    }
}
