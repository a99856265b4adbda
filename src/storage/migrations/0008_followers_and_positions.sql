-- Stream followers (pushers, federation senders, application-service
-- senders): where each has processed its stream up to, so it resumes there
-- after a restart.
CREATE TABLE stream_followers (
    follower TEXT PRIMARY KEY,
    stream_name TEXT NOT NULL,
    position BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);

-- How far each instance has seen every stream persisted ({"stream": position}),
-- for the admin API's cluster overview.
ALTER TABLE instances ADD COLUMN stream_positions JSONB NOT NULL DEFAULT '{}';
