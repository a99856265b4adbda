//! The media repository (DESIGN §1, the `media` role): uploads, asynchronous
//! uploads, downloads and thumbnails of this server's media.
//!
//! Metadata is in PostgreSQL ([`crate::storage::media`]), bytes in the media
//! store on disk ([`store`]), which every instance with the `media` role
//! shares; media ids are random ([`id`]), so instances need not agree on
//! anything to create them, and any of them serves any item. Nothing here is
//! an actor: media instances share no state but the database and the store.
//!
//! Remote media (`mxc://other.server/...`) comes with federation; until
//! then a server name that is not ours answers 404.

pub mod id;
pub mod preview;
pub mod store;
pub mod thumbnail;

use std::path::PathBuf;
use std::time::Duration;

use actix_web::web::Bytes;
use deadpool_postgres::Pool;
use futures::Stream;

use crate::config::MediaConfig;
use crate::storage::media::{LocalMedia, UploadedContent};
use crate::storage::StorageError;
use id::MediaId;
use store::{MediaStore, ReceiveError};
use thumbnail::{Candidate, ThumbnailError, ThumbnailMethod};

/// The longest a download may wait for an asynchronous upload's content
/// (Synapse's `MAXIMUM_ALLOWED_MAX_TIMEOUT_MS`).
pub const MAX_WAIT_MS: u64 = 60_000;
/// The wait when a request gives no `timeout_ms` (the spec's default).
pub const DEFAULT_WAIT_MS: u64 = 20_000;
/// How often a waiting download looks again.
const WAIT_POLL: Duration = Duration::from_millis(200);
/// An animated GIF or WebP up to this size is its own animated thumbnail
/// (the `image` crate encodes no animation); a larger one gets a still one.
const ANIMATED_ORIGINAL_MAX_BYTES: i64 = 2 * 1024 * 1024;
/// Thumbnails made at once by one instance: each holds a decoded image.
const CONCURRENT_THUMBNAILING: usize = 2;

/// What went wrong, as the handlers turn it into Matrix errors
/// (`From<MediaError> for ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("media not found")]
    NotFound,
    #[error("media has not been uploaded yet")]
    NotYetUploaded,
    #[error("upload larger than the {limit} bytes allowed")]
    TooLarge { limit: u64 },
    #[error("media upload limit exceeded")]
    QuotaExceeded,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("media id already has content")]
    CannotOverwrite,
    #[error("too many pending uploads")]
    TooManyPending { retry_after_ms: u64 },
    #[error("cannot generate thumbnails for this media: {0}")]
    CannotThumbnail(String),
    #[error("image too large to thumbnail: {0}")]
    TooLargeToThumbnail(String),
    #[error("could not read the upload: {0}")]
    BadUpload(String),
    #[error("URL previews are not available on this server")]
    PreviewsDisabled,
    #[error("cannot preview this URL: {0}")]
    BadPreviewUrl(String),
    /// Synapse's words.
    #[error("IP address blocked")]
    AddressBlocked,
    #[error("failed to download content: {0}")]
    PreviewFetch(String),
    /// Synapse's words.
    #[error("Requested file is too large > {limit} bytes")]
    PreviewTooLarge { limit: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("media store: {0}")]
    Io(#[from] std::io::Error),
}

pub type MediaResult<T> = Result<T, MediaError>;

impl From<ReceiveError> for MediaError {
    fn from(error: ReceiveError) -> Self {
        match error {
            ReceiveError::TooLarge { limit } => MediaError::TooLarge { limit },
            ReceiveError::Payload(message) => MediaError::BadUpload(message),
            ReceiveError::Io(error) => MediaError::Io(error),
        }
    }
}

/// An upload as the client describes it.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub user_id: String,
    pub content_type: String,
    pub upload_name: Option<String>,
    /// The `Content-Length` header, when there is one.
    pub declared_length: Option<u64>,
}

/// A file to send: the original or a thumbnail.
#[derive(Debug, Clone)]
pub struct ServedFile {
    pub path: PathBuf,
    pub content_type: String,
}

/// One instance's view of the media repository.
pub struct MediaRepository {
    pub config: MediaConfig,
    pub store: MediaStore,
    /// Ours, for the `mxc://` URIs of the images URL previews store.
    server_name: String,
    pool: Pool,
    thumbnailing: tokio::sync::Semaphore,
    previews: preview::PreviewCache,
}

impl MediaRepository {
    pub fn new(config: MediaConfig, server_name: &str, pool: Pool) -> MediaRepository {
        MediaRepository {
            store: MediaStore::new(config.media_store_path.clone()),
            config,
            server_name: server_name.to_owned(),
            pool,
            thumbnailing: tokio::sync::Semaphore::new(CONCURRENT_THUMBNAILING),
            previews: preview::PreviewCache::default(),
        }
    }

    fn max_upload_size(&self) -> u64 {
        self.config.max_upload_size.0
    }

    /// The row of content `request` uploaded under `media_id`.
    fn uploaded_content<'a>(
        &self,
        media_id: &'a MediaId,
        request: &'a UploadRequest,
        length: u64,
        sha256: &'a str,
    ) -> UploadedContent<'a> {
        UploadedContent {
            media_id: media_id.as_str(),
            user_id: &request.user_id,
            content_type: &request.content_type,
            upload_name: request.upload_name.as_deref(),
            media_length: length_i64(length),
            sha256,
            authenticated: self.config.enable_authenticated_media,
            now_ms: crate::util::now_ms(),
        }
    }

    /// `POST /upload`: stores `body` under a new media id.
    pub async fn upload<E: std::fmt::Display>(
        &self,
        request: UploadRequest,
        body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> MediaResult<MediaId> {
        self.check_declared_length(&request).await?;
        let received = self.store.receive(body, self.max_upload_size()).await?;
        self.check_quota(&request.user_id, received.length).await?;
        self.store_received(&request, received).await
    }

    /// Gives content received in the store's temporary directory a new
    /// media id: its file, its row, its thumbnails.
    async fn store_received(
        &self,
        request: &UploadRequest,
        received: store::Received,
    ) -> MediaResult<MediaId> {
        let media_id = MediaId::generate();
        let path = self.store.content_path(&media_id);
        received.file.persist(&path).await?;
        let stored = crate::storage::media::insert_uploaded(
            &self.pool,
            &self.uploaded_content(&media_id, request, received.length, &received.sha256),
        )
        .await;
        if let Err(error) = stored {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(error.into());
        }
        self.make_thumbnails_logged(&media_id, &request.content_type)
            .await;
        Ok(media_id)
    }

    /// `POST /_matrix/media/v1/create`: a media id for content to come, and
    /// until when it waits for it.
    pub async fn create(&self, user_id: &str) -> MediaResult<(MediaId, i64)> {
        let now = crate::util::now_ms();
        let (pending, first_expiry) =
            crate::storage::media::count_pending(&self.pool, user_id, now).await?;
        if pending >= self.config.max_pending_media_uploads {
            let retry_after_ms = first_expiry
                .map(|expiry| u64::try_from(expiry - now).unwrap_or(0))
                .unwrap_or(0);
            return Err(MediaError::TooManyPending { retry_after_ms });
        }
        let media_id = MediaId::generate();
        let expires_at = now.saturating_add(
            i64::try_from(self.config.unused_expiration_time_ms).unwrap_or(i64::MAX),
        );
        crate::storage::media::insert_pending(
            &self.pool,
            media_id.as_str(),
            user_id,
            now,
            expires_at,
            self.config.enable_authenticated_media,
        )
        .await?;
        Ok((media_id, expires_at))
    }

    /// `PUT /upload/{serverName}/{mediaId}`: the content of a created id,
    /// once, by its creator, before it expires.
    pub async fn upload_pending<E: std::fmt::Display>(
        &self,
        media_id: &MediaId,
        request: UploadRequest,
        body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> MediaResult<()> {
        self.check_can_upload_to(media_id, &request.user_id).await?;
        self.check_declared_length(&request).await?;
        let received = self.store.receive(body, self.max_upload_size()).await?;
        self.check_quota(&request.user_id, received.length).await?;
        let path = self.store.content_path(media_id);
        // Only one upload can give the file its name; a second one is late.
        match received.file.persist(&path).await {
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(MediaError::CannotOverwrite)
            }
            other => other?,
        }
        let completed = crate::storage::media::complete_pending(
            &self.pool,
            &self.uploaded_content(media_id, &request, received.length, &received.sha256),
        )
        .await;
        match completed {
            Ok(true) => {}
            Ok(false) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(MediaError::CannotOverwrite);
            }
            Err(error) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(error.into());
            }
        }
        self.make_thumbnails_logged(media_id, &request.content_type)
            .await;
        Ok(())
    }

    /// Synapse's `verify_can_upload`.
    async fn check_can_upload_to(&self, media_id: &MediaId, user_id: &str) -> MediaResult<()> {
        let media = crate::storage::media::get(&self.pool, media_id.as_str())
            .await?
            .ok_or(MediaError::NotFound)?;
        if media.user_id != user_id {
            return Err(MediaError::Forbidden(
                "only the creator of the media id can upload to it",
            ));
        }
        if media.is_uploaded() {
            return Err(MediaError::CannotOverwrite);
        }
        if is_expired(&media, crate::util::now_ms()) {
            return Err(MediaError::NotFound);
        }
        Ok(())
    }

    /// Refuses before reading a body whose `Content-Length` is already too
    /// large, for the limit or for the user's quota.
    async fn check_declared_length(&self, request: &UploadRequest) -> MediaResult<()> {
        if let Some(length) = request.declared_length {
            if length > self.max_upload_size() {
                return Err(MediaError::TooLarge {
                    limit: self.max_upload_size(),
                });
            }
            self.check_quota(&request.user_id, length).await?;
        }
        Ok(())
    }

    /// `media_upload_quota`: what `user_id` uploaded, plus `length`, must
    /// fit. Synapse's `media_upload_limits` answer (400
    /// `M_RESOURCE_LIMIT_EXCEEDED`).
    async fn check_quota(&self, user_id: &str, length: u64) -> MediaResult<()> {
        let Some(quota) = self.config.media_upload_quota else {
            return Ok(());
        };
        let used = crate::storage::media::uploaded_size(&self.pool, user_id).await?;
        let used = u64::try_from(used).unwrap_or(0);
        if used.saturating_add(length) > quota.0 {
            return Err(MediaError::QuotaExceeded);
        }
        Ok(())
    }

    /// The item `media_id`, uploaded and not quarantined, waiting up to
    /// `wait_ms` for the content of an asynchronous upload (then
    /// [`MediaError::NotYetUploaded`]).
    pub async fn get(&self, media_id: &MediaId, wait_ms: u64) -> MediaResult<LocalMedia> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
        loop {
            let media = crate::storage::media::get(&self.pool, media_id.as_str())
                .await?
                .ok_or(MediaError::NotFound)?;
            if media.quarantined_by.is_some() {
                return Err(MediaError::NotFound);
            }
            if media.is_uploaded() {
                return Ok(media);
            }
            if is_expired(&media, crate::util::now_ms()) {
                return Err(MediaError::NotFound);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MediaError::NotYetUploaded);
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// The file of `media`, checked to exist (a row whose file an operator
    /// removed is not found, rather than a failed response).
    pub async fn content(&self, media: &LocalMedia) -> MediaResult<ServedFile> {
        let media_id = MediaId::parse(&media.media_id).ok_or(MediaError::NotFound)?;
        let path = self.store.content_path(&media_id);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            tracing::warn!(media_id = %media_id, "media row without its file");
            return Err(MediaError::NotFound);
        }
        Ok(ServedFile {
            path,
            content_type: content_type_of(media),
        })
    }

    /// The thumbnail of `media` that best answers `width` x `height` by
    /// `method`: made now if none was made yet; the original itself for a
    /// small animated GIF or WebP when `animated` is asked.
    pub async fn thumbnail(
        &self,
        media: &LocalMedia,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
        animated: bool,
    ) -> MediaResult<ServedFile> {
        let media_id = MediaId::parse(&media.media_id).ok_or(MediaError::NotFound)?;
        let content_type = content_type_of(media);
        if animated
            && is_animatable(&content_type)
            && media.media_length.unwrap_or(i64::MAX) <= ANIMATED_ORIGINAL_MAX_BYTES
        {
            return self.content(media).await;
        }
        let output_type = thumbnail::thumbnail_type(&content_type).ok_or_else(|| {
            MediaError::CannotThumbnail(format!("content of type {content_type} is not an image"))
        })?;
        let mut made_now = false;
        loop {
            let stored = crate::storage::media::thumbnails(&self.pool, media_id.as_str()).await?;
            let candidates: Vec<Candidate> = stored
                .iter()
                .filter_map(|t| {
                    Some(Candidate {
                        width: t.width,
                        height: t.height,
                        method: ThumbnailMethod::parse(&t.method)?,
                        content_type: t.content_type.clone(),
                        length: t.length,
                    })
                })
                .collect();
            let chosen = thumbnail::select(&candidates, width, height, method, output_type)
                .or_else(|| {
                    // None made by this method: the other's best.
                    let other = match method {
                        ThumbnailMethod::Crop => ThumbnailMethod::Scale,
                        ThumbnailMethod::Scale => ThumbnailMethod::Crop,
                    };
                    thumbnail::select(&candidates, width, height, other, output_type)
                });
            if let Some(chosen) = chosen {
                let path = self.store.thumbnail_path(
                    &media_id,
                    chosen.width,
                    chosen.height,
                    &chosen.content_type,
                    chosen.method.as_str(),
                );
                if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                    return Ok(ServedFile {
                        path,
                        content_type: chosen.content_type.clone(),
                    });
                }
            }
            if made_now {
                return Err(MediaError::CannotThumbnail(
                    "no thumbnail could be made".into(),
                ));
            }
            // Never made, or its files are gone: make them now.
            self.make_thumbnails(&media_id, &content_type).await?;
            made_now = true;
        }
    }

    /// [`MediaRepository::make_thumbnails`] at upload: a failure is no
    /// failure of the upload (the file may not be an image at all).
    async fn make_thumbnails_logged(&self, media_id: &MediaId, content_type: &str) {
        if thumbnail::thumbnail_type(content_type).is_none() {
            return;
        }
        if let Err(error) = self.make_thumbnails(media_id, content_type).await {
            tracing::info!(media_id = %media_id, %error, "no thumbnails for this upload");
        }
    }

    /// Makes and stores the configured thumbnails of `media_id`, decoding it
    /// on a blocking thread (at most [`CONCURRENT_THUMBNAILING`] at once).
    async fn make_thumbnails(&self, media_id: &MediaId, content_type: &str) -> MediaResult<()> {
        let output_type = thumbnail::thumbnail_type(content_type)
            .ok_or_else(|| MediaError::CannotThumbnail("not an image".into()))?;
        let _permit = self
            .thumbnailing
            .acquire()
            .await
            .map_err(|_| MediaError::CannotThumbnail("thumbnailer closed".into()))?;
        let source = self.store.content_path(media_id);
        let sizes = self.config.thumbnail_sizes.clone();
        let max_pixels = self.config.max_image_pixels.0;
        let made = tokio::task::spawn_blocking(move || {
            thumbnail::make_thumbnails(&source, &sizes, max_pixels, output_type)
        })
        .await
        .map_err(|e| MediaError::CannotThumbnail(format!("thumbnailer failed: {e}")))?
        .map_err(|error| match error {
            ThumbnailError::TooLarge { .. } => MediaError::TooLargeToThumbnail(error.to_string()),
            other => MediaError::CannotThumbnail(other.to_string()),
        })?;
        for thumbnail in made {
            let path = self.store.thumbnail_path(
                media_id,
                thumbnail.width,
                thumbnail.height,
                thumbnail.content_type,
                thumbnail.method.as_str(),
            );
            let mut file = self.store.temp_file().await?;
            file.write_all(&thumbnail.bytes).await?;
            match file.persist(&path).await {
                // Made by another request at the same time: the same image.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
            crate::storage::media::insert_thumbnail(
                &self.pool,
                media_id.as_str(),
                &crate::storage::media::Thumbnail {
                    width: thumbnail.width,
                    height: thumbnail.height,
                    method: thumbnail.method.as_str().to_owned(),
                    content_type: thumbnail.content_type.to_owned(),
                    length: length_i64(thumbnail.bytes.len() as u64),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes an item: its row, its file and its thumbnails. `false` when
    /// there was no such item.
    pub async fn delete(&self, media_id: &MediaId) -> MediaResult<bool> {
        let existed = crate::storage::media::delete(&self.pool, media_id.as_str()).await?;
        self.store.remove(media_id).await?;
        Ok(existed)
    }
}

/// Whether a created media id waited for its content past its expiry.
fn is_expired(media: &LocalMedia, now_ms: i64) -> bool {
    !media.is_uploaded() && media.unused_expires_at.is_some_and(|at| at <= now_ms)
}

/// The stored type, or `application/octet-stream` without one.
fn content_type_of(media: &LocalMedia) -> String {
    media
        .content_type
        .clone()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_owned())
}

fn is_animatable(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("image/gif") || essence.eq_ignore_ascii_case("image/webp")
}

fn length_i64(length: u64) -> i64 {
    i64::try_from(length).unwrap_or(i64::MAX)
}
