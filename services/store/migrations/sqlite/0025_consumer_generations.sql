-- The generation of each named stream consumer (gRPC `Consume`): every Consume bumps it and
-- hands it to its client, and a Commit must carry the current one, so a connection that
-- lost the consumer (replaced by a newer Consume) can no longer move its position.
CREATE TABLE consumer_generations (
    tenant TEXT NOT NULL,
    consumer TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (tenant, consumer)
);
