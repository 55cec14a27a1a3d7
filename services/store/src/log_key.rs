//! A subscription's incarnation.

/// The key of a subscription's notification log: given when the subscription is created and
/// never reused, so a subscription deleted and re-created with the same id is a new log.
/// Every stored or read position (the rest-hook cursor, named consumers' offsets, delivery
/// leases, the recent-notification caches, stream cursors) is keyed by it: a position of
/// one incarnation can never move, or be read against, the next.
///
/// It has no public constructor: a `LogKey` comes only from a stored subscription row
/// ([`crate::SubscriptionRow::log_key`]) or a logged notification, so a caller holding a
/// tenant and an id cannot stand in for the incarnation it meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogKey(i64);

impl LogKey {
    pub(crate) fn new(key: i64) -> LogKey {
        LogKey(key)
    }

    /// The number as stored (for logs and metrics only).
    pub fn get(self) -> i64 {
        self.0
    }

    /// A key made up by a test (the `testing` feature): never in production code.
    #[cfg(feature = "testing")]
    pub const fn for_tests(key: i64) -> LogKey {
        LogKey(key)
    }
}

impl std::fmt::Display for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
