//! One subscription stream, many channels.
//!
//! Every channel reads a subscription the same way: from a position (an event number), the
//! backlog from the notification log in order, then the live tail, woken only when that
//! subscription logs something ([`wake`]); grouped up to the subscription's
//! `backport-max-count`; with quiet periods reported so the channel can send heartbeats; and
//! with an explicit answer when the asked-for history is gone ([`stream`]). Every bundle
//! shape (R4 Backport, R4B, R5, classic R4 payloads) is rendered in one place ([`render`]).
//! A channel adapter (rest-hook in `delivery`; `sse`, `websocket` and `grpc` here, each with
//! its HTTP or gRPC handlers) only
//! frames, writes and reports its progress: cursors belong to readers. What it renders
//! comes only through its reader's [`disclosure::Disclosure`]: the reader's grant, at the
//! moment of disclosure, with the audit row naming the reader.

pub mod disclosure;
pub mod grpc;
pub mod grpc_start;
pub mod render;
pub mod sse;
pub mod start;
pub mod stream;
pub mod tokens;
pub mod wake;
pub mod websocket;

use crate::model::Subscription;

/// How many events one message carries: the topic's `backport-max-count`, else one.
pub fn group_size(sub: &Subscription) -> usize {
    sub.topic()
        .and_then(|t| t.max_count)
        .map_or(1, |m| m.max(1) as usize)
}
