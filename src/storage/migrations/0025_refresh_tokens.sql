-- Refresh tokens (issue 16). A client that asks for one at login or
-- registration gets an access token that expires (`expires_ts`) and a
-- refresh token that swaps for a new pair once. The spent refresh token is
-- kept, pointing at its successor (`next_token_id`), until that successor
-- is spent in turn: using it again after its successor was used is how a
-- stolen token shows itself, and ends the session.
CREATE TABLE refresh_tokens (
    id BIGSERIAL PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    next_token_id BIGINT,
    created_ts BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);
CREATE INDEX refresh_tokens_next ON refresh_tokens (next_token_id);

-- NULL for the access tokens of clients without refresh tokens, which
-- never expire.
ALTER TABLE access_tokens ADD COLUMN expires_ts BIGINT;
-- The refresh token issued with this access token; its first use spends
-- that refresh token's predecessor (`used`).
ALTER TABLE access_tokens ADD COLUMN refresh_token_id BIGINT
    REFERENCES refresh_tokens (id) ON DELETE CASCADE;
ALTER TABLE access_tokens ADD COLUMN used BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX access_tokens_refresh ON access_tokens (refresh_token_id);
