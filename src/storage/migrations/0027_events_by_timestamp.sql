-- `/timestamp_to_event` looks a room's events up by their origin_server_ts.
CREATE INDEX events_room_timestamp ON events (room_id, origin_server_ts, stream_ordering);
