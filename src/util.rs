//! Small helpers shared by every layer: time and random identifiers.

use rand::{distributions::Alphanumeric, Rng};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
