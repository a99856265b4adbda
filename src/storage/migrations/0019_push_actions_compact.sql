-- Push actions stored as Synapse stores them: the commonest actions,
-- `["notify"]`, as NULL (most rows of a busy server), and without the
-- index on (room_id, stream_ordering) that no query reads (pushers and
-- pruning add the indexes their queries need).
ALTER TABLE event_push_actions ALTER COLUMN actions DROP NOT NULL;
DROP INDEX event_push_actions_room;
