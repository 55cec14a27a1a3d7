-- Subscription.error: why the hub set the subscription to error or off.
ALTER TABLE subscriptions ADD COLUMN error TEXT;
