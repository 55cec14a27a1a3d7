//! Secrets at rest: webhook signing secrets, mTLS client certificates (with their keys) and
//! channel header values are sealed with AES-256-GCM before they reach the database, with a
//! key from `secrets.keys` (key id → 32 bytes in base64); `secrets.active` names the key new
//! values are sealed with. A sealed value reads `enc:v2:<key id>:<base64(nonce ‖ ciphertext)>`,
//! so keys rotate: configure the new key as active and keep the old one listed until the
//! values it sealed were rewritten. Values without the prefix (stored before a key was
//! configured) are read as they are.
//!
//! Every ciphertext is bound to where it belongs — its tenant, its subscription and its field
//! ([`Binding`]) — as AES-GCM associated data: a sealed value copied into another tenant's
//! subscription, another subscription or another field does not open. Values of the first
//! format (`enc:v1:`, bound to a constant only) still open, and are re-sealed in the bound
//! format at start-up ([`crate::model::reseal_legacy`]) and on the next write. A client can
//! never hand the hub a sealed form: the API refuses values that look sealed
//! ([`looks_sealed`]), so the hub cannot be asked to decrypt for anyone.
//!
//! Without a configured key, a hub on SQLite keeps one in `<data_dir>/secrets.key`
//! (created with mode 0600 on first start); on PostgreSQL, where several processes must share
//! it, the key has to be configured, and the hub warns at start when it is not.

use std::collections::HashMap;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;

/// The bound format: the AAD names tenant, subscription and field.
const PREFIX: &str = "enc:v2:";
/// The first format, bound to a constant only: opened (to be re-sealed), never written.
const LEGACY_PREFIX: &str = "enc:v1:";
const LEGACY_AAD: &[u8] = b"fhir-hub secret v1";

/// Which field of a subscription a sealed value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Secret,
    ClientCertificate,
    /// A channel header, by name (compared without case).
    Header(&'a str),
}

/// Where a sealed value belongs; bound into its ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub tenant: &'a str,
    pub subscription: &'a str,
    pub field: Field<'a>,
}

impl Binding<'_> {
    /// The associated data: each part length-prefixed, so no two bindings share one.
    fn aad(&self) -> Vec<u8> {
        let field = match self.field {
            Field::Secret => "secret".to_owned(),
            Field::ClientCertificate => "client-certificate".to_owned(),
            Field::Header(name) => format!("header:{}", name.trim().to_ascii_lowercase()),
        };
        let mut out = b"fhir-hub secret v2".to_vec();
        for part in [self.tenant, self.subscription, field.as_str()] {
            out.extend_from_slice(format!("|{}:", part.len()).as_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// A stored value opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub plain: String,
    /// Sealed in the first format (constant AAD): to be sealed again, bound.
    pub legacy: bool,
}

/// Whether a value has the form of a sealed one (`enc:` and a version): a client never sends
/// one, and the API refuses it.
pub fn looks_sealed(value: &str) -> bool {
    // bytes, not a str slice: byte 4 may fall inside a character of client text
    value
        .trim_start()
        .as_bytes()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"enc:"))
}
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Seals and opens secrets; without keys it passes values through.
#[derive(Default, Clone)]
pub struct Sealer {
    keys: HashMap<String, Aes256Gcm>,
    active: Option<String>,
    /// Each key's fingerprint (an HMAC of a fixed text under the key): what the store records
    /// so that a hub started with another key than the one its secrets were sealed with is
    /// refused at start (see `crate::sealing_check`), not found out at the first delivery.
    fingerprints: HashMap<String, String>,
    /// The local key file when this start made it (there was none): a restore of the store
    /// without its `secrets.key` looks exactly like this.
    created_local: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the keys
        f.debug_struct("Sealer")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn cipher(id: &str, b64: &str) -> anyhow::Result<Aes256Gcm> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| anyhow::anyhow!("secrets.keys.{id}: not base64: {e}"))?;
    if bytes.len() != 32 {
        anyhow::bail!(
            "secrets.keys.{id}: a key is 32 bytes (openssl rand -base64 32), not {}",
            bytes.len()
        );
    }
    Aes256Gcm::new_from_slice(&bytes).map_err(|e| anyhow::anyhow!("secrets.keys.{id}: {e}"))
}

impl Sealer {
    /// From configured keys (id → base64) and the active key's id.
    pub fn new(keys: &HashMap<String, String>, active: &str) -> anyhow::Result<Sealer> {
        let mut out = Sealer::default();
        for (id, b64) in keys {
            if id.is_empty() || id.contains(':') {
                anyhow::bail!("secrets.keys: key id '{id}' must be non-empty and without ':'");
            }
            out.keys.insert(id.clone(), cipher(id, b64)?);
            out.fingerprints.insert(id.clone(), fingerprint(b64));
        }
        if !active.is_empty() {
            if !out.keys.contains_key(active) {
                anyhow::bail!("secrets.active '{active}' is not one of secrets.keys");
            }
            out.active = Some(active.to_owned());
        }
        Ok(out)
    }

    /// The key kept in `dir/secrets.key` (made on first use), as key id `local`.
    pub fn local(dir: &Path) -> anyhow::Result<Sealer> {
        let path = dir.join("secrets.key");
        let mut created = false;
        let b64 = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                let b64 = B64.encode(key);
                std::fs::create_dir_all(dir)?;
                write_private(&path, &b64)?;
                tracing::info!(path = %path.display(), "created the key that seals secrets at rest");
                created = true;
                b64
            }
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        let keys = HashMap::from([("local".to_owned(), b64)]);
        let mut sealer = Sealer::new(&keys, "local")?;
        sealer.created_local = created.then_some(path);
        Ok(sealer)
    }

    /// Each configured key's id and fingerprint.
    pub fn fingerprints(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fingerprints
            .iter()
            .map(|(id, fp)| (id.as_str(), fp.as_str()))
    }

    /// The local key file this start created, if it did.
    pub fn created_local(&self) -> Option<&Path> {
        self.created_local.as_deref()
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Seal a value with the active key, bound to `at` (no active key: as it is). The value
    /// is always sealed as given: a value that looks sealed is sealed again, never stored as
    /// if the hub had sealed it.
    pub fn seal(&self, at: &Binding<'_>, plain: &str) -> String {
        let Some((id, c)) = self
            .active
            .as_ref()
            .and_then(|id| Some((id, self.keys.get(id)?)))
        else {
            return plain.to_owned();
        };
        let aad = at.aad();
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: &aad,
        };
        match c.encrypt(Nonce::from_slice(&nonce), payload) {
            Ok(ct) => {
                let mut raw = nonce.to_vec();
                raw.extend(ct);
                format!("{PREFIX}{id}:{}", B64.encode(raw))
            }
            // AES-GCM encryption fails only for messages beyond 64 GiB
            Err(_) => plain.to_owned(),
        }
    }

    /// Open a stored value sealed for `at` (one without a prefix is returned as it is).
    pub fn open(&self, at: &Binding<'_>, stored: &str) -> Result<Opened, String> {
        let (rest, legacy) = if let Some(rest) = stored.strip_prefix(PREFIX) {
            (rest, false)
        } else if let Some(rest) = stored.strip_prefix(LEGACY_PREFIX) {
            (rest, true)
        } else {
            return Ok(Opened {
                plain: stored.to_owned(),
                legacy: false,
            });
        };
        let (id, b64) = rest
            .split_once(':')
            .ok_or_else(|| "a sealed value without a key id".to_owned())?;
        let c = self.keys.get(id).ok_or_else(|| {
            format!("a secret is sealed with key '{id}', which is not in secrets.keys")
        })?;
        let raw = B64
            .decode(b64)
            .map_err(|_| "a sealed value is not base64".to_owned())?;
        if raw.len() < 12 + 16 {
            return Err("a sealed value is too short".into());
        }
        let (nonce, ct) = raw.split_at(12);
        let aad = if legacy {
            LEGACY_AAD.to_vec()
        } else {
            at.aad()
        };
        let plain = c
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| {
                format!(
                    "a secret sealed with key '{id}' does not open here (wrong key, altered, or sealed for another field)"
                )
            })?;
        let plain =
            String::from_utf8(plain).map_err(|_| "a sealed value is not text".to_owned())?;
        Ok(Opened { plain, legacy })
    }

    /// A legacy (`enc:v1:`) value of this hub, for tests of the migration.
    #[cfg(test)]
    pub(crate) fn seal_legacy(&self, plain: &str) -> String {
        let Some((id, c)) = self
            .active
            .as_ref()
            .and_then(|id| Some((id, self.keys.get(id)?)))
        else {
            return plain.to_owned();
        };
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: LEGACY_AAD,
        };
        match c.encrypt(Nonce::from_slice(&nonce), payload) {
            Ok(ct) => {
                let mut raw = nonce.to_vec();
                raw.extend(ct);
                format!("{LEGACY_PREFIX}{id}:{}", B64.encode(raw))
            }
            Err(_) => plain.to_owned(),
        }
    }
}

/// A key's fingerprint: HMAC-SHA256 of a fixed text under the key's bytes, base64. It names
/// the key without revealing it (the key is 256 random bits).
fn fingerprint(b64: &str) -> String {
    use hmac::{Hmac, Mac};
    let bytes = B64.decode(b64.trim()).unwrap_or_default();
    match <Hmac<sha2::Sha256> as Mac>::new_from_slice(&bytes) {
        Ok(mut mac) => {
            mac.update(b"fhir-hub sealing key fingerprint v1");
            B64.encode(mac.finalize().into_bytes())
        }
        // HMAC takes a key of any length; unreachable, and a key that failed `cipher` above
        // never gets here
        Err(_) => String::new(),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        B64.encode([7u8; 32])
    }

    const AT: Binding<'static> = Binding {
        tenant: "t",
        subscription: "s1",
        field: Field::Secret,
    };

    fn plain(sealer: &Sealer, at: &Binding<'_>, v: &str) -> Result<String, String> {
        sealer.open(at, v).map(|o| o.plain)
    }

    #[test]
    fn seal_open_and_rotate() {
        let one = Sealer::new(&HashMap::from([("k1".into(), key())]), "k1").unwrap();
        let sealed = one.seal(&AT, "whsec_abc");
        assert!(sealed.starts_with("enc:v2:k1:"), "{sealed}");
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(
            one.seal(&AT, "whsec_abc"),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(plain(&one, &AT, &sealed).unwrap(), "whsec_abc");
        assert_eq!(
            plain(&one, &AT, "plain from before").unwrap(),
            "plain from before"
        );
        // rotation: k2 active, k1 still listed → old values open, new ones use k2
        let two = Sealer::new(
            &HashMap::from([("k1".into(), key()), ("k2".into(), B64.encode([9u8; 32]))]),
            "k2",
        )
        .unwrap();
        assert_eq!(plain(&two, &AT, &sealed).unwrap(), "whsec_abc");
        assert!(two.seal(&AT, "x").starts_with("enc:v2:k2:"));
        // without k1: a clear error, not garbage
        let only2 =
            Sealer::new(&HashMap::from([("k2".into(), B64.encode([9u8; 32]))]), "k2").unwrap();
        assert!(only2.open(&AT, &sealed).unwrap_err().contains("'k1'"));
        // altered ciphertext does not open
        let mut bad = sealed.clone();
        bad.pop();
        bad.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(one.open(&AT, &bad).is_err());
    }

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed() {
        let one = Sealer::new(&HashMap::from([("k1".into(), key())]), "k1").unwrap();
        let sealed = one.seal(&AT, "whsec_abc");
        for elsewhere in [
            Binding { tenant: "u", ..AT },
            Binding {
                subscription: "s2",
                ..AT
            },
            Binding {
                field: Field::Header("Authorization"),
                ..AT
            },
            Binding {
                field: Field::ClientCertificate,
                ..AT
            },
        ] {
            assert!(one.open(&elsewhere, &sealed).is_err(), "{elsewhere:?}");
        }
        // header names bind without case
        let h = Binding {
            field: Field::Header("X-Api-Key"),
            ..AT
        };
        let v = one.seal(&h, "k");
        let h2 = Binding {
            field: Field::Header("x-api-key"),
            ..AT
        };
        assert_eq!(plain(&one, &h2, &v).unwrap(), "k");
        // sealing never passes a sealed-looking value through
        assert_ne!(one.seal(&AT, &sealed), sealed);
        assert_eq!(plain(&one, &AT, &one.seal(&AT, &sealed)).unwrap(), sealed);
        assert!(looks_sealed("enc:v1:nokey:AAAA") && looks_sealed(" ENC:v9:x"));
        assert!(!looks_sealed("Bearer enc:"));
    }

    #[test]
    fn legacy_values_open_and_say_so() {
        let one = Sealer::new(&HashMap::from([("k1".into(), key())]), "k1").unwrap();
        let old = one.seal_legacy("whsec_old");
        assert!(old.starts_with("enc:v1:k1:"));
        let o = one.open(&AT, &old).unwrap();
        assert_eq!((o.plain.as_str(), o.legacy), ("whsec_old", true));
        assert!(!one.open(&AT, &one.seal(&AT, "x")).unwrap().legacy);
    }

    #[test]
    fn bad_keys_are_refused_and_no_key_passes_through() {
        assert!(Sealer::new(&HashMap::from([("k".into(), "short".into())]), "k").is_err());
        assert!(Sealer::new(&HashMap::new(), "missing").is_err());
        let none = Sealer::default();
        assert_eq!(none.seal(&AT, "x"), "x");
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::local(dir.path()).unwrap();
        assert!(a.created_local().is_some(), "the first start makes the key");
        let b = Sealer::local(dir.path()).unwrap();
        assert!(b.created_local().is_none(), "later starts read it");
        assert_eq!(
            a.fingerprints().collect::<Vec<_>>(),
            b.fingerprints().collect::<Vec<_>>()
        );
        assert_eq!(
            plain(&b, &AT, &a.seal(&AT, "kept")).unwrap(),
            "kept",
            "the local key persists"
        );
    }

    /// Any client text, multi-byte characters at every position included, is judged without
    /// a panic (a byte-indexed slice panicked on "abcé", reachable from a Subscription header).
    #[test]
    fn looks_sealed_takes_any_text() {
        let pieces = ["é", "€", "𝄞", "a", "enc:", "ENC:", " ", "\u{0}", ":"];
        let mut seen = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let v = format!("{a}{b}{c}{d}");
                        let expect = v.trim_start().to_ascii_lowercase().starts_with("enc:");
                        assert_eq!(looks_sealed(&v), expect, "{v:?}");
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 9 * 9 * 9 * 9);
        assert!(!looks_sealed("abcé"));
        assert!(looks_sealed("  Enc:v2:k:x"));
    }
}
