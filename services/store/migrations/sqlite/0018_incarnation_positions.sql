-- Every position is fenced by the subscription's incarnation: its log key, given when the
-- subscription is created and never reused. A subscription deleted and re-created with the
-- same id is a new log; keyed by (tenant, id), the old incarnation's delivery cursor,
-- consumer offsets and leases could move the new one. Rows of subscriptions that no longer
-- exist are dropped here (nothing could read them).

-- The rest-hook reader's cursor and retry state, one row per incarnation.
CREATE TABLE delivery_state_by_key (
    log_key INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    -- Every event number up to this one has been delivered (or given up on).
    delivered_through INTEGER NOT NULL DEFAULT 0,
    -- Consecutive failed attempts of the message being retried (or of heartbeats).
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TEXT,
    last_success_at TEXT,
    last_error TEXT,
    -- When the next attempt of the message being retried is due (unix milliseconds on the
    -- database's clock); NULL when none is. A restarted worker resumes the retry schedule
    -- from here instead of starting it again.
    next_attempt_at INTEGER
);
INSERT INTO delivery_state_by_key (log_key, tenant, subscription_id, delivered_through,
    attempts, last_attempt_at, last_success_at, last_error)
SELECT s.log_key, d.tenant, d.subscription_id, d.delivered_through, d.attempts,
    d.last_attempt_at, d.last_success_at, d.last_error
FROM delivery_state d JOIN subscriptions s ON s.tenant = d.tenant AND s.id = d.subscription_id
WHERE s.log_key IS NOT NULL;
-- every incarnation has its row (progress only updates it): one for any that had none
INSERT INTO delivery_state_by_key (log_key, tenant, subscription_id)
SELECT s.log_key, s.tenant, s.id FROM subscriptions s
WHERE s.log_key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM delivery_state_by_key k WHERE k.log_key = s.log_key);
DROP TABLE delivery_state;
ALTER TABLE delivery_state_by_key RENAME TO delivery_state;

-- Which delivery process holds an incarnation's delivery.
CREATE TABLE delivery_leases_by_key (
    log_key INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at INTEGER NOT NULL DEFAULT 0
);
INSERT INTO delivery_leases_by_key (log_key, tenant, subscription_id, owner, expires_at)
SELECT s.log_key, l.tenant, l.subscription_id, l.owner, l.expires_at
FROM delivery_leases l JOIN subscriptions s ON s.tenant = l.tenant AND s.id = l.subscription_id
WHERE s.log_key IS NOT NULL;
DROP TABLE delivery_leases;
ALTER TABLE delivery_leases_by_key RENAME TO delivery_leases;
CREATE INDEX delivery_leases_owner ON delivery_leases (owner);

-- Named consumers' committed positions, per incarnation: a consumer of a re-created
-- subscription starts from its start position, never from the old log's offset.
CREATE TABLE consumer_offsets_by_key (
    tenant TEXT NOT NULL,
    consumer TEXT NOT NULL,
    log_key INTEGER NOT NULL,
    subscription_id TEXT NOT NULL,
    event_number INTEGER NOT NULL,
    committed_at TEXT NOT NULL,
    PRIMARY KEY (tenant, consumer, log_key)
);
INSERT INTO consumer_offsets_by_key (tenant, consumer, log_key, subscription_id, event_number,
    committed_at)
SELECT c.tenant, c.consumer, s.log_key, c.subscription_id, c.event_number, c.committed_at
FROM consumer_offsets c JOIN subscriptions s ON s.tenant = c.tenant AND s.id = c.subscription_id
WHERE s.log_key IS NOT NULL;
DROP TABLE consumer_offsets;
ALTER TABLE consumer_offsets_by_key RENAME TO consumer_offsets;
