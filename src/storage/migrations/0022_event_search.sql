-- Full-text search over events (`POST /search`, issue 16): one row per
-- searchable key of an event, as Synapse's `event_search`: `content.body`
-- of `m.room.message`, `content.name` of `m.room.name`, `content.topic` of
-- `m.room.topic`, with the 'english' configuration Synapse uses.
--
-- Filled by a trigger on `events`, so the event persister's insert does it
-- in the same statement, without another round trip; the `WHEN` clause
-- keeps every other event type at the cost of one comparison. Events are
-- joined back at query time (redactions and the room's history rules are
-- applied there), so a row here never needs updating.
CREATE TABLE event_search (
    stream_ordering BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    -- `content.body`, `content.name` or `content.topic`.
    key TEXT NOT NULL,
    vector TSVECTOR NOT NULL,
    PRIMARY KEY (stream_ordering, key)
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
-- `order_by: recent` and the per-room bounds.
CREATE INDEX event_search_room_stream ON event_search (room_id, stream_ordering);

CREATE FUNCTION event_search_index() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    search_key TEXT;
    text_value TEXT;
BEGIN
    IF NEW.type = 'm.room.message' THEN
        search_key := 'content.body';
        text_value := NEW.pdu -> 'content' ->> 'body';
    ELSIF NEW.type = 'm.room.name' AND NEW.state_key = '' THEN
        search_key := 'content.name';
        text_value := NEW.pdu -> 'content' ->> 'name';
    ELSIF NEW.type = 'm.room.topic' AND NEW.state_key = '' THEN
        search_key := 'content.topic';
        text_value := NEW.pdu -> 'content' ->> 'topic';
    END IF;
    -- A body that is not a string (->> gives its JSON text) is not searchable.
    IF text_value IS NOT NULL AND jsonb_typeof(NEW.pdu -> 'content' -> substr(search_key, 9)) = 'string' THEN
        INSERT INTO event_search (stream_ordering, room_id, key, vector)
        VALUES (NEW.stream_ordering, NEW.room_id, search_key, to_tsvector('english', text_value))
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER event_search_on_insert
AFTER INSERT ON events
FOR EACH ROW
WHEN (NEW.type IN ('m.room.message', 'm.room.name', 'm.room.topic'))
EXECUTE FUNCTION event_search_index();

-- Events persisted before this migration.
INSERT INTO event_search (stream_ordering, room_id, key, vector)
SELECT stream_ordering, room_id, key, to_tsvector('english', value)
FROM (
    SELECT stream_ordering, room_id,
           CASE type WHEN 'm.room.message' THEN 'content.body'
                     WHEN 'm.room.name' THEN 'content.name'
                     ELSE 'content.topic' END AS key,
           CASE type WHEN 'm.room.message' THEN pdu -> 'content' -> 'body'
                     WHEN 'm.room.name' THEN pdu -> 'content' -> 'name'
                     ELSE pdu -> 'content' -> 'topic' END AS json_value
    FROM events
    WHERE type = 'm.room.message'
       OR (type IN ('m.room.name', 'm.room.topic') AND state_key = '')
) searchable
CROSS JOIN LATERAL (SELECT searchable.json_value #>> '{}' AS value) v
WHERE jsonb_typeof(json_value) = 'string'
ON CONFLICT DO NOTHING;
