-- Subscriptions, the per-subscription notification log and delivery state.
-- Every row carries its tenant. Times are FHIR instants stored as text (UTC, 'Z').

CREATE TABLE subscriptions (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated TEXT NOT NULL,
    status TEXT NOT NULL,
    criteria TEXT NOT NULL,
    channel_type TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    -- The Subscription as the client last wrote it, with hub-owned fields applied.
    resource TEXT NOT NULL,
    -- Every event generated for this subscription; the last eventNumber assigned.
    events_since_start BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX subscriptions_status ON subscriptions (status);

-- The notification log: one row per generated event, numbered without gaps per subscription.
CREATE TABLE notifications (
    tenant TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    event_number BIGINT NOT NULL,
    -- Stable across retries and replays (the webhook-id).
    notification_id TEXT NOT NULL,
    -- The change event that caused it: re-processing the same event adds nothing.
    event_id TEXT NOT NULL,
    action TEXT NOT NULL,
    focus_type TEXT NOT NULL,
    focus_id TEXT NOT NULL,
    focus_version TEXT,
    occurred_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    -- The resource as it was in the event (JSON), for full-resource payloads and replay.
    resource TEXT,
    PRIMARY KEY (tenant, subscription_id, event_number),
    UNIQUE (tenant, subscription_id, event_id)
);

CREATE TABLE delivery_state (
    tenant TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    -- Every event number up to this one has been delivered (or given up on).
    delivered_through BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_attempt_at TEXT,
    last_success_at TEXT,
    last_error TEXT,
    PRIMARY KEY (tenant, subscription_id)
);

-- Counters that let every hub instance notice changes cheaply.
CREATE TABLE hub_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO hub_counters (name, value) VALUES ('subscriptions', 0);
