-- Which delivery process owns a subscription's delivery, until when (unix milliseconds).
-- A lease not renewed in time can be taken over, so a dead process's subscriptions move on.
CREATE TABLE delivery_leases (
    tenant TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, subscription_id)
);
