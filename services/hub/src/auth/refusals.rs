//! Refused credentials, counted per network peer instead of written one by one.
//!
//! An anonymous peer decides how many credentials it presents; the audit trail keeps rows for
//! years. So a refusal costs the hub a counter, not a row: each (tenant, peer) gets one
//! audit row per `audit.refusal_window_secs` with how many refusals it made and why
//! ([`Refusals::take`], written by [`crate::audit::flush_refusals`]), and what the peer
//! presented is recorded only as a short sanitized prefix (a hex key id or certificate
//! fingerprint: at most 8 hex digits), never as the text it chose. Past
//! `auth.refusals_per_minute_per_peer` a peer's refused credentials are answered 429 and
//! count into the same row (a valid credential from the same address is still served).
//!
//! A peer is its IPv4 address, or its IPv6 /64 (one subscriber's allocation).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hub_store::NewAudit;

/// Most (tenant, peer) tallies and blocked peers held between two flushes; past it new peers
/// count under [`OTHER`].
const MAX_PEERS: usize = 10_000;
/// The tally of every peer beyond [`MAX_PEERS`].
const OTHER: &str = "other";
/// Most distinct presented-id prefixes one row names.
const MAX_IDS: usize = 3;

/// Why a credential was refused: a fixed vocabulary, never the client's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// An API key that is unknown, revoked, expired or has the wrong secret.
    Key,
    /// A client certificate not mapped to a key.
    Certificate,
    /// A bearer token that is not a valid JWT of a trusted issuer for its tenant.
    Token,
    /// Refused while the peer was over its refusal budget (answered 429).
    Throttled,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Key => "API key unknown, revoked or expired",
            Why::Certificate => "client certificate not mapped",
            Why::Token => "token refused",
            Why::Throttled => "throttled (over auth.refusals_per_minute_per_peer)",
        }
    }
}

/// The peer a refusal is counted against: an IPv4 address, an IPv6 /64, or `unknown`.
pub fn peer_key(addr: Option<IpAddr>) -> String {
    match addr.map(|a| a.to_canonical()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".into(),
    }
}

/// At most 8 hex digits of what was presented, lower-cased; nothing else survives.
fn sanitized(presented: &str) -> Option<String> {
    let hex: String = presented
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (!hex.is_empty()).then(|| format!("{hex}…"))
}

#[derive(Debug, Default)]
struct Tally {
    count: u64,
    reasons: BTreeSet<Why>,
    ids: BTreeSet<String>,
}

/// The refusals of one process since the last flush, and each peer's refusal budget.
pub struct Refusals {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Peers over their budget, until when.
    blocked: Mutex<HashMap<String, Instant>>,
    tally: Mutex<HashMap<(String, String), Tally>>,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals").finish_non_exhaustive()
    }
}

impl Refusals {
    pub fn new(per_minute: u32) -> Refusals {
        Refusals {
            limiter: NonZeroU32::new(per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n).allow_burst(n))),
            blocked: Mutex::default(),
            tally: Mutex::default(),
        }
    }

    /// How long `peer` stays over its refusal budget, if it is.
    fn blocked_for(&self, peer: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut blocked = self.blocked.lock().ok()?;
        match blocked.get(peer) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                blocked.remove(peer);
                None
            }
            None => None,
        }
    }

    /// Count a refused credential of `peer` (for `tenant`: the key's, when the key is known;
    /// the default tenant otherwise). Past the peer's budget it is blocked for the time the
    /// budget takes to refill one refusal; while it is, its refusals are answered 429 (the
    /// returned wait). A valid credential from a blocked peer is still served: a peer may be a
    /// proxy or a NAT that good clients share.
    pub fn refused(
        &self,
        tenant: &str,
        peer: &str,
        why: Why,
        presented: Option<&str>,
    ) -> Option<Duration> {
        if let Some(wait) = self.blocked_for(peer) {
            self.count(tenant, peer, Why::Throttled, presented);
            return Some(wait);
        }
        self.count(tenant, peer, why, presented);
        let limiter = self.limiter.as_ref()?;
        if limiter.len() > MAX_PEERS {
            limiter.retain_recent();
        }
        if let Err(not_until) = limiter.check_key(&peer.to_owned()) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            if let Ok(mut blocked) = self.blocked.lock() {
                if blocked.len() >= MAX_PEERS {
                    let now = Instant::now();
                    blocked.retain(|_, until| *until > now);
                }
                if blocked.len() < MAX_PEERS {
                    blocked.insert(peer.to_owned(), Instant::now() + wait);
                }
            }
        }
        None
    }

    fn count(&self, tenant: &str, peer: &str, why: Why, presented: Option<&str>) {
        let Ok(mut tally) = self.tally.lock() else {
            return;
        };
        let mut key = (tenant.to_owned(), peer.to_owned());
        if !tally.contains_key(&key) && tally.len() >= MAX_PEERS {
            key.1 = OTHER.to_owned();
        }
        let t = tally.entry(key).or_default();
        t.count += 1;
        t.reasons.insert(why);
        if let Some(id) = presented.and_then(sanitized)
            && t.ids.len() < MAX_IDS
        {
            t.ids.insert(id);
        }
    }

    /// The audit rows of the refusals counted since the last call (one per tenant and
    /// peer), and a fresh count.
    pub fn take(&self, window: Duration) -> Vec<NewAudit> {
        let taken = match self.tally.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return Vec::new(),
        };
        let mut rows: Vec<NewAudit> = taken
            .into_iter()
            .map(|((tenant, peer), t)| {
                let reasons: Vec<&str> = t.reasons.iter().map(|w| w.as_str()).collect();
                let mut detail = format!(
                    "{} refused credentials within {} s: {}",
                    t.count,
                    window.as_secs().max(1),
                    reasons.join("; ")
                );
                if !t.ids.is_empty() {
                    let ids: Vec<&str> = t.ids.iter().map(String::as_str).collect();
                    detail.push_str(&format!(" (presented ids beginning {})", ids.join(", ")));
                }
                NewAudit {
                    tenant,
                    kind: "credential".into(),
                    action: "E".into(),
                    agent: format!("peer:{peer}"),
                    outcome: "4".into(),
                    detail: Some(detail),
                    ..Default::default()
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.tenant, &a.agent).cmp(&(&b.tenant, &b.agent)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_one_row_per_peer_with_a_sanitized_prefix() {
        let r = Refusals::new(0);
        for _ in 0..1000 {
            r.refused(
                "t",
                "198.51.100.7",
                Why::Key,
                Some("<script>-FFFFFFFFFFFF-xyz"),
            );
        }
        r.refused("t", "198.51.100.8", Why::Token, None);
        let rows = r.take(Duration::from_secs(60));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].agent, "peer:198.51.100.7");
        let d = rows[0].detail.as_deref().unwrap();
        assert!(d.starts_with("1000 refused credentials within 60 s"), "{d}");
        assert!(
            d.contains("beginning cfffffff…") && !d.contains("script"),
            "{d}"
        );
        assert!(r.take(Duration::from_secs(60)).is_empty(), "counted afresh");
    }

    #[test]
    fn a_peer_over_its_budget_is_answered_429() {
        let r = Refusals::new(3);
        for _ in 0..4 {
            assert!(r.refused("t", "p", Why::Key, None).is_none());
        }
        assert!(
            r.refused("t", "p", Why::Key, None).is_some(),
            "over the budget"
        );
        assert!(r.refused("t", "q", Why::Key, None).is_none(), "per peer");
        let rows = r.take(Duration::from_secs(60));
        assert!(rows[0].detail.as_deref().unwrap().contains("throttled"));
    }

    #[test]
    fn peers_are_addresses_and_ipv6_slash_64s() {
        assert_eq!(
            peer_key(Some("203.0.113.9".parse().unwrap())),
            "203.0.113.9"
        );
        assert_eq!(
            peer_key(Some("2001:db8:1:2:aaaa::1".parse().unwrap())),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            peer_key(Some("::ffff:203.0.113.9".parse().unwrap())),
            "203.0.113.9"
        );
        assert_eq!(peer_key(None), "unknown");
    }
}
