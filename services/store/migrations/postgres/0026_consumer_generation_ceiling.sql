-- A commit may move a position only on a subscription incarnation its Consume could have
-- read: one that existed when the Consume began. Log keys come from one counter that only
-- grows, so the counter's value when a generation began is the highest key that generation
-- can have read; a subscription deleted and re-created since has a higher one, and a commit
-- of numbers read from the old log (or sent late) must not move the new log's position.
-- Rows from before this column hold 0: their commits are refused until the next Consume.
ALTER TABLE consumer_generations ADD COLUMN log_key_ceiling BIGINT NOT NULL DEFAULT 0;
