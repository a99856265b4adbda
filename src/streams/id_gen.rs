//! In-memory stream position tracking for one stream as seen by one process:
//! the pure state machine inside Synapse's `MultiWriterIdGenerator`
//! (`synapse/storage/util/id_generators.py`; reference §5.3–§5.5).
//! Every stream (events, receipts, to-device, …) may have several writers, and
//! every process needs two answers about it: "up to which id is *everything*
//! persisted?" (`persisted_upto`, the floor for `/sync` tokens) and "where is
//! writer X?" (the per-writer vector clock used by `m…` tokens and by
//! replication). Ids come from a database sequence, so they can be finished out
//! of order and can have gaps (rolled-back transactions); this module tracks
//! both, exactly as Synapse does, so that tokens handed to clients never point
//! past data that is not yet readable. It does no I/O: the caller runs the SQL
//! (loading `stream_positions`, reading the sequence, allocating ids with
//! `nextval`, upserting its own position) and feeds the results in. All ids
//! are stored positive; a negative stream (backfill) is negated by the caller.
//! Streams start at 2: id 1 is assumed persisted, so a fresh sequence must
//! consume 1 with `SELECT nextval(..)` right after `CREATE SEQUENCE`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Errors from [`StreamPositions`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdGenError {
    /// This instance is not among the stream's configured writers (only
    /// checked when the writer list is non-empty).
    #[error("Tried to allocate stream ID on non-writer {instance:?}")]
    NotAWriter { instance: String },
}

/// What the caller loaded from the database at startup (§5.5), already
/// converted to positive ids. See [`StreamPositions::startup_scan_from`] for
/// how to know which rows `rows_from_min` must contain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedPositions {
    /// `SELECT instance_name, stream_id FROM stream_positions WHERE
    /// stream_name = ?`, after deleting rows of instances that are no longer
    /// writers. Ignored when the writer list is empty (any-writer streams
    /// never maintain `stream_positions`). Rows for non-writers are ignored.
    pub stream_positions: Vec<(String, i64)>,
    /// `SELECT last_value FROM <sequence>` when the local instance is a
    /// writer and the database has real sequences (Postgres); `None`
    /// otherwise. A writer assumes it is at the end of the sequence.
    pub sequence_last_value: Option<i64>,
    /// `(instance, id)` of every row, across every table of the stream, with
    /// `id >= startup_scan_from(..)`. Any order; rows below the floor are
    /// ignored. Unused when `startup_scan_from` returned `None`.
    pub rows_from_min: Vec<(String, i64)>,
    /// The largest id across the stream's tables (`None` when they are empty).
    /// Used only when no position is known (`startup_scan_from` is `None`).
    pub max_table_id: Option<i64>,
}

/// Proof that a sequence allocation is in flight; see
/// [`StreamPositions::begin_fetch`]. Hand it back to
/// [`StreamPositions::end_fetch`] exactly once, even when the allocation
/// failed: a fetch that is never ended pins the local position forever.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an in-flight fetch must be ended with StreamPositions::end_fetch"]
pub struct InFlightFetch {
    floor: i64,
}

impl InFlightFetch {
    /// The max allocated id seen when the fetch began: while the fetch is in
    /// flight, the local position cannot pass `floor + 1`.
    pub fn floor(&self) -> i64 {
        self.floor
    }
}

/// Positions of one stream as seen by one process (Synapse's
/// `MultiWriterIdGenerator` state, §5.3). Not thread-safe by itself: wrap it in
/// a `Mutex` as Synapse wraps it in a lock.
#[derive(Debug)]
pub struct StreamPositions {
    local_instance: String,
    writers: Vec<String>,
    /// Last known position per writer (`_current_positions`).
    current_positions: BTreeMap<String, i64>,
    /// Locally allocated ids not yet finished (`_unfinished_ids`).
    unfinished_ids: BTreeSet<i64>,
    /// Multiset of "max seen allocated" values at the start of each in-flight
    /// sequence fetch (`_in_flight_fetches`), value -> count.
    in_flight_fetches: BTreeMap<i64, usize>,
    /// Locally finished ids above a still-unfinished smaller id.
    finished_ids: BTreeSet<i64>,
    /// Max P such that every id <= P (all writers) is persisted.
    persisted_upto: i64,
    /// Min-heap of persisted ids seen above `persisted_upto`.
    known_persisted_positions: BinaryHeap<Reverse<i64>>,
    /// Max id seen allocated by anyone (local allocation or `advance`).
    max_seen_allocated: i64,
    /// The position this instance claims (may exceed its last write when idle).
    max_position_of_local_instance: i64,
}

/// §5.5 steps 2–3: the positions known before scanning any table.
fn initial_positions(
    local_instance: &str,
    writers: &[String],
    stream_positions: &[(String, i64)],
    sequence_last_value: Option<i64>,
) -> BTreeMap<String, i64> {
    let mut positions = BTreeMap::new();
    if !writers.is_empty() {
        for (instance, id) in stream_positions {
            if writers.iter().any(|w| w == instance) {
                positions.insert(instance.clone(), *id);
            }
        }
    }
    if writers.iter().any(|w| w == local_instance) {
        if let Some(last_value) = sequence_last_value {
            positions.insert(local_instance.to_owned(), last_value);
        }
    }
    positions
}

impl StreamPositions {
    /// Where the startup table scan must begin: `Some(min)` means "load every
    /// `(instance, id)` row with `id >= min` into
    /// [`LoadedPositions::rows_from_min`]"; `None` means no position is known,
    /// so load [`LoadedPositions::max_table_id`] instead. Same arguments, same
    /// meaning, as in [`LoadedPositions`].
    pub fn startup_scan_from(
        local_instance: &str,
        writers: &[String],
        stream_positions: &[(String, i64)],
        sequence_last_value: Option<i64>,
    ) -> Option<i64> {
        initial_positions(
            local_instance,
            writers,
            stream_positions,
            sequence_last_value,
        )
        .values()
        .min()
        .copied()
    }

    /// Builds the state from what the caller loaded (§5.5 steps 2–8).
    /// `writers` empty means any instance may write (e.g. `caches`).
    pub fn new(local_instance: &str, writers: &[String], loaded: LoadedPositions) -> Self {
        let mut this = StreamPositions {
            local_instance: local_instance.to_owned(),
            writers: writers.to_vec(),
            // Steps 2–3.
            current_positions: initial_positions(
                local_instance,
                writers,
                &loaded.stream_positions,
                loaded.sequence_last_value,
            ),
            unfinished_ids: BTreeSet::new(),
            in_flight_fetches: BTreeMap::new(),
            finished_ids: BTreeSet::new(),
            persisted_upto: 1,
            known_persisted_positions: BinaryHeap::new(),
            max_seen_allocated: 1,
            max_position_of_local_instance: 1,
        };

        match this.current_positions.values().min().copied() {
            // Step 4: nothing known, trust the tables.
            None => this.persisted_upto = loaded.max_table_id.unwrap_or(1).max(1),
            // Step 5: start at the min and replay later rows, which also
            // recovers our own position if `stream_positions` was stale.
            Some(min) => {
                this.persisted_upto = min;
                let mut rows: Vec<(String, i64)> = loaded
                    .rows_from_min
                    .into_iter()
                    .filter(|(_, id)| *id >= min)
                    .collect();
                rows.sort_by_key(|(_, id)| *id); // stable, like Python's sort
                for (instance, id) in rows {
                    this.add_persisted_position(id);
                    if instance == this.local_instance {
                        this.current_positions.insert(instance, id);
                    }
                }
            }
        }

        // Step 6.
        for writer in writers {
            this.current_positions
                .entry(writer.clone())
                .or_insert(this.persisted_upto);
        }

        // Step 7.
        let max_position = this.current_positions.values().max().copied().unwrap_or(1);
        this.max_seen_allocated = max_position.max(this.persisted_upto);
        this.max_position_of_local_instance = this.max_seen_allocated;

        // Step 8.
        if writers.is_empty() {
            this.current_positions
                .insert(this.local_instance.clone(), this.persisted_upto);
        }
        this
    }

    /// The local instance name.
    pub fn local_instance(&self) -> &str {
        &self.local_instance
    }

    /// The configured writers (empty: any instance may write).
    pub fn writers(&self) -> &[String] {
        &self.writers
    }

    /// Whether the local instance may allocate ids (writer list empty, or it
    /// is in it).
    pub fn is_writer(&self) -> bool {
        self.writers.is_empty() || self.writers.contains(&self.local_instance)
    }

    /// Call right before asking the sequence for ids (§5.2 race guard): records
    /// the current max seen allocated id so the local position cannot pass it
    /// until [`end_fetch`](Self::end_fetch). Fails on a non-writer.
    pub fn begin_fetch(&mut self) -> Result<InFlightFetch, IdGenError> {
        if !self.is_writer() {
            return Err(IdGenError::NotAWriter {
                instance: self.local_instance.clone(),
            });
        }
        let floor = self.max_seen_allocated;
        *self.in_flight_fetches.entry(floor).or_insert(0) += 1;
        Ok(InFlightFetch { floor })
    }

    /// Call once the sequence answered: `ids` become unfinished local ids and
    /// the in-flight marker is removed. On a failed allocation pass `&[]`.
    /// Each id must later be passed to [`mark_finished`](Self::mark_finished),
    /// whether its transaction committed or rolled back.
    pub fn end_fetch(&mut self, fetch: InFlightFetch, ids: &[i64]) {
        self.unfinished_ids.extend(ids.iter().copied());
        if let Some(&max_unfinished) = self.unfinished_ids.last() {
            self.max_seen_allocated = self.max_seen_allocated.max(max_unfinished);
        }
        if let Some(count) = self.in_flight_fetches.get_mut(&fetch.floor) {
            *count -= 1;
            if *count == 0 {
                self.in_flight_fetches.remove(&fetch.floor);
            }
        }
    }

    /// A local write finished, committed or rolled back (§5.4
    /// `_mark_ids_as_finished`).
    pub fn mark_finished(&mut self, ids: &[i64]) {
        for id in ids {
            self.unfinished_ids.remove(id);
            self.finished_ids.insert(*id);
        }

        let min_unfinished = match (
            self.unfinished_ids.first(),
            self.in_flight_fetches.keys().next(),
        ) {
            (Some(&u), Some(&f)) => Some(u.min(f.saturating_add(1))),
            (Some(&u), None) => Some(u),
            (None, Some(&f)) => Some(f.saturating_add(1)),
            (None, None) => None,
        };

        let new_cur = match min_unfinished {
            Some(min_unfinished) => {
                // Largest finished id below every unfinished one; keep the rest.
                let still_pending = self.finished_ids.split_off(&min_unfinished);
                let new_cur = self.finished_ids.last().copied();
                self.finished_ids = still_pending;
                new_cur
            }
            None => {
                let new_cur = self.finished_ids.last().copied();
                self.finished_ids.clear();
                new_cur
            }
        };

        if let Some(new_cur) = new_cur {
            let curr = self
                .current_positions
                .get(&self.local_instance)
                .copied()
                .unwrap_or(0);
            self.current_positions
                .insert(self.local_instance.clone(), curr.max(new_cur));
            self.max_position_of_local_instance =
                self.max_position_of_local_instance.max(curr).max(new_cur);
        }

        for id in ids {
            self.add_persisted_position(*id);
        }
    }

    /// `instance` writes the stream from now on (a writer that joined while
    /// the others run): it holds the floor at the floor of now until it is
    /// heard from. No-op for a known writer, or when any instance may write.
    pub fn add_writer(&mut self, instance: &str) {
        if self.writers.is_empty() || self.writers.iter().any(|w| w == instance) {
            return;
        }
        self.writers.push(instance.to_owned());
        self.current_positions
            .entry(instance.to_owned())
            .or_insert(self.persisted_upto);
    }

    /// Another writer reached `new_id` (RDATA / POSITION from replication).
    /// Never moves a writer backwards. A writer not known yet becomes one.
    pub fn advance(&mut self, instance: &str, new_id: i64) {
        if !self.writers.is_empty() && !self.writers.iter().any(|w| w == instance) {
            self.writers.push(instance.to_owned());
        }
        let entry = self
            .current_positions
            .entry(instance.to_owned())
            .or_insert(0);
        *entry = (*entry).max(new_id);
        self.max_seen_allocated = self.max_seen_allocated.max(new_id);
        self.add_persisted_position(new_id);
    }

    /// §5.4 `_add_persisted_position`: the floor is the minimum over writers
    /// (our own position counts only while we have writes in flight), and a
    /// gapless run of persisted ids above it advances it further.
    fn add_persisted_position(&mut self, new_id: i64) {
        self.known_persisted_positions.push(Reverse(new_id));
        self.raise_floor();
    }

    /// `instance` will write nothing more at or below `position` (it is
    /// gone: stopped, or dead and fenced off its shards), so it holds the
    /// floor no further back than there. Unlike [`advance`](Self::advance),
    /// `position` is not taken for a persisted id: it may be the end of a
    /// sequence another writer is still writing below.
    pub fn settle(&mut self, instance: &str, position: i64) {
        if instance == self.local_instance {
            return;
        }
        let entry = self
            .current_positions
            .entry(instance.to_owned())
            .or_insert(0);
        *entry = (*entry).max(position);
        self.raise_floor();
    }

    /// Moves `persisted_upto` as far as the writers' positions and the
    /// known persisted ids allow.
    fn raise_floor(&mut self) {
        let busy = !self.unfinished_ids.is_empty() || !self.in_flight_fetches.is_empty();
        let our = self
            .current_positions
            .get(&self.local_instance)
            .copied()
            .unwrap_or(0);
        let mut min_curr = self
            .current_positions
            .iter()
            .filter(|(name, _)| **name != self.local_instance)
            .map(|(_, pos)| *pos)
            .min()
            .unwrap_or(our);
        if our != 0 && busy {
            min_curr = min_curr.min(our);
        }

        self.persisted_upto = self.persisted_upto.max(min_curr);
        self.max_position_of_local_instance =
            self.max_position_of_local_instance.max(self.persisted_upto);
        if !busy {
            self.max_position_of_local_instance = self
                .max_position_of_local_instance
                .max(self.max_seen_allocated);
        }

        while let Some(&Reverse(lowest)) = self.known_persisted_positions.peek() {
            if lowest <= self.persisted_upto {
                self.known_persisted_positions.pop();
            } else if Some(lowest) == self.persisted_upto.checked_add(1) {
                self.known_persisted_positions.pop();
                self.persisted_upto = lowest;
            } else {
                break; // a gap: unpersisted or rolled-back id
            }
        }
    }

    /// Max P such that every id <= P, across all writers, is persisted
    /// (Synapse's `get_current_token()` / `get_persisted_upto_position()`).
    pub fn persisted_upto(&self) -> i64 {
        self.persisted_upto
    }

    /// The position of `instance`. For the local instance this is the position
    /// it claims (possibly above its last write, and the value to upsert into
    /// `stream_positions`); for others, their last known position but never
    /// below `persisted_upto` (an unknown writer is assumed to be there).
    pub fn current_token_for_writer(&self, instance: &str) -> i64 {
        if instance == self.local_instance {
            return self.max_position_of_local_instance;
        }
        self.current_positions
            .get(instance)
            .copied()
            .unwrap_or(self.persisted_upto)
            .max(self.persisted_upto)
    }

    /// How far this process has heard `instance` itself go (its rows and
    /// `POSITION`s, or what was loaded at start-up), without the floor of
    /// [`persisted_upto`](Self::persisted_upto): where a reader catches up
    /// that writer's rows from. Another writer's claim can move the floor
    /// past rows of this one the reader has not processed yet.
    pub fn heard_from(&self, instance: &str) -> i64 {
        self.current_positions
            .get(instance)
            .copied()
            .unwrap_or(self.persisted_upto)
    }

    /// The last position the local instance *actually finished* writing, else
    /// `persisted_upto` (for HTTP-replication stream positions and the caches
    /// POSITION suppression).
    pub fn minimal_local_current_token(&self) -> i64 {
        self.current_positions
            .get(&self.local_instance)
            .copied()
            .unwrap_or(self.persisted_upto)
    }

    /// A copy of the per-writer position map (for vector-clock tokens: keep
    /// the entries above [`persisted_upto`](Self::persisted_upto)).
    pub fn positions(&self) -> BTreeMap<String, i64> {
        self.current_positions.clone()
    }

    /// The largest id seen allocated by anyone.
    pub fn max_seen_allocated(&self) -> i64 {
        self.max_seen_allocated
    }

    /// The position an idle writer may claim and announce (`POSITION`) so it
    /// does not pin everyone's floor: `Some(max_position_of_local_instance)`
    /// when nothing is unfinished or in flight locally, `None` otherwise.
    pub fn idle_claim(&self) -> Option<i64> {
        if self.unfinished_ids.is_empty() && self.in_flight_fetches.is_empty() {
            Some(self.max_position_of_local_instance)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A fresh writer `local` of `writers` whose sequence is at 1.
    fn fresh_writer(local: &str, writers: &[&str]) -> StreamPositions {
        StreamPositions::new(
            local,
            &names(writers),
            LoadedPositions {
                sequence_last_value: Some(1),
                ..LoadedPositions::default()
            },
        )
    }

    /// A reader (not a writer) of a fresh stream with `writers`.
    fn fresh_reader(writers: &[&str]) -> StreamPositions {
        StreamPositions::new("reader", &names(writers), LoadedPositions::default())
    }

    /// Allocates `ids` as one sequence fetch.
    fn allocate(s: &mut StreamPositions, ids: &[i64]) {
        let fetch = s.begin_fetch();
        assert!(fetch.is_ok());
        if let Ok(fetch) = fetch {
            s.end_fetch(fetch, ids);
        }
    }

    #[test]
    fn fresh_stream_starts_at_one() {
        let s = fresh_writer("a", &["a"]);
        assert_eq!(s.persisted_upto(), 1);
        assert_eq!(s.max_seen_allocated(), 1);
        assert_eq!(s.current_token_for_writer("a"), 1);
        assert_eq!(s.idle_claim(), Some(1));
        let r = fresh_reader(&["a", "b"]);
        assert_eq!(r.persisted_upto(), 1);
        assert_eq!(
            r.positions(),
            BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
        );
    }

    #[test]
    fn a_gone_writer_settles_without_passing_a_live_writers_ids() {
        // Reader of a, b, c. b is gone; the sequence is at 6, where a may
        // still be writing 5 and 6.
        let mut r = fresh_reader(&["a", "b", "c"]);
        r.advance("a", 4);
        r.advance("c", 3);
        assert_eq!(
            r.persisted_upto(),
            1,
            "b holds the floor at its last position"
        );
        r.settle("b", 6);
        assert_eq!(
            r.persisted_upto(),
            4,
            "no further than the live writers (4 is a's)"
        );
        r.advance("c", 7);
        assert_eq!(
            r.persisted_upto(),
            4,
            "6, the end of the sequence, is not a persisted id"
        );
        r.advance("a", 6);
        assert_eq!(r.persisted_upto(), 7);
        // A gone writer that comes back is heard again.
        r.advance("b", 9);
        assert_eq!(r.current_token_for_writer("b"), 9);
    }

    #[test]
    fn in_order_finishing_advances() {
        let mut s = fresh_writer("a", &["a"]);
        for id in 2..=5 {
            allocate(&mut s, &[id]);
            assert_eq!(s.idle_claim(), None);
            s.mark_finished(&[id]);
            assert_eq!(s.persisted_upto(), id);
            assert_eq!(s.minimal_local_current_token(), id);
            assert_eq!(s.current_token_for_writer("a"), id);
            assert_eq!(s.idle_claim(), Some(id));
        }
        assert_eq!(s.max_seen_allocated(), 5);
    }

    #[test]
    fn out_of_order_finishing_waits_for_gap() {
        let mut s = fresh_writer("a", &["a"]);
        allocate(&mut s, &[2, 3, 4]);
        s.mark_finished(&[3]);
        assert_eq!(s.persisted_upto(), 1);
        assert_eq!(s.minimal_local_current_token(), 1);
        s.mark_finished(&[4]);
        assert_eq!(s.persisted_upto(), 1);
        assert_eq!(s.current_token_for_writer("a"), 1);
        assert_eq!(s.idle_claim(), None);
        s.mark_finished(&[2]);
        assert_eq!(s.persisted_upto(), 4);
        assert_eq!(s.minimal_local_current_token(), 4);
        assert_eq!(s.idle_claim(), Some(4));
    }

    #[test]
    fn partial_fill_advances_to_next_gap() {
        let mut s = fresh_writer("a", &["a"]);
        allocate(&mut s, &[2, 3, 4, 5]);
        s.mark_finished(&[3, 5]);
        assert_eq!(s.persisted_upto(), 1);
        s.mark_finished(&[2]);
        assert_eq!(s.persisted_upto(), 3);
        assert_eq!(s.minimal_local_current_token(), 3);
        s.mark_finished(&[4]);
        assert_eq!(s.persisted_upto(), 5);
    }

    #[test]
    fn slow_writer_pins_floor_and_gapless_runs_advance() {
        let mut r = fresh_reader(&["a", "b"]);
        // A contiguous run advances even while b sits at 1.
        r.advance("a", 2);
        assert_eq!(r.persisted_upto(), 2);
        // b allocated 3 but has not persisted it; a persists 4 and 5.
        r.advance("a", 4);
        r.advance("a", 5);
        assert_eq!(r.persisted_upto(), 2, "gap at 3 pins the floor");
        assert_eq!(r.current_token_for_writer("a"), 5);
        assert_eq!(r.current_token_for_writer("b"), 2, "never below the floor");
        r.advance("b", 3);
        assert_eq!(r.persisted_upto(), 5, "3 fills the gap; 4, 5 follow");
        assert_eq!(
            r.positions(),
            BTreeMap::from([("a".into(), 5), ("b".into(), 3)])
        );
    }

    #[test]
    fn slow_local_write_pins_floor_on_writer() {
        let mut a = fresh_writer("a", &["a", "b"]);
        allocate(&mut a, &[2]);
        a.advance("b", 3);
        a.advance("b", 4);
        assert_eq!(a.persisted_upto(), 1, "our unfinished 2 pins the floor");
        assert_eq!(a.current_token_for_writer("b"), 4);
        a.mark_finished(&[2]);
        assert_eq!(a.persisted_upto(), 4);
        assert_eq!(a.current_token_for_writer("a"), 4);
    }

    #[test]
    fn rolled_back_id_does_not_block_forever() {
        // Locally: 2 rolls back (finished without a row), 3 commits.
        let mut a = fresh_writer("a", &["a", "b"]);
        allocate(&mut a, &[2, 3]);
        a.mark_finished(&[3]);
        assert_eq!(a.minimal_local_current_token(), 1);
        a.mark_finished(&[2]);
        assert_eq!(a.minimal_local_current_token(), 3);
        assert_eq!(a.persisted_upto(), 3);
        // Then a's next write, 4, rolls back too.
        allocate(&mut a, &[4]);
        a.mark_finished(&[4]);
        assert_eq!(a.idle_claim(), Some(4));

        // A reader never sees rows 2 or 4; b writes 5.
        let mut r = fresh_reader(&["a", "b"]);
        r.advance("a", 3);
        assert_eq!(r.persisted_upto(), 1, "b still at 1, 2 never arrives");
        r.advance("b", 5);
        assert_eq!(r.persisted_upto(), 3, "a's position covers gap 2");
        assert_eq!(r.current_token_for_writer("b"), 5);
        // Gap 4 holds until a, idle, announces a position past it.
        a.advance("b", 5);
        let claim = a.idle_claim();
        assert_eq!(claim, Some(5));
        if let Some(claim) = claim {
            r.advance("a", claim);
        }
        assert_eq!(r.persisted_upto(), 5);
    }

    #[test]
    fn advance_from_replication() {
        let mut r = fresh_reader(&["a", "b"]);
        r.advance("a", 7);
        assert_eq!(r.current_token_for_writer("a"), 7);
        assert_eq!(r.max_seen_allocated(), 7);
        r.advance("a", 3); // stale: never backwards
        assert_eq!(r.current_token_for_writer("a"), 7);
        r.advance("c", 9); // a writer we did not know about
        assert_eq!(r.positions().get("c"), Some(&9));
        assert_eq!(r.max_seen_allocated(), 9);
        assert_eq!(r.persisted_upto(), 1, "b still at 1 and 2..6 unseen");
        assert_eq!(r.current_token_for_writer("unknown"), 1);
        assert_eq!(
            r.minimal_local_current_token(),
            1,
            "reader has no own position"
        );
        for id in 2..=6 {
            r.advance("b", id);
        }
        assert_eq!(r.persisted_upto(), 7);
        r.advance("b", 8);
        assert_eq!(r.persisted_upto(), 9);
    }

    #[test]
    fn idle_writer_claims_max_seen() {
        let mut a = fresh_writer("a", &["a", "b"]);
        a.advance("b", 10);
        // Idle, so its own position does not pin the floor...
        assert_eq!(a.persisted_upto(), 10);
        // ...and it may claim everything seen so far.
        assert_eq!(a.idle_claim(), Some(10));
        assert_eq!(a.current_token_for_writer("a"), 10);
        assert_eq!(a.minimal_local_current_token(), 1, "last real write");

        let fetch = a.begin_fetch();
        assert!(fetch.is_ok());
        assert_eq!(a.idle_claim(), None, "not idle while fetching");
        if let Ok(fetch) = fetch {
            a.end_fetch(fetch, &[11]);
        }
        assert_eq!(a.idle_claim(), None, "not idle with an unfinished id");
        a.advance("b", 12);
        assert_eq!(
            a.current_token_for_writer("a"),
            10,
            "busy: no claim past own"
        );
        a.mark_finished(&[11]);
        assert_eq!(a.idle_claim(), Some(12));
        assert_eq!(a.minimal_local_current_token(), 11);
        assert_eq!(a.persisted_upto(), 12);
    }

    #[test]
    fn in_flight_fetch_guard() {
        let mut a = fresh_writer("a", &["a"]);
        allocate(&mut a, &[2]);
        a.mark_finished(&[2]);
        // Two concurrent allocations both start while max seen is 2; the
        // sequence hands 4 to the second one first and 3 to the first.
        let first = a.begin_fetch();
        let second = a.begin_fetch();
        assert!(first.is_ok() && second.is_ok());
        let (Ok(first), Ok(second)) = (first, second) else {
            return;
        };
        assert_eq!(first.floor(), 2);
        a.end_fetch(second, &[4]);
        a.mark_finished(&[4]);
        // 3 is allocated but not yet known to be unfinished: must not skip it.
        assert_eq!(a.minimal_local_current_token(), 2);
        assert_eq!(a.persisted_upto(), 2);
        assert_eq!(a.idle_claim(), None);
        a.end_fetch(first, &[3]);
        assert_eq!(a.minimal_local_current_token(), 2);
        a.mark_finished(&[3]);
        assert_eq!(a.minimal_local_current_token(), 4);
        assert_eq!(a.persisted_upto(), 4);
        assert_eq!(a.idle_claim(), Some(4));
    }

    #[test]
    fn failed_fetch_releases_guard() {
        let mut a = fresh_writer("a", &["a"]);
        let fetch = a.begin_fetch();
        assert!(fetch.is_ok());
        if let Ok(fetch) = fetch {
            a.end_fetch(fetch, &[]);
        }
        assert_eq!(a.idle_claim(), Some(1));
        allocate(&mut a, &[3]);
        a.mark_finished(&[3]);
        assert_eq!(a.minimal_local_current_token(), 3);
    }

    #[test]
    fn non_writer_cannot_allocate() {
        let mut r = fresh_reader(&["a"]);
        assert_eq!(
            r.begin_fetch(),
            Err(IdGenError::NotAWriter {
                instance: "reader".into()
            })
        );
        assert!(!r.is_writer());
        // Any-writer streams let everyone allocate.
        let mut any = StreamPositions::new("w1", &[], LoadedPositions::default());
        assert!(any.is_writer());
        assert!(any.begin_fetch().is_ok());
    }

    #[test]
    fn startup_recovers_from_stale_stream_positions() {
        let writers = names(&["a", "b"]);
        let stream_positions = vec![
            ("a".to_string(), 5),
            ("b".to_string(), 7),
            ("gone".to_string(), 2), // no longer a writer: ignored
        ];
        let from = StreamPositions::startup_scan_from("a", &writers, &stream_positions, Some(10));
        assert_eq!(from, Some(7));
        let rows = vec![
            ("a".to_string(), 10),
            ("b".to_string(), 7),
            ("b".to_string(), 9),
            ("a".to_string(), 8),
            ("a".to_string(), 3), // below the floor: ignored
        ];
        let s = StreamPositions::new(
            "a",
            &writers,
            LoadedPositions {
                stream_positions,
                sequence_last_value: Some(10),
                rows_from_min: rows,
                max_table_id: None,
            },
        );
        assert_eq!(s.persisted_upto(), 10);
        assert_eq!(
            s.positions(),
            BTreeMap::from([("a".into(), 10), ("b".into(), 7)])
        );
        assert_eq!(s.max_seen_allocated(), 10);
        assert_eq!(s.current_token_for_writer("a"), 10);
        assert_eq!(s.current_token_for_writer("b"), 10);
    }

    #[test]
    fn startup_gap_in_rows_stops_floor() {
        let writers = names(&["a", "b"]);
        let s = StreamPositions::new(
            "reader",
            &writers,
            LoadedPositions {
                stream_positions: vec![("a".into(), 4), ("b".into(), 6)],
                sequence_last_value: None,
                rows_from_min: vec![("a".into(), 5), ("b".into(), 6), ("a".into(), 8)],
                max_table_id: None,
            },
        );
        assert_eq!(s.persisted_upto(), 6);
        assert_eq!(s.max_seen_allocated(), 6);
        assert_eq!(
            s.positions(),
            BTreeMap::from([("a".into(), 4), ("b".into(), 6)])
        );
    }

    #[test]
    fn startup_new_writer_defaults_to_floor() {
        let s = StreamPositions::new(
            "reader",
            &names(&["a", "new"]),
            LoadedPositions {
                stream_positions: vec![("a".into(), 20)],
                ..LoadedPositions::default()
            },
        );
        assert_eq!(s.persisted_upto(), 20);
        assert_eq!(s.positions().get("new"), Some(&20));
    }

    #[test]
    fn startup_without_positions_uses_table_max() {
        assert_eq!(
            StreamPositions::startup_scan_from("w", &[], &[], Some(9)),
            None
        );
        // Any-writer stream (e.g. caches): stream_positions is not used.
        let s = StreamPositions::new(
            "w",
            &[],
            LoadedPositions {
                stream_positions: vec![("w".into(), 3)],
                max_table_id: Some(42),
                ..LoadedPositions::default()
            },
        );
        assert_eq!(s.persisted_upto(), 42);
        assert_eq!(s.positions(), BTreeMap::from([("w".into(), 42)]));
        assert_eq!(s.current_token_for_writer("w"), 42);
        assert_eq!(s.max_seen_allocated(), 42);
        // Empty tables still start at 1.
        let empty = StreamPositions::new("w", &[], LoadedPositions::default());
        assert_eq!(empty.persisted_upto(), 1);
    }
}
