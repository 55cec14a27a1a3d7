-- Every version of every Subscription and SubscriptionTopic a client wrote (FHIR vread and
-- _history), and a row without a resource for each delete. Versions continue across a
-- delete and a re-create of the same id, as FHIR versions do.
CREATE TABLE resource_history (
    tenant TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated TEXT NOT NULL,
    -- The resource as stored (no id/meta, no secrets); NULL for a delete.
    resource TEXT,
    PRIMARY KEY (tenant, resource_type, id, version_id)
);
-- Versions written before history was kept start it.
INSERT INTO resource_history (tenant, resource_type, id, version_id, last_updated, resource)
SELECT tenant, 'Subscription', id, version_id, last_updated, resource FROM subscriptions;
INSERT INTO resource_history (tenant, resource_type, id, version_id, last_updated, resource)
SELECT tenant, 'SubscriptionTopic', id, version_id, last_updated, resource FROM topics;
