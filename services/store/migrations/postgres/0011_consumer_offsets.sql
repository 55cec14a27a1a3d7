-- Named stream consumers' committed positions (gRPC `Commit`), per subscription: a consumer
-- that reconnects without an offset resumes after what it committed, like a Kafka consumer
-- group. Positions only move forward.
CREATE TABLE consumer_offsets (
    tenant TEXT NOT NULL,
    consumer TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    event_number BIGINT NOT NULL,
    committed_at TEXT NOT NULL,
    PRIMARY KEY (tenant, consumer, subscription_id)
);
