-- A matching generation per tenant ('subscriptions:<tenant>'), bumped by client writes that
-- change matching (subscription and topic create/update/delete), never by the hub's own
-- status changes: a matcher rebuilds only the tenant whose generation moved. The global
-- 'subscriptions' counter keeps counting every such write.
INSERT INTO hub_counters (name, value)
SELECT DISTINCT 'subscriptions:' || tenant, 1 FROM (
    SELECT tenant FROM subscriptions UNION SELECT tenant FROM topics
) t;
