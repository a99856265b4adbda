//! Password hashing with argon2 (DESIGN §6), off the async threads.
//!
//! Each argon2 hash takes about 19 MiB of memory and tens of milliseconds of
//! CPU. Hashing is bounded to one job per core: without the bound, a burst of
//! registrations runs hundreds of hashes at once on the blocking pool, which
//! costs gigabytes the allocator keeps afterwards and finishes no sooner.

use std::sync::Arc;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString,
};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("stored password hash is malformed: {0}")]
    Stored(String),
    #[error("password hashing task failed: {0}")]
    Task(String),
}

/// Shared by every handler of one instance; clone freely.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
}

impl Default for PasswordHasher {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        PasswordHasher {
            permits: Arc::new(Semaphore::new(cores)),
        }
    }
}

impl PasswordHasher {
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| PasswordError::Task(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| PasswordError::Hash(e.to_string()))
        })
        .await
        .map_err(|e| PasswordError::Task(e.to_string()))?
    }

    pub async fn verify(&self, password: String, hash: String) -> Result<bool, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| PasswordError::Task(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|e| PasswordError::Stored(e.to_string()))?;
            Ok(argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
        .map_err(|e| PasswordError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = PasswordHasher::default();
        let hash = hasher.hash("correct horse".into()).await.expect("hash");
        assert!(hasher
            .verify("correct horse".into(), hash.clone())
            .await
            .expect("verify"));
        assert!(!hasher
            .verify("battery staple".into(), hash)
            .await
            .expect("verify"));
        assert!(hasher
            .verify("x".into(), "not a hash".into())
            .await
            .is_err());
    }
}
