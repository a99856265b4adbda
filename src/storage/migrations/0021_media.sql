-- The media repository (issue 15): one row per media id this server
-- created, whether by an upload or by an asynchronous `create` whose content
-- is still to come (its `media_length` is NULL until then); the files are
-- in the media store, named by media id.
CREATE TABLE local_media (
    media_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    -- NULL until the content is uploaded (asynchronous uploads).
    content_type TEXT,
    upload_name TEXT,
    media_length BIGINT,
    sha256 TEXT,
    -- Until when an asynchronous `create` waits for its content.
    unused_expires_at BIGINT,
    -- Uploaded while `enable_authenticated_media` was on: never served by
    -- the legacy unauthenticated endpoints (Synapse's cut-over).
    authenticated BOOLEAN NOT NULL,
    -- Who quarantined it; a quarantined item is served to nobody.
    quarantined_by TEXT
);

-- A user's media: quotas, pending uploads, admin deletion.
CREATE INDEX local_media_by_user ON local_media (user_id);

-- The thumbnails made of each item, stored beside it in the media store.
CREATE TABLE local_media_thumbnails (
    media_id TEXT NOT NULL REFERENCES local_media (media_id) ON DELETE CASCADE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    length BIGINT NOT NULL,
    PRIMARY KEY (media_id, width, height, method, content_type)
);
