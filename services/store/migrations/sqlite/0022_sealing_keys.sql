-- The keys secrets at rest were sealed with, by id and fingerprint (never the key): a hub
-- started with another key under the same id, or with a freshly made local key over a store
-- that already holds sealed values (a backup restored without its secrets.key), is refused at
-- start instead of skipping every subscription it can no longer open.
CREATE TABLE sealing_keys (
    key_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    first_used_at TEXT NOT NULL
);
