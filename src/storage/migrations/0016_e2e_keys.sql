-- End-to-end encryption keys (issue 14): what clients upload through
-- /keys/upload, /keys/device_signing/upload and /keys/signatures/upload.
-- Keys of a device go with it: deleting the device deletes them.

-- A device's identity keys, as the device signed them (its own signature
-- only; signatures others upload are in e2e_signatures).
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json JSONB NOT NULL,
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- One-time keys: each is handed out once by /keys/claim, then deleted.
CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json JSONB NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- The fallback key per algorithm: claimed when no one-time key is left,
-- marked used, and still claimable until the device uploads a new one.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json JSONB NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- A user's cross-signing keys (`master`, `self_signing`, `user_signing`),
-- with the signatures they were uploaded with.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    key_type TEXT NOT NULL,
    -- The unpadded base64 public key: the key's id after `ed25519:`.
    public_key TEXT NOT NULL,
    key_json JSONB NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures of a device key or a cross-signing key (the target: its
-- owner and its device id or public key) by someone's key, uploaded
-- through /keys/signatures/upload. /keys/query shows a key's signatures by
-- its owner and by the user asking.
CREATE TABLE e2e_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    -- `ed25519:<device id or public key>`.
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);
