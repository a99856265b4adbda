//! Envelope authentication with a shared secret (HMAC-SHA256).
//!
//! Every process of one deployment shares a secret. A sending transport sets
//! [`Envelope::hmac`] with [`HmacKey::sign`]; a receiving transport checks it
//! with [`HmacKey::verify`] (constant-time) and drops, counts and logs
//! envelopes that fail. This lives outside any particular transport so the
//! in-memory and the Redis transports apply exactly the same rule. Where
//! others can write (Redis), [`HmacKey::sign_for`] also binds the signature
//! to the stream or list the envelope is delivered to, so that a copy moved
//! elsewhere does not verify.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::envelope::Envelope;

type HmacSha256 = Hmac<Sha256>;

/// Errors building an [`HmacKey`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// An empty secret would authenticate nothing.
    #[error("the shared secret is empty")]
    EmptySecret,
    /// Rejected by the HMAC implementation.
    #[error("invalid HMAC key: {0}")]
    InvalidKey(String),
}

/// A shared secret ready to sign and verify envelopes.
#[derive(Clone)]
pub struct HmacKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl HmacKey {
    /// Build a key from the shared secret.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, AuthError> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(AuthError::EmptySecret);
        }
        let mac =
            HmacSha256::new_from_slice(secret).map_err(|e| AuthError::InvalidKey(e.to_string()))?;
        Ok(Self { mac })
    }

    /// Hex HMAC of the envelope's signing bytes.
    pub fn compute(&self, envelope: &Envelope) -> String {
        let mut mac = self.mac.clone();
        mac.update(&envelope.signing_bytes());
        to_hex(&mac.finalize().into_bytes())
    }

    /// Set `envelope.hmac`.
    pub fn sign(&self, envelope: &mut Envelope) {
        envelope.hmac = Some(self.compute(envelope));
    }

    /// Whether `envelope.hmac` is present and matches (constant-time).
    pub fn verify(&self, envelope: &Envelope) -> bool {
        let Some(given) = envelope.hmac.as_deref().and_then(from_hex) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(&envelope.signing_bytes());
        mac.verify_slice(&given).is_ok()
    }

    /// Like [`HmacKey::sign`], and binds the envelope to `place`: where it
    /// is delivered (a Redis stream or reply list), so that a copy put
    /// anywhere else does not verify.
    pub fn sign_for(&self, place: &str, envelope: &mut Envelope) {
        envelope.hmac = Some(to_hex(
            &self.mac_for(place, envelope).finalize().into_bytes(),
        ));
    }

    /// Whether `envelope.hmac` is present and matches, for `place`
    /// (constant-time).
    pub fn verify_for(&self, place: &str, envelope: &Envelope) -> bool {
        let Some(given) = envelope.hmac.as_deref().and_then(from_hex) else {
            return false;
        };
        self.mac_for(place, envelope).verify_slice(&given).is_ok()
    }

    /// The MAC over `place` (length first, so no two places and envelopes
    /// give the same bytes) and the envelope's signing bytes.
    fn mac_for(&self, place: &str, envelope: &Envelope) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&u64::try_from(place.len()).unwrap_or(u64::MAX).to_le_bytes());
        mac.update(place.as_bytes());
        mac.update(&envelope.signing_bytes());
        mac
    }

    /// Hex HMAC of arbitrary bytes: replication lines use the same key and
    /// rule as mailbox envelopes.
    pub fn compute_bytes(&self, bytes: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(bytes);
        to_hex(&mac.finalize().into_bytes())
    }

    /// Whether `hex` is the HMAC of `bytes` (constant-time).
    pub fn verify_bytes(&self, bytes: &[u8], hex: &str) -> bool {
        let Some(given) = from_hex(hex) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(bytes);
        mac.verify_slice(&given).is_ok()
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> Envelope {
        Envelope::request(
            "events.persist.v1",
            "worker1",
            Some(1_700_000_000_000),
            json!({"a": 1}),
        )
    }

    #[test]
    fn rfc4231_test_case_2() {
        // HMAC-SHA256(key = "Jefe", data = "what do ya want for nothing?")
        let mut mac = HmacSha256::new_from_slice(b"Jefe").expect("any key length is valid");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            to_hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sign_then_verify() {
        let key = HmacKey::new("secret").expect("key");
        let mut e = envelope();
        assert!(!key.verify(&e), "unsigned envelope must not verify");
        key.sign(&mut e);
        assert!(key.verify(&e));
        assert_eq!(e.hmac.as_ref().map(String::len), Some(64));
    }

    #[test]
    fn tampering_or_wrong_key_fails() {
        let key = HmacKey::new("secret").expect("key");
        let mut e = envelope();
        key.sign(&mut e);

        let mut tampered = e.clone();
        tampered.body = json!({"a": 2});
        assert!(!key.verify(&tampered));

        let mut retargeted = e.clone();
        retargeted.wire_name = "events.persist.v2".into();
        assert!(!key.verify(&retargeted));

        assert!(!HmacKey::new("other").expect("key").verify(&e));

        let mut garbage = e.clone();
        garbage.hmac = Some("zz".into());
        assert!(!key.verify(&garbage));
    }

    #[test]
    fn a_signature_for_one_place_does_not_verify_for_another() {
        let key = HmacKey::new("secret").expect("key");
        let mut e = envelope();
        key.sign_for("p:mailbox:events@events1", &mut e);
        assert!(key.verify_for("p:mailbox:events@events1", &e));
        assert!(!key.verify_for("p:mailbox:events@events2", &e));
        assert!(!key.verify_for("q:mailbox:events@events1", &e));
        assert!(!key.verify(&e));
    }

    #[test]
    fn empty_secret_rejected() {
        assert_eq!(HmacKey::new("").err(), Some(AuthError::EmptySecret));
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes.to_vec()));
        assert_eq!(from_hex("abc"), None);
    }
}
