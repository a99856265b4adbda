//! This server's ed25519 signing key, kept in the config in Synapse's format:
//! `ed25519 <version> <unpadded base64 seed>`.

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use rand::RngCore;
use ruma::signatures::Ed25519KeyPair;

/// The DER prefix of a PKCS#8 v1 document holding an ed25519 seed (RFC 8410):
/// the seed's 32 bytes follow it.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Clone)]
pub struct SigningKey {
    pub version: String,
    seed: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(ed25519:{})", self.version)
    }
}

impl SigningKey {
    pub fn generate() -> SigningKey {
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        let mut version_bytes = [0u8; 3];
        rand::thread_rng().fill_bytes(&mut version_bytes);
        let version = format!(
            "a_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(version_bytes)
        );
        SigningKey { version, seed }
    }

    pub fn parse(text: &str) -> Result<SigningKey, String> {
        let mut parts = text.split_whitespace();
        let (Some(algorithm), Some(version), Some(seed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected `ed25519 <version> <base64 seed>`".into());
        };
        if algorithm != "ed25519" {
            return Err(format!("unsupported algorithm `{algorithm}`"));
        }
        let bytes = STANDARD_NO_PAD
            .decode(seed.trim_end_matches('='))
            .map_err(|e| format!("seed is not base64: {e}"))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the seed must be 32 bytes".to_owned())?;
        Ok(SigningKey {
            version: version.to_owned(),
            seed,
        })
    }

    pub fn to_config_string(&self) -> String {
        format!(
            "ed25519 {} {}",
            self.version,
            STANDARD_NO_PAD.encode(self.seed)
        )
    }

    /// `ed25519:<version>`, the key id used in signatures.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    pub fn key_pair(&self) -> Ed25519KeyPair {
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(&self.seed);
        // The document is well-formed by construction, so this cannot fail;
        // a failure would be a bug in the prefix above, caught by the tests.
        match Ed25519KeyPair::from_der(&der, self.version.clone()) {
            Ok(pair) => pair,
            Err(error) => unreachable!("ed25519 PKCS#8 document is malformed: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips_through_the_config_format() {
        let key = SigningKey::generate();
        let text = key.to_config_string();
        let parsed = SigningKey::parse(&text).expect("parses");
        assert_eq!(parsed.seed, key.seed);
        assert_eq!(parsed.version, key.version);
        assert_eq!(parsed.key_pair().public_key(), key.key_pair().public_key());
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(SigningKey::parse("ed25519 a_x").is_err());
        assert!(SigningKey::parse("rsa a_x AAAA").is_err());
        assert!(SigningKey::parse("ed25519 a_x AAAA").is_err());
    }
}
