//! HTTP clients shared by endpoint origin. Every subscription to one origin (scheme, host and
//! port, connected to the same checked address, with the same client certificate and
//! timeout) sends through one client and its connection pool, and at most
//! `delivery.connections_per_origin` of its requests run at once: 5,000 per-patient
//! subscriptions pointing at one EHR hold a handful of connections, not 5,000. Each
//! subscription still has its own worker, order and retry state; a slow origin delays the
//! subscriptions that point at it, and no other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ssrf::CheckedEndpoint;
use crate::model::Subscription;
use crate::state::Hub;

/// What makes two subscriptions' requests interchangeable on one client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// `scheme://host:port` of the endpoint.
    origin: String,
    /// The name and the checked address requests for it connect to (`None`: an IP literal).
    pinned: Option<(String, SocketAddr)>,
    timeout_ms: u64,
    /// SHA-256 of the client certificate and key (PEM), if the subscription has one.
    identity: Option<[u8; 32]>,
}

/// One origin's client and its request slots.
#[derive(Debug, Clone)]
pub struct OriginClient {
    pub client: reqwest::Client,
    slots: Arc<Semaphore>,
}

impl OriginClient {
    /// Wait for one of the origin's request slots (held until the permit is dropped).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).acquire_owned().await.ok()
    }
}

/// The clients of one delivery process.
#[derive(Debug, Default)]
pub struct Clients {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<Key, OriginClient>,
    /// Size at which unused clients (an origin whose subscriptions all went, an address a
    /// name no longer points to) are dropped.
    prune_at: usize,
}

impl Clients {
    /// The client for `sub`'s endpoint as checked, made at the first ask.
    pub fn get(
        &self,
        hub: &Hub,
        sub: &Subscription,
        checked: &CheckedEndpoint,
    ) -> Result<OriginClient, String> {
        let channel = &sub.spec.channel;
        let timeout = timeout_of(hub, sub);
        let url = &checked.url;
        let key = Key {
            origin: format!(
                "{}://{}:{}",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or(0)
            ),
            pinned: checked.pinned.clone(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            identity: channel
                .client_certificate
                .as_ref()
                .map(|pem| Sha256::digest(pem.as_bytes()).into()),
        };
        let mut table = self
            .table
            .lock()
            .map_err(|_| "the client table lock is poisoned".to_owned())?;
        if let Some(c) = table.by_key.get(&key) {
            return Ok(c.clone());
        }
        let per_origin = hub.config.delivery.connections_per_origin.max(1);
        let made = OriginClient {
            client: build(hub, sub, checked, timeout, per_origin)?,
            slots: Arc::new(Semaphore::new(per_origin)),
        };
        table.by_key.insert(key, made.clone());
        if table.by_key.len() >= table.prune_at.max(64) {
            // a client only this table holds serves nobody
            table.by_key.retain(|_, c| Arc::strong_count(&c.slots) > 1);
            table.prune_at = table.by_key.len() * 2;
        }
        Ok(made)
    }
}

/// `backport-timeout`, when the subscription sets one, replaces the hub's request timeout.
fn timeout_of(hub: &Hub, sub: &Subscription) -> Duration {
    sub.topic()
        .and_then(|t| t.timeout_secs)
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(Duration::from_millis(
            hub.config.delivery.request_timeout_ms,
        ))
}

/// A client connecting to the checked address, keeping at most `per_origin` idle connections.
fn build(
    hub: &Hub,
    sub: &Subscription,
    checked: &CheckedEndpoint,
    timeout: Duration,
    per_origin: usize,
) -> Result<reqwest::Client, String> {
    // never a proxy from HTTP(S)_PROXY: a proxy would resolve the name itself, and the
    // checked, pinned address would no longer be where the request goes
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .pool_max_idle_per_host(per_origin)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fhir-hub/", env!("CARGO_PKG_VERSION")));
    if let Some((name, addr)) = &checked.pinned {
        builder = builder.resolve(name, *addr);
    }
    for root in hub.extra_roots.iter() {
        builder = builder.add_root_certificate(root.clone());
    }
    if let Some(pem) = &sub.spec.channel.client_certificate {
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .map_err(|e| format!("stored client certificate is unusable: {e}"))?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| e.to_string())
}
