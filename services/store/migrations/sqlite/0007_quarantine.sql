-- Change events the matcher could not process (unreadable, or matching failed or went over
-- its budget), kept with the reason so an operator can list and replay them. `source` is the
-- log position, so a batch re-read after a crash quarantines each record once.
CREATE TABLE quarantined_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL UNIQUE,
    tenant TEXT,
    event_id TEXT,
    record_key TEXT,
    payload BLOB NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at TEXT NOT NULL
);
