-- Stall recovery (`streams::stall`, `replication.stall_check_ms`).
--
-- The position each writer last announced as its claim on each stream it
-- writes (an idle writer claims the highest position anyone allocated): a
-- reader that cannot hear the writer over Redis catches up to it from here,
-- as it does to the writer's `stream_positions` row.
CREATE TABLE stream_claims (
    stream_name TEXT NOT NULL,
    instance_name TEXT NOT NULL,
    position BIGINT NOT NULL,
    claimed_ts BIGINT NOT NULL,
    PRIMARY KEY (stream_name, instance_name)
);

-- The writers each instance finds stalled ([{"stream", "writer"}]), for the
-- admin API's cluster overview.
ALTER TABLE instances ADD COLUMN stalled_writers JSONB NOT NULL DEFAULT '[]';
