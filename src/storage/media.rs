//! The media repository's metadata (`local_media`, `local_media_thumbnails`,
//! migration 0021). The bytes live in the media store on disk
//! ([`crate::media::store`]); a row here says who uploaded an item, what it
//! is, and which thumbnails exist of it.

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::StorageResult;

/// One media item as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalMedia {
    pub media_id: String,
    pub user_id: String,
    pub created_ts: i64,
    pub content_type: Option<String>,
    pub upload_name: Option<String>,
    /// `None` while an asynchronous upload waits for its content.
    pub media_length: Option<i64>,
    pub unused_expires_at: Option<i64>,
    pub authenticated: bool,
    pub quarantined_by: Option<String>,
}

impl LocalMedia {
    pub fn is_uploaded(&self) -> bool {
        self.media_length.is_some()
    }
}

/// What an upload stores once its bytes are in place.
#[derive(Debug, Clone)]
pub struct UploadedContent<'a> {
    pub media_id: &'a str,
    pub user_id: &'a str,
    pub content_type: &'a str,
    pub upload_name: Option<&'a str>,
    pub media_length: i64,
    pub sha256: &'a str,
    pub authenticated: bool,
    pub now_ms: i64,
}

/// A thumbnail of a media item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    /// `crop` or `scale`.
    pub method: String,
    pub content_type: String,
    pub length: i64,
}

const MEDIA_COLUMNS: &str = "media_id, user_id, created_ts, content_type, upload_name, \
     media_length, unused_expires_at, authenticated, quarantined_by";

fn local_media(row: &Row) -> LocalMedia {
    LocalMedia {
        media_id: row.get(0),
        user_id: row.get(1),
        created_ts: row.get(2),
        content_type: row.get(3),
        upload_name: row.get(4),
        media_length: row.get(5),
        unused_expires_at: row.get(6),
        authenticated: row.get(7),
        quarantined_by: row.get(8),
    }
}

/// Stores a media item uploaded in one request.
pub async fn insert_uploaded(pool: &Pool, content: &UploadedContent<'_>) -> StorageResult<()> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "INSERT INTO local_media (media_id, user_id, created_ts, content_type, upload_name, \
             media_length, sha256, authenticated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &content.media_id,
                &content.user_id,
                &content.now_ms,
                &content.content_type,
                &content.upload_name,
                &content.media_length,
                &content.sha256,
                &content.authenticated,
            ],
        )
        .await?;
    Ok(())
}

/// Reserves a media id for an asynchronous upload by `user_id`.
pub async fn insert_pending(
    pool: &Pool,
    media_id: &str,
    user_id: &str,
    now_ms: i64,
    unused_expires_at: i64,
    authenticated: bool,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO local_media (media_id, user_id, created_ts, unused_expires_at, \
             authenticated) VALUES ($1, $2, $3, $4, $5)",
            &[
                &media_id,
                &user_id,
                &now_ms,
                &unused_expires_at,
                &authenticated,
            ],
        )
        .await?;
    Ok(())
}

/// Fills in the content of a pending media id. `false` when it was no
/// longer pending (another request uploaded it first).
pub async fn complete_pending(pool: &Pool, content: &UploadedContent<'_>) -> StorageResult<bool> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE local_media SET content_type = $3, upload_name = $4, media_length = $5, \
             sha256 = $6 WHERE media_id = $1 AND user_id = $2 AND media_length IS NULL",
            &[
                &content.media_id,
                &content.user_id,
                &content.content_type,
                &content.upload_name,
                &content.media_length,
                &content.sha256,
            ],
        )
        .await?;
    Ok(updated == 1)
}

pub async fn get(pool: &Pool, media_id: &str) -> StorageResult<Option<LocalMedia>> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {MEDIA_COLUMNS} FROM local_media WHERE media_id = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&statement, &[&media_id])
        .await?
        .as_ref()
        .map(local_media))
}

/// How many asynchronous uploads of `user_id` wait for content and have
/// not expired, and when the first of them expires.
pub async fn count_pending(
    pool: &Pool,
    user_id: &str,
    now_ms: i64,
) -> StorageResult<(i64, Option<i64>)> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT COUNT(*), MIN(unused_expires_at) FROM local_media \
             WHERE user_id = $1 AND media_length IS NULL AND unused_expires_at > $2",
            &[&user_id, &now_ms],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The bytes `user_id` has uploaded, for the quota.
pub async fn uploaded_size(pool: &Pool, user_id: &str) -> StorageResult<i64> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT COALESCE(SUM(media_length), 0)::BIGINT FROM local_media WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn thumbnails(pool: &Pool, media_id: &str) -> StorageResult<Vec<Thumbnail>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT width, height, method, content_type, length FROM local_media_thumbnails \
             WHERE media_id = $1",
            &[&media_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Thumbnail {
            width: u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
            height: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
            method: row.get(2),
            content_type: row.get(3),
            length: row.get(4),
        })
        .collect())
}

/// Records a thumbnail whose file is in place. Made twice (two instances
/// thumbnailing at once), it is recorded once.
pub async fn insert_thumbnail(
    pool: &Pool,
    media_id: &str,
    thumbnail: &Thumbnail,
) -> StorageResult<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO local_media_thumbnails (media_id, width, height, method, content_type, \
             length) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                &media_id,
                &i32::try_from(thumbnail.width).unwrap_or(i32::MAX),
                &i32::try_from(thumbnail.height).unwrap_or(i32::MAX),
                &thumbnail.method,
                &thumbnail.content_type,
                &thumbnail.length,
            ],
        )
        .await?;
    Ok(())
}

/// Quarantines one item; `false` when there is no such item.
pub async fn quarantine(pool: &Pool, media_id: &str, by: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE local_media SET quarantined_by = $2 WHERE media_id = $1",
            &[&media_id, &by],
        )
        .await?;
    Ok(updated == 1)
}

/// Quarantines every item of `user_id` not quarantined yet; how many.
pub async fn quarantine_user(pool: &Pool, user_id: &str, by: &str) -> StorageResult<u64> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE local_media SET quarantined_by = $2 \
             WHERE user_id = $1 AND quarantined_by IS NULL",
            &[&user_id, &by],
        )
        .await?)
}

/// The media ids of `user_id`.
pub async fn media_ids_of_user(pool: &Pool, user_id: &str) -> StorageResult<Vec<String>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT media_id FROM local_media WHERE user_id = $1 ORDER BY created_ts",
            &[&user_id],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Deletes one item's rows (its thumbnails' with it); `false` when there
/// was no such item.
pub async fn delete(pool: &Pool, media_id: &str) -> StorageResult<bool> {
    let client = pool.get().await?;
    let deleted = client
        .execute("DELETE FROM local_media WHERE media_id = $1", &[&media_id])
        .await?;
    Ok(deleted == 1)
}
