//! Who is calling: the one place where a request's credential becomes a [`Caller`] (tenant,
//! scopes, patient context), for every surface — the HTTP API, websocket and SSE upgrades,
//! and the gRPC server.
//!
//! `auth.mode = "open"` (a laptop: no credential needed; the hub refuses to start open on a
//! non-loopback address) or `"required"` (production). Credentials are `Authorization:
//! Bearer` with an API key (`fhk_…`, [`keys`]) or a JWT from a configured issuer ([`jwt`]).
//! Every authenticated caller is rate-limited per credential (`auth.rate_limit_per_sec`,
//! `auth.rate_limit_burst`): 429 with `Retry-After` and `RateLimit-*` headers.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hub_fhir::{IssueType, OperationOutcome};
use hub_store::{ApiKeyRow, NewAudit};
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::config::AuthMode;
use crate::state::Hub;

pub mod holder;
pub mod jwt;
pub mod key_check;
pub mod keys;
pub mod refusals;
pub mod scopes;
pub mod sealed;

pub use scopes::{Access, Perm, Scopes};

/// The network peer of a request (the listener puts it into each request's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::IpAddr);

/// The caller of an open (loopback-only) hub: limits per credential do not apply to it.
pub const ANONYMOUS: &str = "anonymous";

/// Who is calling, for which tenant, allowed to do what.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Stable identity for the audit trail: `anonymous` (open mode), `key:<id>` or
    /// `jwt:<issuer>#<sub>`.
    pub subject: String,
    /// The tenant every read and write of this request is confined to.
    pub tenant: String,
    pub scopes: Scopes,
    /// The scopes as granted, for the record a subscription keeps of its owner.
    pub scope_text: String,
    /// The patient context of `patient/` scopes (the token's `patient` claim, a key's patient).
    pub patient: Option<String>,
    /// The API key this caller used, if any (a subscription it owns follows the key's
    /// current scopes, and stops receiving when the key is revoked).
    pub key_id: Option<String>,
    /// When the credential ends (an API key's `expires_at`, a token's `exp`): an open
    /// stream of this caller ends then.
    pub expires: Option<time::OffsetDateTime>,
}

fn forbidden(msg: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        OperationOutcome::error(IssueType::Forbidden, msg),
    )
}

impl Caller {
    fn open(tenant: &str) -> Caller {
        Caller {
            subject: ANONYMOUS.into(),
            tenant: tenant.to_owned(),
            scopes: Scopes::all(),
            scope_text: "hub/operator system/*.cruds".into(),
            patient: None,
            key_id: None,
            expires: None,
        }
    }

    /// The caller of a usable API key, as the key is now.
    pub fn of_key(row: ApiKeyRow) -> Caller {
        Caller {
            subject: format!("key:{}", row.id),
            tenant: row.tenant,
            scopes: Scopes::parse([row.scopes.as_str()]),
            scope_text: row.scopes,
            patient: row.patient,
            expires: row
                .expires_at
                .as_deref()
                .and_then(hub_fhir::time_fmt::parse_instant),
            key_id: Some(row.id),
        }
    }

    /// Whether the caller may publish change events for `tenant`: `hub/publish` or
    /// `hub/admin` for its own tenant, `hub/operator` for any.
    pub fn may_publish_to(&self, tenant: &str) -> bool {
        self.scopes.is_operator() || (self.scopes.may_publish() && self.tenant == tenant)
    }

    /// Whether the caller administers `tenant`: `hub/admin` of that tenant, or the operator.
    pub fn administers(&self, tenant: &str) -> bool {
        self.scopes.is_operator() || (self.scopes.is_admin() && self.tenant == tenant)
    }

    /// 403 unless the caller may use `perm` on the hub's `resource_type` resources.
    pub fn require(&self, resource_type: &str, perm: Perm) -> Result<(), ApiError> {
        match self.scopes.access(resource_type, perm) {
            Access::All => Ok(()),
            // patient/Subscription.* does not exist for the hub's own resources
            Access::Patient | Access::None => Err(forbidden(format!(
                "this needs scope system/{resource_type}.{} (or broader)",
                perm.letter()
            ))),
        }
    }

    /// 403 unless the caller holds `hub/admin` (of its own tenant) or `hub/operator`.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.scopes.is_admin() {
            Ok(())
        } else {
            Err(forbidden("this needs scope hub/admin"))
        }
    }

    /// 403 unless the caller administers `tenant` (`hub/admin` there, or `hub/operator`).
    pub fn require_admin_of(&self, tenant: &str) -> Result<(), ApiError> {
        self.require_admin()?;
        if self.administers(tenant) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "hub/admin reaches the credential's own tenant only; tenant '{tenant}' needs hub/operator"
            )))
        }
    }

    /// What a subscription written by this caller records of it.
    pub fn owner(&self) -> Owner {
        Owner {
            subject: self.subject.clone(),
            key: self.key_id.clone(),
            scopes: self.scope_text.clone(),
            patient: self.patient.clone(),
        }
    }
}

/// The owner of a subscription, as stored with it (JSON in `subscriptions.owner`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub scopes: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

impl Owner {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(s: &str) -> Option<Owner> {
        serde_json::from_str(s).ok()
    }

    /// How the stored JSON of every owner with this subject begins (the subject is the first
    /// field), for counting a credential's subscriptions.
    pub fn subject_prefix(&self) -> String {
        format!(
            "{{\"subject\":{},",
            serde_json::to_string(&self.subject).unwrap_or_default()
        )
    }
}

/// What a subscription may receive: its owner's grants now.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub scopes: Scopes,
    pub patient: Option<String>,
    /// When an API key's grant ends.
    pub expires: Option<time::OffsetDateTime>,
}

impl Grant {
    /// The grant of `owner`: for an API key, the key's scopes now (nothing once revoked or
    /// expired); for a token, the scopes it carried at the subscription's last write.
    pub fn of(owner: &Owner, keys: &HashMap<String, ApiKeyRow>) -> Grant {
        match &owner.key {
            Some(id) => match keys.get(id).filter(|k| key_usable(k)) {
                Some(k) => Grant {
                    scopes: Scopes::parse([k.scopes.as_str()]),
                    patient: k.patient.clone(),
                    expires: k
                        .expires_at
                        .as_deref()
                        .and_then(hub_fhir::time_fmt::parse_instant),
                },
                None => Grant {
                    scopes: Scopes::default(),
                    patient: None,
                    expires: None,
                },
            },
            None => Grant {
                scopes: Scopes::parse([owner.scopes.as_str()]),
                patient: owner.patient.clone(),
                expires: None,
            },
        }
    }

    /// Whether a notification about `event` may go to the subscription.
    pub fn may_receive(&self, event: &hub_fhir::ChangeEvent, now: time::OffsetDateTime) -> bool {
        if self.expires.is_some_and(|end| now >= end) {
            return false;
        }
        match self.scopes.access(&event.resource_type, Perm::Read) {
            Access::All => true,
            Access::Patient => match (&self.patient, &event.resource) {
                (Some(p), Some(r)) => hub_fhir::compartment::in_patient_compartment(r, p),
                // a delete without the resource cannot be placed in a compartment
                _ => false,
            },
            Access::None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(resource: serde_json::Value) -> hub_fhir::ChangeEvent {
        hub_fhir::ChangeEvent::from_resource(resource, None, "t").expect("a resource")
    }

    #[test]
    fn grants_decide_what_a_subscription_receives() {
        let now = time::OffsetDateTime::now_utc();
        let obs = |id: &str, patient: &str| {
            event(
                json!({"resourceType": "Observation", "id": id, "status": "final",
                "code": {"text": "x"}, "subject": {"reference": format!("Patient/{patient}")}}),
            )
        };
        let pat = Grant {
            scopes: Scopes::parse(["patient/Observation.rs"]),
            patient: Some("p1".into()),
            expires: None,
        };
        assert!(pat.may_receive(&obs("a", "p1"), now));
        assert!(!pat.may_receive(&obs("b", "p2"), now));
        let enc = event(
            json!({"resourceType": "Encounter", "id": "e", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}}),
        );
        assert!(!pat.may_receive(&enc, now), "no Encounter scope");
        let sys = Grant {
            scopes: Scopes::parse(["system/Observation.rs"]),
            patient: None,
            expires: Some(now + time::Duration::hours(1)),
        };
        assert!(sys.may_receive(&obs("c", "p2"), now));
        assert!(
            !sys.may_receive(&obs("c", "p2"), now + time::Duration::hours(2)),
            "expired"
        );
        // an API key owner follows the key: revoked → nothing
        let owner = Owner {
            subject: "key:k".into(),
            key: Some("k".into()),
            scopes: "system/*.rs".into(),
            patient: None,
        };
        let mut key = ApiKeyRow {
            id: "k".into(),
            tenant: "t".into(),
            name: String::new(),
            secret_hash: String::new(),
            scopes: "system/Observation.rs".into(),
            patient: None,
            created_at: String::new(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        let keys = HashMap::from([("k".to_owned(), key.clone())]);
        assert!(Grant::of(&owner, &keys).may_receive(&obs("d", "p"), now));
        key.revoked_at = Some("2026-01-01T00:00:00Z".into());
        let keys = HashMap::from([("k".to_owned(), key)]);
        assert!(!Grant::of(&owner, &keys).may_receive(&obs("d", "p"), now));
        assert!(!Grant::of(&owner, &HashMap::new()).may_receive(&obs("d", "p"), now));
    }
}

/// Not revoked and not expired.
pub fn key_usable(k: &ApiKeyRow) -> bool {
    if k.revoked_at.is_some() {
        return false;
    }
    match k
        .expires_at
        .as_deref()
        .map(hub_fhir::time_fmt::parse_instant)
    {
        None => true,
        Some(Some(at)) => time::OffsetDateTime::now_utc() < at,
        Some(None) => false,
    }
}

/// Open stream connections per credential.
#[derive(Debug, Default)]
struct StreamCounts(Mutex<HashMap<String, usize>>);

/// Held while a stream connection is open; frees its place when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    counts: Arc<StreamCounts>,
    subject: String,
    /// Counted in `fhir_hub_stream_connections` while the stream lives.
    _open: crate::metrics::StreamOpen,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.counts.0.lock()
            && let Some(n) = m.get_mut(&self.subject)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.subject);
            }
        }
    }
}

/// The authentication state a hub process keeps.
pub struct Authenticator {
    pub verifier: jwt::Verifier,
    /// Refused credentials, counted per peer (audited in aggregate) and budgeted.
    pub refusals: Arc<refusals::Refusals>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    limit_per_sec: u32,
    streams: Arc<StreamCounts>,
    /// When each key's use was last recorded (the store is told at most once a minute).
    touched: Mutex<HashMap<String, std::time::Instant>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(config: &crate::config::AuthConfig) -> Authenticator {
        let limiter = NonZeroU32::new(config.rate_limit_per_sec).map(|rate| {
            let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Authenticator {
            verifier: jwt::Verifier::new(
                config.issuers.clone(),
                Duration::from_secs(config.jwks_min_refresh_secs),
            ),
            refusals: Arc::new(refusals::Refusals::new(config.refusals_per_minute_per_peer)),
            limiter,
            limit_per_sec: config.rate_limit_per_sec,
            streams: Arc::default(),
            touched: Mutex::default(),
        }
    }

    /// 429 when `subject` is over its rate.
    pub(crate) fn check_rate(&self, subject: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // keys are credential subjects, few; the limiter forgets idle ones on its own schedule
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        match limiter.check_key(&subject.to_owned()) {
            Ok(_) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    OperationOutcome::error(
                        IssueType::Throttled,
                        format!("too many requests for this credential; retry in {secs} s"),
                    ),
                )
                .with_header(header::RETRY_AFTER, secs.to_string())
                .with_header_name("ratelimit-limit", self.limit_per_sec.to_string())
                .with_header_name("ratelimit-remaining", "0".into())
                .with_header_name("ratelimit-reset", secs.to_string()))
            }
        }
    }

    /// A place for one more open stream of `caller`, or 429 past
    /// `auth.max_streams_per_credential` (the open caller of a loopback-only hub is not limited).
    pub fn stream_slot(
        &self,
        caller: &Caller,
        max: usize,
        open: crate::metrics::StreamOpen,
    ) -> Result<StreamSlot, ApiError> {
        let max = if caller.subject == ANONYMOUS { 0 } else { max };
        let mut m = self
            .streams
            .0
            .lock()
            .map_err(|_| ApiError::unavailable("stream accounting is unavailable"))?;
        let n = m.entry(caller.subject.clone()).or_insert(0);
        if max > 0 && *n >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                OperationOutcome::error(
                    IssueType::Throttled,
                    format!(
                        "this credential already has {max} open streams (auth.max_streams_per_credential)"
                    ),
                ),
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            counts: Arc::clone(&self.streams),
            subject: caller.subject.clone(),
            _open: open,
        })
    }

    fn should_record_use(&self, subject: &str) -> bool {
        self.should_touch(&format!("use:{subject}"))
    }

    fn should_touch(&self, key: &str) -> bool {
        let Ok(mut m) = self.touched.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        if m.len() > 10_000 {
            m.clear();
        }
        match m.get(key) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
            _ => {
                m.insert(key.to_owned(), now);
                true
            }
        }
    }
}

fn unauthorized(msg: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        OperationOutcome::error(IssueType::Security, msg),
    )
    .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"fhir-hub\"".into())
}

/// A refused credential: counted against the peer (one audit row per peer and window, never
/// one per request, and nothing the client chose beyond a sanitized prefix), and the 401.
fn refuse(
    hub: &Hub,
    peer: &str,
    tenant: &str,
    why: refusals::Why,
    presented: Option<&str>,
    msg: impl Into<String>,
) -> ApiError {
    match hub.auth.refusals.refused(tenant, peer, why, presented) {
        Some(wait) => too_many_refusals(wait),
        None => unauthorized(msg),
    }
}

/// Append audit rows (group commit, `crate::audit`) for what has already happened (a change,
/// a credential's use); returns once they are stored or the failure is logged.
pub async fn record(hub: &Hub, rows: Vec<NewAudit>) {
    let _ = hub.audit.record(rows).await;
}

/// Append the audit rows of a disclosure, waiting until they are stored. With
/// `audit.fail_closed` a failed write is [`crate::audit::Unaudited`]: the disclosure must not
/// happen; otherwise it is logged (by the writer) and the disclosure goes ahead.
pub async fn record_disclosure(
    hub: &Hub,
    rows: Vec<NewAudit>,
) -> Result<(), crate::audit::Unaudited> {
    match hub.audit.record(rows).await {
        Err(crate::audit::WriteFailed) if hub.config.audit.fail_closed => {
            Err(crate::audit::Unaudited)
        }
        _ => Ok(()),
    }
}

const REFUSED: &str = "the API key is unknown, revoked or expired";

async fn by_key(hub: &Hub, peer: &str, id: &str, secret: &str) -> Result<Caller, ApiError> {
    let row = hub.store.api_key(id).await?;
    let Some(row) = row.filter(|k| keys::same_digest(&keys::hash_secret(secret), &k.secret_hash))
    else {
        let tenant = &hub.config.tenancy.default_tenant;
        return Err(refuse(
            hub,
            peer,
            tenant,
            refusals::Why::Key,
            Some(id),
            REFUSED,
        ));
    };
    as_key(hub, peer, row).await
}

/// A verified client certificate listed in `auth.client_certificates`: the key it maps to.
async fn by_certificate(
    hub: &Hub,
    peer: &str,
    cert: &crate::tls::PeerCertificate,
) -> Result<Caller, ApiError> {
    let tenant = &hub.config.tenancy.default_tenant;
    let Some(id) = hub.config.auth.client_certificates.get(&cert.0) else {
        return Err(refuse(
            hub,
            peer,
            tenant,
            refusals::Why::Certificate,
            Some(&cert.0),
            "the client certificate is not mapped to a credential (auth.client_certificates)",
        ));
    };
    let Some(row) = hub.store.api_key(id).await? else {
        return Err(refuse(
            hub,
            peer,
            tenant,
            refusals::Why::Key,
            Some(id),
            REFUSED,
        ));
    };
    as_key(hub, peer, row).await
}

/// The caller of a usable key.
async fn as_key(hub: &Hub, peer: &str, row: ApiKeyRow) -> Result<Caller, ApiError> {
    let id = row.id.clone();
    let id = id.as_str();
    if !key_usable(&row) {
        let why = refusals::Why::Key;
        return Err(refuse(hub, peer, &row.tenant, why, Some(id), REFUSED));
    }
    if hub.auth.should_touch(&format!("key:{id}")) {
        let store = hub.store.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(&id).await {
                tracing::warn!(error = %e, "could not record an API key's last use");
            }
        });
    }
    Ok(Caller::of_key(row))
}

async fn by_jwt(hub: &Hub, peer: &str, token: &str) -> Result<Caller, ApiError> {
    let default_tenant = &hub.config.tenancy.default_tenant;
    if hub.auth.verifier.is_empty() {
        return Err(unauthorized(
            "the bearer token is not an API key and this hub trusts no token issuer (auth.issuers)",
        ));
    }
    match hub.auth.verifier.verify(token, default_tenant).await {
        Ok(c) => {
            let caller = Caller {
                subject: format!("jwt:{}#{}", c.issuer, c.subject),
                tenant: c.tenant,
                scopes: Scopes::parse(c.scopes.iter().map(String::as_str)),
                scope_text: c.scopes.join(" "),
                patient: c.patient,
                key_id: None,
                expires: c
                    .expires
                    .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()),
            };
            // A token client's subscriptions follow the grant it presents now: a client whose
            // token lost a scope stops receiving those resources (a grant not seen in the last
            // minute is written through).
            let seen = format!(
                "grant:{}:{}:{}",
                caller.subject,
                caller.scope_text,
                caller.patient.as_deref().unwrap_or("")
            );
            if hub.auth.should_touch(&seen) {
                let (hub, owner) = (hub.clone(), caller.owner());
                let tenant = caller.tenant.clone();
                tokio::spawn(async move {
                    let r = hub
                        .store
                        .refresh_owner(&tenant, &owner.subject_prefix(), &owner.to_json())
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "could not refresh a token client's grant");
                    }
                });
            }
            Ok(caller)
        }
        Err(e) => {
            let why = refusals::Why::Token;
            Err(refuse(hub, peer, default_tenant, why, None, e.to_string()))
        }
    }
}

/// 429 for a refusal from a peer over its refusal budget.
fn too_many_refusals(wait: std::time::Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        OperationOutcome::error(
            IssueType::Throttled,
            format!("too many refused credentials from this address; retry in {secs} s"),
        ),
    )
    .with_header(header::RETRY_AFTER, secs.to_string())
}

/// Establish the caller from a request's headers: the one function every surface goes
/// through. `None` in open mode without credentials means the open caller. `addr` is the
/// network peer, which refused credentials are counted against.
pub async fn establish(
    hub: &Hub,
    headers: &HeaderMap,
    peer: Option<&crate::tls::PeerCertificate>,
    addr: Option<std::net::IpAddr>,
) -> Result<Caller, ApiError> {
    let token = credential(headers)?;
    let from = refusals::peer_key(addr);
    let caller = match token {
        // a bearer credential wins; without one, a mapped client certificate
        None if let Some(p) = peer => by_certificate(hub, &from, p).await?,
        None if hub.config.auth.mode == AuthMode::Open => {
            return Ok(Caller::open(&hub.config.tenancy.default_tenant));
        }
        None => {
            return Err(unauthorized(
                "this hub needs a credential: send Authorization: Bearer <API key or token>",
            ));
        }
        Some(token) => match keys::split(token) {
            Some((id, secret)) => by_key(hub, &from, id, secret).await?,
            None => by_jwt(hub, &from, token).await?,
        },
    };
    if caller.subject != ANONYMOUS {
        hub.auth.check_rate(&caller.subject)?;
    }
    // credential use in the audit trail: at most once a minute per credential and process
    if caller.subject != ANONYMOUS && hub.auth.should_record_use(&caller.subject) {
        let (hub, row) = (
            hub.clone(),
            NewAudit {
                tenant: caller.tenant.clone(),
                kind: "credential".into(),
                action: "E".into(),
                agent: caller.subject.clone(),
                outcome: "0".into(),
                detail: Some("credential used".into()),
                ..Default::default()
            },
        );
        tokio::spawn(async move { record(&hub, vec![row]).await });
    }
    Ok(caller)
}

/// The bearer token of a request, if it sends one.
fn credential(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthorized(
            "the Authorization header must be 'Bearer <API key or token>'",
        ));
    }
    Ok(Some(token.trim()))
}

/// Whether a request carries a credential (websocket upgrades may come without one: a
/// binding token authenticates their binds).
pub fn has_credential(headers: &HeaderMap, peer: Option<&crate::tls::PeerCertificate>) -> bool {
    headers.contains_key(header::AUTHORIZATION) || peer.is_some()
}
