-- Content reports (`POST /rooms/{roomId}/report/{eventId}`, `/rooms/{roomId}/report`,
-- `/users/{userId}/report`; issue 16), listed for admins at
-- `GET /_lattice/admin/v1/reports`. One table for the three kinds: what was
-- reported is a room, an event of a room, or a user.
CREATE TABLE reports (
    id BIGSERIAL PRIMARY KEY,
    received_ts BIGINT NOT NULL,
    -- Who reported.
    user_id TEXT NOT NULL,
    -- `event`, `room` or `user`.
    kind TEXT NOT NULL,
    room_id TEXT,
    event_id TEXT,
    -- The user reported (`kind = 'user'`).
    target_user_id TEXT,
    reason TEXT,
    -- The deprecated `score` of an event report (-100 to 0), when given.
    score BIGINT
);
CREATE INDEX reports_by_time ON reports (received_ts DESC, id DESC);
