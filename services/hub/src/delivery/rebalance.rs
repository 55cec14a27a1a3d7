//! Spreading subscriptions over the delivery processes. Leases go to whichever process
//! claims first, so a process added to a running cluster would find every subscription
//! held and sit idle. Every `delivery.lease_ttl_ms` each process (when there are several)
//! compares the leases each live process holds: one holding more than its share
//! (`ceil(subscriptions / processes)`) while another holds less than `floor(…)` hands the
//! excess back, idle subscriptions only (parked, or with no worker: no request is in flight,
//! so nothing is sent twice and order holds); one holding less than `floor(…)` claims what
//! is free. Nothing moves while every process is within its share. Leases found free at two
//! rounds in a row (a whole TTL: the process they were handed to did not take them — an
//! older binary in a rolling upgrade, a process whose store calls fail) are claimed by
//! whoever sees them, whatever its share: a subscription is never left without a worker.

use super::{Delivery, Key, Slot};
use hub_store::LogKey;

/// What one process should do, from the lease counts of every live process.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Move {
    /// Hand back this many leases.
    Release(usize),
    /// Claim every free lease.
    Claim,
    Stay,
}

/// `mine`: the leases this process holds; `others`: those of each other live process;
/// `total`: the subscriptions there are to deliver; `free_before`: whether the last round
/// (a lease TTL ago) found leases free too.
pub(super) fn decide(mine: usize, others: &[usize], total: usize, free_before: bool) -> Move {
    if others.is_empty() {
        return Move::Stay;
    }
    let processes = others.len() + 1;
    let (floor, ceil) = (total / processes, total.div_ceil(processes));
    let held: usize = mine + others.iter().sum::<usize>();
    if mine > ceil && others.iter().any(|&n| n < floor) {
        Move::Release(mine - ceil)
    } else if held < total && (mine < floor || free_before) {
        Move::Claim
    } else {
        Move::Stay
    }
}

impl Delivery {
    /// One rebalancing step (above); `true` when this process should claim every free
    /// subscription now.
    pub(super) async fn rebalance(&mut self) -> bool {
        let counts = match self.hub.store.lease_counts().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the delivery processes' leases");
                return false;
            }
        };
        let others: Vec<usize> = counts
            .iter()
            .filter(|(owner, _)| **owner != self.owner)
            .map(|(_, &n)| usize::try_from(n).unwrap_or(usize::MAX))
            .collect();
        let total = self.known.subs.len();
        let held = self.leases.len() + others.iter().sum::<usize>();
        let free_before = std::mem::replace(&mut self.free_before, held < total);
        match decide(self.leases.len(), &others, total, free_before) {
            Move::Stay => false,
            Move::Claim => true,
            Move::Release(n) => {
                let idle: Vec<(Key, LogKey)> = self
                    .leases
                    .iter()
                    .filter(|(_, h)| matches!(h.slot, None | Some(Slot::Parked { .. })))
                    .take(n)
                    .map(|(k, h)| (k.clone(), h.log_key))
                    .collect();
                if idle.is_empty() {
                    return false;
                }
                for (key, _) in &idle {
                    self.stop(key);
                    self.leases.remove(key);
                }
                let keys: Vec<LogKey> = idle.iter().map(|(_, l)| *l).collect();
                match self.hub.store.release_some(&self.owner, &keys).await {
                    Ok(released) => {
                        tracing::info!(
                            released,
                            kept = self.leases.len(),
                            "handed idle subscriptions to a delivery process holding fewer"
                        );
                        false
                    }
                    Err(e) => {
                        // still ours in the store: take them up again rather than leave
                        // them held by a process that runs no worker for them
                        tracing::warn!(error = %e, "cannot hand delivery leases over; keeping them");
                        true
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_above_its_share_beside_one_below_hands_over() {
        // alone: nothing to balance
        assert_eq!(decide(10, &[], 10, false), Move::Stay);
        // a process added later holds nothing: the first hands back down to its share,
        // and the new one claims what was handed back
        assert_eq!(decide(10, &[0], 10, false), Move::Release(5));
        assert_eq!(decide(0, &[10], 10, false), Move::Stay, "nothing free yet");
        assert_eq!(decide(0, &[5], 10, false), Move::Claim);
        // within [floor, ceil] everywhere: nothing moves (no oscillation on odd counts)
        assert_eq!(decide(3, &[2], 5, false), Move::Stay);
        assert_eq!(decide(2, &[3], 5, false), Move::Stay);
        // above the share, but nobody is below theirs: keep
        assert_eq!(decide(4, &[3, 3], 10, false), Move::Stay);
        // three processes, the third new
        assert_eq!(decide(6, &[6, 0], 12, false), Move::Release(2));
        // … which claims once the others handed theirs back, not before
        assert_eq!(decide(0, &[6, 6], 12, false), Move::Stay);
        assert_eq!(decide(0, &[4, 4], 12, false), Move::Claim);
        // below the share, but everything is held (by processes at their share): no claim
        assert_eq!(decide(3, &[4, 4], 11, false), Move::Stay);
        // handed back, and still free a round later (the process below its share never
        // took them): the one that handed them back takes them again
        assert_eq!(
            decide(3, &[0], 6, false),
            Move::Stay,
            "the new one may claim first"
        );
        assert_eq!(
            decide(3, &[0], 6, true),
            Move::Claim,
            "free for a whole TTL"
        );
        assert_eq!(decide(3, &[3], 6, true), Move::Stay, "nothing free");
    }
}
