-- When the change that left each remembered version happened (unix microseconds of its
-- occurredAt): a change event replayed or read late, older than what is remembered, no longer
-- overwrites the newer version a topic's %previous compares with. A deletion is remembered
-- as an empty resource with its time, so an older update read after it cannot bring the
-- resource back. NULL for rows from before: any change replaces them.
ALTER TABLE resource_versions ADD COLUMN changed_us BIGINT;
