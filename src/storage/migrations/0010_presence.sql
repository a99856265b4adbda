-- The `presence` stream (issue 13): each user's latest presence, as
-- Synapse's `presence_stream`. A change takes a new stream position and
-- replaces the user's row, so "what changed between two positions" is a
-- range of `stream_id` and the current presence of a user is one row.
-- Several writers, sharded by user; `instance_name` is the writer, for
-- catch-up by (writer, position).
CREATE SEQUENCE presence_stream_seq;
-- Id 1 counts as persisted (see streams/id_gen.rs): streams start at 2.
SELECT nextval('presence_stream_seq');

CREATE TABLE presence_stream (
    stream_id BIGINT NOT NULL PRIMARY KEY,
    instance_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- `online`, `unavailable` or `offline`.
    state TEXT NOT NULL,
    -- Milliseconds since the epoch; 0: never active.
    last_active_ts BIGINT NOT NULL,
    last_user_sync_ts BIGINT NOT NULL,
    status_msg TEXT,
    currently_active BOOLEAN NOT NULL
);
CREATE UNIQUE INDEX presence_stream_user ON presence_stream (user_id);
CREATE INDEX presence_stream_instance_stream ON presence_stream (instance_name, stream_id);
