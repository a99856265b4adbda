-- Server-side key backup (issue 14): each user's backup versions and the
-- room keys stored in them. A version is numbered after every version the
-- user ever had (deleted ones are kept, marked, so no number is reused, as
-- in Synapse); the current version is the highest one not deleted, and
-- only it takes new keys. `etag` changes whenever the version's keys do.
-- Every write of a user's backup takes a transaction-scoped advisory lock
-- on the user (`storage/backup.rs`), so concurrent uploads are applied one
-- after the other and none is lost.
CREATE TABLE room_key_backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data JSONB NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE room_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BOOLEAN NOT NULL,
    session_data JSONB NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id),
    FOREIGN KEY (user_id, version) REFERENCES room_key_backup_versions (user_id, version)
);
