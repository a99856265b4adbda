-- The `device_lists` stream (issue 14): one row per change of a user's
-- devices (a device added, removed or re-keyed, a cross-signing key
-- changed: `device_id` is then its public key), or of the signatures a
-- user made of others' keys with their user-signing key (`signed_user_id`:
-- whose key, a change only the signer is told of).
CREATE SEQUENCE device_lists_stream_seq;
SELECT nextval('device_lists_stream_seq');

CREATE TABLE device_lists_stream (
    stream_id BIGINT NOT NULL,
    instance_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT,
    signed_user_id TEXT
);
CREATE INDEX device_lists_stream_id ON device_lists_stream (stream_id);
CREATE INDEX device_lists_stream_instance ON device_lists_stream (instance_name, stream_id);
CREATE INDEX device_lists_stream_user ON device_lists_stream (user_id, stream_id);

-- Who joined or left a room between two positions (device list changes in
-- /sync and /keys/changes).
CREATE INDEX membership_history_room ON membership_history (room_id, stream_ordering);
