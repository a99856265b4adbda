//! [`Placement`]: which process runs the actor for a given kind and shard key.
//!
//! Built once from configuration (for each actor kind, the ordered list of
//! instances that run it, plus the name of this instance), it answers
//! [`Location::Local`] or [`Location::Remote`] for any `(kind, shard key)`.
//! A kind absent from the configuration runs locally: a single-process
//! deployment needs no placement configuration at all.
//!
//! When a kind is spread over several instances, the instance for a key is
//! chosen by Synapse's static sharding rule, [`shard_index`]: SHA-256 of the
//! key's UTF-8 bytes, read as one little-endian integer, modulo the number
//! of instances, indexing the configured list in order. Keeping the rule
//! (and the list order) identical on every process is what makes them agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::mailbox::Mailbox;
use crate::message::RemoteMessage;
use crate::transport::Transport;

/// Where an actor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In this process.
    Local,
    /// In the process with this instance name.
    Remote(String),
}

/// Configuration errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A kind was listed with no instances.
    #[error("actor kind {0:?} has no instances")]
    NoInstances(String),
    /// An instance was listed twice for one kind.
    #[error("instance {instance:?} is listed twice for actor kind {kind:?}")]
    DuplicateInstance {
        /// The kind.
        kind: String,
        /// The repeated instance.
        instance: String,
    },
    /// The placement says local but no local mailbox was given.
    #[error("actor kind {0:?} is placed here but has no local actor")]
    NoLocalActor(String),
}

/// Index of the instance responsible for `key` among `n` instances:
/// `int.from_bytes(sha256(key.encode()).digest(), "little") % n`.
/// `None` when `n == 0`.
pub fn shard_index(key: &str, n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let digest = Sha256::digest(key.as_bytes());
    let n = n as u128;
    // Horner's rule from the most significant (last) byte down.
    let rem = digest
        .iter()
        .rev()
        .fold(0u128, |acc, &b| (acc * 256 + u128::from(b)) % n);
    usize::try_from(rem).ok()
}

/// The placement decided from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    local_instance: String,
    kinds: BTreeMap<String, Vec<String>>,
}

impl Placement {
    /// Everything runs in this process.
    pub fn single_process(local_instance: impl Into<String>) -> Self {
        Self {
            local_instance: local_instance.into(),
            kinds: BTreeMap::new(),
        }
    }

    /// From `kind → instances` (list order matters for sharding).
    pub fn new<I, K, V, S>(
        local_instance: impl Into<String>,
        kinds: I,
    ) -> Result<Self, PlacementError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut map = BTreeMap::new();
        for (kind, instances) in kinds {
            let kind = kind.into();
            let mut list: Vec<String> = Vec::new();
            for instance in instances {
                let instance = instance.into();
                if list.contains(&instance) {
                    return Err(PlacementError::DuplicateInstance { kind, instance });
                }
                list.push(instance);
            }
            if list.is_empty() {
                return Err(PlacementError::NoInstances(kind));
            }
            map.insert(kind, list);
        }
        Ok(Self {
            local_instance: local_instance.into(),
            kinds: map,
        })
    }

    /// This process's instance name.
    pub fn local_instance(&self) -> &str {
        &self.local_instance
    }

    /// The configured instances of `kind` (`None`: unlisted, hence local).
    pub fn instances(&self, kind: &str) -> Option<&[String]> {
        self.kinds.get(kind).map(Vec::as_slice)
    }

    /// The instance that runs `kind` for `shard_key`.
    pub fn instance_for(&self, kind: &str, shard_key: &str) -> &str {
        match self.kinds.get(kind) {
            Some(list) => shard_index(shard_key, list.len())
                .and_then(|i| list.get(i))
                .map_or(self.local_instance.as_str(), String::as_str),
            None => &self.local_instance,
        }
    }

    /// Local or remote, for `kind` and `shard_key`.
    pub fn locate(&self, kind: &str, shard_key: &str) -> Location {
        let instance = self.instance_for(kind, shard_key);
        if instance == self.local_instance {
            Location::Local
        } else {
            Location::Remote(instance.to_owned())
        }
    }

    /// Whether this process runs (some shards of) `kind`.
    pub fn runs_locally(&self, kind: &str) -> bool {
        self.kinds
            .get(kind)
            .is_none_or(|list| list.contains(&self.local_instance))
    }

    /// The configured kinds this process runs (unlisted kinds also run here).
    pub fn local_kinds(&self) -> Vec<&str> {
        self.kinds
            .iter()
            .filter(|(_, list)| list.contains(&self.local_instance))
            .map(|(kind, _)| kind.as_str())
            .collect()
    }

    /// The transport destination at which `instance` serves `kind`.
    pub fn destination(kind: &str, instance: &str) -> String {
        format!("{kind}@{instance}")
    }

    /// A mailbox for `kind`/`shard_key`: `local` if placed here, otherwise a
    /// remote mailbox for the owning instance's destination.
    pub fn mailbox<M: RemoteMessage>(
        &self,
        kind: &str,
        shard_key: &str,
        local: Option<&Mailbox<M>>,
        transport: &Arc<dyn Transport>,
    ) -> Result<Mailbox<M>, PlacementError> {
        match self.locate(kind, shard_key) {
            Location::Local => local
                .cloned()
                .ok_or_else(|| PlacementError::NoLocalActor(kind.to_owned())),
            Location::Remote(instance) => Ok(Mailbox::remote(
                Arc::clone(transport),
                Self::destination(kind, &instance),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharding_matches_synapse_rule() {
        // Values from Python:
        // int.from_bytes(hashlib.sha256(k.encode()).digest(), "little") % n
        assert_eq!(shard_index("!a:b", 2), Some(0));
        assert_eq!(shard_index("!a:b", 3), Some(0));
        assert_eq!(shard_index("!a:b", 4), Some(2));
        assert_eq!(shard_index("!a:b", 5), Some(3));
        assert_eq!(shard_index("!a:b", 7), Some(4));
        assert_eq!(shard_index("!a:b", 10), Some(8));
        assert_eq!(shard_index("!room:example.org", 2), Some(1));
        assert_eq!(shard_index("!room:example.org", 3), Some(0));
        assert_eq!(shard_index("!room:example.org", 4), Some(3));
        assert_eq!(shard_index("!room:example.org", 10), Some(5));
        assert_eq!(shard_index("@alice:example.org", 5), Some(4));
        assert_eq!(shard_index("", 2), Some(1));
        assert_eq!(shard_index("", 3), Some(1));
        assert_eq!(shard_index("", 10), Some(9));
        assert_eq!(shard_index("anything", 1), Some(0));
        assert_eq!(shard_index("anything", 0), None);
    }

    #[test]
    fn sharding_is_deterministic() {
        for n in 1..20 {
            let first = shard_index("!stable:example.org", n);
            for _ in 0..3 {
                assert_eq!(shard_index("!stable:example.org", n), first);
            }
            assert!(first.is_some_and(|i| i < n));
        }
    }

    #[test]
    fn placement_decisions() {
        let p = Placement::new(
            "worker1",
            [
                ("events", vec!["worker1", "worker2"]),
                ("typing", vec!["worker3"]),
            ],
        )
        .expect("valid config");
        // "!a:b" → index 0 of 2 → worker1 (here); "!room:example.org" → 1.
        assert_eq!(p.locate("events", "!a:b"), Location::Local);
        assert_eq!(
            p.locate("events", "!room:example.org"),
            Location::Remote("worker2".into())
        );
        assert_eq!(
            p.locate("typing", "!a:b"),
            Location::Remote("worker3".into())
        );
        // Unlisted kinds run here.
        assert_eq!(p.locate("presence", "@alice:example.org"), Location::Local);
        assert!(p.runs_locally("events"));
        assert!(!p.runs_locally("typing"));
        assert!(p.runs_locally("presence"));
        assert_eq!(p.local_kinds(), vec!["events"]);
        assert_eq!(
            Placement::destination("events", "worker2"),
            "events@worker2"
        );
    }

    #[test]
    fn bad_configs_rejected() {
        assert_eq!(
            Placement::new("a", [("events", Vec::<String>::new())]),
            Err(PlacementError::NoInstances("events".into()))
        );
        assert_eq!(
            Placement::new("a", [("events", vec!["x", "x"])]),
            Err(PlacementError::DuplicateInstance {
                kind: "events".into(),
                instance: "x".into()
            })
        );
    }
}
