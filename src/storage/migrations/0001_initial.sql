-- Accounts, devices and access tokens.
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    localpart TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated BOOLEAN NOT NULL DEFAULT FALSE,
    displayname TEXT,
    avatar_url TEXT,
    created_ts BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens are stored as their SHA-256, never in the clear.
CREATE TABLE access_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

-- User-interactive authentication sessions (shared by every instance).
CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY,
    completed TEXT[] NOT NULL DEFAULT '{}',
    created_ts BIGINT NOT NULL
);

CREATE SEQUENCE filter_id_seq MINVALUE 0 START 0;
CREATE TABLE filters (
    user_id TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    filter JSONB NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- Stream bookkeeping (DESIGN §3): writer ids and each writer's position.
CREATE TABLE instance_map (
    instance_id SERIAL PRIMARY KEY,
    instance_name TEXT NOT NULL UNIQUE
);

CREATE TABLE stream_positions (
    stream_name TEXT NOT NULL,
    instance_name TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (stream_name, instance_name)
);

CREATE SEQUENCE events_stream_seq;

-- Rooms and their events.
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    is_public BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts BIGINT NOT NULL
);
CREATE INDEX rooms_public ON rooms (room_id) WHERE is_public;

-- State groups: the state after a state event, stored as a delta over the
-- previous group, with a full snapshot every so often so that resolving a
-- group reads a bounded chain.
CREATE TABLE state_groups (
    state_group BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    chain_length INT NOT NULL,
    -- [[type, state_key, event_id], ...]
    delta JSONB NOT NULL
);

CREATE TABLE events (
    stream_ordering BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    instance_name TEXT NOT NULL,
    depth BIGINT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    origin_server_ts BIGINT NOT NULL,
    -- The state of the room after this event.
    state_group BIGINT NOT NULL,
    -- The full signed PDU, as federation will send it.
    pdu JSONB NOT NULL,
    -- Set when a redaction of this event has been persisted.
    redacted_by TEXT,
    -- For the sender's own device: unsigned.transaction_id.
    txn_device_id TEXT,
    txn_id TEXT
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_stream_instance ON events (instance_name, stream_ordering);

-- Idempotent sends: one event per (user, device, transaction id).
CREATE TABLE event_txn_ids (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- The current state of every room.
CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    -- For m.room.member events: the membership, so "rooms of a user" is one index scan.
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_members ON current_state (state_key, room_id) WHERE type = 'm.room.member';

-- Every membership change, so that sync can tell what changed since a token.
CREATE TABLE membership_history (
    stream_ordering BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
);

CREATE TABLE room_aliases (
    room_alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Rooms a user has forgotten after leaving.
CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- Streams start at 2: position 1 is taken to be persisted (Synapse's rule).
SELECT nextval('events_stream_seq');
