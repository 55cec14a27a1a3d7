-- Short-lived tokens that bind a WebSocket connection to a subscription
-- ($get-ws-binding-token, Subscriptions Backport IG); any API instance may check them.
CREATE TABLE ws_tokens (
    token TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
