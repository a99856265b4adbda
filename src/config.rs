//! The homeserver configuration: one YAML file read with figment, every key
//! overridable by a `LATTICE__...` environment variable (`__` separates nesting
//! levels: `LATTICE__DATABASE__URL`). Unknown keys and bad values stop start-up
//! with one line naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::{
    providers::{Env, Format, Yaml},
    Figment,
};
use serde::Deserialize;

use crate::roles::Role;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The domain part of every user id and room alias on this server.
    pub server_name: String,
    /// `ed25519 <key version> <unpadded base64 seed>`, the format Synapse uses.
    pub signing_key: String,
    /// Address the HTTP listener binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL clients reach this server at; advertised in `.well-known`.
    #[serde(default)]
    pub public_baseurl: Option<String>,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub enable_registration: bool,
    /// Registration needs a token an admin made
    /// (`/_lattice/admin/v1/registration_tokens`): the
    /// `m.login.registration_token` stage (Synapse's key).
    #[serde(default)]
    pub registration_requires_token: bool,
    /// Who runs this server and where its users find help, served at
    /// `/.well-known/matrix/support`; unset, that answers 404.
    #[serde(default)]
    pub support: Option<SupportConfig>,
    #[serde(default)]
    pub registration_shared_secret: Option<String>,
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    /// A tracing filter directive, such as `info` or `lattice=debug,info`.
    #[serde(default = "default_log")]
    pub log: String,
    /// Room version given to rooms created without an explicit one.
    #[serde(default = "default_room_version")]
    pub default_room_version: String,
    /// Where each instance of a split deployment listens (Synapse's key).
    #[serde(default)]
    pub instance_map: BTreeMap<String, InstanceLocation>,
    /// Which instances write each stream (Synapse's key); a string or a list.
    #[serde(default)]
    pub stream_writers: BTreeMap<String, OneOrMany>,
    /// Instances running pushers, sharded by user.
    #[serde(default)]
    pub pusher_instances: Vec<String>,
    /// Instances sending federation, sharded by destination.
    #[serde(default)]
    pub federation_sender_instances: Vec<String>,
    /// The one instance running periodic jobs.
    #[serde(default)]
    pub run_background_tasks_on: Option<String>,
    /// Shared secret authenticating mailbox and replication messages (HMAC):
    /// at least [`MIN_REPLICATION_SECRET_BYTES`] bytes, required by a split
    /// instance ([`Config::is_split`]).
    #[serde(default)]
    pub replication_secret: Option<String>,
    /// How long a request waits for a writer (possibly on another instance)
    /// before it fails with `503 M_UNAVAILABLE`.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Rooms whose head (latest event and current state) each events
    /// writer keeps in memory; the least recently written are forgotten and
    /// read again from the database when next written.
    #[serde(default = "default_event_writer_cached_rooms")]
    pub event_writer_cached_rooms: usize,
    /// Threads answering HTTP requests; default: one per core. Instances
    /// sharing a machine can take fewer each.
    #[serde(default)]
    pub http_workers: Option<usize>,
    #[serde(default)]
    pub typing: TypingConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub shards: ShardsConfig,
    #[serde(default)]
    pub replication: ReplicationSettings,
    #[serde(default)]
    pub media: MediaConfig,
    /// How long the access token of a client that takes refresh tokens
    /// lasts (Synapse's key; default 5 minutes). Other clients' tokens
    /// never expire.
    #[serde(default = "default_refreshable_access_token_lifetime")]
    pub refreshable_access_token_lifetime: Duration,
    /// `POST /login/get_token` and `m.login.token` (Synapse's key).
    #[serde(default)]
    pub login_via_existing_session: LoginViaExistingSessionConfig,
    /// TURN servers given to VoIP clients (`GET /voip/turnServer`), with
    /// Synapse's keys: `turn_shared_secret` makes time-limited credentials
    /// (the TURN REST API scheme coturn's `use-auth-secret` checks),
    /// otherwise `turn_username` and `turn_password` are given as they are.
    #[serde(default)]
    pub turn_uris: Vec<String>,
    #[serde(default)]
    pub turn_shared_secret: Option<String>,
    #[serde(default)]
    pub turn_username: Option<String>,
    #[serde(default)]
    pub turn_password: Option<String>,
    /// How long credentials made from `turn_shared_secret` last.
    #[serde(default = "default_turn_user_lifetime")]
    pub turn_user_lifetime: Duration,
}

/// `/.well-known/matrix/support`, as the spec names its fields: at least
/// one of `contacts` and `support_page`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupportConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<SupportContact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_page: Option<String>,
}

/// One way to reach the server's administrators: a Matrix id (of any
/// server) or an email address, or both, for a role (`m.role.admin`,
/// `m.role.security`, or a namespaced one of the admins' own).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupportContact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    pub role: String,
}

impl SupportConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "support",
            message,
        };
        if self.contacts.is_empty() && self.support_page.is_none() {
            return Err(invalid("needs `contacts` or `support_page`".into()));
        }
        for contact in &self.contacts {
            if contact.matrix_id.is_none() && contact.email_address.is_none() {
                return Err(invalid(format!(
                    "the contact of role `{}` needs a `matrix_id` or an `email_address`",
                    contact.role
                )));
            }
            if let Some(matrix_id) = &contact.matrix_id {
                if ruma::UserId::parse(matrix_id.as_str()).is_err() {
                    return Err(invalid(format!("`{matrix_id}` is not a Matrix user id")));
                }
            }
            if contact.role.is_empty() {
                return Err(invalid("a contact's `role` is empty".into()));
            }
        }
        if let Some(page) = &self.support_page {
            if url::Url::parse(page).is_err() {
                return Err(invalid(format!("support_page `{page}` is not a URL")));
            }
        }
        Ok(())
    }
}

/// Signing in a new device from one already signed in: a signed-in user
/// asks for a short-lived login token (`POST /login/get_token`), which
/// `POST /login` with `m.login.token` takes once. Synapse's key names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginViaExistingSessionConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Whether asking for a token needs the password again.
    #[serde(default = "default_true")]
    pub require_ui_auth: bool,
    /// How long a login token lasts.
    #[serde(default = "default_login_token_timeout")]
    pub token_timeout: Duration,
}

impl Default for LoginViaExistingSessionConfig {
    fn default() -> Self {
        LoginViaExistingSessionConfig {
            enabled: false,
            require_ui_auth: true,
            token_timeout: default_login_token_timeout(),
        }
    }
}

fn default_refreshable_access_token_lifetime() -> Duration {
    Duration(5 * 60 * 1000)
}
fn default_login_token_timeout() -> Duration {
    Duration(5 * 60 * 1000)
}
fn default_turn_user_lifetime() -> Duration {
    Duration(60 * 60 * 1000)
}

/// A length of time in milliseconds, written as a number of milliseconds
/// or as Synapse writes durations: `500ms`, `30s`, `5m`, `1h`, `2d`, `1w`, `1y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ByteSizeText")]
pub struct Duration(pub u64);

impl TryFrom<ByteSizeText> for Duration {
    type Error = String;

    fn try_from(text: ByteSizeText) -> Result<Self, String> {
        match text {
            ByteSizeText::Number(ms) => Ok(Duration(ms)),
            ByteSizeText::Text(text) => Duration::parse(&text),
        }
    }
}

impl Duration {
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits.parse().map_err(|_| {
            format!("`{text}` is not a duration (such as 300000, 30s, 5m, 1h or 2d)")
        })?;
        let factor: u64 = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1000,
            "m" => 60 * 1000,
            "h" => 60 * 60 * 1000,
            "d" => 24 * 60 * 60 * 1000,
            "w" => 7 * 24 * 60 * 60 * 1000,
            "y" => 365 * 24 * 60 * 60 * 1000,
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` (ms, s, m, h, d, w or y)"
                ))
            }
        };
        number
            .checked_mul(factor)
            .map(Duration)
            .ok_or_else(|| format!("`{text}` is too long"))
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }
}

/// The media repository (`/_matrix/media/*`, `/_matrix/client/v1/media/*`),
/// served by the instances with the `media` role. Synapse's key names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Where uploads and thumbnails are kept. Every instance with the
    /// `media` role must see the same directory (one machine, or a shared
    /// file system), as Synapse's media workers share theirs.
    #[serde(default = "default_media_store_path")]
    pub media_store_path: PathBuf,
    /// The largest upload accepted (`413 M_TOO_LARGE` beyond): bytes, or a
    /// size such as `50M`.
    #[serde(default = "default_max_upload_size")]
    pub max_upload_size: ByteSize,
    /// Images with more pixels than this are not decoded (no thumbnail):
    /// a count, or a size such as `32M`.
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: ByteSize,
    /// The thumbnails made of each image, at upload.
    #[serde(default = "default_thumbnail_sizes")]
    pub thumbnail_sizes: Vec<crate::media::thumbnail::ThumbnailSize>,
    /// The most bytes one user may have uploaded in all; none: no limit.
    #[serde(default)]
    pub media_upload_quota: Option<ByteSize>,
    /// On: media uploaded from now on is served only by the authenticated
    /// endpoints (`/_matrix/client/v1/media/*`); the legacy
    /// `/_matrix/media/v3/download` and `/thumbnail` answer only for media
    /// uploaded while it was off (Synapse's cut-over).
    #[serde(default = "default_true")]
    pub enable_authenticated_media: bool,
    /// How long a media id from `POST /_matrix/media/v1/create` waits for
    /// its content.
    #[serde(default = "default_unused_expiration_time_ms")]
    pub unused_expiration_time_ms: u64,
    /// How many created media ids one user may have waiting for content.
    #[serde(default = "default_max_pending_media_uploads")]
    pub max_pending_media_uploads: i64,
    /// Whether `GET /_matrix/client/v1/media/preview_url` fetches pages
    /// (off: the endpoint answers 404 `M_UNRECOGNIZED`, as Synapse's).
    #[serde(default)]
    pub url_preview_enabled: bool,
    /// Addresses URL previews never fetch from (CIDR ranges).
    #[serde(default = "crate::media::preview::default_ip_range_blacklist")]
    pub url_preview_ip_range_blacklist: Vec<crate::media::preview::IpRange>,
    /// Exceptions to the blacklist.
    #[serde(default)]
    pub url_preview_ip_range_whitelist: Vec<crate::media::preview::IpRange>,
    /// The most bytes a URL preview reads of a page or image.
    #[serde(default = "default_max_spider_size")]
    pub max_spider_size: ByteSize,
    /// The longest one URL preview may take, redirects and its image included.
    #[serde(default = "default_url_preview_timeout_ms")]
    pub url_preview_timeout_ms: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            media_store_path: default_media_store_path(),
            max_upload_size: default_max_upload_size(),
            max_image_pixels: default_max_image_pixels(),
            thumbnail_sizes: default_thumbnail_sizes(),
            media_upload_quota: None,
            enable_authenticated_media: true,
            unused_expiration_time_ms: default_unused_expiration_time_ms(),
            max_pending_media_uploads: default_max_pending_media_uploads(),
            url_preview_enabled: false,
            url_preview_ip_range_blacklist: crate::media::preview::default_ip_range_blacklist(),
            url_preview_ip_range_whitelist: Vec::new(),
            max_spider_size: default_max_spider_size(),
            url_preview_timeout_ms: default_url_preview_timeout_ms(),
        }
    }
}

fn default_media_store_path() -> PathBuf {
    PathBuf::from("./var/media_store")
}
fn default_max_upload_size() -> ByteSize {
    ByteSize(50 * 1024 * 1024)
}
fn default_max_image_pixels() -> ByteSize {
    ByteSize(32 * 1024 * 1024)
}
fn default_max_spider_size() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}
fn default_url_preview_timeout_ms() -> u64 {
    20_000
}
fn default_unused_expiration_time_ms() -> u64 {
    24 * 3600 * 1000
}
fn default_max_pending_media_uploads() -> i64 {
    5
}
/// Synapse's defaults.
fn default_thumbnail_sizes() -> Vec<crate::media::thumbnail::ThumbnailSize> {
    use crate::media::thumbnail::{ThumbnailMethod, ThumbnailSize};
    [
        (32, 32, ThumbnailMethod::Crop),
        (96, 96, ThumbnailMethod::Crop),
        (320, 240, ThumbnailMethod::Scale),
        (640, 480, ThumbnailMethod::Scale),
        (800, 600, ThumbnailMethod::Scale),
    ]
    .into_iter()
    .map(|(width, height, method)| ThumbnailSize {
        width,
        height,
        method,
    })
    .collect()
}

impl MediaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_upload_size.0 == 0 {
            return Err(ConfigError::Invalid {
                key: "media.max_upload_size",
                message: "must be at least 1".into(),
            });
        }
        if self
            .thumbnail_sizes
            .iter()
            .any(|size| size.width == 0 || size.height == 0)
        {
            return Err(ConfigError::Invalid {
                key: "media.thumbnail_sizes",
                message: "a width or height is 0".into(),
            });
        }
        Ok(())
    }
}

/// A number of bytes (or pixels), written as a number or as Synapse writes
/// sizes: `50M`, `10K`, `1G` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ByteSizeText")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSizeText {
    Number(u64),
    Text(String),
}

impl TryFrom<ByteSizeText> for ByteSize {
    type Error = String;

    fn try_from(text: ByteSizeText) -> Result<Self, String> {
        match text {
            ByteSizeText::Number(bytes) => Ok(ByteSize(bytes)),
            ByteSizeText::Text(text) => ByteSize::parse(&text),
        }
    }
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let (digits, unit) = match text.char_indices().last() {
            Some((at, unit)) if unit.is_ascii_alphabetic() => (&text[..at], Some(unit)),
            _ => (text, None),
        };
        let number: u64 = digits
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a size (such as 1048576, 512K, 50M or 1G)"))?;
        let factor: u64 = match unit.map(|u| u.to_ascii_uppercase()) {
            None => 1,
            Some('K') => 1024,
            Some('M') => 1024 * 1024,
            Some('G') => 1024 * 1024 * 1024,
            Some(other) => return Err(format!("unknown size unit `{other}` (K, M or G)")),
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

/// Presence (`/presence/{userId}/status`, `m.presence` in `/sync`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// Off: the endpoints still answer (a `PUT` is accepted and ignored, a
    /// `GET` says `offline`, as Synapse), `/sync` sends no presence and
    /// nothing is written.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { enabled: true }
    }
}

/// Typing notifications (`PUT /rooms/{roomId}/typing/{userId}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypingConfig {
    /// The longest one request may show a user typing: a longer `timeout` is
    /// cut to it (Synapse's servlet cuts at 120 s).
    #[serde(default = "default_typing_max_timeout_ms")]
    pub max_timeout_ms: u64,
}

impl Default for TypingConfig {
    fn default() -> Self {
        TypingConfig {
            max_timeout_ms: default_typing_max_timeout_ms(),
        }
    }
}

/// Shard ownership (`shards`): how the owners of the event persisters'
/// shards keep them (`crate::shards`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsConfig {
    /// How often each instance renews its membership and reads who owns
    /// which shard.
    #[serde(default = "default_shards_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A writer not heard of for this long is dead: its shards are taken
    /// over by the live ones.
    #[serde(default = "default_shards_lease_timeout_ms")]
    pub lease_timeout_ms: u64,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            heartbeat_ms: default_shards_heartbeat_ms(),
            lease_timeout_ms: default_shards_lease_timeout_ms(),
        }
    }
}

/// How a split instance watches its replication (`replication`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSettings {
    /// How often the stall watchdog (`streams::stall`) compares how far
    /// this instance has heard each stream writer with what PostgreSQL
    /// has of it; a writer PostgreSQL stays ahead of for a whole check is
    /// stalled, and what it wrote is read back from PostgreSQL.
    #[serde(default = "default_stall_check_ms")]
    pub stall_check_ms: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            stall_check_ms: default_stall_check_ms(),
        }
    }
}

fn default_stall_check_ms() -> u64 {
    2_000
}

fn default_shards_heartbeat_ms() -> u64 {
    2_000
}

fn default_shards_lease_timeout_ms() -> u64 {
    10_000
}

fn default_typing_max_timeout_ms() -> u64 {
    120_000
}

fn default_write_timeout_ms() -> u64 {
    30_000
}

fn default_event_writer_cached_rooms() -> usize {
    10_000
}

/// An `instance_map` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceLocation {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
}

/// A value that may be written as one string or as a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}

/// The instance name of the process started without `--instance`.
pub const MAIN_INSTANCE: &str = "main";

/// The shortest `replication_secret` accepted: as many bytes as the HMAC's
/// output, so the secret is not the weaker part.
pub const MIN_REPLICATION_SECRET_BYTES: usize = 32;

/// A fresh random `replication_secret`: 32 random bytes, in hex.
pub fn generate_replication_secret() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A PostgreSQL connection URL: `postgresql://user:password@host:port/dbname`.
    pub url: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL; only needed when instances are split.
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix of every Redis key and the replication channel; the server
    /// name by default. Deployments sharing one Redis need different ones.
    #[serde(default)]
    pub prefix: Option<String>,
    /// For `rediss://`: a PEM file of the certificates to trust (a private
    /// CA) instead of the public roots built in (Mozilla's, via webpki).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// For `rediss://` to a server that checks clients: this instance's PEM
    /// certificate chain, with `tls_client_key_file`.
    #[serde(default)]
    pub tls_client_certificate_file: Option<PathBuf>,
    /// The PEM private key of `tls_client_certificate_file`.
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Sustained requests per second allowed to one user (or one IP address for
    /// requests without an access token).
    #[serde(default = "default_rate_per_second")]
    pub per_second: f64,
    /// How many requests may arrive at once before the sustained rate applies.
    #[serde(default = "default_rate_burst")]
    pub burst: u32,
    /// Failed logins per account (Synapse's `rc_login.failed_attempts`).
    #[serde(default)]
    pub login_failed_attempts: LoginFailuresConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            per_second: default_rate_per_second(),
            burst: default_rate_burst(),
            login_failed_attempts: LoginFailuresConfig::default(),
        }
    }
}

/// How many failed logins one account may take: `burst` at once, then
/// `per_second`. Further attempts, even with the right password and from any
/// address, answer `429` until the bucket refills; a success does not refill
/// it (as in Synapse).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFailuresConfig {
    #[serde(default = "default_login_failures_per_second")]
    pub per_second: f64,
    #[serde(default = "default_login_failures_burst")]
    pub burst: u32,
}

impl Default for LoginFailuresConfig {
    fn default() -> Self {
        LoginFailuresConfig {
            per_second: default_login_failures_per_second(),
            burst: default_login_failures_burst(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8008))
}
fn default_log() -> String {
    "info".into()
}
fn default_room_version() -> String {
    "12".into()
}
fn default_pool_size() -> usize {
    16
}
fn default_true() -> bool {
    true
}
fn default_rate_per_second() -> f64 {
    20.0
}
fn default_rate_burst() -> u32 {
    100
}
fn default_login_failures_per_second() -> f64 {
    0.17
}
fn default_login_failures_burst() -> u32 {
    3
}

/// A configuration that could not be loaded; its message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Figment(String),
    #[error("config: key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// Reads `path` (if given) and the `LATTICE__` environment.
    pub fn load(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Figment(format!(
                    "file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Yaml::file(path));
        }
        figment = figment.merge(Env::prefixed("LATTICE__").split("__"));
        Self::from_figment(figment)
    }

    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|error| {
            // figment reports one error per problem; the first names the key.
            let first = error.into_iter().next();
            ConfigError::Figment(first.map(|e| e.to_string()).unwrap_or_default())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if ruma::ServerName::parse(&self.server_name).is_err() {
            return Err(ConfigError::Invalid {
                key: "server_name",
                message: format!("`{}` is not a valid server name", self.server_name),
            });
        }
        crate::signing_key::SigningKey::parse(&self.signing_key).map_err(|message| {
            ConfigError::Invalid {
                key: "signing_key",
                message,
            }
        })?;
        if crate::rooms::version::parse_supported(&self.default_room_version).is_none() {
            return Err(ConfigError::Invalid {
                key: "default_room_version",
                message: format!(
                    "room version `{}` is not supported (10, 11, 12 are)",
                    self.default_room_version
                ),
            });
        }
        if self.database.pool_size == 0 {
            return Err(ConfigError::Invalid {
                key: "database.pool_size",
                message: "must be at least 1".into(),
            });
        }
        if self.http_workers == Some(0) {
            return Err(ConfigError::Invalid {
                key: "http_workers",
                message: "must be at least 1".into(),
            });
        }
        if self.rate_limits.per_second.is_nan() || self.rate_limits.per_second <= 0.0 {
            return Err(ConfigError::Invalid {
                key: "rate_limits.per_second",
                message: "must be a positive number".into(),
            });
        }
        let failures = &self.rate_limits.login_failed_attempts;
        if failures.per_second.is_nan() || failures.per_second <= 0.0 {
            return Err(ConfigError::Invalid {
                key: "rate_limits.login_failed_attempts.per_second",
                message: "must be a positive number".into(),
            });
        }
        self.media.validate()?;
        if let Some(support) = &self.support {
            support.validate()?;
        }
        self.validate_topology()?;
        if let Some(secret) = &self.replication_secret {
            if secret.len() < MIN_REPLICATION_SECRET_BYTES {
                return Err(ConfigError::Invalid {
                    key: "replication_secret",
                    message: format!(
                        "is {} bytes long, it must have at least {MIN_REPLICATION_SECRET_BYTES} \
                         (`openssl rand -hex 32` makes one)",
                        secret.len()
                    ),
                });
            }
        }
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::Invalid {
                    key: "redis.url",
                    message: "must start with redis:// or rediss://".into(),
                });
            }
        }
        let redis = &self.redis;
        let tls = redis
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://"));
        for (key, file) in [
            ("redis.tls_ca_file", &redis.tls_ca_file),
            (
                "redis.tls_client_certificate_file",
                &redis.tls_client_certificate_file,
            ),
            ("redis.tls_client_key_file", &redis.tls_client_key_file),
        ] {
            if file.is_some() && !tls {
                return Err(ConfigError::Invalid {
                    key,
                    message: "set, but redis.url is not a rediss:// URL".into(),
                });
            }
        }
        match (
            &redis.tls_client_certificate_file,
            &redis.tls_client_key_file,
        ) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "redis.tls_client_key_file",
                    message: "not set, but redis.tls_client_certificate_file is".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "redis.tls_client_certificate_file",
                    message: "not set, but redis.tls_client_key_file is".into(),
                })
            }
            _ => {}
        }
        Ok(())
    }

    /// The topology keys: every stream known, the right number of writers,
    /// and every instance named either `main` or in `instance_map`.
    fn validate_topology(&self) -> Result<(), ConfigError> {
        let known =
            |instance: &str| instance == MAIN_INSTANCE || self.instance_map.contains_key(instance);
        for (stream, writers) in &self.stream_writers {
            if !crate::streams::registry::configured_streams().any(|spec| spec.name == stream) {
                return Err(ConfigError::Invalid {
                    key: "stream_writers",
                    message: format!(
                        "unknown stream `{stream}` (known: {})",
                        crate::streams::registry::configured_streams()
                            .map(|spec| spec.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            let writers = writers.to_vec();
            if writers.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "stream_writers",
                    message: format!("stream `{stream}` has no writer"),
                });
            }
            if let Some(unknown) = writers.iter().find(|w| !known(w)) {
                return Err(ConfigError::Invalid {
                    key: "stream_writers",
                    message: format!(
                        "writer `{unknown}` of stream `{stream}` is not in instance_map"
                    ),
                });
            }
        }
        for (key, instances) in [
            ("pusher_instances", &self.pusher_instances),
            (
                "federation_sender_instances",
                &self.federation_sender_instances,
            ),
        ] {
            if let Some(unknown) = instances.iter().find(|i| !known(i)) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("instance `{unknown}` is not in instance_map"),
                });
            }
        }
        if let Some(instance) = &self.run_background_tasks_on {
            if !known(instance) {
                return Err(ConfigError::Invalid {
                    key: "run_background_tasks_on",
                    message: format!("instance `{instance}` is not in instance_map"),
                });
            }
        }
        Ok(())
    }

    /// Whether instance `instance` running `roles` is one of several
    /// processes sharing the work: it does not run every role, or it does
    /// not write every event. It then talks to the others through Redis
    /// (mailboxes, replication), authenticated with `replication_secret`;
    /// the monolith needs neither.
    pub fn is_split(&self, instance: &str, roles: &[Role]) -> bool {
        let runs_every_role = Role::ALL.iter().all(|role| roles.contains(role));
        let writes_every_stream = crate::streams::registry::configured_streams().all(|spec| {
            let writers = self.stream_writers(spec.name);
            writers.len() == 1 && writers.iter().any(|writer| writer == instance)
        });
        !(runs_every_role && writes_every_stream)
    }

    /// What a split instance needs ([`Config::is_split`]): Redis, and a
    /// secret so that nobody who reaches Redis can act as an instance.
    pub fn check_split(&self) -> Result<(), ConfigError> {
        if self.redis.url.is_none() {
            return Err(ConfigError::Invalid {
                key: "redis.url",
                message: "not set, but roles or stream writers are spread over several \
                          instances, which talk through Redis"
                    .into(),
            });
        }
        if self.replication_secret.is_none() {
            return Err(ConfigError::Invalid {
                key: "replication_secret",
                message: format!(
                    "not set, but roles or stream writers are spread over several instances, \
                     whose messages it authenticates: set the same random string of at least \
                     {MIN_REPLICATION_SECRET_BYTES} bytes for every instance (`lattice \
                     generate-config` writes one; `openssl rand -hex 32` makes one)"
                ),
            });
        }
        Ok(())
    }

    /// The writers of `stream`: as configured, or `main`.
    pub fn stream_writers(&self, stream: &str) -> Vec<String> {
        self.stream_writers
            .get(stream)
            .map(OneOrMany::to_vec)
            .unwrap_or_else(|| vec![MAIN_INSTANCE.to_owned()])
    }

    /// The prefix of this deployment's Redis keys and replication channel.
    pub fn redis_prefix(&self) -> String {
        self.redis
            .prefix
            .clone()
            .unwrap_or_else(|| self.server_name.clone())
    }

    pub fn public_baseurl(&self) -> String {
        match &self.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned() + "/",
            None => format!("http://{}/", self.listen),
        }
    }
}

/// The contents of the file `path` named by configuration key `key`.
pub fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| ConfigError::Invalid {
        key,
        message: format!("cannot read {}: {error}", path.display()),
    })
}

/// The documented configuration `lattice generate-config` prints, with a
/// fresh `replication_secret`.
pub fn sample(server_name: &str, signing_key: &str) -> String {
    let replication_secret = generate_replication_secret();
    format!(
        r#"# Lattice homeserver configuration.
# Every key can be overridden by an environment variable: LATTICE__<KEY>, with
# `__` between nesting levels (LATTICE__DATABASE__URL=postgresql://...).

# The domain of every user id (@alice:SERVER_NAME) and alias on this server.
# It cannot change once users exist.
server_name: "{server_name}"

# This server's ed25519 signing key (Synapse's format: algorithm, version, seed).
# Keep it secret and never change it: other servers remember it.
signing_key: "{signing_key}"

# Address and port the HTTP listener binds.
listen: "127.0.0.1:8008"

# The URL clients use to reach this server (advertised in .well-known).
# Defaults to http://<listen>/.
# public_baseurl: "https://matrix.example.org/"

database:
  # PostgreSQL connection URL. The database must exist; tables are created at start-up.
  url: "postgresql://lattice@127.0.0.1:5433/lattice"
  # Connections in the pool of each instance.
  pool_size: 16

# Redis is only needed when instances run in several processes.
# redis:
#   # With an ACL user: redis://USER:PASSWORD@HOST:PORT (or redis://:PASSWORD@...
#   # for requirepass); rediss:// for TLS.
#   url: "redis://127.0.0.1:6379"
#   prefix: "example.org"    # keys and replication channel; default: server_name
#   # rediss:// only: trust this CA (PEM) instead of the public roots, and
#   # present a client certificate to a server that asks for one.
#   tls_ca_file: "/etc/lattice/redis-ca.crt"
#   tls_client_certificate_file: "/etc/lattice/redis-client.crt"
#   tls_client_key_file: "/etc/lattice/redis-client.key"

# Whether anyone may create an account through /register.
enable_registration: false
# Whether registering needs a token made by an admin (the m.login.registration_token
# stage; tokens are managed under /_lattice/admin/v1/registration_tokens).
registration_requires_token: false

# Who runs this server and where its users find help, served at
# /.well-known/matrix/support (404 while unset). At least one of `contacts`
# (each with a role and a matrix_id or an email_address) and `support_page`.
# support:
#   contacts:
#     - {{ matrix_id: "@admin:example.org", email_address: "admin@example.org", role: "m.role.admin" }}
#     - {{ email_address: "security@example.org", role: "m.role.security" }}
#   support_page: "https://example.org/support.html"

# Room version for rooms created without one: 10, 11 or 12.
default_room_version: "12"

rate_limits:
  # Requests beyond this rate answer 429 M_LIMIT_EXCEEDED with retry_after_ms.
  enabled: true
  # Sustained requests per second per user (per IP address without a token).
  per_second: 20
  # Requests allowed at once before the sustained rate applies.
  burst: 100
  # Failed logins per account, from any address (Synapse's rc_login.failed_attempts):
  # after `burst` failures, logins to that account (even with the right password)
  # answer 429 until the bucket refills at `per_second`.
  login_failed_attempts:
    per_second: 0.17
    burst: 3

# Threads answering HTTP requests (default: one per core). Several instances
# on one machine can each take fewer, so they do not outnumber its cores.
# http_workers: 2

# Rooms whose latest event and current state each events writer keeps in
# memory; the least recently written are read again when next written.
# event_writer_cached_rooms: 10000

typing:
  # The longest one typing request shows its user typing (a client's `timeout`
  # beyond it is cut to it; without one, 30 s). Synapse's limit.
  max_timeout_ms: 120000

presence:
  # Whether users' presence is tracked and shared (`m.presence` in /sync). Off:
  # the /presence endpoints still answer (PUT is accepted and ignored, GET says
  # offline), /sync sends none and nothing is stored. Shard its writers by user
  # with `stream_writers.presence` (any number of instances).
  enabled: true

# Who owns which shard of the event persisters (rooms are spread over 256
# shards, and the shards over the instances with the `events` role): each
# renews its lease every heartbeat; one not heard of for lease_timeout_ms is
# dead and its shards are taken over by the others. See "Live shards" in the
# README.
shards:
  heartbeat_ms: 2000
  lease_timeout_ms: 10000

# How an instance of a split deployment watches its replication: every
# stall_check_ms it compares how far it has heard each stream writer over Redis
# with what PostgreSQL has of it. A writer PostgreSQL stays ahead of for a whole
# check is stalled (Redis partitioned away, or the writer died before
# publishing): what it wrote is read back from PostgreSQL, so /sync still
# answers with it. See "Replication stalls" in the README. A monolith does not
# use it.
replication:
  stall_check_ms: 2000

# The media repository, served by instances with the `media` role (every
# instance of a monolith). Synapse's key names.
media:
  # Uploads and thumbnails, laid out by media id. Every instance with the
  # media role must see the same directory (a shared file system when they
  # run on several machines).
  media_store_path: "./var/media_store"
  # The largest upload (413 M_TOO_LARGE beyond); bytes or K/M/G.
  max_upload_size: "50M"
  # Images with more pixels than this are never decoded (no thumbnail).
  max_image_pixels: "32M"
  # The thumbnails made of each image (crop: exactly this size; scale: within it).
  thumbnail_sizes:
    - {{ width: 32, height: 32, method: crop }}
    - {{ width: 96, height: 96, method: crop }}
    - {{ width: 320, height: 240, method: scale }}
    - {{ width: 640, height: 480, method: scale }}
    - {{ width: 800, height: 600, method: scale }}
  # The most one user may upload in all (400 M_RESOURCE_LIMIT_EXCEEDED beyond,
  # as Synapse's media_upload_limits); unset: no quota.
  # media_upload_quota: "1G"
  # On: media uploaded from now on is served only through the authenticated
  # /_matrix/client/v1/media endpoints; the legacy /_matrix/media/v3/download
  # and /thumbnail serve only what was uploaded while it was off.
  enable_authenticated_media: true
  # How long a media id from POST /_matrix/media/v1/create waits for its
  # content, and how many such ids one user may have waiting.
  unused_expiration_time_ms: 86400000
  max_pending_media_uploads: 5
  # URL previews (GET /_matrix/client/v1/media/preview_url): the server fetches
  # the pages users link to. Off by default. NOT BUILT YET: the endpoint answers
  # 404 M_UNRECOGNIZED whatever this says; the keys below are read and checked.
  url_preview_enabled: false
  # Addresses previews never fetch from (default: loopback, private, link-local
  # and other special ranges), and exceptions to that list.
  # url_preview_ip_range_blacklist: ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]
  # url_preview_ip_range_whitelist: []
  # The most a preview reads of one page.
  max_spider_size: "10M"

# Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
log: "info"

# Split deployments (several `lattice serve` processes sharing the database;
# Synapse's key names). A monolith needs none of this.
#
# instance_map:            # where each instance listens
#   main: {{ host: "127.0.0.1", port: 8008 }}
#   events1: {{ host: "127.0.0.1", port: 8010 }}
# stream_writers:          # which instances write each stream (default: main)
#   events: [events1]      # events, typing, receipts, presence and device_lists may have several
#   typing: main
# pusher_instances: [main]
# federation_sender_instances: [main]
# run_background_tasks_on: main

# The secret every instance of a split deployment shares (the same in each):
# mailbox and replication messages carry its HMAC, so that nobody who can reach
# Redis can act as an instance. A split refuses to start without one; at least
# 32 bytes (`openssl rand -hex 32`). A monolith does not use it.
replication_secret: "{replication_secret}"
"#
    )
}

/// What `lattice generate-config`'s flags write into the sample in place of
/// its defaults: `make run` asks for its development server this way, so the
/// file it writes is the server it runs.
#[derive(Debug, Clone, Default)]
pub struct SampleSettings {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub enable_registration: bool,
    pub disable_rate_limits: bool,
}

/// The `sample` text with `settings` written over the values of their keys
/// (comments kept). A key the sample no longer has is an error, not a
/// setting silently left out.
pub fn sample_with_settings(
    sample: &str,
    settings: &SampleSettings,
) -> Result<String, ConfigError> {
    let mut text = sample.to_owned();
    if let Some(listen) = settings.listen {
        text = set_sample_value(&text, None, "listen", &format!("\"{listen}\""))?;
    }
    if let Some(url) = &settings.database_url {
        let quoted = serde_json::to_string(url).map_err(|e| ConfigError::Invalid {
            key: "database.url",
            message: e.to_string(),
        })?;
        text = set_sample_value(&text, Some("database"), "url", &quoted)?;
    }
    if settings.enable_registration {
        text = set_sample_value(&text, None, "enable_registration", "true")?;
    }
    if settings.disable_rate_limits {
        text = set_sample_value(&text, Some("rate_limits"), "enabled", "false")?;
    }
    Ok(text)
}

/// Replaces the value of `key:` at the top level of `text`, or in the
/// top-level mapping `section:`.
fn set_sample_value(
    text: &str,
    section: Option<&str>,
    key: &'static str,
    value: &str,
) -> Result<String, ConfigError> {
    let mut current_section: Option<&str> = None;
    let mut replaced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        let indented = line.starts_with(' ');
        if !indented && !line.starts_with('#') && !line.trim().is_empty() {
            current_section = line.strip_suffix(':');
        }
        let (indent, rest) = line.split_at(line.len() - line.trim_start().len());
        let wanted = match section {
            None => !indented,
            Some(section) => indented && current_section == Some(section),
        };
        match rest.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            Some(_) if wanted && !replaced => {
                lines.push(format!("{indent}{key}: {value}"));
                replaced = true;
            }
            _ => lines.push(line.to_owned()),
        }
    }
    if !replaced {
        return Err(ConfigError::Invalid {
            key,
            message: "is missing from the sample configuration".into(),
        });
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figment(yaml: &str) -> Figment {
        Figment::new().merge(Yaml::string(yaml))
    }

    fn base() -> String {
        sample(
            "example.org",
            &crate::signing_key::SigningKey::generate().to_config_string(),
        )
    }

    #[test]
    fn durations_read_as_synapse_writes_them() {
        assert_eq!(Duration::parse("300000"), Ok(Duration(300_000)));
        assert_eq!(Duration::parse("250ms"), Ok(Duration(250)));
        assert_eq!(Duration::parse("30s"), Ok(Duration(30_000)));
        assert_eq!(Duration::parse("5m"), Ok(Duration(300_000)));
        assert_eq!(Duration::parse("1h"), Ok(Duration(3_600_000)));
        assert_eq!(Duration::parse("2d"), Ok(Duration(172_800_000)));
        assert!(Duration::parse("5 minutes").is_err());
        assert!(Duration::parse("m").is_err());
        assert!(Duration::parse("99999999999999999y").is_err());
    }

    #[test]
    fn generate_config_settings_are_what_the_file_says() {
        let settings = SampleSettings {
            listen: Some("127.0.0.1:8123".parse().expect("address")),
            database_url: Some("postgresql://lattice@127.0.0.1:5433/dev".into()),
            enable_registration: true,
            disable_rate_limits: true,
        };
        let sample = base();
        let text = sample_with_settings(&sample, &settings).expect("every key is in the sample");
        let config = Config::from_figment(figment(&text)).expect("loads");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8123");
        assert_eq!(
            config.database.url,
            "postgresql://lattice@127.0.0.1:5433/dev"
        );
        assert!(config.enable_registration);
        assert!(!config.rate_limits.enabled);
        // Without settings, the sample's own values.
        let plain = sample_with_settings(&sample, &SampleSettings::default()).expect("sample");
        assert_eq!(plain, sample);
        let config = Config::from_figment(figment(&plain)).expect("loads");
        assert!(!config.enable_registration);
        assert!(config.rate_limits.enabled);
    }

    #[test]
    fn the_sample_loads() {
        let config = Config::from_figment(figment(&base())).expect("sample config must load");
        assert_eq!(config.server_name, "example.org");
        assert!(config.rate_limits.enabled);
        let failures = &config.rate_limits.login_failed_attempts;
        assert_eq!((failures.per_second, failures.burst), (0.17, 3));
        assert_eq!(config.replication.stall_check_ms, 2000);
    }

    #[test]
    fn support_needs_a_way_to_reach_someone() {
        let good =
            "support: { contacts: [{ matrix_id: \"@admin:example.org\", role: m.role.admin }] }";
        let config =
            Config::from_figment(figment(&format!("{}\n{good}\n", base()))).expect("valid");
        let support = config.support.expect("support");
        assert_eq!(
            serde_json::to_value(&support).expect("json"),
            serde_json::json!({ "contacts": [{ "matrix_id": "@admin:example.org", "role": "m.role.admin" }] })
        );
        let cases = [
            ("support: {}", "needs `contacts` or `support_page`"),
            (
                "support: { contacts: [{ role: m.role.admin }] }",
                "needs a `matrix_id`",
            ),
            (
                "support: { contacts: [{ matrix_id: admin, role: m.role.admin }] }",
                "not a Matrix user id",
            ),
            ("support: { support_page: \"not a url\" }", "is not a URL"),
            ("support: { contacts: [{ email_address: a@b.c }] }", "role"),
        ];
        for (yaml, expected) in cases {
            let error = Config::from_figment(figment(&format!("{}\n{yaml}\n", base())))
                .expect_err("must be refused")
                .to_string();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        let yaml = base() + "\nnot_a_key: 3\n";
        let error = Config::from_figment(figment(&yaml))
            .expect_err("must be refused")
            .to_string();
        assert!(error.contains("not_a_key"), "{error}");
    }

    #[test]
    fn topology_mistakes_are_named() {
        let cases = [
            ("stream_writers: { events: [] }", "has no writer"),
            ("stream_writers: { events: [ghost] }", "`ghost`"),
            ("stream_writers: { nonsense: main }", "unknown stream"),
            ("pusher_instances: [ghost]", "pusher_instances"),
            ("run_background_tasks_on: ghost", "run_background_tasks_on"),
        ];
        for (yaml, expected) in cases {
            let error = Config::from_figment(figment(&format!("{}\n{yaml}\n", base())))
                .expect_err("must be refused")
                .to_string();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
        let good = "instance_map: { events1: { host: 127.0.0.1, port: 8010 } }\nstream_writers: { events: [main, events1] }\n";
        let config =
            Config::from_figment(figment(&format!("{}\n{good}", base()))).expect("valid topology");
        assert_eq!(config.stream_writers("events"), vec!["main", "events1"]);
        assert_eq!(config.stream_writers("receipts"), vec!["main"]);
    }

    #[test]
    fn the_sample_has_a_fresh_replication_secret() {
        let first = Config::from_figment(figment(&base())).expect("loads");
        let second = Config::from_figment(figment(&base())).expect("loads");
        let secret = first.replication_secret.expect("a secret");
        assert_eq!(secret.len(), 64, "{secret}");
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
        assert_ne!(Some(secret), second.replication_secret);
    }

    #[test]
    fn a_short_replication_secret_is_named() {
        let yaml = format!(
            "{}\nreplication_secret: \"test replication secret\"\n",
            without_secret()
        );
        let error = Config::from_figment(figment(&yaml))
            .expect_err("must be refused")
            .to_string();
        assert_eq!(
            error,
            "config: key `replication_secret`: is 23 bytes long, it must have at least 32 \
             (`openssl rand -hex 32` makes one)"
        );
    }

    /// The sample without its `replication_secret` line.
    fn without_secret() -> String {
        base()
            .lines()
            .filter(|line| !line.starts_with("replication_secret:"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_split_instance_needs_redis_and_a_replication_secret() {
        let split = "redis: { url: \"redis://127.0.0.1:6390\" }\n\
                     instance_map: { events1: { host: 127.0.0.1, port: 8010 } }\n\
                     stream_writers: { events: [events1] }\n";
        let config = Config::from_figment(figment(&format!("{}\n{split}", without_secret())))
            .expect("loads: whether an instance is split depends on its roles");
        assert!(config.is_split("main", &Role::ALL));
        assert!(config.is_split("events1", &[Role::Events]));
        assert_eq!(
            config.check_split().expect_err("refused").to_string(),
            "config: key `replication_secret`: not set, but roles or stream writers are spread \
             over several instances, whose messages it authenticates: set the same random \
             string of at least 32 bytes for every instance (`lattice generate-config` writes \
             one; `openssl rand -hex 32` makes one)"
        );
        let with_secret =
            Config::from_figment(figment(&format!("{}\n{split}", base()))).expect("loads");
        assert!(with_secret.check_split().is_ok());

        let monolith = Config::from_figment(figment(&without_secret())).expect("loads");
        assert!(!monolith.is_split("main", &Role::ALL));
        assert!(monolith.is_split("main", &[Role::Client, Role::Sync]));
        assert!(monolith.is_split("worker", &Role::ALL));
        let error = monolith.check_split().expect_err("refused").to_string();
        assert!(
            error.starts_with("config: key `redis.url`: not set"),
            "{error}"
        );
    }

    #[test]
    fn redis_tls_files_need_rediss_and_come_in_pairs() {
        let cases = [
            (
                "redis: { url: \"redis://h\", tls_ca_file: /ca.pem }",
                "config: key `redis.tls_ca_file`: set, but redis.url is not a rediss:// URL",
            ),
            (
                "redis: { url: \"rediss://h\", tls_client_certificate_file: /c.pem }",
                "config: key `redis.tls_client_key_file`: not set, but \
                 redis.tls_client_certificate_file is",
            ),
        ];
        for (yaml, expected) in cases {
            let error = Config::from_figment(figment(&format!("{}\n{yaml}\n", base())))
                .expect_err("must be refused")
                .to_string();
            assert_eq!(error, expected);
        }
        let good = "redis: { url: \"rediss://u:p@h\", tls_ca_file: /ca.pem }";
        Config::from_figment(figment(&format!("{}\n{good}\n", base()))).expect("valid");
    }

    #[test]
    fn a_bad_value_is_named() {
        let yaml = base().replace("per_second: 20", "per_second: lots");
        let error = Config::from_figment(figment(&yaml))
            .expect_err("must be refused")
            .to_string();
        assert!(error.contains("per_second"), "{error}");
        let yaml = base() + "\nhttp_workers: 0\n";
        let error = Config::from_figment(figment(&yaml))
            .expect_err("must be refused")
            .to_string();
        assert!(error.contains("http_workers"), "{error}");
        let yaml = base().replace("pool_size: 16", "pool_size: 0");
        let error = Config::from_figment(figment(&yaml))
            .expect_err("must be refused")
            .to_string();
        assert!(error.contains("database.pool_size"), "{error}");
    }
}
