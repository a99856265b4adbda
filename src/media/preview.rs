//! URL previews (`GET /_matrix/client/v1/media/preview_url`): the server
//! fetches a page a user linked to and answers its Open Graph data.
//!
//! Fetching arbitrary URLs on a user's behalf is a way into the server's own
//! network, so every address the host name resolves to is checked against
//! `url_preview_ip_range_blacklist` (loopback, private, link-local and the
//! other special ranges by default; the whitelist overrides it) before
//! connecting, the connection goes to the checked address (a second DNS
//! answer cannot swap it), redirects are followed by hand and checked the
//! same way, and the page is read up to `max_spider_size` within
//! `url_preview_timeout_ms`. The page's `og:image` is fetched under the same
//! rules and stored as local media, so clients get an `mxc://` URI and never
//! talk to the linked site themselves.
//!
//! Answers are cached in memory, per instance, for an hour (Synapse's
//! in-memory layer), keyed by URL with the time each was fetched so `ts`
//! picks the one nearest to it. Not in PostgreSQL: an answer is cheap to
//! make again, a media instance that restarts or another one that is asked
//! only fetches the page once more, and the image it stored is kept either
//! way (its media row is in PostgreSQL like any upload's).

pub mod html;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use url::{Host, Url};

use super::{MediaError, MediaRepository, MediaResult, UploadRequest};
use crate::config::MediaConfig;

/// A CIDR range (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn contains(&self, address: IpAddr) -> bool {
        // An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is the IPv4 one.
        let address = match address {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                prefix_matches(&network.octets(), &address.octets(), self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_matches(&network.octets(), &address.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let mut bits = usize::from(prefix);
    for (n, a) in network.iter().zip(address) {
        if bits == 0 {
            return true;
        }
        let take = bits.min(8);
        let mask: u8 = 0xFFu8 << (8 - take);
        if n & mask != a & mask {
            return false;
        }
        bits -= take;
    }
    true
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP range such as 10.0.0.0/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(IpRange { network, prefix })
    }
}

impl TryFrom<String> for IpRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// The ranges previews never fetch from unless configured otherwise: those
/// Synapse's documentation recommends (loopback, private, carrier-grade NAT,
/// link-local, documentation, benchmarking, multicast and their IPv6
/// counterparts), plus "this network".
pub fn default_ip_range_blacklist() -> Vec<IpRange> {
    [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "169.254.0.0/16",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "::1/128",
        "::/128",
        "fe80::/10",
        "fc00::/7",
        "2001:db8::/32",
        "ff00::/8",
        "fec0::/10",
    ]
    .iter()
    .filter_map(|range| range.parse().ok())
    .collect()
}

/// Whether previews may connect to `address`: not in the blacklist, or in
/// the whitelist.
pub fn address_allowed(address: IpAddr, blacklist: &[IpRange], whitelist: &[IpRange]) -> bool {
    whitelist.iter().any(|range| range.contains(address))
        || !blacklist.iter().any(|range| range.contains(address))
}

/// Redirects a preview follows before giving up.
const MAX_REDIRECTS: usize = 5;
/// How long an answer is reused (Synapse's `ONE_HOUR`).
const CACHE_FOR_MS: i64 = 3_600_000;
/// URLs whose answers one instance keeps; past it, expired ones go first,
/// then everything.
const CACHE_MAX_URLS: usize = 10_000;
/// Answers kept per URL, for `ts` in the past.
const CACHE_PER_URL: usize = 4;
/// Synapse's crawler-like user agent: some sites give Open Graph data only
/// to crawlers. No version, so as not to tell sites what runs here.
const USER_AGENT: &str = "Lattice (bot; URL preview)";

/// One instance's cache of previews.
#[derive(Default)]
pub struct PreviewCache {
    by_url: Mutex<HashMap<String, Vec<CachedPreview>>>,
}

#[derive(Clone)]
struct CachedPreview {
    fetched_at: i64,
    expires_at: i64,
    og: Arc<Map<String, Value>>,
}

impl PreviewCache {
    /// The answer for `url` as of `ts`, as Synapse picks it: the latest
    /// fetched at or before `ts`, else the first after it, if still valid at `ts`.
    fn get(&self, url: &str, ts: i64) -> Option<Arc<Map<String, Value>>> {
        let by_url = self.by_url.lock().unwrap_or_else(|e| e.into_inner());
        let entries = by_url.get(url)?;
        let before = entries
            .iter()
            .filter(|e| e.fetched_at <= ts)
            .max_by_key(|e| e.fetched_at);
        let chosen = before.or_else(|| entries.iter().min_by_key(|e| e.fetched_at))?;
        (chosen.expires_at > ts).then(|| chosen.og.clone())
    }

    fn put(&self, url: &str, fetched_at: i64, og: Arc<Map<String, Value>>) {
        let mut by_url = self.by_url.lock().unwrap_or_else(|e| e.into_inner());
        if by_url.len() >= CACHE_MAX_URLS && !by_url.contains_key(url) {
            let now = crate::util::now_ms();
            by_url.retain(|_, entries| entries.iter().any(|e| e.expires_at > now));
            if by_url.len() >= CACHE_MAX_URLS {
                by_url.clear();
            }
        }
        let entries = by_url.entry(url.to_owned()).or_default();
        entries.push(CachedPreview {
            fetched_at,
            expires_at: fetched_at + CACHE_FOR_MS,
            og,
        });
        if entries.len() > CACHE_PER_URL {
            entries.sort_by_key(|e| e.fetched_at);
            entries.remove(0);
        }
    }
}

/// A page or image fetched: its final URL, type and the response to read.
struct Fetched<S> {
    url: Url,
    content_type: String,
    response: awc::ClientResponse<S>,
}

/// What an awc response body is (decompressed as it comes).
trait Body: futures::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin + 'static {}
impl<S: futures::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin + 'static> Body
    for S
{
}

impl MediaRepository {
    /// `GET /preview_url`: the Open Graph data of `url` for `user_id`, as of
    /// `ts` (milliseconds; now when not given).
    pub async fn preview_url(
        &self,
        user_id: &str,
        url: &str,
        ts: Option<i64>,
    ) -> MediaResult<Arc<Map<String, Value>>> {
        if !self.config.url_preview_enabled {
            return Err(MediaError::PreviewsDisabled);
        }
        let parsed = parse_preview_url(url)?;
        let now = crate::util::now_ms();
        if let Some(og) = self.previews.get(url, ts.unwrap_or(now)) {
            return Ok(og);
        }
        let timeout = Duration::from_millis(self.config.url_preview_timeout_ms);
        let og = tokio::time::timeout(timeout, self.make_preview(user_id, parsed))
            .await
            .map_err(|_| MediaError::PreviewFetch("timed out".into()))??;
        let og = Arc::new(og);
        self.previews.put(url, now, og.clone());
        Ok(og)
    }

    async fn make_preview(&self, user_id: &str, url: Url) -> MediaResult<Map<String, Value>> {
        let client = preview_client();
        let fetched = fetch(&client, &self.config, url).await?;
        if is_image(&fetched.content_type) {
            return self.store_image(user_id, fetched).await;
        }
        if !is_html(&fetched.content_type) {
            return Err(MediaError::PreviewFetch(format!(
                "content of type {} cannot be previewed",
                fetched.content_type
            )));
        }
        let page_url = fetched.url.clone();
        let content_type = fetched.content_type.clone();
        let body = read_limited(fetched.response, self.config.max_spider_size.0).await?;
        let text = html::decode_body(&body, &content_type);
        drop(body);
        let mut og: Map<String, Value> = html::open_graph(&text)
            .into_iter()
            .map(|(key, value)| (key, Value::String(value)))
            .collect();
        // As Synapse: the page's image is replaced by our copy of it, or
        // dropped when it cannot be had (the preview itself still stands).
        if let Some(Value::String(image)) = og.remove("og:image") {
            match self
                .preview_image(user_id, &client, &page_url, &image)
                .await
            {
                Ok(image_og) => og.extend(image_og),
                Err(error) => {
                    tracing::info!(image = %image, %error, "URL preview: no image");
                }
            }
        }
        Ok(og)
    }

    /// Fetches the image a page names (relative to the page) and stores it.
    async fn preview_image(
        &self,
        user_id: &str,
        client: &awc::Client,
        page_url: &Url,
        image: &str,
    ) -> MediaResult<Map<String, Value>> {
        let image_url = page_url
            .join(image)
            .map_err(|e| MediaError::BadPreviewUrl(format!("og:image: {e}")))?;
        check_scheme(&image_url)?;
        let fetched = fetch(client, &self.config, image_url).await?;
        if !is_image(&fetched.content_type) {
            return Err(MediaError::PreviewFetch(format!(
                "og:image is of type {}",
                fetched.content_type
            )));
        }
        self.store_image(user_id, fetched).await
    }

    /// Stores a fetched image as local media of `user_id` (the user who
    /// asked for the preview, as Synapse records it): its `og:image*` keys.
    async fn store_image(
        &self,
        user_id: &str,
        fetched: Fetched<impl Body>,
    ) -> MediaResult<Map<String, Value>> {
        let limit = self.config.max_spider_size.0;
        let received = self
            .store
            .receive(Box::pin(fetched.response), limit)
            .await
            .map_err(|error| match error {
                super::store::ReceiveError::TooLarge { limit } => {
                    MediaError::PreviewTooLarge { limit }
                }
                super::store::ReceiveError::Payload(message) => MediaError::PreviewFetch(message),
                super::store::ReceiveError::Io(error) => MediaError::Io(error),
            })?;
        let length = received.length;
        let request = UploadRequest {
            user_id: user_id.to_owned(),
            content_type: fetched.content_type.clone(),
            upload_name: None,
            declared_length: None,
        };
        let media_id = self.store_received(&request, received).await?;
        let path = self.store.content_path(&media_id);
        let dimensions = tokio::task::spawn_blocking(move || super::thumbnail::dimensions(&path))
            .await
            .ok()
            .flatten();
        let mut og = Map::new();
        og.insert(
            "og:image".into(),
            json!(format!("mxc://{}/{media_id}", self.server_name)),
        );
        og.insert("og:image:type".into(), json!(fetched.content_type));
        og.insert("matrix:image:size".into(), json!(length));
        if let Some((width, height)) = dimensions {
            og.insert("og:image:width".into(), json!(width));
            og.insert("og:image:height".into(), json!(height));
        }
        Ok(og)
    }
}

/// An HTTP client that follows no redirect itself (each is checked here).
fn preview_client() -> awc::Client {
    awc::Client::builder()
        .disable_redirects()
        .add_default_header((awc::http::header::USER_AGENT, USER_AGENT))
        .finish()
}

/// The URL to preview: absolute, `http` or `https`, with a host.
fn parse_preview_url(url: &str) -> MediaResult<Url> {
    let parsed = Url::parse(url).map_err(|e| MediaError::BadPreviewUrl(format!("{url}: {e}")))?;
    check_scheme(&parsed)?;
    Ok(parsed)
}

fn check_scheme(url: &Url) -> MediaResult<()> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(MediaError::BadPreviewUrl(format!(
            "only http and https URLs can be previewed, not {}",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(MediaError::BadPreviewUrl("the URL has no host".into()));
    }
    Ok(())
}

/// The address to connect to for `url`: every address its host resolves to
/// must be allowed (one denied address refuses the host, as Synapse's
/// resolver does), and the first is used.
async fn resolve_checked(url: &Url, config: &MediaConfig) -> MediaResult<SocketAddr> {
    let port = url
        .port_or_known_default()
        .ok_or_else(|| MediaError::BadPreviewUrl("the URL has no port".into()))?;
    let addresses: Vec<SocketAddr> = match url.host() {
        Some(Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(Host::Domain(domain)) => tokio::net::lookup_host((domain, port))
            .await
            .map_err(|e| MediaError::PreviewFetch(format!("DNS resolution failure: {e}")))?
            .collect(),
        None => return Err(MediaError::BadPreviewUrl("the URL has no host".into())),
    };
    let allowed = |address: &SocketAddr| {
        address_allowed(
            address.ip(),
            &config.url_preview_ip_range_blacklist,
            &config.url_preview_ip_range_whitelist,
        )
    };
    if let Some(denied) = addresses.iter().find(|a| !allowed(a)) {
        tracing::info!(url = %url, address = %denied.ip(), "URL preview: address blocked");
        return Err(MediaError::AddressBlocked);
    }
    addresses
        .into_iter()
        .next()
        .ok_or_else(|| MediaError::PreviewFetch("DNS resolution failure".into()))
}

/// GETs `url`, following up to [`MAX_REDIRECTS`] redirects, each target
/// checked as the first; the final response must be a success.
async fn fetch(
    client: &awc::Client,
    config: &MediaConfig,
    mut url: Url,
) -> MediaResult<Fetched<impl Body>> {
    for _ in 0..=MAX_REDIRECTS {
        check_scheme(&url)?;
        let address = resolve_checked(&url, config).await?;
        let response = client
            .get(url.as_str())
            .address(address)
            .timeout(Duration::from_millis(config.url_preview_timeout_ms))
            .send()
            .await
            .map_err(|e| MediaError::PreviewFetch(e.to_string()))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(awc::http::header::LOCATION)
                .and_then(|value| value.to_str().ok());
            if let Some(location) = location {
                url = url
                    .join(location)
                    .map_err(|e| MediaError::PreviewFetch(format!("bad redirect: {e}")))?;
                continue;
            }
        }
        if !status.is_success() {
            return Err(MediaError::PreviewFetch(format!("got status {status}")));
        }
        let content_type = response
            .headers()
            .get(awc::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("application/octet-stream")
            .trim()
            .to_owned();
        if let Some(length) = content_length(&response) {
            if length > config.max_spider_size.0 {
                return Err(MediaError::PreviewTooLarge {
                    limit: config.max_spider_size.0,
                });
            }
        }
        return Ok(Fetched {
            url,
            content_type,
            response,
        });
    }
    Err(MediaError::PreviewFetch("too many redirects".into()))
}

fn content_length<S>(response: &awc::ClientResponse<S>) -> Option<u64> {
    response
        .headers()
        .get(awc::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The body, refused as soon as it passes `limit` bytes.
async fn read_limited(
    mut response: awc::ClientResponse<impl Body>,
    limit: u64,
) -> MediaResult<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.next().await {
        let chunk = chunk.map_err(|e| MediaError::PreviewFetch(e.to_string()))?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(MediaError::PreviewTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_html(content_type: &str) -> bool {
    matches!(
        essence(content_type).as_str(),
        "text/html" | "application/xhtml+xml"
    )
}

fn is_image(content_type: &str) -> bool {
    essence(content_type).starts_with("image/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn ranges_parse_and_match() {
        let range: IpRange = "10.0.0.0/8".parse().expect("range");
        assert!(range.contains(ip("10.1.2.3")));
        assert!(!range.contains(ip("11.0.0.1")));
        let range: IpRange = "172.16.0.0/12".parse().expect("range");
        assert!(range.contains(ip("172.31.255.255")));
        assert!(!range.contains(ip("172.32.0.0")));
        let range: IpRange = "fc00::/7".parse().expect("range");
        assert!(range.contains(ip("fd12::1")));
        assert!(!range.contains(ip("2001:4860::1")));
        let single: IpRange = "127.0.0.1".parse().expect("range");
        assert!(single.contains(ip("127.0.0.1")));
        assert!(!single.contains(ip("127.0.0.2")));
        for bad in ["10.0.0.0/33", "nonsense", "::1/129", "1.2.3.4/x"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_blacklist_covers_loopback_and_private_addresses() {
        let blacklist = default_ip_range_blacklist();
        for denied in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(!address_allowed(ip(denied), &blacklist, &[]), "{denied}");
        }
        for allowed in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(address_allowed(ip(allowed), &blacklist, &[]), "{allowed}");
        }
        let whitelist = vec!["127.0.0.1/32".parse().expect("range")];
        assert!(address_allowed(ip("127.0.0.1"), &blacklist, &whitelist));
        assert!(!address_allowed(ip("127.0.0.2"), &blacklist, &whitelist));
    }

    #[test]
    fn only_absolute_http_urls_are_previewed() {
        assert!(parse_preview_url("https://example.org/page").is_ok());
        assert!(parse_preview_url("http://[::1]:8008/").is_ok());
        for bad in [
            "file:///etc/passwd",
            "ftp://example.org/",
            "/relative",
            "nonsense",
        ] {
            assert!(
                matches!(parse_preview_url(bad), Err(MediaError::BadPreviewUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_cache_answers_as_of_ts() {
        let cache = PreviewCache::default();
        let og = |title: &str| {
            let mut map = Map::new();
            map.insert("og:title".into(), json!(title));
            Arc::new(map)
        };
        cache.put("u", 1_000, og("first"));
        cache.put("u", 5_000, og("second"));
        let title = |ts| cache.get("u", ts).map(|og| og["og:title"].clone());
        assert_eq!(title(4_000), Some(json!("first")));
        assert_eq!(title(6_000), Some(json!("second")));
        // Before any fetch: the first one, still valid then.
        assert_eq!(title(500), Some(json!("first")));
        // Past its hour: none.
        assert_eq!(title(5_000 + CACHE_FOR_MS), None);
        assert!(cache.get("other", 1_000).is_none());
    }
}
