-- The last version the matcher saw of each resource whose type a topic compares with its
-- previous version (queryCriteria.previous, %previous), for change events that do not carry
-- `previous` (bare resources written to Kafka by other systems, most producers).
CREATE TABLE resource_versions (
    tenant TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, resource_type, resource_id)
);
