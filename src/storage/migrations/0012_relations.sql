-- Relations between events (issue 13 item 5; Synapse's `event_relations`):
-- one row per event whose content has `m.relates_to` with a `rel_type` and
-- an `event_id` (a reply's `m.in_reply_to` alone is not one). Written by the
-- event persister in the transaction of the relating event; a redaction of
-- the relating event deletes its row, so the parent's aggregations no longer
-- count it, while a redaction of the parent keeps its children.
CREATE TABLE event_relations (
    -- The relating (child) event.
    event_id TEXT PRIMARY KEY,
    -- The parent, as the child names it (it may not be known here).
    relates_to_id TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    -- The child's event type (`/relations/{eventId}/{relType}/{eventType}`).
    type TEXT NOT NULL,
    -- An annotation's `key` (the reaction), NULL for the other types.
    aggregation_key TEXT,
    -- The child's position in the events stream: relations pages are read
    -- in this order, and threads are ordered by their latest reply's.
    stream_ordering BIGINT NOT NULL
);
-- The relations of one event by position, of any or of one type.
CREATE INDEX event_relations_parent ON event_relations (relates_to_id, stream_ordering);
CREATE INDEX event_relations_parent_type ON event_relations (relates_to_id, rel_type, stream_ordering);
-- A room's threads by latest reply (`/threads`).
CREATE INDEX event_relations_threads ON event_relations (room_id, relates_to_id, stream_ordering)
    WHERE rel_type = 'm.thread';

-- A room's history visibility changes, which `/relations` and `/threads` walk
-- with the scattered events they return (`rooms::visibility_changes_between`).
CREATE INDEX events_history_visibility ON events (room_id, stream_ordering)
    WHERE type = 'm.room.history_visibility';
