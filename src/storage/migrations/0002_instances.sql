-- Every instance of the deployment announces itself here (a heartbeat every
-- few seconds), for the admin API's cluster overview.
CREATE TABLE instances (
    instance_name TEXT PRIMARY KEY,
    roles TEXT[] NOT NULL,
    host TEXT NOT NULL,
    pid INT NOT NULL,
    started_ts BIGINT NOT NULL,
    heartbeat_ts BIGINT NOT NULL,
    -- How far this instance has seen the events stream (persisted-up-to).
    events_position BIGINT NOT NULL
);
