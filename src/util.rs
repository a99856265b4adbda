//! Small helpers shared by every layer: time, a clock for timers, random
//! identifiers, and JSON objects built without copying.

use rand::{distributions::Alphanumeric, Rng};

/// A JSON object of `entries`, each value moved in. `json!` serialises
/// every interpolated expression through serde from a reference: a deep copy
/// of each map and array, which was a tenth of the server's CPU in `/sync`
/// answers assembled from already-built sections.
pub fn json_object<const N: usize>(entries: [(&str, serde_json::Value); N]) -> serde_json::Value {
    serde_json::Value::Object(
        entries
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, advancing with tokio's clock: the clock of
/// the writers' timers (typing expiries, presence), so that tests run them on
/// paused time. Times in rows stay wall-clock milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_ms: i64,
    at: tokio::time::Instant,
}

impl Clock {
    /// A clock reading the wall-clock time now.
    pub fn start() -> Clock {
        Clock::starting_at(crate::util::now_ms())
    }

    /// A clock reading `wall_ms` now.
    pub fn starting_at(wall_ms: i64) -> Clock {
        Clock {
            wall_ms,
            at: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.wall_ms
            .saturating_add(i64::try_from(self.at.elapsed().as_millis()).unwrap_or(i64::MAX))
    }

    /// The instant this clock reads `ms` (now, for a time already past).
    pub fn instant_at(&self, ms: i64) -> tokio::time::Instant {
        let after_start = u64::try_from(ms.saturating_sub(self.wall_ms)).unwrap_or(0);
        self.at + std::time::Duration::from_millis(after_start)
    }
}

/// A random alphanumeric string of `len` characters.
pub fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A random string of upper-case letters, as Synapse's device ids are.
pub fn random_device_id() -> String {
    let mut rng = rand::thread_rng();
    (0..10)
        .map(|_| rng.gen_range(b'A'..=b'Z') as char)
        .collect()
}
