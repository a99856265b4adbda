-- A send's parts are recorded per receiving user, not per writer: a writer
-- that took over a receiver's shard from one that died after storing its part
-- finds the part recorded, so a retry of the send with the same txnId does not
-- deliver it twice. `part` is the receiving user's id, or empty for the whole
-- send (as before). Rows written before name the old writer instead; they only
-- mattered to retries in flight across the upgrade.
ALTER TABLE to_device_txns RENAME COLUMN writer TO part;
