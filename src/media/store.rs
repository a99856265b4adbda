//! The media store: the directory `media.media_store_path` and its layout.
//!
//! ```text
//! local_content/ab/cd/efgh...              the uploaded bytes of media id abcdefgh...
//! local_thumbnails/ab/cd/efgh.../32-32-image-png-crop   its thumbnails
//! tmp/                                      uploads and thumbnails being written
//! ```
//!
//! Paths are made only from [`MediaId`]s (checked to be `[A-Za-z0-9_-]+`) and
//! numbers, never from request text. Anything is first written to a
//! [`TempFile`] in `tmp/`, which removes itself unless it is renamed into
//! place: an upload that fails half-way, is too large or is refused leaves
//! nothing behind. Two directory levels keep directories small, as Synapse's
//! layout does.

use std::path::{Path, PathBuf};

use actix_web::web::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::id::MediaId;

/// The media store of one deployment (shared by its media instances).
#[derive(Debug, Clone)]
pub struct MediaStore {
    root: PathBuf,
}

/// Why receiving an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("upload larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the upload: {0}")]
    Payload(String),
    #[error("writing the upload: {0}")]
    Io(#[from] std::io::Error),
}

/// An upload written to a temporary file, with its size and hash.
#[derive(Debug)]
pub struct Received {
    pub file: TempFile,
    pub length: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

impl MediaStore {
    pub fn new(root: PathBuf) -> MediaStore {
        MediaStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the bytes of `id` are.
    pub fn content_path(&self, id: &MediaId) -> PathBuf {
        self.root.join("local_content").join(sharded(id))
    }

    /// The directory of the thumbnails of `id`.
    pub fn thumbnail_dir(&self, id: &MediaId) -> PathBuf {
        self.root.join("local_thumbnails").join(sharded(id))
    }

    /// Where one thumbnail of `id` is: its size, type and method in the name
    /// (`32-32-image-png-crop`).
    pub fn thumbnail_path(
        &self,
        id: &MediaId,
        width: u32,
        height: u32,
        content_type: &str,
        method: &str,
    ) -> PathBuf {
        let content_type: String = content_type
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let method: String = method
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        self.thumbnail_dir(id)
            .join(format!("{width}-{height}-{content_type}-{method}"))
    }

    /// The directory of files being written.
    pub fn temp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new empty temporary file in the store.
    pub async fn temp_file(&self) -> std::io::Result<TempFile> {
        let dir = self.temp_dir();
        tokio::fs::create_dir_all(&dir).await?;
        let path = dir.join(format!("partial-{}", MediaId::generate()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    /// Writes the chunks of `body` to a temporary file, counting and
    /// hashing them as they come: at most one chunk is in memory at a time,
    /// and past `limit` bytes the upload stops with the file removed.
    pub async fn receive<E: std::fmt::Display>(
        &self,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
        limit: u64,
    ) -> Result<Received, ReceiveError> {
        let mut file = self.temp_file().await?;
        let mut length: u64 = 0;
        let mut hasher = Sha256::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ReceiveError::Payload(e.to_string()))?;
            length += chunk.len() as u64;
            if length > limit {
                return Err(ReceiveError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Received {
            file,
            length,
            sha256,
        })
    }

    /// Removes the bytes and every thumbnail of `id`; what was already gone
    /// is no error.
    pub async fn remove(&self, id: &MediaId) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.content_path(id)).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        match tokio::fs::remove_dir_all(self.thumbnail_dir(id)).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// `abcdefgh` as `ab/cd/efgh`. Ids too short to split (only ever ids from
/// requests, which match no upload) go under `_/`.
fn sharded(id: &MediaId) -> PathBuf {
    let id = id.as_str();
    match (id.get(0..2), id.get(2..4), id.get(4..)) {
        (Some(first), Some(second), Some(rest)) if !rest.is_empty() => {
            Path::new(first).join(second).join(rest)
        }
        _ => Path::new("_").join(id),
    }
}

/// A file being written in the store's `tmp/`: its temporary name is
/// removed when it is dropped, whether or not [`TempFile::persist`] gave it
/// its real one.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.write_all(bytes).await,
            None => Err(std::io::Error::other("temporary file already closed")),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush().await,
            None => Ok(()),
        }
    }

    /// Gives the file the name `destination` (creating its directories),
    /// unless that name is taken: then `AlreadyExists`, and nothing is
    /// overwritten. A hard link, not a rename, because a rename would
    /// replace a file another request put there first (two uploads to one
    /// asynchronous media id, two instances making one thumbnail); the
    /// temporary name goes when `self` is dropped.
    pub async fn persist(mut self, destination: &Path) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
            file.sync_all().await?;
        }
        if let Some(parent) = destination.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::hard_link(&self.path, destination).await
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Close before removing; removing is one quick system call.
        self.file.take();
        if let Err(error) = std::fs::remove_file(&self.path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %error, "could not remove a temporary media file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (MediaStore, PathBuf) {
        let root = std::env::temp_dir().join(format!("lattice-store-test-{}", MediaId::generate()));
        (MediaStore::new(root.clone()), root)
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn layout_is_by_media_id() {
        let store = MediaStore::new(PathBuf::from("/m"));
        let id = MediaId::parse("abcdefgh").expect("valid");
        assert_eq!(
            store.content_path(&id),
            PathBuf::from("/m/local_content/ab/cd/efgh")
        );
        assert_eq!(
            store.thumbnail_path(&id, 32, 24, "image/png", "crop"),
            PathBuf::from("/m/local_thumbnails/ab/cd/efgh/32-24-image-png-crop")
        );
        let short = MediaId::parse("abcd").expect("valid");
        assert_eq!(
            store.content_path(&short),
            PathBuf::from("/m/local_content/_/abcd")
        );
    }

    #[tokio::test]
    async fn an_upload_is_hashed_and_kept_only_when_persisted() {
        let (store, root) = store();
        let received = store
            .receive(chunks(&[b"hello ", b"world"]), 100)
            .await
            .expect("received");
        assert_eq!(received.length, 11);
        assert_eq!(
            received.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        let id = MediaId::generate();
        let destination = store.content_path(&id);
        received.file.persist(&destination).await.expect("persist");
        assert_eq!(std::fs::read(&destination).expect("read"), b"hello world");
        // A second file never replaces the first.
        let second = store
            .receive(chunks(&[b"other"]), 100)
            .await
            .expect("received");
        let error = second.file.persist(&destination).await.expect_err("taken");
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&destination).expect("read"), b"hello world");
        // Dropped without persisting: gone.
        let received = store.receive(chunks(&[b"x"]), 100).await.expect("received");
        let path = received.file.path().to_owned();
        assert!(path.exists());
        drop(received);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(store.temp_dir()).expect("tmp").count(), 0);
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn an_upload_over_the_limit_leaves_nothing() {
        let (store, root) = store();
        let error = store
            .receive(chunks(&[b"12345", b"67890"]), 7)
            .await
            .expect_err("too large");
        assert!(matches!(error, ReceiveError::TooLarge { limit: 7 }));
        assert_eq!(std::fs::read_dir(store.temp_dir()).expect("tmp").count(), 0);
        let _ = std::fs::remove_dir_all(root);
    }
}
