-- User-interactive authentication for a signed-in user (deleting devices,
-- uploading cross-signing keys): a session is bound to the user who started
-- it and to the request it was started for (method and path), as Synapse
-- binds it, so that a password given for one operation cannot authorise
-- another, nor another user's. Registration's sessions have none of these.
ALTER TABLE uia_sessions
    ADD COLUMN user_id TEXT,
    ADD COLUMN method TEXT,
    ADD COLUMN uri TEXT;
