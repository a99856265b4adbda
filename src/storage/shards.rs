//! Shard ownership in PostgreSQL (migration 0028): the members of each
//! sharded actor kind with their expiry, the owner and epoch of each shard,
//! and the fence every owner's write transaction passes.

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;

use super::{StorageError, StorageResult};

/// One shard's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: i32,
    pub owner: String,
    pub epoch: i64,
    pub since_ts: i64,
    /// Moved here by an administrator: not rebalanced while the owner lives.
    pub pinned: bool,
}

/// One member's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance: String,
    pub expires_ts: i64,
    /// When it joined (its first renewal since it last left).
    pub joined_ts: i64,
}

/// Renews `instance`'s membership of `kind` until `expires_ts`.
pub async fn renew_membership(
    pool: &Pool,
    kind: &str,
    instance: &str,
    now: i64,
    expires_ts: i64,
) -> StorageResult<()> {
    pool.get()
        .await?
        .execute(
            "INSERT INTO shard_members (kind, instance, expires_ts, joined_ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, instance) DO UPDATE SET expires_ts = EXCLUDED.expires_ts",
            &[&kind, &instance, &expires_ts, &now],
        )
        .await?;
    Ok(())
}

/// Ends `instance`'s membership of `kind` at once: its shards may be taken.
pub async fn leave(pool: &Pool, kind: &str, instance: &str) -> StorageResult<()> {
    pool.get()
        .await?
        .execute(
            "DELETE FROM shard_members WHERE kind = $1 AND instance = $2",
            &[&kind, &instance],
        )
        .await?;
    Ok(())
}

/// Every member of `kind` (live or not) and every shard's lease.
pub async fn load(pool: &Pool, kind: &str) -> StorageResult<(Vec<Member>, Vec<Lease>)> {
    let client = pool.get().await?;
    let members = client
        .query(
            "SELECT instance, expires_ts, joined_ts FROM shard_members WHERE kind = $1 ORDER BY instance",
            &[&kind],
        )
        .await?
        .iter()
        .map(|row| Member {
            instance: row.get(0),
            expires_ts: row.get(1),
            joined_ts: row.get(2),
        })
        .collect();
    let leases = client
        .query(
            "SELECT shard, owner, epoch, since_ts, pinned FROM shard_leases WHERE kind = $1 ORDER BY shard",
            &[&kind],
        )
        .await?
        .iter()
        .map(|row| Lease {
            shard: row.get(0),
            owner: row.get(1),
            epoch: row.get(2),
            since_ts: row.get(3),
            pinned: row.get(4),
        })
        .collect();
    Ok((members, leases))
}

/// Takes `shards` for `instance`, each only if it has no owner, its owner is
/// not a live member any more, or it is `instance` itself (a previous life of
/// this process): the epoch goes up, fencing whoever held it. Answers the
/// shards taken with their new epochs.
pub async fn claim(
    pool: &Pool,
    kind: &str,
    instance: &str,
    shards: &[i32],
    now: i64,
) -> StorageResult<Vec<(i32, i64)>> {
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    let rows = pool
        .get()
        .await?
        .query(
            "INSERT INTO shard_leases AS l (kind, shard, owner, epoch, since_ts)
             SELECT $1, s, $2, 1, $4 FROM unnest($3::int[]) AS s ORDER BY s
             ON CONFLICT (kind, shard) DO UPDATE SET owner = EXCLUDED.owner,
               epoch = l.epoch + 1, since_ts = EXCLUDED.since_ts, pinned = false
             WHERE l.owner = EXCLUDED.owner OR NOT EXISTS (
               SELECT 1 FROM shard_members m
               WHERE m.kind = l.kind AND m.instance = l.owner AND m.expires_ts > $4)
             RETURNING shard, epoch",
            &[&kind, &instance, &shards, &now],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Gives each of `moves` (shard, the epoch `from` holds it at, the live
/// member it goes to) to its member with a new epoch, in one statement: the
/// rows are locked in shard order, as the fences lock them, each once
/// `from`'s write transactions on it finished. Answers how many moved (a
/// shard `from` no longer held so stays as it is).
pub async fn hand_over_many(
    pool: &Pool,
    kind: &str,
    from: &str,
    moves: &[(i32, i64, String)],
    now: i64,
) -> StorageResult<u64> {
    if moves.is_empty() {
        return Ok(0);
    }
    let shards: Vec<i32> = moves.iter().map(|(shard, _, _)| *shard).collect();
    let epochs: Vec<i64> = moves.iter().map(|(_, epoch, _)| *epoch).collect();
    let owners: Vec<&str> = moves.iter().map(|(_, _, to)| to.as_str()).collect();
    let moved = pool
        .get()
        .await?
        .execute(
            "WITH locked AS (
               SELECT shard FROM shard_leases
               WHERE kind = $1 AND shard = ANY($3::int[]) ORDER BY shard FOR UPDATE)
             UPDATE shard_leases l SET owner = h.owner, epoch = l.epoch + 1, since_ts = $6,
               pinned = false
             FROM unnest($3::int[], $4::bigint[], $5::text[]) AS h (shard, epoch, owner), locked
             WHERE l.kind = $1 AND l.shard = h.shard AND locked.shard = h.shard
               AND l.owner = $2 AND l.epoch = h.epoch",
            &[&kind, &from, &shards, &epochs, &owners, &now],
        )
        .await?;
    Ok(moved)
}

/// Moves `shard` to `to`, whoever holds it, and pins it there (an
/// administrator's move): only if `to` is a live member of `kind`. Waits for
/// the old owner's write transactions in flight. Answers the new epoch, or
/// `None` when `to` is not a live member.
pub async fn assign(
    pool: &Pool,
    kind: &str,
    shard: i32,
    to: &str,
    now: i64,
) -> StorageResult<Option<i64>> {
    let row = pool
        .get()
        .await?
        .query_opt(
            "INSERT INTO shard_leases AS l (kind, shard, owner, epoch, since_ts, pinned)
             SELECT $1, $2, $3, 1, $4, true WHERE EXISTS (
               SELECT 1 FROM shard_members m
               WHERE m.kind = $1 AND m.instance = $3 AND m.expires_ts > $4)
             ON CONFLICT (kind, shard) DO UPDATE SET owner = EXCLUDED.owner,
               epoch = l.epoch + 1, since_ts = EXCLUDED.since_ts, pinned = true
             RETURNING epoch",
            &[&kind, &shard, &to, &now],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// The fence of a write transaction: locks the rows of `held` (shard,
/// epoch) for `owner` until the transaction ends, or fails with
/// [`StorageError::Fenced`] naming a shard no longer held at that epoch.
/// A change of owner (an `UPDATE` of the row) waits for the lock, so what
/// commits after this check was written by the owner of the moment.
pub async fn fence(
    client: &impl GenericClient,
    kind: &str,
    owner: &str,
    held: &[(i32, i64)],
) -> StorageResult<()> {
    if held.is_empty() {
        return Ok(());
    }
    let shards: Vec<i32> = held.iter().map(|(shard, _)| *shard).collect();
    let epochs: Vec<i64> = held.iter().map(|(_, epoch)| *epoch).collect();
    let statement = client
        .prepare_cached(
            "SELECT l.shard FROM shard_leases l
             JOIN unnest($3::int[], $4::bigint[]) AS h (shard, epoch)
               ON h.shard = l.shard AND h.epoch = l.epoch
             WHERE l.kind = $1 AND l.owner = $2
             ORDER BY l.shard FOR SHARE OF l",
        )
        .await?;
    let locked = client
        .query(&statement, &[&kind, &owner, &shards, &epochs])
        .await?;
    if locked.len() == held.len() {
        return Ok(());
    }
    let locked: Vec<i32> = locked.iter().map(|row| row.get(0)).collect();
    let shard = shards
        .into_iter()
        .find(|shard| !locked.contains(shard))
        .unwrap_or_default();
    Err(StorageError::Fenced {
        kind: kind.to_owned(),
        shard,
    })
}

/// Where `instance`, as a writer of the stream of `sequence`, stands for
/// good: the sequence's last value, if `instance` is no live member of
/// `kind` and holds none of its shards (`None` otherwise). The sequence is
/// read first: a writer that comes back must claim a shard before it
/// writes, after this read, so every id it takes then is above.
pub async fn final_position(
    pool: &Pool,
    kind: &str,
    instance: &str,
    sequence: &str,
    now: i64,
) -> StorageResult<Option<i64>> {
    let client = pool.get().await?;
    let last_value: i64 = client
        .query_one(&format!("SELECT last_value FROM {sequence}"), &[])
        .await?
        .get(0);
    let active: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM shard_leases WHERE kind = $1 AND owner = $2)
                 OR EXISTS (SELECT 1 FROM shard_members
                            WHERE kind = $1 AND instance = $2 AND expires_ts > $3)",
            &[&kind, &instance, &now],
        )
        .await?
        .get(0);
    Ok((!active).then_some(last_value))
}
