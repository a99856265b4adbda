-- The `receipts` stream (DESIGN §3; issue 12): each user's latest receipt of
-- each type in each room (and thread), as Synapse's `receipts_linearized`.
-- A new receipt replaces the row and takes a new stream position, so "what
-- changed in these rooms between two positions" is a range of `stream_id`.
-- Several writers, sharded by room; `instance_name` is the writer, for
-- catch-up by (writer, position).
CREATE SEQUENCE receipts_stream_seq;
-- Id 1 counts as persisted (see streams/id_gen.rs): streams start at 2.
SELECT nextval('receipts_stream_seq');

CREATE TABLE receipts (
    stream_id BIGINT NOT NULL,
    instance_name TEXT NOT NULL,
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- NULL: an unthreaded receipt; `main` or a thread root's event id.
    thread_id TEXT,
    event_id TEXT NOT NULL,
    -- The receipted event's position in the events stream: a receipt for
    -- an earlier event never replaces this one.
    event_stream_ordering BIGINT NOT NULL,
    -- What clients see beside the event id (`ts`).
    data JSONB NOT NULL,
    CONSTRAINT receipts_key UNIQUE NULLS NOT DISTINCT (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream_id);
CREATE INDEX receipts_instance_stream ON receipts (instance_name, stream_id);
CREATE INDEX receipts_stream ON receipts (stream_id);

-- The `account_data` stream: for now the room account data read markers
-- (`m.fully_read`) are stored as. One row per (user, room, type), which a
-- new write replaces with a new position. Several writers, sharded by user.
CREATE SEQUENCE account_data_stream_seq;
SELECT nextval('account_data_stream_seq');

CREATE TABLE room_account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content JSONB NOT NULL,
    stream_id BIGINT NOT NULL,
    instance_name TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX room_account_data_user_stream ON room_account_data (user_id, stream_id);
CREATE INDEX room_account_data_instance_stream ON room_account_data (instance_name, stream_id);
CREATE INDEX room_account_data_stream ON room_account_data (stream_id);
