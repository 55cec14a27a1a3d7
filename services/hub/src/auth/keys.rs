//! API key tokens: `fhk_<id>_<secret>`. The id (16 hex digits) finds the stored key; only a
//! SHA-256 of the secret (32 random bytes, base64url) is stored, so a copy of the database
//! holds no usable key. Keys are shown once, when created.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "fhk_";

/// A freshly made key: its id, the token to hand out (once), and the hash to store.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub token: String,
    pub secret_hash: String,
}

pub fn hash_secret(secret: &str) -> String {
    let d = Sha256::digest(format!("fhir-hub api key\n{secret}"));
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn generate() -> NewKey {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    NewKey {
        token: format!("{PREFIX}{id}_{secret}"),
        secret_hash: hash_secret(&secret),
        id,
    }
}

/// `(id, secret)` of a token that has the key form.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 16
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && (16..=128).contains(&secret.len());
    ok.then_some((id, secret))
}

/// Compare two hex digests without an early exit.
pub fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What a new key is for.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub tenant: String,
    pub name: String,
    /// Space-separated.
    pub scopes: String,
    pub patient: Option<String>,
    pub expires_at: Option<String>,
}

/// Why a key cannot be made as asked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] hub_store::StoreError),
}

/// The scopes of a key, each one the hub understands (a typo must not silently grant
/// nothing), space-separated.
pub fn check_scopes(scopes: &str) -> Result<Vec<&str>, KeyError> {
    let list: Vec<&str> = scopes.split_whitespace().collect();
    if list.is_empty() {
        return Err(KeyError::Invalid(
            "a key needs at least one scope (like 'system/Subscription.cruds system/Observation.rs')"
                .into(),
        ));
    }
    if let Some(bad) = list
        .iter()
        .find(|s| super::Scopes::parse([**s]) == super::Scopes::default())
    {
        return Err(KeyError::Invalid(format!(
            "scope '{bad}' is not one the hub understands (SMART v2 system/ or patient/ scopes, hub/operator, hub/admin, hub/publish, hub/metrics)"
        )));
    }
    Ok(list)
}

/// Check a key's spec, store it, and return the row with the token (shown once).
pub async fn create(
    store: &hub_store::Store,
    spec: KeySpec,
) -> Result<(hub_store::ApiKeyRow, String), KeyError> {
    if !hub_fhir::event::is_tenant_name(&spec.tenant) {
        return Err(KeyError::Invalid(format!(
            "tenant '{}' must be 1-64 characters of [a-z0-9-_]",
            spec.tenant
        )));
    }
    let scopes = check_scopes(&spec.scopes)?;
    if scopes.iter().any(|s| s.starts_with("patient/")) && spec.patient.is_none() {
        return Err(KeyError::Invalid(
            "patient/ scopes need a patient (the key's patient context)".into(),
        ));
    }
    if let Some(p) = &spec.patient
        && !hub_fhir::event::is_fhir_id(p)
    {
        return Err(KeyError::Invalid(format!("patient '{p}' is not a FHIR id")));
    }
    if let Some(at) = &spec.expires_at
        && hub_fhir::time_fmt::parse_instant(at).is_none()
    {
        return Err(KeyError::Invalid(format!(
            "expiry '{at}' is not an instant like 2027-01-01T00:00:00Z"
        )));
    }
    if spec.name.len() > 200 {
        return Err(KeyError::Invalid(
            "a key name has at most 200 characters".into(),
        ));
    }
    let made = generate();
    let row = store
        .create_api_key(&hub_store::ApiKeyRow {
            id: made.id,
            tenant: spec.tenant,
            name: spec.name,
            secret_hash: made.secret_hash,
            scopes: scopes.join(" "),
            patient: spec.patient,
            created_at: String::new(),
            expires_at: spec.expires_at,
            revoked_at: None,
            last_used_at: None,
        })
        .await?;
    Ok((row, made.token))
}

/// A key as operators see it (never its hash).
pub fn to_json(k: &hub_store::ApiKeyRow) -> serde_json::Value {
    serde_json::json!({
        "id": k.id,
        "tenant": k.tenant,
        "name": k.name,
        "scopes": k.scopes,
        "patient": k.patient,
        "createdAt": k.created_at,
        "expiresAt": k.expires_at,
        "revokedAt": k.revoked_at,
        "lastUsedAt": k.last_used_at,
        "usable": super::key_usable(k),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_split_and_verify() {
        let k = generate();
        let (id, secret) = split(&k.token).expect("key form");
        assert_eq!(id, k.id);
        assert!(same_digest(&hash_secret(secret), &k.secret_hash));
        assert!(!same_digest(&hash_secret("other"), &k.secret_hash));
        for bad in [
            "",
            "fhk_",
            "fhk_abc_def",
            "Bearer x",
            "fhk_zzzzzzzzzzzzzzzz_0123456789abcdef",
        ] {
            assert!(split(bad).is_none(), "{bad}");
        }
    }
}
