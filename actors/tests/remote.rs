//! Remote delivery over the in-memory transport: several "nodes" share one
//! `InMemoryBus` (the stand-in for Redis), each with its own transport. The
//! behavioural tests live in `suite/` and run against Redis too
//! (`tests/redis.rs`).

#[macro_use]
mod suite;

use std::sync::Arc;
use std::time::Duration;

use lattice_actors::{HmacKey, InMemoryBus, Mailbox, MailboxError};
use suite::{Harness, Node, Ping, SECOND};

struct MemoryHarness {
    bus: InMemoryBus,
}

impl MemoryHarness {
    fn new() -> Self {
        Self {
            bus: InMemoryBus::new(),
        }
    }
}

impl Harness for MemoryHarness {
    async fn node(&self, instance: &str, key: Option<HmacKey>) -> Node {
        let transport = match key {
            Some(key) => self.bus.transport_with_key(instance, key),
            None => self.bus.transport(instance),
        };
        let stats = transport.clone();
        Node::new(Arc::new(transport), move || stats.stats())
    }

    async fn backlog(&self, destination: &str) -> (u64, u64) {
        let count = |n: usize| u64::try_from(n).expect("small");
        (
            count(self.bus.pending(destination)),
            count(self.bus.queued(destination)),
        )
    }
}

transport_suite!(MemoryHarness::new());

#[tokio::test]
async fn closed_bus_is_unreachable() {
    let bus = InMemoryBus::new();
    let mailbox = Mailbox::<Ping>::remote(Arc::new(bus.transport("a")), "gone");
    let pending = {
        let mailbox = mailbox.clone();
        tokio::spawn(async move { mailbox.call(Ping(1), Duration::from_secs(5)).await })
    };
    tokio::task::yield_now().await;
    bus.close();
    assert_eq!(pending.await.expect("task"), Err(MailboxError::Unreachable));
    assert_eq!(
        mailbox.call(Ping(1), SECOND).await,
        Err(MailboxError::Unreachable)
    );
    assert_eq!(mailbox.tell(Ping(1)), Err(MailboxError::Unreachable));
}
