//! The content repository (Client-Server API "Content repository"):
//! uploads under `/_matrix/media/v3` (and `/v1/create`), authenticated
//! downloads and thumbnails under `/_matrix/client/v1/media`, and the legacy
//! unauthenticated `/_matrix/media/v3/download` and `/thumbnail`, which serve
//! only media uploaded before `enable_authenticated_media` was turned on.
//! The work is [`crate::media::MediaRepository`]'s; here are the requests'
//! parsing and the responses' headers.

use actix_files::NamedFile;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, Scope};
use serde::Deserialize;
use serde_json::json;

use super::resource;
use crate::api::Requester;
use crate::error::{ApiError, ApiResult};
use crate::media::id::MediaId;
use crate::media::thumbnail::ThumbnailMethod;
use crate::media::{ServedFile, UploadRequest, DEFAULT_WAIT_MS};
use crate::node::Node;
use crate::storage::media::LocalMedia;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(authenticated_routes(web::scope("/_matrix/client/v1/media")))
        .service(
            web::scope("/_matrix/media/v1")
                .service(resource("/create").route(web::post().to(create_content))),
        )
        .service(legacy_routes(web::scope("/_matrix/media/v3")))
        .service(legacy_routes(web::scope("/_matrix/media/r0")));
}

fn authenticated_routes(scope: Scope) -> Scope {
    scope
        .service(resource("/download/{server_name}/{media_id}").route(web::get().to(download)))
        .service(
            resource("/download/{server_name}/{media_id}/{file_name}")
                .route(web::get().to(download)),
        )
        // An empty file name (`.../{mediaId}/`, as matrix-nio asks) is none.
        .service(resource("/download/{server_name}/{media_id}/").route(web::get().to(download)))
        .service(resource("/thumbnail/{server_name}/{media_id}").route(web::get().to(thumbnail)))
        .service(resource("/config").route(web::get().to(config)))
        .service(resource("/preview_url").route(web::get().to(preview_url)))
}

fn legacy_routes(scope: Scope) -> Scope {
    scope
        .service(resource("/upload").route(web::post().to(upload)))
        .service(
            resource("/upload/{server_name}/{media_id}").route(web::put().to(upload_to_created)),
        )
        .service(
            resource("/download/{server_name}/{media_id}").route(web::get().to(legacy_download)),
        )
        .service(
            resource("/download/{server_name}/{media_id}/{file_name}")
                .route(web::get().to(legacy_download)),
        )
        // An empty file name (`.../{mediaId}/`, as matrix-nio asks) is none.
        .service(
            resource("/download/{server_name}/{media_id}/").route(web::get().to(legacy_download)),
        )
        .service(
            resource("/thumbnail/{server_name}/{media_id}").route(web::get().to(legacy_thumbnail)),
        )
        .service(resource("/config").route(web::get().to(config)))
        .service(resource("/preview_url").route(web::get().to(preview_url)))
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    filename: Option<String>,
}

/// POST /_matrix/media/v3/upload
pub async fn upload(
    node: web::Data<Node>,
    requester: Requester,
    request: HttpRequest,
    query: web::Query<UploadQuery>,
    body: web::Payload,
) -> ApiResult<HttpResponse> {
    let upload = upload_request(&request, &requester, query.into_inner())?;
    let media_id = node.media.upload(upload, body).await?;
    Ok(HttpResponse::Ok().json(json!({ "content_uri": content_uri(&node, &media_id) })))
}

/// POST /_matrix/media/v1/create
pub async fn create_content(
    node: web::Data<Node>,
    requester: Requester,
) -> ApiResult<HttpResponse> {
    let (media_id, expires_at) = node.media.create(&requester.user_id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "content_uri": content_uri(&node, &media_id),
        "unused_expires_at": expires_at,
    })))
}

/// PUT /_matrix/media/v3/upload/{serverName}/{mediaId}
pub async fn upload_to_created(
    node: web::Data<Node>,
    requester: Requester,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<UploadQuery>,
    body: web::Payload,
) -> ApiResult<HttpResponse> {
    let (server_name, media_id) = path.into_inner();
    let media_id = local_media_id(&node, &server_name, &media_id)?;
    let upload = upload_request(&request, &requester, query.into_inner())?;
    node.media.upload_pending(&media_id, upload, body).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// The headers and query of an upload: `Content-Type` (defaulting to
/// `application/octet-stream`, as the spec says), `Content-Length` when
/// given (the body is counted anyway: chunked uploads have none), and the
/// `filename`.
fn upload_request(
    request: &HttpRequest,
    requester: &Requester,
    query: UploadQuery,
) -> ApiResult<UploadRequest> {
    let content_type = match request.headers().get(header::CONTENT_TYPE) {
        Some(value) => value
            .to_str()
            .map_err(|_| ApiError::invalid_param("Content-Type is not ASCII"))?
            .trim()
            .to_owned(),
        None => String::new(),
    };
    let content_type = if content_type.is_empty() {
        "application/octet-stream".to_owned()
    } else {
        content_type
    };
    let declared_length = match request.headers().get(header::CONTENT_LENGTH) {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid_param("Content-Length is not a number"))?,
        ),
        None => None,
    };
    let upload_name = query.filename.filter(|name| !name.is_empty());
    if upload_name
        .as_deref()
        .is_some_and(|name| name.contains('\0'))
    {
        return Err(ApiError::invalid_param("filename may not contain NUL"));
    }
    Ok(UploadRequest {
        user_id: requester.user_id.clone(),
        content_type,
        upload_name,
        declared_length,
    })
}

fn content_uri(node: &Node, media_id: &MediaId) -> String {
    format!("mxc://{}/{media_id}", node.config.server_name)
}

/// The media id of a request naming this server's media. Another server's
/// media is not found: fetching remote media needs federation, which comes
/// later. An id that could not have been made here (`../x`, `a%2Fb`) is
/// not found either, and never reaches the file system.
fn local_media_id(node: &Node, server_name: &str, media_id: &str) -> ApiResult<MediaId> {
    if server_name != node.config.server_name {
        return Err(ApiError::not_found(
            "remote media is not available (this server does not federate yet)",
        ));
    }
    MediaId::parse(media_id).ok_or_else(|| ApiError::not_found("media not found"))
}

#[derive(Debug, Deserialize)]
pub struct DownloadQuery {
    timeout_ms: Option<u64>,
    /// Accepted and ignored: this server does not fetch remote media.
    #[allow(dead_code)]
    allow_remote: Option<bool>,
    #[allow(dead_code)]
    allow_redirect: Option<bool>,
}

/// Whether a download needs media uploaded while authenticated media was
/// off (the legacy endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Authenticated,
    Legacy,
}

/// A download's path: the file name is there only on the routes that take one.
#[derive(Debug, Deserialize)]
pub struct DownloadPath {
    server_name: String,
    media_id: String,
    file_name: Option<String>,
}

/// GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]
pub async fn download(
    node: web::Data<Node>,
    _requester: Requester,
    request: HttpRequest,
    path: web::Path<DownloadPath>,
    query: web::Query<DownloadQuery>,
) -> ApiResult<HttpResponse> {
    serve_download(
        &node,
        &request,
        path.into_inner(),
        &query,
        Endpoint::Authenticated,
    )
    .await
}

/// GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}]
pub async fn legacy_download(
    node: web::Data<Node>,
    request: HttpRequest,
    path: web::Path<DownloadPath>,
    query: web::Query<DownloadQuery>,
) -> ApiResult<HttpResponse> {
    serve_download(&node, &request, path.into_inner(), &query, Endpoint::Legacy).await
}

/// The media a download or thumbnail names, as the endpoint may serve it.
async fn find_media(
    node: &Node,
    server_name: &str,
    media_id: &str,
    timeout_ms: Option<u64>,
    endpoint: Endpoint,
) -> ApiResult<LocalMedia> {
    let media_id = local_media_id(node, server_name, media_id)?;
    let media = node
        .media
        .get(&media_id, timeout_ms.unwrap_or(DEFAULT_WAIT_MS))
        .await?;
    if endpoint == Endpoint::Legacy && media.authenticated {
        // Synapse's cut-over: media uploaded since authenticated media was
        // turned on does not exist for the unauthenticated endpoints.
        return Err(ApiError::not_found("media not found"));
    }
    Ok(media)
}

async fn serve_download(
    node: &Node,
    request: &HttpRequest,
    path: DownloadPath,
    query: &DownloadQuery,
    endpoint: Endpoint,
) -> ApiResult<HttpResponse> {
    let DownloadPath {
        server_name,
        media_id,
        file_name,
    } = path;
    let media = find_media(node, &server_name, &media_id, query.timeout_ms, endpoint).await?;
    let file = node.media.content(&media).await?;
    let file_name = file_name.or_else(|| media.upload_name.clone());
    let disposition = content_disposition(&file.content_type, file_name.as_deref());
    send_file(request, &file, &disposition).await
}

#[derive(Debug, Deserialize)]
pub struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
    animated: Option<bool>,
    timeout_ms: Option<u64>,
    #[allow(dead_code)]
    allow_remote: Option<bool>,
    #[allow(dead_code)]
    allow_redirect: Option<bool>,
}

/// GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}
pub async fn thumbnail(
    node: web::Data<Node>,
    _requester: Requester,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ThumbnailQuery>,
) -> ApiResult<HttpResponse> {
    let (server_name, media_id) = path.into_inner();
    serve_thumbnail(
        &node,
        &request,
        &server_name,
        &media_id,
        &query,
        Endpoint::Authenticated,
    )
    .await
}

/// GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}
pub async fn legacy_thumbnail(
    node: web::Data<Node>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ThumbnailQuery>,
) -> ApiResult<HttpResponse> {
    let (server_name, media_id) = path.into_inner();
    serve_thumbnail(
        &node,
        &request,
        &server_name,
        &media_id,
        &query,
        Endpoint::Legacy,
    )
    .await
}

async fn serve_thumbnail(
    node: &Node,
    request: &HttpRequest,
    server_name: &str,
    media_id: &str,
    query: &ThumbnailQuery,
    endpoint: Endpoint,
) -> ApiResult<HttpResponse> {
    if query.width == 0 || query.height == 0 {
        return Err(ApiError::invalid_param("width and height must be positive"));
    }
    let method = match query.method.as_deref() {
        None => ThumbnailMethod::Scale,
        Some(method) => ThumbnailMethod::parse(method)
            .ok_or_else(|| ApiError::invalid_param("method must be crop or scale"))?,
    };
    let media = find_media(node, server_name, media_id, query.timeout_ms, endpoint).await?;
    let file = node
        .media
        .thumbnail(
            &media,
            query.width,
            query.height,
            method,
            query.animated.unwrap_or(false),
        )
        .await?;
    let subtype = file
        .content_type
        .split_once('/')
        .map(|(_, subtype)| subtype)
        .unwrap_or("octet-stream");
    // The spec: a thumbnail is always `inline`.
    let disposition = format!("inline; filename=thumbnail.{subtype}");
    send_file(request, &file, &disposition).await
}

/// Streams `file` from disk (with `Range` and conditional requests) with
/// the headers every media response carries.
async fn send_file(
    request: &HttpRequest,
    file: &ServedFile,
    disposition: &str,
) -> ApiResult<HttpResponse> {
    let named = NamedFile::open(&file.path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            ApiError::not_found("media not found")
        } else {
            ApiError::internal(format!("opening {}: {error}", file.path.display()))
        }
    })?;
    let mut response = named
        .disable_content_disposition()
        .prefer_utf8(false)
        .into_response(request);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&with_charset(&file.content_type))
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(disposition)
            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    for (name, value) in MEDIA_HEADERS {
        headers.insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    Ok(response)
}

/// Headers of every media response: a sandbox so that a served file can run
/// nothing in a browser (Synapse's policy), no MIME sniffing, embeddable
/// from any origin, cacheable (media never changes) and not indexed.
const MEDIA_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
         style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
    ),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-resource-policy", "cross-origin"),
    // Synapse's: clients keep it a day; shared caches must ask again, so
    // that a quarantined or deleted item is not served from them.
    (
        "cache-control",
        "public, max-age=86400, s-maxage=0, proxy-revalidate",
    ),
    ("x-robots-tag", "noindex, nofollow, noarchive, noimageindex"),
];

/// Types a browser may show inline (the spec's "serving inline content",
/// Synapse's list); anything else is an attachment. SVG is not on it.
const INLINE_CONTENT_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Text types served with `charset=UTF-8` when they name no charset.
const TEXT_CONTENT_TYPES: &[&str] = &[
    "text/css",
    "text/csv",
    "text/html",
    "text/calendar",
    "text/plain",
    "text/javascript",
    "application/json",
    "application/ld+json",
    "application/rtf",
    "image/svg+xml",
    "text/xml",
];

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn with_charset(content_type: &str) -> String {
    if TEXT_CONTENT_TYPES.contains(&content_type.trim().to_ascii_lowercase().as_str()) {
        format!("{}; charset=UTF-8", content_type.trim())
    } else {
        content_type.to_owned()
    }
}

/// `inline` for the safe types, `attachment` otherwise, with the file name:
/// as a token when it is one, else RFC 6266's `filename*=utf-8''` with
/// percent-encoding (never a quoted string; Synapse's choice).
fn content_disposition(content_type: &str, file_name: Option<&str>) -> String {
    let kind = if INLINE_CONTENT_TYPES.contains(&essence(content_type).as_str()) {
        "inline"
    } else {
        "attachment"
    };
    match file_name.filter(|name| !name.is_empty()) {
        None => kind.to_owned(),
        Some(name) if is_token(name) => format!("{kind}; filename={name}"),
        Some(name) => format!("{kind}; filename*=utf-8''{}", percent_encode(name)),
    }
}

/// An RFC 2616 token: US-ASCII without controls, spaces or separators.
fn is_token(text: &str) -> bool {
    text.chars().all(|c| {
        let code = u32::from(c);
        code > 32 && code < 127 && !"()<>@,;:\\\"/[]?={}".contains(c)
    })
}

/// RFC 5987 `value-chars`: everything but `attr-char` percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// GET /_matrix/client/v1/media/config
pub async fn config(node: web::Data<Node>, _requester: Requester) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({ "m.upload.size": node.media.config.max_upload_size.0 })))
}

#[derive(Debug, Deserialize)]
pub struct PreviewQuery {
    url: Option<String>,
    ts: Option<i64>,
}

/// GET /_matrix/client/v1/media/preview_url
///
/// The Open Graph data of `url` ([`crate::media::preview`]); with previews
/// off (the default) the endpoint does not exist, as on Synapse
/// (`404 M_UNRECOGNIZED`).
pub async fn preview_url(
    node: web::Data<Node>,
    requester: Requester,
    query: web::Query<PreviewQuery>,
) -> ApiResult<HttpResponse> {
    if !node.media.config.url_preview_enabled {
        return Err(crate::media::MediaError::PreviewsDisabled.into());
    }
    let PreviewQuery { url, ts } = query.into_inner();
    let url = url.ok_or_else(|| ApiError::missing_param("url is required"))?;
    let og = node.media.preview_url(&requester.user_id, &url, ts).await?;
    Ok(HttpResponse::Ok().json(&*og))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_types_are_inline() {
        assert_eq!(
            content_disposition("image/png", Some("cat.png")),
            "inline; filename=cat.png"
        );
        assert_eq!(
            content_disposition("text/html", Some("page.html")),
            "attachment; filename=page.html"
        );
        assert_eq!(content_disposition("image/svg+xml", None), "attachment");
        assert_eq!(
            content_disposition("Text/Plain; charset=latin1", None),
            "inline"
        );
    }

    #[test]
    fn file_names_that_are_not_tokens_are_rfc_6266_encoded() {
        assert_eq!(
            content_disposition("application/pdf", Some("my report;1.pdf")),
            "attachment; filename*=utf-8''my%20report%3B1.pdf"
        );
        assert_eq!(
            content_disposition("image/png", Some("café.png")),
            "inline; filename*=utf-8''caf%C3%A9.png"
        );
        assert_eq!(
            content_disposition("image/png", Some("a\"b\r\nX-Evil: 1")),
            "inline; filename*=utf-8''a%22b%0D%0AX-Evil%3A%201"
        );
    }

    #[test]
    fn text_gets_a_charset() {
        assert_eq!(with_charset("text/plain"), "text/plain; charset=UTF-8");
        assert_eq!(
            with_charset("text/plain; charset=UTF-16"),
            "text/plain; charset=UTF-16"
        );
        assert_eq!(with_charset("image/png"), "image/png");
    }
}
