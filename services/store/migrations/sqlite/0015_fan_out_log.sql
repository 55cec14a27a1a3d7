-- Fan-out storage: a logged change event (its resource included) is stored once however many
-- subscriptions it reaches; a notification row holds only what is its own (the
-- subscription's log key, its event number, which event).

-- A short key per subscription for its log rows; never reused (taken from a counter), so a
-- re-created id starts an empty log.
ALTER TABLE subscriptions ADD COLUMN log_key INTEGER;
UPDATE subscriptions SET log_key = rowid;
CREATE UNIQUE INDEX subscriptions_log_key ON subscriptions (log_key);
INSERT INTO hub_counters (name, value)
    VALUES ('log_keys', COALESCE((SELECT MAX(log_key) FROM subscriptions), 0));

-- One row per change event that reached at least one subscription.
CREATE TABLE logged_events (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    -- The change event: re-processing it adds nothing for a subscription that has it.
    event_id TEXT NOT NULL,
    action TEXT NOT NULL,
    focus_type TEXT NOT NULL,
    focus_id TEXT NOT NULL,
    focus_version TEXT,
    occurred_at TEXT NOT NULL,
    logged_at TEXT NOT NULL,
    -- The resource as it was in the event (JSON), for full-resource payloads and replay.
    resource TEXT,
    UNIQUE (tenant, event_id)
);

-- The notification log: one row per event per subscription, numbered without gaps.
CREATE TABLE notification_log (
    log_key INTEGER NOT NULL,
    event_number INTEGER NOT NULL,
    event_seq INTEGER NOT NULL,
    -- Set only on rows logged before this table: the webhook-id they were delivered with.
    -- Newer rows derive theirs from tenant, subscription and event.
    notification_id TEXT,
    PRIMARY KEY (log_key, event_number)
) WITHOUT ROWID;
CREATE UNIQUE INDEX notification_log_event ON notification_log (log_key, event_seq);

INSERT INTO logged_events
    (tenant, event_id, action, focus_type, focus_id, focus_version, occurred_at, logged_at, resource)
SELECT tenant, event_id, action, focus_type, focus_id, focus_version, occurred_at, created_at, resource
FROM notifications
WHERE rowid IN (SELECT MIN(rowid) FROM notifications GROUP BY tenant, event_id)
ORDER BY rowid;

INSERT INTO notification_log (log_key, event_number, event_seq, notification_id)
SELECT s.log_key, n.event_number, e.seq, n.notification_id
FROM notifications n
JOIN subscriptions s ON s.tenant = n.tenant AND s.id = n.subscription_id
JOIN logged_events e ON e.tenant = n.tenant AND e.event_id = n.event_id;

DROP TABLE notifications;
