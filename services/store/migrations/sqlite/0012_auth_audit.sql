-- API keys: created and revoked by an operator, shown once, stored as a SHA-256 of the
-- secret part. Each is bound to one tenant and a set of scopes (space-separated, SMART v2 and
-- hub/admin, hub/publish), optionally to a patient (patient/ scopes) and an expiry.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    patient TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    last_used_at TEXT
);

-- Who owns a subscription (JSON: subject, API key id, scopes and patient at the last write):
-- what it may receive is checked against it when the matcher logs a notification.
ALTER TABLE subscriptions ADD COLUMN owner TEXT;

-- The audit trail: append-only (the hub never updates a row; housekeeping removes rows older
-- than audit.retention_days). kind: change (subscription, topic, key), credential (refused
-- credentials), disclosure (a notification handed to a channel).
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded TEXT NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    agent TEXT NOT NULL,
    entity TEXT,
    subscription_id TEXT,
    channel TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_events_recorded ON audit_events (tenant, recorded);
