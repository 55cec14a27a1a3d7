-- What each client write that changed matching touched, under the tenant generation it
-- made: a matcher whose index is at generation G applies the subscriptions named after G in
-- place. A row without a subscription (a topic or API key write, an owner refresh) asks for
-- a rebuild of the tenant, as does a gap (rows purged: only the last 10,000 per tenant are
-- kept).
CREATE TABLE matching_changes (
    tenant TEXT NOT NULL,
    generation BIGINT NOT NULL,
    subscription_id TEXT,
    PRIMARY KEY (tenant, generation)
);
