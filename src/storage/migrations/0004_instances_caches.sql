-- How far each instance has applied each writer's rows of the `caches`
-- stream ({"writer": position}), for the admin API's cluster overview.
ALTER TABLE instances ADD COLUMN caches_positions JSONB NOT NULL DEFAULT '{}';
