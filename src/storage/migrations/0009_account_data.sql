-- The `account_data` stream holds global account data too (issue 13): the
-- table of 0006 becomes `account_data`, where a NULL `room_id` is the
-- user's global account data and any other value that room's. One row per
-- (user, room or none, type), which a new write replaces with a new
-- position; so one table is what the stream's catch-up reads.
ALTER TABLE room_account_data RENAME TO account_data;
ALTER TABLE account_data DROP CONSTRAINT room_account_data_pkey;
ALTER TABLE account_data ALTER COLUMN room_id DROP NOT NULL;
ALTER TABLE account_data
    ADD CONSTRAINT account_data_key UNIQUE NULLS NOT DISTINCT (user_id, room_id, type);
ALTER INDEX room_account_data_user_stream RENAME TO account_data_user_stream;
ALTER INDEX room_account_data_instance_stream RENAME TO account_data_instance_stream;
ALTER INDEX room_account_data_stream RENAME TO account_data_stream;
