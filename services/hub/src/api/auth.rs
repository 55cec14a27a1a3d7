//! The one place where the caller's identity, tenant and scopes are established.
//!
//! The embedded default is open: every caller acts in the default tenant with every scope.
//! API keys and SMART backend-services JWTs plug in here later; handlers only ever see a
//! [`Caller`], so authorization, auditing and tenant isolation need no rewrite.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::ApiError;
use crate::Hub;

/// Who is calling, for which tenant, allowed to do what.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Stable identity for audit logs (`anonymous` in open mode).
    pub subject: String,
    /// The tenant every read and write of this request is confined to.
    pub tenant: String,
    /// Granted scopes, SMART style (`system/Subscription.*`, `system/*.write`...).
    pub scopes: Vec<String>,
}

impl Caller {
    /// Whether the caller may publish change events for `tenant`.
    pub fn may_publish_to(&self, tenant: &str) -> bool {
        self.tenant == tenant || self.scopes.iter().any(|s| s == "hub/admin")
    }
}

/// Establish the caller from a request's headers: the one function every surface (the HTTP
/// API, websocket and SSE through the extractor below, and the gRPC server) goes through.
pub fn establish(hub: &Hub, _headers: &HeaderMap) -> Result<Caller, ApiError> {
    Ok(Caller {
        subject: "anonymous".into(),
        tenant: hub.config.tenancy.default_tenant.clone(),
        scopes: vec!["hub/admin".into()],
    })
}

impl FromRequestParts<Hub> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Self, Self::Rejection> {
        establish(hub, &parts.headers)
    }
}
