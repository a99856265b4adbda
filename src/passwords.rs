//! Password hashing with argon2 (DESIGN §6), off the async threads.
//!
//! Each argon2 hash works in about 19 MiB of memory and takes tens of
//! milliseconds of CPU. Hashing is bounded to one job per core, and each job
//! borrows its working memory from a pool that holds at most one block per
//! permit, and only while more jobs are waiting: an idle server keeps none. Allocating the block afresh for every hash is what the argon2
//! crate does by default, and with glibc it costs gigabytes: freeing a block
//! that large raises malloc's mmap threshold, after which every later block
//! comes from heap arenas that are never given back to the system.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::ParamsString;
use argon2::password_hash::{rand_core::OsRng, Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
    memory: Arc<HashMemory>,
    /// Verifications run, including those against [`DUMMY_HASH`].
    verifications: Arc<AtomicUsize>,
}

/// What a login for an account without a password hash (or without an
/// account) is verified against, with the parameters of every new hash, so
/// that its answer takes as long as a wrong password for a real account.
/// Its output is random bytes: no password verifies against it.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$1jX/fat1t7aYlXLUW1uk1A$HFqxilL4eKuck9VmvpalUO0F90C9YRsHyvPTzc25Du8";

/// Working memory of finished hashes, reused by the next ones while there
/// are any; never more blocks than permits, since only that many hashes run
/// at once.
#[derive(Default)]
struct HashMemory {
    blocks: Mutex<Vec<Vec<Block>>>,
    /// Hashes queued or running.
    jobs: AtomicUsize,
}

/// One queued or running hash; counted from before it waits for a permit.
struct Job(Arc<HashMemory>);

impl Job {
    fn new(memory: &Arc<HashMemory>) -> Job {
        memory.jobs.fetch_add(1, Ordering::AcqRel);
        Job(Arc::clone(memory))
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // The last job out lets the pooled memory go: a job that finished
        // while this one still counted itself may have left its blocks.
        if self.0.jobs.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut pool) = self.0.blocks.lock() {
                pool.clear();
            }
        }
    }
}

impl Default for PasswordHasher {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        PasswordHasher {
            permits: Arc::new(Semaphore::new(cores)),
            memory: Arc::new(HashMemory::default()),
            verifications: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl PasswordHasher {
    /// Hashes `password` with a fresh salt into a PHC string (`$argon2id$v=19$...`).
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.run(move |memory| {
            let salt = SaltString::generate(&mut OsRng);
            let params = Params::default();
            let output = memory
                .with_blocks(&params, |blocks| {
                    compute(
                        Algorithm::default(),
                        Version::default(),
                        &params,
                        password.as_bytes(),
                        &salt.as_salt(),
                        params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN),
                        blocks,
                    )
                })
                .map_err(|e| PasswordError::Hash(e.to_string()))?;
            let hash = PasswordHash {
                algorithm: Algorithm::default().ident(),
                version: Some(Version::default().into()),
                params: ParamsString::try_from(&params)
                    .map_err(|e| PasswordError::Hash(e.to_string()))?,
                salt: Some(salt.as_salt()),
                hash: Some(output),
            };
            Ok(hash.to_string())
        })
        .await
    }

    /// Runs `job` on the blocking pool once a permit is free, counted as
    /// waiting for hash memory from the moment it asks.
    async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&HashMemory) -> Result<R, PasswordError> + Send + 'static,
    ) -> Result<R, PasswordError> {
        let _job = Job::new(&self.memory);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| PasswordError::Task(e.to_string()))?;
        let memory = Arc::clone(&self.memory);
        tokio::task::spawn_blocking(move || job(&memory))
            .await
            .map_err(|e| PasswordError::Task(e.to_string()))?
    }

    /// Whether `password` is the one `hash` was made from; without a hash
    /// (an unknown account, or one without a password), the same work is done
    /// against a dummy hash and the answer is `false`, so the time taken does
    /// not tell which accounts exist.
    pub async fn verify_or_dummy(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        match hash {
            Some(hash) => self.verify(password, hash).await,
            None => {
                self.verify(password, DUMMY_HASH.to_owned()).await?;
                Ok(false)
            }
        }
    }

    /// How many verifications this hasher ran.
    pub fn verifications(&self) -> usize {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Whether `password` is the one `hash` (a PHC string) was made from.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, PasswordError> {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        self.run(move |memory| {
            let stored = |e: argon2::password_hash::Error| PasswordError::Stored(e.to_string());
            let argon2_error = |e: argon2::Error| PasswordError::Stored(e.to_string());
            let parsed = PasswordHash::new(&hash).map_err(stored)?;
            let expected = parsed
                .hash
                .ok_or_else(|| PasswordError::Stored("no hash output".into()))?;
            let salt = parsed
                .salt
                .ok_or_else(|| PasswordError::Stored("no salt".into()))?;
            let algorithm = Algorithm::try_from(parsed.algorithm).map_err(stored)?;
            let version = parsed
                .version
                .map(Version::try_from)
                .transpose()
                .map_err(argon2_error)?
                .unwrap_or_default();
            let params = Params::try_from(&parsed).map_err(stored)?;
            let output = memory
                .with_blocks(&params, |blocks| {
                    compute(
                        algorithm,
                        version,
                        &params,
                        password.as_bytes(),
                        &salt,
                        expected.len(),
                        blocks,
                    )
                })
                .map_err(stored)?;
            // `Output`'s equality is constant-time.
            Ok(output == expected)
        })
        .await
    }
}

impl HashMemory {
    /// Runs `f` with working memory for `params`, taken from the pool (or
    /// allocated when the pool has none large enough), and puts it back when
    /// another hash is waiting for it.
    fn with_blocks<R>(&self, params: &Params, f: impl FnOnce(&mut [Block]) -> R) -> R {
        let needed = params.block_count();
        let taken = self
            .blocks
            .lock()
            .ok()
            .and_then(|mut blocks| blocks.pop())
            .filter(|blocks| blocks.len() == needed);
        let mut blocks = taken.unwrap_or_else(|| vec![Block::default(); needed]);
        let result = f(&mut blocks);
        // This job still counts itself: keep the blocks only for another.
        // A hash with unusual stored parameters is not worth keeping memory for.
        if self.jobs.load(Ordering::Acquire) > 1 && needed == Params::default().block_count() {
            if let Ok(mut pool) = self.blocks.lock() {
                pool.push(blocks);
            }
        }
        result
    }
}

fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &argon2::password_hash::Salt<'_>,
    output_len: usize,
    blocks: &mut [Block],
) -> argon2::password_hash::Result<Output> {
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    Output::init_with(output_len, |out| {
        argon2
            .hash_password_into_with_memory(password, salt_bytes, out, &mut *blocks)
            .map_err(Into::into)
    })
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

    #[tokio::test]
    async fn accounts_without_a_hash_are_verified_against_the_dummy_one() {
        let hasher = PasswordHasher::default();
        let before = hasher.verifications();
        assert!(!hasher
            .verify_or_dummy("correct horse".into(), None)
            .await
            .expect("verify"));
        assert_eq!(hasher.verifications(), before + 1, "the hash work ran");
        let hash = hasher.hash("correct horse".into()).await.expect("hash");
        assert!(hasher
            .verify_or_dummy("correct horse".into(), Some(hash))
            .await
            .expect("verify"));
        assert_eq!(hasher.verifications(), before + 2);
    }

    #[test]
    fn the_dummy_hash_costs_what_a_new_hash_costs() {
        let dummy = PasswordHash::new(DUMMY_HASH).expect("phc");
        assert_eq!(dummy.algorithm, Algorithm::default().ident());
        let params = Params::try_from(&dummy).expect("params");
        let default = Params::default();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
        assert_eq!(
            dummy.hash.expect("output").len(),
            Params::default()
                .output_len()
                .unwrap_or(Params::DEFAULT_OUTPUT_LEN)
        );
    }

    #[tokio::test]
    async fn hashes_from_the_stock_argon2_still_verify() {
        use argon2::password_hash::PasswordHasher as _;
        let salt = SaltString::generate(&mut OsRng);
        let stock = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .expect("hash")
            .to_string();
        let hasher = PasswordHasher::default();
        assert!(hasher
            .verify("correct horse".into(), stock.clone())
            .await
            .expect("verify"));
        assert!(!hasher
            .verify("correct horsf".into(), stock)
            .await
            .expect("verify"));
        // And ours verify with the stock verifier.
        let ours = hasher.hash("tr0ub4dor".into()).await.expect("hash");
        let parsed = PasswordHash::new(&ours).expect("phc");
        use argon2::password_hash::PasswordVerifier as _;
        assert!(Argon2::default()
            .verify_password(b"tr0ub4dor", &parsed)
            .is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_is_kept_only_while_hashes_wait() {
        let hasher = PasswordHasher::default();
        let burst: Vec<_> = (0..6)
            .map(|i| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(format!("pw{i}")).await })
            })
            .collect();
        for job in burst {
            job.await.expect("join").expect("hash");
        }
        let pooled = hasher.memory.blocks.lock().expect("pool").len();
        assert_eq!(pooled, 0, "an idle hasher keeps no memory");
        assert_eq!(hasher.memory.jobs.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_waiting_hash_gets_the_finished_ones_memory() {
        let memory = Arc::new(HashMemory::default());
        let params = Params::default();
        let _running = Job::new(&memory);
        let _waiting = Job::new(&memory);
        memory.with_blocks(&params, |_| ());
        assert_eq!(memory.blocks.lock().expect("pool").len(), 1);
        drop(_waiting);
        memory.with_blocks(&params, |_| ());
        assert_eq!(memory.blocks.lock().expect("pool").len(), 0);
    }
}
