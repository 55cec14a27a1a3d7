//! Starting a subscription's worker: a checked endpoint and its origin's HTTP client. A start
//! can fail (the endpoint's name does not resolve, the address is refused, a client cannot be
//! built, a secret is missing); the delivery loop then tries again with backoff while the
//! subscription shows `error` with the reason, so a lease is never held with no worker and
//! no word.

use std::time::Duration;

use hub_fhir::subscription::Status;
use tokio_util::sync::CancellationToken;

use super::{clients, worker};
use crate::model::Subscription;
use crate::state::Hub;

/// The longest wait between two tries to start a worker.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait after the `attempt`th failed start (1-based): 1 s, 2 s, 4 s … up to a minute.
pub(super) fn backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(6);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// Why a worker could not start, for the subscription it was for.
pub(super) struct StartFailure {
    sub: Box<Subscription>,
    why: String,
}

impl StartFailure {
    fn new(sub: Subscription, why: String) -> StartFailure {
        StartFailure {
            sub: Box::new(sub),
            why,
        }
    }

    /// Log it and show it: the subscription turns `error` with the reason (fenced by its
    /// version, so a client write since wins), visible in `$status` and on the resource.
    pub(super) async fn report(self, hub: &Hub, attempt: u32, retry_in: Duration) {
        let StartFailure { sub, why } = self;
        let msg = format!("delivery cannot start: {why}");
        tracing::warn!(
            subscription = %sub.id(),
            tenant = %sub.tenant(),
            attempt,
            retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
            %msg,
            "not delivering; trying again"
        );
        if sub.status == Status::Error && sub.error.as_deref() == Some(msg.as_str()) {
            return;
        }
        let set = hub
            .store
            .set_subscription_status(
                sub.tenant(),
                sub.id(),
                sub.version,
                Status::Error.as_str(),
                Some(&msg),
            )
            .await;
        if let Err(e) = set {
            tracing::warn!(subscription = %sub.id(), error = %e, "cannot record a status change");
        }
    }
}

/// What every worker shares: the hub, the shutdown, this process's lease owner id and the
/// origins' clients.
pub(super) type Parts<'a> = (
    &'a Hub,
    &'a CancellationToken,
    &'a str,
    &'a std::sync::Arc<clients::Clients>,
);

/// A worker for a subscription: a checked endpoint and its origin's HTTP client, pinned to
/// the checked address, with the subscription's client certificate.
pub(super) async fn start_worker(
    (hub, shutdown, owner, clients): Parts<'_>,
    sub: Subscription,
) -> Result<worker::Worker, StartFailure> {
    if sub.secret.is_none() {
        let why = "the stored subscription has no signing secret".to_owned();
        return Err(StartFailure::new(sub, why));
    }
    let checked = match hub.egress.check(&sub.spec.channel.endpoint).await {
        Ok(c) => c,
        Err(why) => {
            let why = format!("endpoint refused: {why}");
            return Err(StartFailure::new(sub, why));
        }
    };
    let client = match clients.get(hub, &sub, &checked) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot build an HTTP client: {e}");
            return Err(StartFailure::new(sub, why));
        }
    };
    let pinned = checked.pinned.as_ref().map(|(_, a)| *a);
    new_worker(hub, shutdown, owner, clients, sub, client, pinned)
}

/// A worker sending through `client` (connected to `pinned`, the endpoint's checked
/// address); a parked subscription's worker starts with the client its last one had, so
/// waking it costs no name lookup.
pub(super) fn new_worker(
    hub: &Hub,
    shutdown: &CancellationToken,
    owner: &str,
    clients: &std::sync::Arc<clients::Clients>,
    sub: Subscription,
    client: clients::OriginClient,
    pinned: Option<std::net::SocketAddr>,
) -> Result<worker::Worker, StartFailure> {
    let Some(secret) = sub.secret.clone() else {
        let why = "the stored subscription has no signing secret".to_owned();
        return Err(StartFailure::new(sub, why));
    };
    Ok(worker::Worker {
        hub: hub.clone(),
        resume: None,
        client: std::sync::Mutex::new(client),
        clients: std::sync::Arc::clone(clients),
        pinned_addr: std::sync::Mutex::new(pinned),
        sub,
        secret,
        stop: shutdown.child_token(),
        owner: owner.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_starts_back_off_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
