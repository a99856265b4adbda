-- Where each device connected from (`GET /admin/whois/{userId}`): one row
-- per device and address, with the user agent last seen there, as
-- Synapse's `user_ips` keeps one per access token and address. Written in
-- batches with the devices' `last_seen_*` columns (each instance's notes,
-- every few seconds), pruned by the background instance after 28 days
-- (Synapse's `user_ips_max_age`), and gone with their device.
CREATE TABLE device_connections (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    user_agent TEXT,
    last_seen_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, ip),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX device_connections_last_seen ON device_connections (last_seen_ts);

INSERT INTO device_connections (user_id, device_id, ip, last_seen_ts)
SELECT user_id, device_id, last_seen_ip, last_seen_ts FROM devices
WHERE last_seen_ip IS NOT NULL AND last_seen_ts IS NOT NULL;

-- Registration tokens (`registration_requires_token`), Synapse's table: a
-- use is `pending` from the moment a registration's auth session accepted
-- the token until the account is made (then `completed`) or the session
-- expires (then given back). A token is valid while pending + completed <
-- uses_allowed (NULL: no limit) and before expiry_time (NULL: never).
CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time BIGINT,
    CHECK (uses_allowed IS NULL OR uses_allowed >= 0),
    CHECK (pending >= 0 AND completed >= 0)
);

-- The token a registration's session holds a pending use of (the stages it
-- completed are in `completed`). A deleted token lets go of its sessions.
ALTER TABLE uia_sessions
    ADD COLUMN registration_token TEXT REFERENCES registration_tokens (token) ON DELETE SET NULL;
