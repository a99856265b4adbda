-- The `push_rules` stream (issue 13): each user's changes to their push
-- rules, one row per user holding them all (their own rules per kind in
-- priority order, and their changes to the server-default rules, see
-- `push/rules.rs`), which a write replaces with a new stream position.
-- Several writers, sharded by user; `instance_name` is the writer.
CREATE SEQUENCE push_rules_stream_seq;
-- Id 1 counts as persisted (see streams/id_gen.rs): streams start at 2.
SELECT nextval('push_rules_stream_seq');

CREATE TABLE push_rules (
    user_id TEXT PRIMARY KEY,
    rules JSONB NOT NULL,
    stream_id BIGINT NOT NULL,
    instance_name TEXT NOT NULL
);
CREATE INDEX push_rules_instance_stream ON push_rules (instance_name, stream_id);
CREATE INDEX push_rules_stream ON push_rules (stream_id);

-- What each new event does for each member it notifies or highlights
-- (Synapse's `event_push_actions`), written with the event in the event
-- persister's transaction: the unread counts of `/sync` and what pushers
-- will send. `thread_id` is the event's thread root, or `main`.
CREATE TABLE event_push_actions (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    notify BOOLEAN NOT NULL,
    highlight BOOLEAN NOT NULL,
    actions JSONB NOT NULL,
    PRIMARY KEY (user_id, room_id, stream_ordering)
);
CREATE INDEX event_push_actions_room ON event_push_actions (room_id, stream_ordering);
