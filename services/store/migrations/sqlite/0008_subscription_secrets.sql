-- Secrets leave the resource JSON: the Standard Webhooks signing secret and the mTLS client
-- certificate (with its private key) get columns of their own, so no read path can show them
-- by forgetting to strip an extension. Rows written before this are moved over by the hub
-- at start-up (it knows the extensions).
ALTER TABLE subscriptions ADD COLUMN secret TEXT;
ALTER TABLE subscriptions ADD COLUMN client_certificate TEXT;
