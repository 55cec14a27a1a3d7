-- Retention in bounded batches: each batch is found through an index (the oldest events
-- first, a notification's rows by its event, audit rows by age), never by a scan of a whole
-- table, so a purge costs what it deletes whatever the tables hold.

-- When an event stored before was logged again (for another subscription, or by a matcher
-- re-reading its batch); NULL when it never was. Retention keeps an event, and its
-- notifications, for as long after the later of the two times.
ALTER TABLE logged_events ADD COLUMN relogged_at TEXT;

CREATE INDEX logged_events_logged_at ON logged_events (logged_at, seq);
CREATE INDEX notification_log_event_seq ON notification_log (event_seq);
CREATE INDEX audit_events_age ON audit_events (recorded, id);
CREATE INDEX resource_versions_age ON resource_versions (updated_at);
