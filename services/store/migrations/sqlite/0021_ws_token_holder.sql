-- The credential a binding token was issued to (JSON: subject, API key id, scopes, patient,
-- expiry): a bind or `?token=` stream acts as that credential, with its grant, limits and
-- audit name. Tokens issued before this have none and are refused (they live ten minutes).
ALTER TABLE ws_tokens ADD COLUMN holder TEXT;
