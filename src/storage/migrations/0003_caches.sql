-- The `caches` stream (DESIGN §4): cache invalidations that any instance
-- writes, so that an instance which missed some on Redis (it was disconnected,
-- or their writer died before publishing) catches up from here, as Synapse's
-- `cache_invalidation_stream_by_instance`. Ids are per-writer ordered; the
-- background instance deletes rows older than a week.
CREATE SEQUENCE cache_invalidation_stream_seq;
-- Id 1 counts as persisted (see streams/id_gen.rs): streams start at 2.
SELECT nextval('cache_invalidation_stream_seq');

CREATE TABLE cache_invalidation_stream_by_instance (
    stream_id BIGINT PRIMARY KEY,
    instance_name TEXT NOT NULL,
    cache_func TEXT NOT NULL,
    -- The cache's key: a JSON array of strings and nulls.
    keys JSONB NOT NULL,
    invalidation_ts BIGINT NOT NULL
);
CREATE INDEX cache_invalidation_stream_by_instance_writer
    ON cache_invalidation_stream_by_instance (instance_name, stream_id);
CREATE INDEX cache_invalidation_stream_by_instance_ts
    ON cache_invalidation_stream_by_instance (invalidation_ts);
