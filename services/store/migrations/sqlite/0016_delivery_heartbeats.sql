-- One heartbeat per delivery process: a process renews its own row, not every lease it
-- holds, so a pass over 100,000 idle subscriptions writes one row. A lease is live while its
-- owner's heartbeat is; `delivery_leases.expires_at` is no longer read.
CREATE TABLE delivery_owners (
    owner TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
