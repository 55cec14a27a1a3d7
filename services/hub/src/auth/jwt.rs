//! OAuth2 bearer tokens as SMART Backend Services issues them: JWTs checked against the JWKS
//! of a configured issuer (`auth.issuers`). Signature (RS256/384/512, ES256/384, PS*; never
//! `none` or HMAC), `iss`, `aud`, `exp`, `nbf` with a configured clock skew. Keys are cached
//! per issuer and fetched again for an unknown `kid`, at most once per
//! `jwks_min_refresh_secs` (a stream of tokens with made-up `kid`s cannot make the hub hammer
//! the identity provider).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::IssuerConfig;

/// What a valid token says.
#[derive(Debug, Clone)]
pub struct Claims {
    pub issuer: String,
    pub subject: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    pub patient: Option<String>,
    /// `exp`, in seconds since the epoch.
    pub expires: Option<i64>,
}

/// Why a token was refused (shown to the client: none of it is secret).
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the bearer token is not a JWT")]
    Malformed,
    #[error("the token's issuer is not one this hub trusts")]
    UnknownIssuer,
    #[error("the token's algorithm {0} is not accepted for its issuer")]
    Algorithm(String),
    #[error("no key with the token's kid in the issuer's JWKS")]
    UnknownKey,
    #[error("the issuer's JWKS cannot be read: {0}")]
    Jwks(String),
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the token names no tenant")]
    NoTenant,
    #[error("the token's issuer is not trusted for tenant '{0}'")]
    TenantNotAllowed(String),
}

struct IssuerKeys {
    keys: HashMap<String, DecodingKey>,
    /// Keys without a `kid` (tried when the token names none).
    unnamed: Vec<DecodingKey>,
    fetched: Option<Instant>,
}

/// JWKS per issuer, fetched on demand.
pub struct Verifier {
    issuers: Vec<IssuerConfig>,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, IssuerKeys>>,
    min_refresh: Duration,
    max_age: Duration,
}

/// The `iss` of a token, read before its signature is checked (to find the issuer's keys).
fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

fn claim_str(claims: &Value, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

impl Verifier {
    pub fn new(issuers: Vec<IssuerConfig>, min_refresh: Duration) -> Verifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Verifier {
            issuers,
            http,
            cache: Mutex::default(),
            min_refresh,
            max_age: Duration::from_secs(3600),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    async fn fetch(&self, issuer: &IssuerConfig) -> Result<IssuerKeys, JwtError> {
        let jwks: JwkSet = self
            .http
            .get(&issuer.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| JwtError::Jwks(e.without_url().to_string()))?
            .json()
            .await
            .map_err(|e| JwtError::Jwks(e.without_url().to_string()))?;
        let mut out = IssuerKeys {
            keys: HashMap::new(),
            unnamed: Vec::new(),
            fetched: Some(Instant::now()),
        };
        for jwk in &jwks.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    out.keys.insert(kid.clone(), key);
                }
                None => out.unnamed.push(key),
            }
        }
        tracing::info!(issuer = %issuer.issuer, keys = out.keys.len() + out.unnamed.len(), "fetched JWKS");
        Ok(out)
    }

    /// The keys to try for `kid`, fetching the JWKS when it is unknown (rate-limited).
    async fn keys_for(
        &self,
        issuer: &IssuerConfig,
        kid: Option<&str>,
    ) -> Result<Vec<DecodingKey>, JwtError> {
        let mut cache = self.cache.lock().await;
        let lookup = |k: &IssuerKeys| -> Vec<DecodingKey> {
            match kid {
                Some(kid) => k.keys.get(kid).cloned().into_iter().collect(),
                None => k.unnamed.iter().chain(k.keys.values()).cloned().collect(),
            }
        };
        let entry = cache.get(&issuer.issuer);
        let fresh = entry
            .and_then(|e| e.fetched)
            .is_some_and(|t| t.elapsed() < self.max_age);
        if let Some(e) = entry
            && fresh
        {
            let found = lookup(e);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let may_fetch = entry
            .and_then(|e| e.fetched)
            .is_none_or(|t| t.elapsed() >= self.min_refresh);
        if !may_fetch {
            return Err(JwtError::UnknownKey);
        }
        match self.fetch(issuer).await {
            Ok(keys) => {
                let found = lookup(&keys);
                cache.insert(issuer.issuer.clone(), keys);
                if found.is_empty() {
                    Err(JwtError::UnknownKey)
                } else {
                    Ok(found)
                }
            }
            Err(e) => {
                // remember the attempt, keep the old keys
                let old = cache.remove(&issuer.issuer);
                let mut kept = old.unwrap_or(IssuerKeys {
                    keys: HashMap::new(),
                    unnamed: Vec::new(),
                    fetched: None,
                });
                kept.fetched = Some(Instant::now());
                let found = lookup(&kept);
                cache.insert(issuer.issuer.clone(), kept);
                if found.is_empty() { Err(e) } else { Ok(found) }
            }
        }
    }

    /// Check a token and read its claims.
    pub async fn verify(&self, token: &str, default_tenant: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let iss = peek_issuer(token).ok_or(JwtError::Malformed)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(JwtError::UnknownIssuer)?;
        let allowed = issuer
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .collect::<Vec<_>>();
        if !allowed.contains(&header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_issuer(&[&issuer.issuer]);
        v.set_audience(&[&issuer.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = issuer.leeway_secs;
        let keys = self.keys_for(issuer, header.kid.as_deref()).await?;
        let mut last = JwtError::UnknownKey;
        for key in keys {
            match jsonwebtoken::decode::<Value>(token, &key, &v) {
                Ok(data) => return claims_of(issuer, &data.claims, default_tenant),
                Err(e) => last = JwtError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }
}

fn claims_of(issuer: &IssuerConfig, c: &Value, default_tenant: &str) -> Result<Claims, JwtError> {
    let subject = claim_str(c, "sub").ok_or(JwtError::Invalid("no sub".into()))?;
    let tenant = claim_str(c, &issuer.tenant_claim)
        .or_else(|| (!issuer.tenant.is_empty()).then(|| issuer.tenant.clone()))
        .unwrap_or_else(|| default_tenant.to_owned());
    if !hub_fhir::event::is_tenant_name(&tenant) {
        return Err(JwtError::NoTenant);
    }
    // an issuer speaks for the tenants it is configured for, not for whichever a token names
    let allowed = if issuer.tenants.is_empty() {
        let own = if issuer.tenant.is_empty() {
            default_tenant
        } else {
            issuer.tenant.as_str()
        };
        own == tenant
    } else {
        issuer.tenants.contains(&tenant)
    };
    if !allowed {
        return Err(JwtError::TenantNotAllowed(tenant));
    }
    let scopes: Vec<String> = match c.get(&issuer.scope_claim) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    // scopes that span every tenant only from an issuer trusted with them
    let scopes = scopes
        .into_iter()
        .filter(|s| issuer.operator || !super::Scopes::parse([s.as_str()]).spans_tenants())
        .collect();
    // the patient context goes into compartment searches: a FHIR id and nothing else (a
    // "p1,p2" would read as either patient)
    let patient = claim_str(c, "patient");
    if let Some(p) = &patient
        && !hub_fhir::event::is_fhir_id(p)
    {
        return Err(JwtError::Invalid(format!(
            "the patient claim is not a FHIR id ({} characters)",
            p.chars().count()
        )));
    }
    Ok(Claims {
        issuer: issuer.issuer.clone(),
        subject,
        tenant,
        scopes,
        patient,
        expires: c.get("exp").and_then(Value::as_i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer(extra: Value) -> IssuerConfig {
        let mut v = json!({"issuer": "https://idp.test", "jwks_url": "https://idp.test/jwks",
            "audience": "hub"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_issuer_speaks_only_for_its_tenants() {
        let a = issuer(json!({"tenant": "a"}));
        let ok = claims_of(&a, &json!({"sub": "c", "tenant": "a"}), "default").unwrap();
        assert_eq!(ok.tenant, "a");
        let other = claims_of(&a, &json!({"sub": "c", "tenant": "b"}), "default");
        assert!(
            matches!(other, Err(JwtError::TenantNotAllowed(ref t)) if t == "b"),
            "{other:?}"
        );
        // without `tenant`: the default tenant only
        let plain = issuer(json!({}));
        assert!(claims_of(&plain, &json!({"sub": "c"}), "default").is_ok());
        assert!(claims_of(&plain, &json!({"sub": "c", "tenant": "x"}), "default").is_err());
        // a list
        let two = issuer(json!({"tenants": ["a", "b"]}));
        assert!(claims_of(&two, &json!({"sub": "c", "tenant": "b"}), "default").is_ok());
        assert!(claims_of(&two, &json!({"sub": "c", "tenant": "c"}), "default").is_err());
    }

    #[test]
    fn tenant_spanning_scopes_only_from_an_operator_issuer() {
        let claims = json!({"sub": "c", "tenant": "a",
            "scope": "hub/operator hub/metrics hub/admin system/*.rs"});
        let a = issuer(json!({"tenant": "a"}));
        let c = claims_of(&a, &claims, "default").unwrap();
        assert_eq!(c.scopes, ["hub/admin", "system/*.rs"]);
        let op = issuer(json!({"tenant": "a", "operator": true}));
        assert_eq!(claims_of(&op, &claims, "default").unwrap().scopes.len(), 4);
    }

    /// A patient claim is a FHIR id: one that is a list, or a search, is refused.
    #[test]
    fn the_patient_claim_must_be_an_id() {
        let iss = issuer(json!({}));
        for bad in ["p1,p2", "p1|p2", "p1 p2", "", "Patient/p1"] {
            let c = json!({"sub": "c", "scope": "patient/Observation.rs", "patient": bad});
            assert!(
                matches!(claims_of(&iss, &c, "default"), Err(JwtError::Invalid(_))),
                "{bad:?}"
            );
        }
        let c = json!({"sub": "c", "scope": "patient/Observation.rs", "patient": "p-1.a"});
        let got = claims_of(&iss, &c, "default").map(|c| c.patient);
        assert_eq!(got.ok().flatten().as_deref(), Some("p-1.a"));
    }
}
