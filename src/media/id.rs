//! Media ids: made here at random, and checked when a request names one,
//! before anything else sees it. The check is what keeps request paths out
//! of the file system: an id of letters, digits, `_` and `-` cannot name a
//! parent directory (`..`), a separator (`/`, or `%2F` undecoded) or
//! anything else a path could use.

use rand::distributions::Alphanumeric;
use rand::Rng;

/// How many random characters a new id has: 62^24 ≈ 2^143 possibilities,
/// so ids made on different instances at once do not collide (the primary
/// key would refuse one that did).
const GENERATED_LENGTH: usize = 24;

/// The longest id accepted from a request (ids this server makes are 24).
const MAX_LENGTH: usize = 255;

/// A media id that is safe to use in a file path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaId(String);

impl MediaId {
    /// A fresh random id.
    pub fn generate() -> MediaId {
        let id: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(GENERATED_LENGTH)
            .map(char::from)
            .collect();
        MediaId(id)
    }

    /// The id in a request, if it has the only shape ids have
    /// (`^[A-Za-z0-9_-]{1,255}$`).
    pub fn parse(id: &str) -> Option<MediaId> {
        let valid = !id.is_empty()
            && id.len() <= MAX_LENGTH
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        valid.then(|| MediaId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MediaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_24_alphanumerics_and_differ() {
        let first = MediaId::generate();
        let second = MediaId::generate();
        assert_eq!(first.as_str().len(), 24);
        assert!(first.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(first, second);
        assert_eq!(MediaId::parse(first.as_str()), Some(first));
    }

    #[test]
    fn ids_that_could_name_a_path_are_refused() {
        for bad in [
            "", "..", "../etc", "a/b", "a%2Fb", "%2e%2e", "a b", "a\0b", "é", ".hidden",
        ] {
            assert_eq!(MediaId::parse(bad), None, "{bad:?}");
        }
        assert!(MediaId::parse(&"a".repeat(256)).is_none());
        for good in ["abc", "A_b-9", "AQwafuaFswefuhsfAFAgsw"] {
            assert!(MediaId::parse(good).is_some(), "{good}");
        }
    }
}
