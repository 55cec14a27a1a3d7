//! One subscription stream, many channels.
//!
//! Every channel reads a subscription the same way: from a position (an event number), the
//! backlog from the notification log in order, then the live tail, woken only when that
//! subscription logs something ([`wake`]); grouped up to the subscription's
//! `backport-max-count`; with quiet periods reported so the channel can send heartbeats; and
//! with an explicit answer when the asked-for history is gone ([`stream`]). Every bundle
//! shape (R4 Backport, R4B, R5, classic R4 payloads) is rendered in one place ([`render`]).
//! A channel adapter (rest-hook in `delivery`, the websocket in `api::websocket`) only
//! frames, writes and reports its progress: cursors belong to readers.

pub mod grpc;
pub mod render;
pub mod stream;
pub mod wake;

use hub_store::{NewAudit, Notification};

use crate::Hub;
use crate::model::Subscription;

/// Record in the audit trail that `notes` of `sub` are handed to `channel` for `agent` (the
/// credential reading a stream, or the subscription's owner for a rest-hook): one
/// disclosure per notification. [`Unaudited`](crate::audit::Unaudited) means they must not
/// be handed over (`audit.fail_closed`).
pub async fn disclose(
    hub: &Hub,
    sub: &Subscription,
    channel: &str,
    agent: &str,
    notes: &[Notification],
) -> Result<(), crate::audit::Unaudited> {
    crate::auth::record_disclosure(hub, disclosures(sub, channel, agent, notes)).await
}

/// The audit rows of [`disclose`], for a caller that writes them later in one go.
pub fn disclosures(
    sub: &Subscription,
    channel: &str,
    agent: &str,
    notes: &[Notification],
) -> Vec<NewAudit> {
    notes
        .iter()
        .map(|n| NewAudit {
            tenant: sub.tenant().to_owned(),
            kind: "disclosure".into(),
            action: "R".into(),
            agent: agent.to_owned(),
            entity: (!n.focus_type.is_empty()).then(|| format!("{}/{}", n.focus_type, n.focus_id)),
            subscription_id: Some(sub.id().to_owned()),
            channel: Some(channel.to_owned()),
            outcome: "0".into(),
            detail: Some(format!("event {}", n.event_number)),
        })
        .collect()
}

/// How many events one message carries: the topic's `backport-max-count`, else one.
pub fn group_size(sub: &Subscription) -> usize {
    sub.topic()
        .and_then(|t| t.max_count)
        .map_or(1, |m| m.max(1) as usize)
}
