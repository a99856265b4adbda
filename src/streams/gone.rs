//! Writers that are gone (issue 17): a writer of a stream whose writers own
//! their shards by lease (`crate::shards`) that is no longer a live member
//! and owns no shard can commit nothing more. Every shard it held was taken
//! at a new epoch and its transactions are fenced at the old one, so what it
//! wrote is in PostgreSQL, at or below the stream's sequence as it stands
//! now. Left alone, its last position would be the floor of every token for
//! ever wherever a rolled-back transaction left a gap, and `/sync` would stop
//! there; what it committed but never announced over Redis (it died between
//! the two) would never reach anyone.
//!
//! So on every read of the shard table each instance *settles* the gone
//! writers of each stream: reads back what they wrote that it has not
//! applied, and moves them to the sequence's last value
//! ([`Replication::writer_gone`]). Whether the writer is still active and
//! the sequence's value are read in one round trip
//! ([`crate::storage::shards::final_position`]): a writer that allocated a
//! position before then was a member when it did, and could commit it only
//! while it held a lease. A writer that joins is held in the stream's
//! positions from its first sighting, before it may own a shard (see
//! `crate::shards::SETTLING_BEATS`).
//!
//! The one write not fenced is a room's creation: a persister whose lease
//! expired while it created a room, and that commits it afterwards, is not
//! covered.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use super::registry;
use super::replication::Replication;
use super::shared::SharedStream;
use crate::shards::ShardMap;
use crate::storage;

/// Settles the gone writers of the stream written by the members of
/// `shards` each time the table was read (at most every `every`), until the
/// task is aborted; makes each new member a writer here on the way.
pub async fn settle_gone_writers(
    instance: String,
    pool: Pool,
    stream: SharedStream,
    shards: Arc<ShardMap>,
    replication: Arc<Replication>,
    every: Duration,
) {
    let kind = shards.kind();
    let Some(sequence) = registry::spec(kind).map(|spec| spec.sequence) else {
        return;
    };
    loop {
        shards.refreshed(every).await;
        let live = shards.live_members();
        // A writer that joined: its position is held from now on, before
        // it may own a shard (`ShardLeases` makes it wait for that).
        for member in &live {
            if *member != instance {
                stream.update(|positions| positions.add_writer(member));
            }
        }
        let writers = stream.read(|positions| positions.writers().to_vec());
        let owners = shards.counts();
        let gone = writers.iter().filter(|writer| {
            **writer != instance
                && !live.contains(writer)
                && !owners.iter().any(|(owner, _)| owner == *writer)
        });
        for writer in gone {
            let settled = async {
                let position = storage::shards::final_position(
                    &pool,
                    kind,
                    writer,
                    sequence,
                    crate::util::now_ms(),
                )
                .await
                .map_err(|error| error.to_string())?;
                if let Some(position) = position {
                    replication
                        .writer_gone(kind, writer, position)
                        .await
                        .map_err(|error| error.to_string())?;
                }
                Ok::<_, String>(())
            };
            if let Err(error) = settled.await {
                tracing::warn!(stream = kind, writer = %writer, error = %error, "could not settle a gone writer");
            }
        }
    }
}
