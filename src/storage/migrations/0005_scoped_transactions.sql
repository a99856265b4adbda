-- Transaction ids are scoped as the spec says: per device and endpoint, and
-- per room for the endpoints under /rooms/{roomId} (`send`, `redact`), so
-- that reusing one for a redaction or in another room does what the client
-- asked. Requests without a client transaction id that cross a mailbox
-- (state events, membership, createRoom) carry a request id made where they
-- entered the server (`endpoint` 'request', no device, no room): kept here
-- with the event they wrote, a message delivered twice writes once.
ALTER TABLE event_txn_ids
    ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'send',
    ADD COLUMN room_id TEXT NOT NULL DEFAULT '';
-- Earlier rows were scoped by device only: give them their event's room,
-- and call redactions `redact` (most came through that endpoint).
UPDATE event_txn_ids t
SET room_id = e.room_id,
    endpoint = CASE WHEN e.type = 'm.room.redaction' THEN 'redact' ELSE 'send' END
FROM events e
WHERE e.event_id = t.event_id;
ALTER TABLE event_txn_ids
    ALTER COLUMN endpoint DROP DEFAULT,
    ALTER COLUMN room_id DROP DEFAULT,
    DROP CONSTRAINT event_txn_ids_pkey,
    ADD PRIMARY KEY (user_id, device_id, endpoint, room_id, txn_id);
