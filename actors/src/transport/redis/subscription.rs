//! The owning side of a Redis mailbox: one reader task per subscription,
//! its acknowledgements, and the requeue script.
//!
//! The reader task is the only thing that runs `XREADGROUP` for its
//! consumer, and it never abandons one half-way: a read that was cancelled
//! after Redis answered would leave entries pending that nobody hands out.
//! Deliveries therefore travel from the task to [`Subscription::next`]
//! through a bounded channel (`prefetch` deep), which makes `next` cancel
//! safe, and the task sizes each read to the free room in that channel.
//! Between reads it runs the maintenance: keep-alive of the entries it holds,
//! and requeueing of orphaned ones. When the subscription is dropped (or the
//! transport shut down), the task requeues everything its consumer still
//! holds, deletes the consumer and ends.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::streams::{StreamId, StreamReadReply};
use ::redis::{RedisError, Script};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::replay::Verdict;
use super::{
    bump, pause, shut_down, unreachable, Core, Handle, FIELD_ATTEMPTS, FIELD_ENVELOPE, FIELD_REPLY,
    GROUP,
};
use crate::envelope::Envelope;
use crate::lock;
use crate::message::BoxFuture;
use crate::transport::{Acknowledge, Delivery, Subscription, TransportError};

/// Entries the requeue script handles per call.
const REQUEUE_BATCH: u64 = 100;
/// Calls of the requeue script per maintenance step (bounds script time).
const REQUEUE_ROUNDS: usize = 16;
/// Entry ids per keep-alive `XCLAIM`.
const KEEP_ALIVE_CHUNK: usize = 500;

/// Requeue pending entries: re-append each (its `attempts` field raised by
/// its delivery count), then acknowledge and delete the original. Atomic, so
/// an entry is always either pending or queued, never both or neither.
///
/// `KEYS[1]` stream; `ARGV[1]` group; `ARGV[2]` mode; `ARGV[3]` mode
/// argument; `ARGV[4]` batch size; then per mode:
///
/// * `consumer <name> <n> <delete> <uncounted>…`: the named consumer's
///   entries; delete the consumer when done if `<delete>` is `1`; the listed
///   entries were read but never handed to a handler, so that delivery does
///   not count;
/// * `idle <ms> <n>`: every entry idle for at least `<ms>`, then forget
///   consumers that hold nothing and have been idle as long;
/// * `stale <name-prefix> <n> <live>…`: the entries of consumers whose name
///   starts with the prefix and is not listed, deleting those consumers.
///
/// Returns `{entries handled, entries re-appended}` (entries already
/// deleted from the stream are only acknowledged).
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stream, group, mode, arg = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local batch = tonumber(ARGV[4])
local handled, moved = 0, 0
local uncounted = {}
if mode == 'consumer' then
  for i = 6, #ARGV do
    uncounted[ARGV[i]] = true
  end
end

local function requeue(id, deliveries)
  if uncounted[id] then
    deliveries = deliveries - 1
  end
  local entry = redis.call('XRANGE', stream, id, id)
  if entry[1] then
    local fields, out, before = entry[1][2], {}, 0
    for i = 1, #fields, 2 do
      if fields[i] == 'attempts' then
        before = tonumber(fields[i + 1]) or 0
      else
        out[#out + 1] = fields[i]
        out[#out + 1] = fields[i + 1]
      end
    end
    out[#out + 1] = 'attempts'
    out[#out + 1] = tostring(before + deliveries)
    redis.call('XADD', stream, '*', unpack(out))
    moved = moved + 1
  end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  handled = handled + 1
end

local function requeue_pending(min_idle, consumer)
  local pending
  if consumer then
    pending = redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', batch, consumer)
  else
    pending = redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', batch)
  end
  for _, p in ipairs(pending) do
    requeue(p[1], p[4])
  end
  return #pending
end

local function consumers()
  local out = {}
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local info = {}
    for i = 1, #c, 2 do
      info[c[i]] = c[i + 1]
    end
    out[#out + 1] = info
  end
  return out
end

if mode == 'consumer' then
  if requeue_pending(0, arg) < batch and ARGV[5] == '1' then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, arg)
  end
elseif mode == 'idle' then
  local min_idle = tonumber(arg)
  requeue_pending(min_idle, nil)
  for _, c in ipairs(consumers()) do
    if c['pending'] == 0 and c['idle'] >= min_idle then
      redis.call('XGROUP', 'DELCONSUMER', stream, group, c['name'])
    end
  end
elseif mode == 'stale' then
  local live = {}
  for i = 5, #ARGV do
    live[ARGV[i]] = true
  end
  for _, c in ipairs(consumers()) do
    local name = c['name']
    if string.sub(name, 1, #arg) == arg and not live[name] then
      if requeue_pending(0, name) < batch then
        redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
      end
    end
  end
end
return {handled, moved}
",
    )
});

/// One subscription's identity and the entries it holds.
struct SubCore {
    core: Arc<Core>,
    destination: String,
    stream: String,
    consumer: String,
    /// Entries read by this consumer and not yet acknowledged (kept alive),
    /// by entry id.
    in_flight: Mutex<HashMap<String, Held>>,
}

/// An entry this consumer holds.
struct Held {
    /// Whether `next` has handed it out.
    handed_out: bool,
    /// Its envelope's request id, accepted (see [`super::replay`]).
    request_id: String,
}

/// A delivery on its way from the reader task to `next`.
struct Ready {
    envelope: Envelope,
    attempt: u32,
    ack: RedisAck,
}

/// Why an entry was not handed out.
enum Rejected {
    Malformed(String),
    Expired,
    Unauthentic(String),
    /// A copy of a request accepted before, or one without a near deadline.
    Replayed {
        from: String,
        request_id: String,
        verdict: Verdict,
    },
}

/// Register a consumer for `destination` and start its reader task.
pub(super) async fn start(
    core: &Arc<Core>,
    transport: Arc<Handle>,
    destination: &str,
) -> Result<RedisSubscription, TransportError> {
    let sub = Arc::new(SubCore {
        core: Arc::clone(core),
        destination: destination.to_owned(),
        stream: core.stream_key(destination),
        consumer: format!("{}:{}", core.instance, uuid::Uuid::new_v4().simple()),
        in_flight: Mutex::default(),
    });
    let limit = core.timing.command_timeout + core.timing.connect_timeout * 2;
    match tokio::time::timeout(limit, sub.ensure_group()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            core.redis_error("XGROUP CREATE", &error);
            return Err(unreachable(&error));
        }
        Err(_) => {
            return Err(TransportError::Unreachable(
                "redis: timed out creating the consumer group".into(),
            ))
        }
    }
    let conn = core.blocking_connection().map_err(|e| unreachable(&e))?;
    lock(&core.live_consumers)
        .entry(sub.stream.clone())
        .or_default()
        .insert(sub.consumer.clone());
    let (tx, rx) = mpsc::channel(core.timing.prefetch);
    let (stop_tx, stop_rx) = watch::channel(());
    {
        let mut readers = lock(&core.readers);
        while readers.try_join_next().is_some() {}
        readers.spawn(run_reader(Arc::clone(&sub), conn, tx, stop_rx));
    }
    tracing::debug!(
        instance = %core.instance,
        destination,
        consumer = %sub.consumer,
        "subscribed"
    );
    Ok(RedisSubscription {
        rx,
        sub,
        _stop: stop_tx,
        _transport: transport,
    })
}

/// Wait until the subscription is dropped or the transport shut down.
async fn stopped(stop: &mut watch::Receiver<()>, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = stop.changed() => {}
        () = shut_down(shutdown) => {}
    }
}

fn is_stopped(stop: &watch::Receiver<()>, shutdown: &watch::Receiver<bool>) -> bool {
    stop.has_changed().is_err() || shutdown.has_changed().is_err() || *shutdown.borrow()
}

async fn run_reader(
    sub: Arc<SubCore>,
    mut conn: ConnectionManager,
    tx: mpsc::Sender<Ready>,
    mut stop: watch::Receiver<()>,
) {
    let core = Arc::clone(&sub.core);
    let timing = core.timing;
    let mut shutdown = core.shutdown.clone();
    let mut backoff = core.backoff();
    let mut stale_checked = false;
    let mut unhanded = Vec::new();
    let mut next_requeue = Instant::now();
    let mut next_keep_alive = Instant::now() + timing.keep_alive_every;
    loop {
        if is_stopped(&stop, &shutdown) {
            break;
        }
        let now = Instant::now();
        if now >= next_requeue {
            if !stale_checked {
                stale_checked = sub.requeue_stale().await;
            }
            sub.requeue_idle().await;
            next_requeue = now + timing.requeue_every;
        }
        if now >= next_keep_alive {
            sub.keep_alive().await;
            next_keep_alive = now + timing.keep_alive_every;
        }
        let wake = next_requeue.min(next_keep_alive);
        let room = tx.capacity();
        if room == 0 {
            tokio::select! {
                () = stopped(&mut stop, &mut shutdown) => break,
                permit = tx.reserve() => if permit.is_err() { break },
                () = tokio::time::sleep_until(wake) => {}
            }
            continue;
        }
        let block = wake
            .saturating_duration_since(Instant::now())
            .min(timing.block)
            .max(Duration::from_millis(1));
        let read = sub.read(&mut conn, room, block);
        tokio::pin!(read);
        let result = tokio::select! {
            result = &mut read => result,
            () = stopped(&mut stop, &mut shutdown) => {
                // Give back what this consumer holds right away, so the next
                // owner need not wait for the read; whatever the read still
                // returns (possibly the same entries) is given back below,
                // without counting that delivery.
                sub.release(false, &[]).await;
                if let Ok(entries) = read.await {
                    unhanded.extend(entries.into_iter().map(|e| e.id));
                }
                break;
            }
        };
        match result {
            Ok(entries) => {
                backoff.reset();
                if !sub.hand_out(entries, &tx).await {
                    break;
                }
            }
            Err(error) if error.code() == Some("NOGROUP") => {
                tracing::info!(
                    destination = %sub.destination,
                    "consumer group missing (Redis restarted?); recreating it"
                );
                if let Err(error) = sub.ensure_group().await {
                    core.redis_error("XGROUP CREATE", &error);
                    if !pause(backoff.next_delay(Duration::ZERO), &mut shutdown).await {
                        break;
                    }
                }
            }
            Err(error) => {
                core.redis_error("XREADGROUP", &error);
                let delay = backoff.next_delay(Duration::ZERO);
                tokio::select! {
                    () = stopped(&mut stop, &mut shutdown) => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    sub.release(true, &unhanded).await;
    {
        let mut live = lock(&core.live_consumers);
        if let Some(consumers) = live.get_mut(&sub.stream) {
            consumers.remove(&sub.consumer);
            if consumers.is_empty() {
                live.remove(&sub.stream);
            }
        }
    }
    tracing::debug!(destination = %sub.destination, consumer = %sub.consumer, "subscription ended");
}

impl SubCore {
    async fn ensure_group(&self) -> Result<(), RedisError> {
        let created = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.core.cmd())
            .await;
        match created {
            Err(error) if error.code() != Some("BUSYGROUP") => Err(error),
            _ => Ok(()),
        }
    }

    async fn read(
        &self,
        conn: &mut ConnectionManager,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StreamId>, RedisError> {
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        let reply: Option<StreamReadReply> = ::redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(conn)
            .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Check entries and pass the good ones on; acknowledge and drop the
    /// rest. False once nobody takes deliveries any more.
    async fn hand_out(self: &Arc<Self>, entries: Vec<StreamId>, tx: &mpsc::Sender<Ready>) -> bool {
        let mut open = true;
        let mut dropped = Vec::new();
        for entry in entries {
            match self.examine(&entry) {
                Ok((envelope, attempt, reply_to)) => {
                    lock(&self.in_flight).insert(
                        entry.id.clone(),
                        Held {
                            handed_out: false,
                            request_id: envelope.request_id.clone(),
                        },
                    );
                    if !open {
                        continue; // stays pending; released when the task ends
                    }
                    let ack = RedisAck {
                        sub: Arc::clone(self),
                        id: entry.id,
                        request_id: envelope.request_id.clone(),
                        reply_to,
                    };
                    let ready = Ready {
                        envelope,
                        attempt,
                        ack,
                    };
                    if tx.send(ready).await.is_err() {
                        open = false;
                    }
                }
                Err(rejected) => {
                    self.account(&rejected);
                    dropped.push(entry.id);
                }
            }
        }
        if !dropped.is_empty() {
            self.discard(&dropped).await;
        }
        open
    }

    /// Decode and check one entry: the envelope, its attempt number and its
    /// reply list.
    fn examine(&self, entry: &StreamId) -> Result<(Envelope, u32, Option<String>), Rejected> {
        let core = &self.core;
        let text: String = entry
            .get(FIELD_ENVELOPE)
            .ok_or_else(|| Rejected::Malformed(format!("entry {} has no envelope", entry.id)))?;
        let envelope: Envelope = serde_json::from_str(&text)
            .map_err(|e| Rejected::Malformed(format!("entry {}: {e}", entry.id)))?;
        if envelope.is_expired() {
            return Err(Rejected::Expired);
        }
        if !core.authentic(&self.stream, &envelope) {
            return Err(Rejected::Unauthentic(envelope.sender_instance));
        }
        let reply_to: Option<String> = entry.get(FIELD_REPLY);
        if let Some(reply_to) = &reply_to {
            if !reply_to.starts_with(&core.reply_prefix(&envelope.sender_instance)) {
                return Err(Rejected::Malformed(format!(
                    "entry {}: reply list {reply_to:?} is not {}'s",
                    entry.id, envelope.sender_instance
                )));
            }
        }
        // Last, so that only what would be handled is remembered.
        match core.accept(&envelope) {
            Verdict::Fresh => {}
            verdict => {
                return Err(Rejected::Replayed {
                    from: envelope.sender_instance,
                    request_id: envelope.request_id,
                    verdict,
                })
            }
        }
        let before: u32 = entry.get(FIELD_ATTEMPTS).unwrap_or(0);
        Ok((envelope, before.saturating_add(1), reply_to))
    }

    fn account(&self, rejected: &Rejected) {
        let stats = &self.core.stats;
        match rejected {
            Rejected::Malformed(why) => {
                bump(&stats.malformed);
                tracing::warn!(destination = %self.destination, %why, "dropped malformed message");
            }
            Rejected::Expired => {
                bump(&stats.common.expired);
                tracing::debug!(destination = %self.destination, "dropped expired message");
            }
            Rejected::Unauthentic(from) => {
                bump(&stats.common.hmac_rejected);
                tracing::warn!(destination = %self.destination, %from, "dropped message with invalid HMAC");
            }
            Rejected::Replayed {
                from,
                request_id,
                verdict,
            } => {
                bump(&stats.replayed);
                let why = match verdict {
                    Verdict::Unbounded => "its deadline is missing or beyond the replay window",
                    _ => "a copy of it was accepted before",
                };
                tracing::warn!(destination = %self.destination, %from, %request_id, why, "dropped replayed message");
            }
        }
    }

    /// Acknowledge and delete entries that will not be handled.
    async fn discard(&self, ids: &[String]) {
        let mut ack = ::redis::cmd("XACK");
        ack.arg(&self.stream).arg(GROUP).arg(ids);
        let mut del = ::redis::cmd("XDEL");
        del.arg(&self.stream).arg(ids);
        let mut pipe = ::redis::pipe();
        pipe.add_command(ack).add_command(del);
        if let Err(error) = pipe.query_async::<()>(&mut self.core.cmd()).await {
            // They stay pending and come back after `claim_idle`, to be
            // dropped again.
            self.core.redis_error("XACK", &error);
        }
        let mut in_flight = lock(&self.in_flight);
        for id in ids {
            in_flight.remove(id);
        }
    }

    /// Reset the idle time of the entries this consumer holds, so that
    /// nobody takes them for orphans.
    async fn keep_alive(&self) {
        let ids: Vec<String> = lock(&self.in_flight).keys().cloned().collect();
        for chunk in ids.chunks(KEEP_ALIVE_CHUNK) {
            let claimed = ::redis::cmd("XCLAIM")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0)
                .arg(chunk)
                .arg("JUSTID")
                .query_async::<::redis::Value>(&mut self.core.cmd())
                .await;
            if let Err(error) = claimed {
                self.core.redis_error("XCLAIM", &error);
                return;
            }
        }
    }

    /// Run the requeue script until it has nothing more to do; the number
    /// of entries put back, or the error.
    async fn requeue(&self, mode: &str, arg: &str, extra: &[String]) -> Result<u64, RedisError> {
        let mut conn = self.core.cmd();
        let mut moved_total = 0;
        for _ in 0..REQUEUE_ROUNDS {
            let mut invocation = REQUEUE.prepare_invoke();
            invocation
                .key(&self.stream)
                .arg(GROUP)
                .arg(mode)
                .arg(arg)
                .arg(REQUEUE_BATCH);
            for value in extra {
                invocation.arg(value);
            }
            let (handled, moved): (u64, u64) = invocation.invoke_async(&mut conn).await?;
            super::add(&self.core.stats.requeued, moved);
            moved_total += moved;
            if handled < REQUEUE_BATCH {
                break;
            }
        }
        Ok(moved_total)
    }

    /// Give back everything this consumer holds; with `delete`, also remove
    /// the consumer from the group. Entries never handed out (still in the
    /// channel, or in `unhanded`) do not count that delivery.
    async fn release(&self, delete: bool, unhanded: &[String]) {
        let flag = if delete { "1" } else { "0" };
        let mut args = vec![flag.to_owned()];
        {
            let in_flight = lock(&self.in_flight);
            args.extend(
                in_flight
                    .iter()
                    .filter(|(_, held)| !held.handed_out)
                    .map(|(id, _)| id.clone()),
            );
            // Before they are requeued: the next owner may be this process.
            self.core
                .forget(in_flight.values().map(|held| held.request_id.as_str()));
        }
        args.extend(unhanded.iter().cloned());
        match self.requeue("consumer", &self.consumer, &args).await {
            Ok(0) => {}
            Ok(returned) => tracing::info!(
                destination = %self.destination,
                instance = %self.core.instance,
                returned,
                "owner gone; unacknowledged messages requeued"
            ),
            Err(error) if error.code() == Some("NOGROUP") => {}
            Err(error) => self.core.redis_error("requeue on release", &error),
        }
    }

    /// Requeue entries orphaned by a dead owner. Never the entries of a live
    /// one: owners keep theirs fresh.
    async fn requeue_idle(&self) {
        let idle = u64::try_from(self.core.timing.claim_idle.as_millis()).unwrap_or(u64::MAX);
        match self.requeue("idle", &idle.to_string(), &[]).await {
            Ok(0) => {}
            Ok(requeued) => tracing::info!(
                destination = %self.destination,
                requeued,
                "requeued messages of an owner that stopped answering"
            ),
            Err(error) if error.code() == Some("NOGROUP") => {}
            Err(error) => self.core.redis_error("requeue of idle entries", &error),
        }
    }

    /// Requeue the entries of consumers of this instance that this process
    /// does not run: a previous life of this process. True once done.
    async fn requeue_stale(&self) -> bool {
        let live: Vec<String> = lock(&self.core.live_consumers)
            .get(&self.stream)
            .map(|live| live.iter().cloned().collect())
            .unwrap_or_default();
        let prefix = format!("{}:", self.core.instance);
        match self.requeue("stale", &prefix, &live).await {
            Ok(0) => true,
            Ok(requeued) => {
                tracing::info!(
                    destination = %self.destination,
                    requeued,
                    "requeued messages left by an earlier run of this instance"
                );
                true
            }
            Err(error) if error.code() == Some("NOGROUP") => true,
            Err(error) => {
                self.core.redis_error("requeue of stale consumers", &error);
                false
            }
        }
    }
}

/// The [`Subscription`] handed to an endpoint. Dropping it stops its reader,
/// which gives back what the consumer holds.
pub(super) struct RedisSubscription {
    rx: mpsc::Receiver<Ready>,
    sub: Arc<SubCore>,
    _stop: watch::Sender<()>,
    /// An endpoint keeps only its subscription: that must keep the
    /// transport (its shutdown signal) alive.
    _transport: Arc<Handle>,
}

impl Subscription for RedisSubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Delivery>> {
        Box::pin(async move {
            loop {
                let ready = self.rx.recv().await?;
                let stats = &self.sub.core.stats;
                if ready.envelope.is_expired() {
                    // Expired while waiting in the channel.
                    bump(&stats.common.expired);
                    let ack = ready.ack;
                    tokio::spawn(async move { ack.sub.discard(&[ack.id]).await });
                    continue;
                }
                if let Some(held) = lock(&self.sub.in_flight).get_mut(&ready.ack.id) {
                    held.handed_out = true;
                }
                bump(&stats.common.delivered);
                if ready.attempt > 1 {
                    bump(&stats.common.redelivered);
                }
                return Some(Delivery::new(
                    ready.envelope,
                    ready.attempt,
                    Box::new(ready.ack),
                ));
            }
        })
    }
}

/// Replies to and acknowledges one entry, in one pipeline (reply first: a
/// crash in between means a redelivery, never an acknowledged request whose
/// reply was not written).
struct RedisAck {
    sub: Arc<SubCore>,
    id: String,
    request_id: String,
    reply_to: Option<String>,
}

impl Acknowledge for RedisAck {
    fn wants_reply(&self) -> bool {
        self.reply_to.is_some()
    }

    fn complete(
        self: Box<Self>,
        reply: Option<Envelope>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            let sub = &self.sub;
            let core = &sub.core;
            let mut pipe = ::redis::pipe();
            if let (Some(mut reply), Some(reply_to)) = (reply, self.reply_to.as_ref()) {
                core.sign(reply_to, &mut reply);
                match serde_json::to_string(&reply) {
                    Ok(text) => {
                        let ttl =
                            u64::try_from(core.timing.reply_ttl.as_millis()).unwrap_or(u64::MAX);
                        let mut push = ::redis::cmd("RPUSH");
                        push.arg(reply_to).arg(text);
                        let mut expire = ::redis::cmd("PEXPIRE");
                        expire.arg(reply_to).arg(ttl);
                        pipe.add_command(push).add_command(expire);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot encode reply; acknowledging without")
                    }
                }
            }
            let mut ack = ::redis::cmd("XACK");
            ack.arg(&sub.stream).arg(GROUP).arg(&self.id);
            let mut del = ::redis::cmd("XDEL");
            del.arg(&sub.stream).arg(&self.id);
            pipe.add_command(ack).add_command(del);
            let result = pipe.query_async::<()>(&mut core.cmd()).await;
            // Either way this consumer stops keeping the entry alive: if the
            // acknowledgement failed, the entry is redelivered later.
            lock(&sub.in_flight).remove(&self.id);
            match result {
                Ok(()) => {
                    bump(&core.stats.common.completed);
                    Ok(())
                }
                Err(error) => {
                    core.redis_error("reply/XACK", &error);
                    // It will be redelivered (perhaps to this process) and
                    // must then be handled again, its reply perhaps unsent.
                    core.forget([self.request_id.as_str()]);
                    Err(unreachable(&error))
                }
            }
        })
    }
}
