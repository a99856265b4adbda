-- Push actions as one row per event instead of one per member: the
-- members an event notifies and those it highlights as arrays, and the
-- actions of the few whose actions are not the commonest `["notify"]` as
-- an object by user. A message in a room of N members was N rows and N
-- entries of a text primary key, about eight times the PostgreSQL work of
-- one row (and five times the size); counting a user's unread events now
-- reads the room's rows above the user's floor, which the floor keeps
-- short, and the pushers to come read new rows in stream order.
CREATE TABLE event_push_actions_by_event (
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    thread_id TEXT NOT NULL,
    notify_users TEXT[] NOT NULL,
    highlight_users TEXT[] NOT NULL,
    -- user id -> actions, for members whose actions are not ["notify"].
    actions JSONB,
    PRIMARY KEY (room_id, stream_ordering)
);

INSERT INTO event_push_actions_by_event
    (room_id, stream_ordering, thread_id, notify_users, highlight_users, actions)
SELECT room_id, stream_ordering, MIN(thread_id),
    COALESCE(array_agg(user_id) FILTER (WHERE notify), '{}'),
    COALESCE(array_agg(user_id) FILTER (WHERE highlight), '{}'),
    jsonb_object_agg(user_id, actions) FILTER (WHERE actions IS NOT NULL)
FROM event_push_actions
GROUP BY room_id, stream_ordering;

DROP TABLE event_push_actions;
ALTER TABLE event_push_actions_by_event RENAME TO event_push_actions;
ALTER TABLE event_push_actions RENAME CONSTRAINT event_push_actions_by_event_pkey TO event_push_actions_pkey;
