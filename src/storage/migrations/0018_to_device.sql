-- The `to_device` stream (issue 14): messages sent to one device, each
-- held here until the device's `/sync` acknowledges it (a later `since`),
-- as Synapse's `device_inbox`. Several writers, sharded by the receiving
-- user; `instance_name` is the writer, for catch-up by (writer, position).
-- One send takes one position per writer it reaches, so a device has at
-- most one message at a position. Deleting a device drops its inbox.
CREATE SEQUENCE to_device_stream_seq;
-- Id 1 counts as persisted (see streams/id_gen.rs): streams start at 2.
SELECT nextval('to_device_stream_seq');

CREATE TABLE device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    instance_name TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    content JSONB NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX device_inbox_instance_stream ON device_inbox (instance_name, stream_id);
CREATE INDEX device_inbox_stream ON device_inbox (stream_id);

-- What makes `PUT /sendToDevice/{eventType}/{txnId}` idempotent per
-- (sender, sender's device, txnId). A send is split over the writers of
-- its recipients: each writer records its part (`writer` its name) in the
-- transaction that stores the part's messages, so a retry after a partial
-- failure stores only the parts that are missing; once every part is
-- stored, the request records the whole send (`writer` empty), and a
-- later request with that txnId, whatever its content, stores nothing.
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    writer TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id, writer)
);
