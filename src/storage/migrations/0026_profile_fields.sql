-- Extended profile fields (Client-Server v1.16): any key but `displayname`
-- and `avatar_url` (which stay on `users`), such as `m.tz`, with any JSON
-- value.
CREATE TABLE profile_fields (
    user_id TEXT NOT NULL,
    field TEXT NOT NULL,
    value JSONB NOT NULL,
    PRIMARY KEY (user_id, field)
);
