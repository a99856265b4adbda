-- Shard ownership (DESIGN §5, issue 17). Each sharded actor kind (the
-- events persisters first) has a fixed number of shards; a key (a room id)
-- belongs to shard SHA-256(key) mod that number, and each shard has one
-- owner at a time, with an epoch that every change of owner increases. An
-- owner's write transactions lock its shards' rows (FOR SHARE) at the
-- epochs it holds them, so a deposed owner can never commit, and a change
-- of owner waits for the transactions in flight.
--
-- The leases expire with their owner: `shard_members` holds, per kind, the
-- instances that may own shards and until when each is alive (renewed by
-- its heartbeat). A shard whose owner's membership expired is taken over by
-- a live member.
--
-- A shard an administrator moved by hand (`lattice admin shards move`) is
-- `pinned`: the rebalancing that gives each live member its rendezvous
-- share leaves it where it was put, until its owner dies or leaves.
CREATE TABLE shard_members (
    kind TEXT NOT NULL,
    instance TEXT NOT NULL,
    expires_ts BIGINT NOT NULL,
    joined_ts BIGINT NOT NULL,
    PRIMARY KEY (kind, instance)
);

CREATE TABLE shard_leases (
    kind TEXT NOT NULL,
    shard INT NOT NULL,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    since_ts BIGINT NOT NULL,
    pinned BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (kind, shard)
);
