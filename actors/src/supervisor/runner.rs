//! The task that owns one supervised actor's inbox and runs its incarnations.
//!
//! The loop keeps the inbox receiver (and the control receiver) for the whole
//! life of the actor and lends them, by `&mut`, to one incarnation at a time.
//! An incarnation is a fresh actor from the factory plus the message loop;
//! it runs under `catch_unwind`, so a panic ends only the incarnation, never
//! the inbox. Between incarnations the loop sleeps the backoff delay, still
//! answering observe requests and honouring shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt as _;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::backoff::{Backoff, BackoffConfig};
use crate::actor::{Actor, ActorShared, ActorStatus, Context, Job};

/// Requests from the supervisor, answered between messages.
pub(crate) enum Control {
    /// Reply with [`Actor::observe`] (`None` while no incarnation runs).
    Observe(oneshot::Sender<Option<Value>>),
}

impl Control {
    fn answer(self, state: Option<Value>) {
        match self {
            Control::Observe(tx) => {
                let _ = tx.send(state);
            }
        }
    }
}

enum Exit {
    /// Orderly end: shutdown requested or every sender gone.
    Stopped,
    /// The incarnation failed; restart it.
    Failed(String),
}

pub(crate) struct Runner<A, F> {
    pub(crate) factory: F,
    pub(crate) shared: Arc<ActorShared>,
    pub(crate) inbox: mpsc::UnboundedReceiver<Job<A>>,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) backoff: BackoffConfig,
}

async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    // An error means the supervisor itself is gone: stop as well.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl<A, F> Runner<A, F>
where
    A: Actor,
    F: Fn() -> A + Send + Sync + 'static,
{
    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::new(self.backoff);
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let incarnation = self.shared.incarnation.fetch_add(1, Ordering::Relaxed) + 1;
            let mut ctx = Context::new(Arc::clone(&self.shared.name), incarnation);
            self.shared.set_status(ActorStatus::Starting);
            let began = Instant::now();
            let outcome = AssertUnwindSafe(run_incarnation(
                &self.factory,
                &self.shared,
                &mut self.inbox,
                &mut self.control,
                &mut self.shutdown,
                &mut ctx,
            ))
            .catch_unwind()
            .await;
            let reason = match outcome {
                Ok(Exit::Stopped) => break,
                Ok(Exit::Failed(reason)) => reason,
                Err(panic) => format!("panicked: {}", crate::panic_message(panic.as_ref())),
            };
            let restarts = self.shared.restarts.fetch_add(1, Ordering::Relaxed) + 1;
            let delay = backoff.next_delay(began.elapsed());
            tracing::warn!(
                actor = %self.shared.name,
                incarnation,
                restarts,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                %reason,
                "actor failed; restarting after backoff"
            );
            *crate::lock(&self.shared.last_failure) = Some(reason);
            self.shared.set_status(ActorStatus::BackingOff);

            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown_requested(&mut self.shutdown) => {
                        self.shared.set_status(ActorStatus::Stopped);
                        return;
                    }
                    Some(control) = self.control.recv() => control.answer(None),
                    () = &mut sleep => break,
                }
            }
        }
        self.shared.set_status(ActorStatus::Stopped);
        tracing::debug!(actor = %self.shared.name, "actor stopped");
    }
}

async fn run_incarnation<A, F>(
    factory: &F,
    shared: &ActorShared,
    inbox: &mut mpsc::UnboundedReceiver<Job<A>>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    shutdown: &mut watch::Receiver<bool>,
    ctx: &mut Context,
) -> Exit
where
    A: Actor,
    F: Fn() -> A,
{
    let mut actor = factory();
    if let Err(e) = actor.started(ctx).await {
        return Exit::Failed(format!("start failed: {e}"));
    }
    shared.set_status(ActorStatus::Running);
    // A job of another type that a batch ran into; it runs next.
    let mut next: Option<Job<A>> = None;
    let exit = loop {
        let job = match next.take() {
            Some(job) => job,
            None => tokio::select! {
                biased;
                () = shutdown_requested(shutdown) => break Exit::Stopped,
                Some(c) = control.recv() => {
                    c.answer(Some(actor.observe()));
                    continue;
                }
                job = inbox.recv() => {
                    let Some(job) = job else { break Exit::Stopped };
                    shared.dequeued.fetch_add(1, Ordering::Relaxed);
                    job
                }
            },
        };
        if job.deadline.is_some_and(|d| Instant::now() >= d) {
            shared.expired.fetch_add(1, Ordering::Relaxed);
            job.work.expire();
            continue;
        }
        let (following, handled) = job.work.run_batch(&mut actor, ctx, inbox, shared).await;
        next = following;
        shared.handled.fetch_add(handled, Ordering::Relaxed);
        if let Some(reason) = ctx.take_restart() {
            break Exit::Failed(format!("restart requested: {reason}"));
        }
    };
    actor.stopped(ctx).await;
    exit
}
