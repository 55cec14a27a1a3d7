-- Who is reading a named stream consumer now (gRPC `Consume`): one connection at a time in
-- the whole cluster. A claim is renewed while the connection lives and expires (on the
-- database's clock, milliseconds) when its process dies, so another process can take over.
CREATE TABLE consumer_claims (
    tenant TEXT NOT NULL,
    consumer TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, consumer)
);
