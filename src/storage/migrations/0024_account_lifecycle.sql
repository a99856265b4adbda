-- Accounts that end or lend themselves to another device (issue 16).
--
-- `erased`: the account was deactivated with `erase: true` (Synapse's
-- `erased_users`): its profile is gone and it never comes back.
ALTER TABLE users ADD COLUMN erased BOOLEAN NOT NULL DEFAULT FALSE;

-- Short-lived, single-use tokens for `m.login.token`, issued by
-- `POST /login/get_token` to a signed-in user (Synapse's
-- `login_via_existing_session`). Stored as their SHA-256, like access tokens.
CREATE TABLE login_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX login_tokens_expiry ON login_tokens (expires_ts);
