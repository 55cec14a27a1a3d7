//! The subscription as every part of the hub reads it.
//!
//! A stored row carries the client's resource as JSON; validating it again on every read is
//! how seven readers drifted apart. Here a row becomes a [`Subscription`] once per stored
//! version: the [`Catalog`] caches the parsed [`SubscriptionSpec`] by (tenant, id, version),
//! so a reader takes the typed value and the row's live state (status, error, event count,
//! which change without a new version) and never re-validates. Secrets (the signing secret,
//! the mTLS client certificate) come from their own columns, never from the resource JSON.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use hub_fhir::subscription::{
    self, ChannelType, Content, FhirVersion, Status, SubscriptionSpec, TopicSubscription,
};
use hub_store::{Store, StoreError, SubscriptionRow};

use crate::auth::sealed::{Binding, Field, Sealer};
use serde_json::Value;
use time::OffsetDateTime;

/// A subscription's tenant and id, in one allocation shared by everything that holds it:
/// the catalog, the typed subscription, delivery's maps and the wake-ups each keep a
/// pointer, not a pair of strings of their own (100,000 parked rest-hook subscriptions held
/// their pair in five places). Hashes and compares as the pair `(tenant, id)`: a [`KeyMap`]
/// is looked up with borrowed strings through [`Pair`], with no allocation.
#[derive(Clone)]
pub struct SubKey {
    /// The tenant, then the id.
    text: Arc<str>,
    /// Where the id starts.
    split: usize,
}

impl SubKey {
    pub fn new(tenant: &str, id: &str) -> SubKey {
        let mut text = String::with_capacity(tenant.len() + id.len());
        text.push_str(tenant);
        text.push_str(id);
        SubKey {
            text: Arc::from(text),
            split: tenant.len(),
        }
    }

    /// The tenant and the id.
    pub fn pair(&self) -> (&str, &str) {
        // `split` is the tenant's length, a character boundary of `text`
        self.text.split_at_checked(self.split).unwrap_or(("", ""))
    }

    pub fn tenant(&self) -> &str {
        self.pair().0
    }

    pub fn id(&self) -> &str {
        self.pair().1
    }
}

impl PartialEq for SubKey {
    fn eq(&self, other: &SubKey) -> bool {
        Arc::ptr_eq(&self.text, &other.text) || self.pair() == other.pair()
    }
}

impl Eq for SubKey {}

impl Hash for SubKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.pair().hash(h);
    }
}

impl PartialOrd for SubKey {
    fn partial_cmp(&self, other: &SubKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SubKey {
    fn cmp(&self, other: &SubKey) -> std::cmp::Ordering {
        self.pair().cmp(&other.pair())
    }
}

impl std::fmt::Debug for SubKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tenant, id) = self.pair();
        write!(f, "{tenant}/Subscription/{id}")
    }
}

/// A (tenant, id) borrowed, to look a [`SubKey`] up without making one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pair<'a>(pub &'a str, pub &'a str);

impl hashbrown::Equivalent<SubKey> for Pair<'_> {
    fn equivalent(&self, key: &SubKey) -> bool {
        key.pair() == (self.0, self.1)
    }
}

/// A map keyed by subscription, looked up by [`Pair`] as well (the standard library's
/// hasher: keys come from clients).
pub type KeyMap<V> = hashbrown::HashMap<SubKey, V, std::hash::RandomState>;

/// A stored subscription, typed.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Its tenant and id.
    pub key: SubKey,
    /// `meta.versionId`: bumped by client writes only.
    pub version: i64,
    pub last_updated: String,
    pub status: Status,
    /// Why the hub set `error` or `off`.
    pub error: Option<String>,
    /// Every event generated so far; the last event number assigned.
    pub events_since_start: i64,
    /// Its incarnation (a re-created id is another): what every position on its log is
    /// keyed by.
    pub log_key: hub_store::LogKey,
    pub spec: Arc<SubscriptionSpec>,
    /// The Standard Webhooks signing secret (rest-hook).
    pub secret: Option<String>,
    /// Who wrote it, with the grants it had (`None`: written before the hub kept owners).
    pub owner: Option<Arc<crate::auth::Owner>>,
    /// Why a sealed value (signing secret, client certificate, a channel header) does not
    /// open — its key is no longer in `secrets.keys`, or it was altered. Reads still work;
    /// a delivery fails with this reason rather than go out without its credentials.
    pub sealed_error: Option<Arc<str>>,
}

impl Subscription {
    pub fn tenant(&self) -> &str {
        self.key.tenant()
    }

    pub fn id(&self) -> &str {
        self.key.id()
    }

    pub fn channel_type(&self) -> ChannelType {
        self.spec.channel.kind
    }

    pub fn topic(&self) -> Option<&TopicSubscription> {
        self.spec.topic.as_ref()
    }

    /// The notification shape: the topic's FHIR version, R4 for criteria subscriptions.
    pub fn shape(&self) -> FhirVersion {
        self.topic().map_or(FhirVersion::R4, |t| t.version)
    }

    /// What a notification carries by default: the topic's content level; for R4 criteria,
    /// the resource when the channel has a payload.
    pub fn content(&self) -> Content {
        match self.topic() {
            Some(t) => t.content,
            None if self.spec.channel.payload.is_some() => Content::FullResource,
            None => Content::IdOnly,
        }
    }

    /// The owner's credential subject, for the audit trail.
    pub fn owner_subject(&self) -> String {
        self.owner
            .as_ref()
            .map_or_else(|| crate::auth::ANONYMOUS.to_owned(), |o| o.subject.clone())
    }

    /// `Subscription.end`, when set.
    pub fn end(&self) -> Option<OffsetDateTime> {
        self.spec
            .end
            .as_deref()
            .and_then(hub_fhir::time_fmt::parse_instant)
    }
}

/// Why a stored row cannot be read as a subscription.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("stored Subscription/{id} is unreadable: {why}")]
    Corrupt { id: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Each subscription's shared key, and its version's parsed spec (with why a sealed value in
/// it did not open).
type SpecCache = KeyMap<(i64, Arc<SubscriptionSpec>, Option<Arc<str>>)>;

/// The parsed specs of stored subscriptions, one per (tenant, id) at its latest version seen.
#[derive(Debug)]
pub struct Catalog {
    specs: Mutex<SpecCache>,
    /// Owners by their stored form, each parsed once: the subscriptions a credential wrote
    /// share one.
    owners: Mutex<HashMap<String, Arc<crate::auth::Owner>>>,
    /// Opens the secrets stored sealed (`auth::sealed`).
    sealer: crate::auth::sealed::Sealer,
    /// Whether specs keep their parsed criteria: only the matcher reads them, and a process
    /// without it (delivery, the API) would hold a parsed copy of every subscription's
    /// criteria for nothing.
    keep_criteria: bool,
}

/// Past this many cached specs the cache starts over (deleted subscriptions leave entries).
const MAX_CACHED: usize = 200_000;

/// Past this many distinct owners the owner cache starts over.
const MAX_OWNERS: usize = 10_000;

impl Default for Catalog {
    /// No sealed secrets; criteria kept.
    fn default() -> Catalog {
        Catalog::new(crate::auth::sealed::Sealer::default(), true)
    }
}

impl Catalog {
    /// `keep_criteria`: whether this process matches (see [`Catalog::keep_criteria`]).
    pub fn new(sealer: crate::auth::sealed::Sealer, keep_criteria: bool) -> Catalog {
        Catalog {
            specs: Mutex::default(),
            owners: Mutex::default(),
            sealer,
            keep_criteria,
        }
    }

    /// The owner stored as `json`, shared with every subscription stored with the same.
    fn owner(&self, json: &str) -> Option<Arc<crate::auth::Owner>> {
        let Ok(mut owners) = self.owners.lock() else {
            return crate::auth::Owner::parse(json).map(Arc::new);
        };
        if let Some(o) = owners.get(json) {
            return Some(Arc::clone(o));
        }
        let o = Arc::new(crate::auth::Owner::parse(json)?);
        if owners.len() >= MAX_OWNERS {
            owners.clear();
        }
        owners.insert(json.to_owned(), Arc::clone(&o));
        Some(o)
    }

    /// What seals and opens secrets at rest.
    pub fn sealer(&self) -> &crate::auth::sealed::Sealer {
        &self.sealer
    }

    /// The typed subscription of a stored row; the resource is validated only when this
    /// version has not been seen.
    pub fn read(&self, row: SubscriptionRow) -> Result<Subscription, ModelError> {
        let corrupt = |why: String| ModelError::Corrupt {
            id: row.id.clone(),
            why,
        };
        let status = Status::parse(&row.status)
            .ok_or_else(|| corrupt(format!("status '{}'", row.status)))?;
        let cached = self.specs.lock().ok().and_then(|m| {
            m.get_key_value(&Pair(&row.tenant, &row.id))
                .map(|(k, (v, spec, unsealed))| {
                    let hit = (*v == row.version_id).then(|| (Arc::clone(spec), unsealed.clone()));
                    (k.clone(), hit)
                })
        });
        let (key, spec, mut sealed_error) = match cached {
            Some((key, Some((spec, unsealed)))) => (key, spec, unsealed),
            known => {
                let key = known
                    .map(|(k, _)| k)
                    .unwrap_or_else(|| SubKey::new(&row.tenant, &row.id));
                let mut resource: Value =
                    serde_json::from_str(&row.resource).map_err(|e| corrupt(e.to_string()))?;
                let mut unsealed = open_headers(&self.sealer, &row.tenant, &row.id, &mut resource)
                    .err()
                    .map(Arc::from);
                let mut spec =
                    subscription::validate(&resource).map_err(|oo| corrupt(oo.summary()))?;
                if !self.keep_criteria {
                    spec.parsed = None;
                }
                if spec.channel.client_certificate.is_none()
                    && let Some(c) = row.client_certificate.as_deref()
                {
                    let at = Binding {
                        tenant: &row.tenant,
                        subscription: &row.id,
                        field: Field::ClientCertificate,
                    };
                    match self.sealer.open(&at, c) {
                        Ok(o) => spec.channel.client_certificate = Some(o.plain),
                        Err(e) => unsealed = unsealed.or(Some(Arc::from(e))),
                    }
                }
                let spec = Arc::new(spec);
                if let Ok(mut m) = self.specs.lock() {
                    if m.len() >= MAX_CACHED {
                        m.clear();
                    }
                    m.insert(
                        key.clone(),
                        (row.version_id, Arc::clone(&spec), unsealed.clone()),
                    );
                }
                (key, spec, unsealed)
            }
        };
        let secret = match row.write.secret.as_deref() {
            None => None,
            Some(s) => {
                let at = Binding {
                    tenant: &row.tenant,
                    subscription: &row.id,
                    field: Field::Secret,
                };
                match self.sealer.open(&at, s) {
                    Ok(o) => Some(o.plain),
                    Err(e) => {
                        sealed_error = sealed_error.or(Some(Arc::from(e)));
                        None
                    }
                }
            }
        };
        if let Some(why) = &sealed_error {
            tracing::debug!(subscription = %row.id, tenant = %row.tenant, %why, "a sealed value of a subscription does not open");
        }
        Ok(Subscription {
            key,
            version: row.version_id,
            last_updated: row.last_updated,
            status,
            error: row.error,
            events_since_start: row.events_since_start,
            log_key: row.log_key,
            spec,
            owner: row.write.owner.as_deref().and_then(|o| self.owner(o)),
            secret,
            sealed_error,
        })
    }

    /// Typed subscriptions of rows; unreadable rows are skipped loudly (written by an older
    /// version that accepted what this one refuses).
    pub fn read_all(&self, rows: Vec<SubscriptionRow>) -> Vec<Subscription> {
        rows.into_iter()
            .filter_map(|row| {
                let (tenant, id) = (row.tenant.clone(), row.id.clone());
                self.read(row)
                    .inspect_err(|e| {
                        tracing::warn!(subscription = %id, %tenant, error = %e, "skipping a stored subscription");
                    })
                    .ok()
            })
            .collect()
    }

    /// One subscription of a tenant, `None` when there is none.
    pub async fn get(
        &self,
        store: &Store,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Subscription>, ModelError> {
        match store.get_subscription(tenant, id).await? {
            Some(row) => self.read(row).map(Some),
            None => Ok(None),
        }
    }

    /// Every live subscription (requested, active, error) of every tenant.
    pub async fn live(&self, store: &Store) -> Result<Vec<Subscription>, StoreError> {
        Ok(self.read_all(store.live_subscriptions().await?))
    }
}

/// Move secrets that rows written before they had their own columns still keep in the
/// resource JSON. Idempotent; run at start-up.
pub async fn move_legacy_secrets(store: &Store) -> Result<usize, StoreError> {
    let rows = store.subscriptions_without_secret().await?;
    let mut moved = 0;
    for row in rows {
        let Ok(mut resource) = serde_json::from_str::<Value>(&row.resource) else {
            continue;
        };
        let secrets = take_secrets(&mut resource);
        if secrets.secret.is_none() && secrets.client_certificate.is_none() {
            continue;
        }
        store
            .move_secrets(
                &row.tenant,
                &row.id,
                &resource.to_string(),
                secrets.secret.as_deref(),
                secrets.client_certificate.as_deref(),
            )
            .await?;
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(moved, "moved subscription secrets out of stored resources");
    }
    Ok(moved)
}

/// Seal again, bound to their subscription and field, the values sealed in the first format
/// (`enc:v1:`, a constant AAD) and the header values stored plain that are now secret (every
/// header not declared non-secret). Idempotent; run at start-up when a key is active. A value
/// that does not open is left as it is (reads still work; its deliveries fail, stated).
pub async fn reseal_legacy(store: &Store, sealer: &Sealer) -> Result<usize, StoreError> {
    if !sealer.is_active() {
        return Ok(0);
    }
    let mut resealed = 0;
    for row in store.subscriptions_to_reseal().await? {
        let Ok(mut resource) = serde_json::from_str::<Value>(&row.resource) else {
            continue;
        };
        let (tenant, id) = (row.tenant.as_str(), row.id.as_str());
        let mut changed = false;
        for_each_header(&mut resource, |name, value| {
            if !is_secret_header(name) {
                return;
            }
            let at = Binding {
                tenant,
                subscription: id,
                field: Field::Header(name),
            };
            let plain = match sealer.open(&at, value) {
                // sealed, bound: nothing to do
                Ok(o) if !o.legacy && crate::auth::sealed::looks_sealed(value) => return,
                Ok(o) => o.plain,
                Err(_) => return,
            };
            *value = sealer.seal(&at, &plain);
            changed = true;
        });
        let mut column = |stored: &Option<String>, field| -> Option<String> {
            let v = stored.as_deref()?;
            let at = Binding {
                tenant,
                subscription: id,
                field,
            };
            match sealer.open(&at, v) {
                Ok(o) if o.legacy => {
                    changed = true;
                    Some(sealer.seal(&at, &o.plain))
                }
                _ => Some(v.to_owned()),
            }
        };
        let secret = column(&row.write.secret, Field::Secret);
        let certificate = column(&row.write.client_certificate, Field::ClientCertificate);
        if !changed {
            continue;
        }
        let text = resource.to_string();
        let values = hub_store::SubscriptionSecrets {
            resource: &text,
            secret: secret.as_deref(),
            client_certificate: certificate.as_deref(),
        };
        if store
            .reseal_subscription(tenant, id, row.version_id, &values)
            .await?
        {
            resealed += 1;
        }
    }
    if resealed > 0 {
        tracing::info!(
            resealed,
            "sealed subscription secrets again, bound to their subscription"
        );
    }
    Ok(resealed)
}

/// The hub's extension carrying the Standard Webhooks signing secret on `Subscription.channel`
/// (on the resource itself in the R5 form).
pub const SECRET_EXTENSION: &str = "urn:fhir-hub:webhook-secret";

/// Secrets a client sent inside a Subscription.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Secrets {
    pub secret: Option<String>,
    pub client_certificate: Option<String>,
}

/// Remove the secret-carrying extensions from a Subscription (channel and resource level)
/// and return their values: what is stored as the resource never holds a secret.
pub fn take_secrets(resource: &mut Value) -> Secrets {
    let mut out = Secrets::default();
    let mut strip = |holder: &mut serde_json::Map<String, Value>| {
        if let Some(list) = holder.get_mut("extension").and_then(Value::as_array_mut) {
            list.retain(|e| {
                let url = e.get("url").and_then(Value::as_str);
                let value = e
                    .get("valueString")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match url {
                    Some(SECRET_EXTENSION) => {
                        out.secret = out.secret.take().or(value);
                        false
                    }
                    Some(subscription::CLIENT_CERTIFICATE_EXTENSION) => {
                        out.client_certificate = out.client_certificate.take().or(value);
                        false
                    }
                    _ => true,
                }
            });
            if list.is_empty() {
                holder.remove("extension");
            }
        }
    };
    if let Some(channel) = resource.get_mut("channel").and_then(Value::as_object_mut) {
        strip(channel);
    }
    if let Some(obj) = resource.as_object_mut() {
        strip(obj);
    }
    out
}

/// What reads show instead of a channel header's value.
pub const REDACTED: &str = "[redacted]";

/// Channel headers declared non-secret: stored plain and shown on reads. Every other header
/// value is sealed at rest and redacted on reads — a credential can hide in any header name
/// (`X-Vault-Token`, `Ocp-Apim-Subscription-Key`, ...), so the list names what is not one.
pub const NON_SECRET_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "content-language",
    "user-agent",
    "x-request-id",
    "x-correlation-id",
    "traceparent",
    "tracestate",
];

/// Whether a channel header's value is sealed at rest and redacted on reads: every header not
/// in [`NON_SECRET_HEADERS`].
pub fn is_secret_header(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    !NON_SECRET_HEADERS.contains(&name.as_str())
}

/// The first channel header whose value has the form of a sealed one (`enc:…`): a client
/// never sends one (the hub would otherwise store it as if it had sealed it).
pub fn sealed_looking_header(resource: &mut Value) -> Option<String> {
    let mut found = None;
    for_each_header(resource, |name, value| {
        if found.is_none() && crate::auth::sealed::looks_sealed(value) {
            found = Some(name.to_owned());
        }
    });
    found
}

/// The channel headers of a Subscription in either form, as mutable `(name, value)` slots:
/// R4 `channel.header` strings `Name: value`, R5 `parameter` `{name, value}`.
fn for_each_header(resource: &mut Value, mut f: impl FnMut(&str, &mut String)) {
    if let Some(list) = resource
        .pointer_mut("/channel/header")
        .and_then(Value::as_array_mut)
    {
        for h in list {
            let Some((name, value)) = h.as_str().and_then(|s| s.split_once(':')) else {
                continue;
            };
            let (name, mut value) = (name.trim().to_owned(), value.trim().to_owned());
            f(&name, &mut value);
            *h = Value::String(format!("{name}: {value}"));
        }
    }
    if let Some(list) = resource.get_mut("parameter").and_then(Value::as_array_mut) {
        for p in list {
            let Some(name) = p.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if let Some(v) = p.get_mut("value")
                && let Some(text) = v.as_str()
            {
                let mut value = text.to_owned();
                f(&name, &mut value);
                *v = Value::String(value);
            }
        }
    }
}

/// Seal the values of secret headers before the Subscription `tenant`/`id` is stored.
pub fn seal_headers(sealer: &Sealer, tenant: &str, id: &str, resource: &mut Value) {
    for_each_header(resource, |name, value| {
        if is_secret_header(name) {
            let at = Binding {
                tenant,
                subscription: id,
                field: Field::Header(name),
            };
            *value = sealer.seal(&at, value);
        }
    });
}

/// Open the sealed header values of the stored Subscription `tenant`/`id` in place. A value
/// that does not open is replaced by [`REDACTED`] and the first reason returned.
pub fn open_headers(
    sealer: &Sealer,
    tenant: &str,
    id: &str,
    resource: &mut Value,
) -> Result<(), String> {
    let mut failed = None;
    for_each_header(resource, |name, value| {
        let at = Binding {
            tenant,
            subscription: id,
            field: Field::Header(name),
        };
        match sealer.open(&at, value) {
            Ok(o) => *value = o.plain,
            Err(e) => {
                *value = REDACTED.to_owned();
                failed = failed.take().or(Some(e));
            }
        }
    });
    failed.map_or(Ok(()), Err)
}

/// Hide the values of credential headers in a Subscription about to be shown.
pub fn redact_headers(resource: &mut Value) {
    for_each_header(resource, |name, value| {
        if is_secret_header(name) {
            *value = REDACTED.to_owned();
        }
    });
}

/// Whether a header still carries [`REDACTED`] (sent back, and nothing stored to restore).
pub fn has_redacted_header(resource: &mut Value) -> bool {
    let mut found = false;
    for_each_header(resource, |_, value| found |= value == REDACTED);
    found
}

/// In an update, a credential header sent back as [`REDACTED`] keeps the stored value (a
/// client that PUTs what it read keeps its credentials).
pub fn restore_headers(sent: &mut Value, stored: &Value) {
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut stored = stored.clone();
    for_each_header(&mut stored, |name, value| {
        kept.push((name.to_ascii_lowercase(), value.clone()));
    });
    for_each_header(sent, |name, value| {
        if value == REDACTED
            && let Some((_, v)) = kept.iter().find(|(n, _)| *n == name.to_ascii_lowercase())
        {
            *value = v.clone();
        }
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// An active R4 Backport topic subscription grouping up to ten events, for unit tests.
    pub(crate) fn topic_subscription() -> Subscription {
        let resource = json!({
            "resourceType": "Subscription",
            "status": "active",
            "reason": "test",
            "criteria": "http://example.org/topic/obs",
            "_criteria": {"extension": [{
                "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
                "valueString": "Observation?code=1"}]},
            "channel": {
                "type": "rest-hook",
                "endpoint": "http://example.test/hook",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{
                    "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
                    "valueCode": "id-only"}]},
                "extension": [{
                    "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count",
                    "valuePositiveInt": 10}]
            }
        });
        let spec = match hub_fhir::subscription::validate(&resource) {
            Ok(spec) => spec,
            Err(e) => panic!("test subscription refused: {e:?}"),
        };
        Subscription {
            key: SubKey::new("default", "s"),
            version: 1,
            last_updated: "2024-01-01T00:00:00Z".into(),
            status: Status::Active,
            error: None,
            events_since_start: 0,
            log_key: hub_store::LogKey::for_tests(1),
            spec: Arc::new(spec),
            secret: None,
            owner: None,
            sealed_error: None,
        }
    }

    #[test]
    fn a_shared_key_is_found_by_its_borrowed_pair_and_only_by_it() {
        let mut map: KeyMap<u32> = KeyMap::default();
        // the same text split differently is another subscription
        let pairs = [
            ("ab", "c"),
            ("a", "bc"),
            ("", "abc"),
            ("abc", ""),
            ("t", "é1"),
        ];
        for (n, (t, i)) in pairs.iter().enumerate() {
            map.insert(SubKey::new(t, i), n as u32);
        }
        assert_eq!(map.len(), pairs.len());
        for (n, (t, i)) in pairs.iter().enumerate() {
            assert_eq!(map.get(&Pair(t, i)), Some(&(n as u32)));
            assert_eq!(map.get(&SubKey::new(t, i)), Some(&(n as u32)));
            let k = SubKey::new(t, i);
            assert_eq!((k.tenant(), k.id()), (*t, *i));
        }
        assert_eq!(map.get(&Pair("ab", "")), None);
        let a = SubKey::new("t", "a");
        assert_eq!(a.clone(), a);
        assert!(SubKey::new("t", "a") < SubKey::new("t", "b"));
        assert_eq!(format!("{a:?}"), "t/Subscription/a");
    }

    #[test]
    fn a_catalog_without_the_matcher_keeps_no_parsed_criteria() {
        let row = |version: i64| SubscriptionRow {
            tenant: "default".into(),
            id: "s1".into(),
            version_id: version,
            last_updated: "2024-01-01T00:00:00Z".into(),
            events_since_start: 0,
            error: None,
            log_key: hub_store::LogKey::for_tests(1),
            write: hub_store::SubscriptionWrite {
                status: "active".into(),
                criteria: "Observation?code=1".into(),
                channel_type: "rest-hook".into(),
                endpoint: "http://example.test/hook".into(),
                resource: json!({"resourceType": "Subscription", "status": "active",
                    "reason": "r", "criteria": "Observation?code=1",
                    "channel": {"type": "rest-hook", "endpoint": "http://example.test/hook"}})
                .to_string(),
                secret: None,
                client_certificate: None,
                owner: None,
            },
        };
        let kept = Catalog::default().read(row(1));
        assert!(kept.is_ok_and(|s| s.spec.parsed.is_some()));
        let catalog = Catalog::new(crate::auth::sealed::Sealer::default(), false);
        let (Ok(a), Ok(b)) = (catalog.read(row(1)), catalog.read(row(1))) else {
            panic!("unreadable");
        };
        assert!(a.spec.parsed.is_none());
        assert_eq!(a.spec.criteria, "Observation?code=1");
        // one key and one spec for the two reads of a version
        assert!(Arc::ptr_eq(&a.spec, &b.spec) && Arc::ptr_eq(&a.key.text, &b.key.text));
        // the index of a process that does match reads the criteria again
        let mut index = crate::matcher::index::TenantIndex::build(&[], &[], 0, Vec::new());
        index.insert(&a, None);
        assert_eq!(index.len(), 1);
    }

    fn sealed_row(header: &str, secret: &str) -> SubscriptionRow {
        SubscriptionRow {
            log_key: hub_store::LogKey::for_tests(1),
            tenant: "default".into(),
            id: "s1".into(),
            version_id: 1,
            last_updated: "2024-01-01T00:00:00Z".into(),
            events_since_start: 0,
            error: None,
            write: hub_store::SubscriptionWrite {
                status: "active".into(),
                criteria: "Observation?code=1".into(),
                channel_type: "rest-hook".into(),
                endpoint: "http://example.test/hook".into(),
                resource: json!({"resourceType": "Subscription", "status": "active",
                    "reason": "r", "criteria": "Observation?code=1",
                    "channel": {"type": "rest-hook", "endpoint": "http://example.test/hook",
                        "header": [format!("X-Api-Key: {header}")]}})
                .to_string(),
                secret: Some(secret.to_owned()),
                client_certificate: None,
                owner: None,
            },
        }
    }

    fn test_sealer() -> Sealer {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        Sealer::new(&HashMap::from([("k".to_owned(), key)]), "k").unwrap()
    }

    #[test]
    fn a_value_that_does_not_open_is_read_and_stated_not_fatal() {
        let sealer = test_sealer();
        let at = Binding {
            tenant: "default",
            subscription: "s1",
            field: Field::Secret,
        };
        let secret = sealer.seal(&at, "whsec_x");
        let catalog = Catalog::new(sealer.clone(), false);
        let sub = catalog
            .read(sealed_row("enc:v1:nokey:AAAA", &secret))
            .unwrap();
        assert!(sub.sealed_error.as_deref().unwrap().contains("'nokey'"));
        assert_eq!(sub.secret.as_deref(), Some("whsec_x"));
        assert!(sub.spec.channel.headers.iter().all(|(_, v)| v == REDACTED));
        // sealed for another subscription: does not open here either
        let other = Binding {
            subscription: "s2",
            ..at
        };
        let sub = Catalog::new(sealer.clone(), false)
            .read(sealed_row("plain", &sealer.seal(&other, "whsec_y")))
            .unwrap();
        assert!(sub.secret.is_none() && sub.sealed_error.is_some());
    }

    #[tokio::test]
    async fn legacy_values_and_plain_headers_are_sealed_again_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/hub.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url).await.unwrap();
        let sealer = test_sealer();
        let legacy_secret = sealer.seal_legacy("whsec_old");
        let legacy_header = sealer.seal_legacy("k-old");
        let row = sealed_row(&legacy_header, &legacy_secret);
        store
            .create_subscription("default", "s1", &row.write)
            .await
            .unwrap();
        assert_eq!(reseal_legacy(&store, &sealer).await.unwrap(), 1);
        assert_eq!(
            reseal_legacy(&store, &sealer).await.unwrap(),
            0,
            "idempotent"
        );
        let stored = store
            .get_subscription("default", "s1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.version_id, 1, "not a new version");
        assert!(stored.secret.as_deref().unwrap().starts_with("enc:v2:k:"));
        assert!(
            stored.resource.contains("X-Api-Key: enc:v2:k:"),
            "{}",
            stored.resource
        );
        let sub = Catalog::new(sealer, false).read(stored).unwrap();
        assert_eq!(sub.secret.as_deref(), Some("whsec_old"));
        assert!(
            sub.spec
                .channel
                .headers
                .contains(&("X-Api-Key".to_owned(), "k-old".to_owned()))
        );
        assert!(sub.sealed_error.is_none());
    }

    #[test]
    fn credential_headers_are_redacted_and_kept_on_update() {
        let stored =
            json!({"channel": {"header": ["Authorization: Bearer abc", "X-Request-Id: 1"]}});
        let mut shown = stored.clone();
        redact_headers(&mut shown);
        assert_eq!(
            shown["channel"]["header"],
            json!(["Authorization: [redacted]", "X-Request-Id: 1"])
        );
        let mut sent = shown.clone();
        restore_headers(&mut sent, &stored);
        assert_eq!(sent, stored);
        let mut r5 = json!({"parameter": [{"name": "authorization", "value": "Bearer x"}]});
        redact_headers(&mut r5);
        assert_eq!(r5["parameter"][0]["value"], json!(REDACTED));
    }

    #[test]
    fn secrets_are_taken_out_of_both_forms() {
        let mut r4 = json!({"resourceType": "Subscription", "channel": {"type": "rest-hook",
            "extension": [{"url": SECRET_EXTENSION, "valueString": "whsec_a"},
                          {"url": subscription::CLIENT_CERTIFICATE_EXTENSION, "valueString": "PEM"},
                          {"url": "urn:other", "valueString": "kept"}]}});
        let s = take_secrets(&mut r4);
        assert_eq!(s.secret.as_deref(), Some("whsec_a"));
        assert_eq!(s.client_certificate.as_deref(), Some("PEM"));
        assert_eq!(
            r4["channel"]["extension"],
            json!([{"url": "urn:other", "valueString": "kept"}])
        );
        let mut r5 = json!({"resourceType": "Subscription",
            "extension": [{"url": SECRET_EXTENSION, "valueString": "whsec_b"}]});
        assert_eq!(take_secrets(&mut r5).secret.as_deref(), Some("whsec_b"));
        assert!(r5.get("extension").is_none());
    }
}
