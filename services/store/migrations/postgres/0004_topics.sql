-- SubscriptionTopics, per tenant, found by their canonical URL.
CREATE TABLE topics (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    url TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated TEXT NOT NULL,
    -- The SubscriptionTopic as written, without id and meta.
    resource TEXT NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, url)
);
