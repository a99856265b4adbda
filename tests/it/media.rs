//! The media repository: uploads (plain and asynchronous), authenticated
//! downloads and thumbnails, the legacy endpoints' cut-over, quotas, admin
//! quarantine and deletion, and bad input. On the split, uploads go to one
//! media instance (`events1`) and downloads to the other (`sync2`), and
//! `main`, without the role, does not serve media at all.
//!
//! After every refused request the media store is checked for leftovers:
//! no temporary file, no file for the refused item.

use std::path::Path;
use std::time::Duration;

use awc::http::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::cluster::{Client, Options, TestCluster, User, SERVER_NAME};

/// A PNG of `width` x `height`, made here.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 200])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode png");
    bytes.into_inner()
}

/// A PNG whose header claims `width` x `height` pixels: a few dozen bytes
/// that would take tens of gigabytes to decode.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    // A valid header, checksum included: only its size is wrong.
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// CRC-32 (PNG's chunk checksum), bit by bit: test data only.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `user`, speaking to another node.
fn on(user: &User, client: &Client) -> User {
    User {
        client: client.clone(),
        ..user.clone()
    }
}

fn http() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
}

/// Reads a JSON answer and checks it against the spec.
fn json_of(method: &str, path: &str, status: StatusCode, bytes: &[u8]) -> Value {
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {status} not JSON ({e}): {}",
                String::from_utf8_lossy(bytes)
            )
        })
    };
    crate::spec::check_response(method, path, status.as_u16(), &value);
    value
}

/// `POST /_matrix/media/v3/upload` (or a `PUT` to `path`) of `body` as
/// `content_type`.
async fn send_upload(
    client: &Client,
    method: Method,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = http()
        .request(method.clone(), format!("{}{path}", client.base_url()))
        .insert_header(("Authorization", format!("Bearer {token}")));
    if let Some(content_type) = content_type {
        request = request.insert_header(("Content-Type", content_type));
    }
    let mut response = request.send_body(body).await.expect("upload answered");
    let bytes = response.body().await.expect("body");
    let status = response.status();
    (status, json_of(method.as_str(), path, status, &bytes))
}

async fn upload(user: &User, content_type: &str, name: &str, body: Vec<u8>) -> (StatusCode, Value) {
    send_upload(
        &user.client,
        Method::POST,
        &format!("/_matrix/media/v3/upload?filename={name}"),
        &user.access_token,
        Some(content_type),
        body,
    )
    .await
}

/// Uploads, asserting success; the media id.
async fn upload_ok(user: &User, content_type: &str, name: &str, body: Vec<u8>) -> String {
    let (status, answer) = upload(user, content_type, name, body).await;
    assert_eq!(status, StatusCode::OK, "upload: {answer}");
    let uri = answer["content_uri"].as_str().expect("content_uri");
    let prefix = format!("mxc://{SERVER_NAME}/");
    uri.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{uri} is not ours"))
        .to_owned()
}

/// A GET with optional token and headers: status, headers, bytes.
async fn get_raw(
    client: &Client,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let mut request = http().get(format!("{}{path}", client.base_url()));
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let mut response = request.send().await.expect("answered");
    let bytes = response.body().limit(64 << 20).await.expect("body");
    (
        response.status(),
        response.headers().clone(),
        bytes.to_vec(),
    )
}

/// A GET whose answer is an error: status and errcode (checked against the spec).
async fn get_error(client: &Client, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let (status, _, bytes) = get_raw(client, path, token, &[]).await;
    let value = json_of("GET", path, status, &bytes);
    assert!(!status.is_success(), "{path} succeeded");
    (
        status,
        value["errcode"].as_str().unwrap_or_default().to_owned(),
    )
}

fn download_path(media_id: &str) -> String {
    format!("/_matrix/client/v1/media/download/{SERVER_NAME}/{media_id}")
}

fn thumbnail_path(media_id: &str, query: &str) -> String {
    format!("/_matrix/client/v1/media/thumbnail/{SERVER_NAME}/{media_id}?{query}")
}

fn header_of(headers: &header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(files_under(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// No temporary file left in the store.
fn assert_no_partial_files(cluster: &TestCluster) {
    let leftovers = files_under(&cluster.media_store().join("tmp"));
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}

/// The clients of the first and last media instance (the same node on the
/// monolith), and alice on each.
async fn alice_on_two_media_instances(cluster: &TestCluster) -> (User, User) {
    let alice = cluster.client().register("alice").await;
    let media = cluster.media_clients();
    let first = media.first().expect("a media instance");
    let last = media.last().expect("a media instance");
    (on(&alice, first), on(&alice, last))
}

#[actix_web::test]
async fn an_upload_through_one_media_instance_downloads_through_another_byte_for_byte() {
    let cluster = TestCluster::start().await;
    let (uploader, downloader) = alice_on_two_media_instances(&cluster).await;
    let image = png(64, 48);
    let media_id = upload_ok(&uploader, "image/png", "cat.png", image.clone()).await;

    let (status, headers, bytes) = get_raw(
        &downloader.client,
        &download_path(&media_id),
        Some(&downloader.access_token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, image);
    assert_eq!(header_of(&headers, "content-type"), "image/png");
    assert_eq!(
        header_of(&headers, "content-disposition"),
        "inline; filename=cat.png"
    );
    assert!(header_of(&headers, "content-security-policy").starts_with("sandbox;"));
    assert_eq!(
        header_of(&headers, "cross-origin-resource-policy"),
        "cross-origin"
    );
    assert!(header_of(&headers, "cache-control").contains("max-age=86400"));

    // An empty file name (a trailing slash, as matrix-nio asks) is none.
    let (status, _, bytes) = get_raw(
        &downloader.client,
        &format!("{}/", download_path(&media_id)),
        Some(&downloader.access_token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, image);

    // The name in the path wins; a type not safe inline is an attachment.
    let html = b"<script>alert(1)</script>".to_vec();
    let page_id = upload_ok(&uploader, "text/html", "page.html", html.clone()).await;
    let (status, headers, bytes) = get_raw(
        &downloader.client,
        &format!("{}/my%20page.html", download_path(&page_id)),
        Some(&downloader.access_token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, html);
    assert_eq!(
        header_of(&headers, "content-type"),
        "text/html; charset=UTF-8"
    );
    assert_eq!(
        header_of(&headers, "content-disposition"),
        "attachment; filename*=utf-8''my%20page.html"
    );

    // A range of the file.
    let (status, headers, bytes) = get_raw(
        &downloader.client,
        &download_path(&media_id),
        Some(&downloader.access_token),
        &[("Range", "bytes=10-29")],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, image[10..30]);
    assert_eq!(
        header_of(&headers, "content-range"),
        format!("bytes 10-29/{}", image.len())
    );

    // Without a token.
    assert_eq!(
        get_error(&downloader.client, &download_path(&media_id), None).await,
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN".to_owned())
    );
    assert_eq!(
        get_error(
            &downloader.client,
            &thumbnail_path(&media_id, "width=32&height=32"),
            None
        )
        .await,
        (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN".to_owned())
    );

    // The configuration, both paths.
    for path in [
        "/_matrix/client/v1/media/config",
        "/_matrix/media/v3/config",
    ] {
        let (status, body) = downloader.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["m.upload.size"], json!(50 * 1024 * 1024));
    }
    assert_no_partial_files(&cluster);
}

#[actix_web::test]
async fn thumbnails_have_the_asked_sizes_and_bad_images_are_refused_without_leftovers() {
    let cluster = TestCluster::start().await;
    let (uploader, downloader) = alice_on_two_media_instances(&cluster).await;
    let media_id = upload_ok(&uploader, "image/png", "wide.png", png(200, 100)).await;
    let token = downloader.access_token.clone();

    let decode = |bytes: &[u8]| image::load_from_memory(bytes).expect("a decodable image");
    let (status, headers, bytes) = get_raw(
        &downloader.client,
        &thumbnail_path(&media_id, "width=32&height=32&method=crop"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_of(&headers, "content-type"), "image/png");
    assert!(header_of(&headers, "content-disposition").starts_with("inline"));
    let thumbnail = decode(&bytes);
    assert_eq!((thumbnail.width(), thumbnail.height()), (32, 32));

    // Scaled: the aspect kept, never larger than the original.
    let (status, _, bytes) = get_raw(
        &downloader.client,
        &thumbnail_path(&media_id, "width=320&height=240&method=scale"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let thumbnail = decode(&bytes);
    assert_eq!((thumbnail.width(), thumbnail.height()), (200, 100));

    // A JPEG's thumbnails are JPEG.
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(120, 120))
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .expect("jpeg");
    let jpeg_id = upload_ok(&uploader, "image/jpeg", "photo.jpg", jpeg.into_inner()).await;
    let (status, headers, bytes) = get_raw(
        &downloader.client,
        &thumbnail_path(&jpeg_id, "width=96&height=96&method=crop"),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_of(&headers, "content-type"), "image/jpeg");
    let thumbnail = decode(&bytes);
    assert_eq!((thumbnail.width(), thumbnail.height()), (96, 96));

    // Bad parameters.
    for query in [
        "width=32",
        "width=0&height=10",
        "width=32&height=32&method=stretch",
    ] {
        let (status, errcode) = get_error(
            &downloader.client,
            &thumbnail_path(&media_id, query),
            Some(&token),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            errcode == "M_INVALID_PARAM" || errcode == "M_MISSING_PARAM",
            "{query}: {errcode}"
        );
    }

    // Not an image, a corrupt PNG: 400 M_UNKNOWN (Synapse's answer, the
    // spec's status); a PNG claiming 100,000 x 100,000 pixels: 413.
    let text_id = upload_ok(&uploader, "text/plain", "notes.txt", b"hello".to_vec()).await;
    let mut corrupt = png(50, 50);
    corrupt.truncate(60);
    let corrupt_id = upload_ok(&uploader, "image/png", "broken.png", corrupt).await;
    let started = std::time::Instant::now();
    let bomb_id = upload_ok(
        &uploader,
        "image/png",
        "bomb.png",
        png_claiming(100_000, 100_000),
    )
    .await;
    for (media_id, expected) in [
        (&text_id, (StatusCode::BAD_REQUEST, "M_UNKNOWN")),
        (&corrupt_id, (StatusCode::BAD_REQUEST, "M_UNKNOWN")),
        (&bomb_id, (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE")),
    ] {
        let (status, errcode) = get_error(
            &downloader.client,
            &thumbnail_path(media_id, "width=32&height=32&method=crop"),
            Some(&token),
        )
        .await;
        assert_eq!((status, errcode.as_str()), expected, "{media_id}");
        let thumbnails = files_under(&cluster.media_store().join("local_thumbnails"))
            .into_iter()
            .filter(|path| path.to_string_lossy().contains(&media_id[4..]))
            .collect::<Vec<_>>();
        assert!(thumbnails.is_empty(), "{thumbnails:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the bomb was decoded"
    );
    // The files themselves still download as uploaded.
    let (status, _, bytes) = get_raw(
        &downloader.client,
        &download_path(&bomb_id),
        Some(&token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, png_claiming(100_000, 100_000));
    assert_no_partial_files(&cluster);
}

#[actix_web::test]
async fn bad_uploads_and_bad_media_ids_get_matrix_errors_and_leave_nothing() {
    let cluster = TestCluster::start_with(Options {
        settings: vec![("media.max_upload_size", json!(64 * 1024))],
        ..Options::default()
    })
    .await;
    let (uploader, downloader) = alice_on_two_media_instances(&cluster).await;
    let content_before = files_under(&cluster.media_store().join("local_content")).len();

    // Over the limit, with a Content-Length: refused before the body is read.
    let (status, body) = upload(
        &uploader,
        "application/octet-stream",
        "big",
        vec![7; 64 * 1024 + 1],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    assert_no_partial_files(&cluster);

    // Over the limit, chunked (no Content-Length): counted while streaming.
    let chunks =
        (0..20).map(|_| Ok::<_, std::io::Error>(actix_web::web::Bytes::from(vec![1u8; 4096])));
    let path = "/_matrix/media/v3/upload";
    let mut response = http()
        .post(format!("{}{path}", uploader.client.base_url()))
        .insert_header(("Authorization", format!("Bearer {}", uploader.access_token)))
        .insert_header(("Content-Type", "application/octet-stream"))
        .send_stream(futures::stream::iter(chunks))
        .await
        .expect("answered");
    let bytes = response.body().await.expect("body");
    let body = json_of("POST", path, response.status(), &bytes);
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    assert_no_partial_files(&cluster);

    // Exactly the limit is fine.
    let at_limit = upload_ok(
        &uploader,
        "application/octet-stream",
        "max",
        vec![9; 64 * 1024],
    )
    .await;
    let (_, _, bytes) = get_raw(
        &downloader.client,
        &download_path(&at_limit),
        Some(&downloader.access_token),
        &[],
    )
    .await;
    assert_eq!(bytes.len(), 64 * 1024);

    // An empty body: the spec and Synapse accept an empty file (the upload
    // is complete, nothing is partial), and it downloads as empty.
    let (status, body) = send_upload(
        &uploader.client,
        Method::POST,
        "/_matrix/media/v3/upload",
        &uploader.access_token,
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let empty_id = body["content_uri"]
        .as_str()
        .and_then(|uri| uri.rsplit('/').next())
        .expect("an id")
        .to_owned();
    let (status, headers, bytes) = get_raw(
        &downloader.client,
        &download_path(&empty_id),
        Some(&downloader.access_token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(bytes.is_empty());
    // No Content-Type given: the spec's default.
    assert_eq!(
        header_of(&headers, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(header_of(&headers, "content-disposition"), "attachment");
    assert_no_partial_files(&cluster);
    // Two stored: at the limit, and empty. Nothing of the refused ones.
    assert_eq!(
        files_under(&cluster.media_store().join("local_content")).len(),
        content_before + 2
    );

    // Ids that could name a path, and unknown or remote media: not found.
    let token = Some(downloader.access_token.as_str());
    for path in [
        format!("/_matrix/client/v1/media/download/{SERVER_NAME}/..%2F..%2Fetc%2Fpasswd"),
        format!("/_matrix/client/v1/media/download/{SERVER_NAME}/%2E%2E"),
        format!("/_matrix/client/v1/media/download/{SERVER_NAME}/a%2Fb"),
        format!("/_matrix/client/v1/media/download/{SERVER_NAME}/..%2F{at_limit}"),
        format!("/_matrix/client/v1/media/thumbnail/{SERVER_NAME}/..%2Fx?width=1&height=1"),
        format!("/_matrix/client/v1/media/download/{SERVER_NAME}/unknownMediaId123"),
        format!("/_matrix/client/v1/media/download/other.example/{at_limit}"),
    ] {
        assert_eq!(
            get_error(&downloader.client, &path, token).await,
            (StatusCode::NOT_FOUND, "M_NOT_FOUND".to_owned()),
            "{path}"
        );
    }
    let (status, body) = send_upload(
        &uploader.client,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{SERVER_NAME}/..%2F..%2Fescape"),
        &uploader.access_token,
        Some("text/plain"),
        b"x".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
    );
    assert!(!cluster.media_store().join("escape").exists());
    assert_no_partial_files(&cluster);
}

#[actix_web::test]
async fn an_asynchronous_upload_is_awaited_taken_once_and_only_by_its_creator() {
    let cluster = TestCluster::start_with(Options {
        settings: vec![("media.max_pending_media_uploads", json!(3))],
        ..Options::default()
    })
    .await;
    let (uploader, downloader) = alice_on_two_media_instances(&cluster).await;
    let bob = on(&cluster.client().register("bob").await, &uploader.client);

    let (status, created) = uploader.post("/_matrix/media/v1/create", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let uri = created["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    let media_id = uri.rsplit('/').next().expect("an id").to_owned();
    let expires = created["unused_expires_at"]
        .as_i64()
        .expect("unused_expires_at");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as i64;
    assert!((expires - now - 86_400_000).abs() < 60_000, "{expires}");

    // Not there yet.
    assert_eq!(
        get_error(
            &downloader.client,
            &format!("{}?timeout_ms=0", download_path(&media_id)),
            Some(&downloader.access_token)
        )
        .await,
        (StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED".to_owned())
    );

    // Someone else may not fill it in.
    let put_path = format!("/_matrix/media/v3/upload/{SERVER_NAME}/{media_id}?filename=late.txt");
    let (status, body) = send_upload(
        &bob.client,
        Method::PUT,
        &put_path,
        &bob.access_token,
        Some("text/plain"),
        b"not mine".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::FORBIDDEN, json!("M_FORBIDDEN"))
    );

    // A download waiting for the content gets it once it comes.
    let waiting = {
        let client = downloader.client.clone();
        let path = format!("{}?timeout_ms=20000", download_path(&media_id));
        let token = downloader.access_token.clone();
        actix_web::rt::spawn(async move { get_raw(&client, &path, Some(&token), &[]).await })
    };
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = send_upload(
        &uploader.client,
        Method::PUT,
        &put_path,
        &uploader.access_token,
        Some("text/plain"),
        b"it came later".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, headers, bytes) = waiting.await.expect("the waiting download");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"it came later");
    assert_eq!(
        header_of(&headers, "content-disposition"),
        "inline; filename=late.txt"
    );

    // Once only.
    let (status, body) = send_upload(
        &uploader.client,
        Method::PUT,
        &put_path,
        &uploader.access_token,
        Some("text/plain"),
        b"again".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::CONFLICT, json!("M_CANNOT_OVERWRITE_MEDIA"))
    );
    // A media id never created.
    let (status, body) = send_upload(
        &uploader.client,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{SERVER_NAME}/neverCreated0000"),
        &uploader.access_token,
        Some("text/plain"),
        b"x".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
    );

    // At most three waiting at once.
    for _ in 0..3 {
        let (status, body) = uploader.post("/_matrix/media/v1/create", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = uploader.post("/_matrix/media/v1/create", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert_no_partial_files(&cluster);
}

#[actix_web::test]
async fn legacy_endpoints_serve_only_media_from_before_the_cut_over() {
    // Authenticated media on (the default): new media is not on the legacy paths.
    let cluster = TestCluster::start().await;
    let (uploader, downloader) = alice_on_two_media_instances(&cluster).await;
    let media_id = upload_ok(&uploader, "image/png", "a.png", png(40, 40)).await;
    for path in [
        format!("/_matrix/media/v3/download/{SERVER_NAME}/{media_id}"),
        format!("/_matrix/media/v3/thumbnail/{SERVER_NAME}/{media_id}?width=32&height=32"),
    ] {
        assert_eq!(
            get_error(&downloader.client, &path, Some(&downloader.access_token)).await,
            (StatusCode::NOT_FOUND, "M_NOT_FOUND".to_owned()),
            "{path}"
        );
    }
    drop(cluster);

    // Off: what is uploaded is served without a token on the legacy paths.
    let cluster = TestCluster::start_with(Options {
        settings: vec![("media.enable_authenticated_media", json!(false))],
        ..Options::default()
    })
    .await;
    let (uploader, downloader) = alice_on_two_media_instances(&cluster).await;
    let image = png(40, 40);
    let media_id = upload_ok(&uploader, "image/png", "a.png", image.clone()).await;
    let (status, _, bytes) = get_raw(
        &downloader.client,
        &format!("/_matrix/media/v3/download/{SERVER_NAME}/{media_id}"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, image);
    let (status, _, bytes) = get_raw(
        &downloader.client,
        &format!(
            "/_matrix/media/v3/thumbnail/{SERVER_NAME}/{media_id}?width=32&height=32&method=crop"
        ),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let thumbnail = image::load_from_memory(&bytes).expect("an image");
    assert_eq!((thumbnail.width(), thumbnail.height()), (32, 32));
}

#[actix_web::test]
async fn uploads_beyond_the_quota_are_refused_and_leave_nothing() {
    let cluster = TestCluster::start_with(Options {
        settings: vec![("media.media_upload_quota", json!(1000))],
        ..Options::default()
    })
    .await;
    let (uploader, _) = alice_on_two_media_instances(&cluster).await;
    upload_ok(&uploader, "application/octet-stream", "one", vec![1; 600]).await;
    let (status, body) = upload(&uploader, "application/octet-stream", "two", vec![2; 600]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_RESOURCE_LIMIT_EXCEEDED");
    assert_eq!(
        files_under(&cluster.media_store().join("local_content")).len(),
        1
    );
    // What still fits does.
    upload_ok(&uploader, "application/octet-stream", "three", vec![3; 400]).await;
    assert_no_partial_files(&cluster);
}

#[actix_web::test]
async fn admins_quarantine_and_delete_media() {
    let cluster = TestCluster::start().await;
    let (uploader, downloader) = alice_on_two_media_instances(&cluster).await;
    let admin = cluster.client().register("admin").await;
    cluster.make_admin(&admin.user_id).await;
    let token = Some(downloader.access_token.as_str());

    let first = upload_ok(&uploader, "image/png", "1.png", png(40, 40)).await;
    let second = upload_ok(&uploader, "image/png", "2.png", png(40, 40)).await;
    let third = upload_ok(&uploader, "text/plain", "3.txt", b"three".to_vec()).await;

    // Only admins.
    let (status, _) = uploader
        .client
        .post(
            &format!("/_lattice/admin/v1/media/quarantine/{SERVER_NAME}/{first}"),
            Some(&uploader.access_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = admin
        .post(
            &format!("/_lattice/admin/v1/media/quarantine/{SERVER_NAME}/{first}"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in [
        download_path(&first),
        thumbnail_path(&first, "width=32&height=32"),
    ] {
        assert_eq!(
            get_error(&downloader.client, &path, token).await,
            (StatusCode::NOT_FOUND, "M_NOT_FOUND".to_owned()),
            "{path}"
        );
    }
    let (status, _, _) = get_raw(&downloader.client, &download_path(&second), token, &[]).await;
    assert_eq!(status, StatusCode::OK);

    // Delete one: its file and thumbnails go.
    let (status, body) = admin
        .delete(&format!("/_lattice/admin/v1/media/{SERVER_NAME}/{second}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted_media"], json!([second]));
    assert_eq!(
        get_error(&downloader.client, &download_path(&second), token).await,
        (StatusCode::NOT_FOUND, "M_NOT_FOUND".to_owned())
    );
    let left: Vec<_> = files_under(cluster.media_store())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&second[4..]))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Quarantine all of a user's, then delete all of them.
    let (status, body) = admin
        .post(
            &format!(
                "/_lattice/admin/v1/user/{}/media/quarantine",
                uploader.user_id
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["num_quarantined"], json!(1));
    assert_eq!(
        get_error(&downloader.client, &download_path(&third), token).await,
        (StatusCode::NOT_FOUND, "M_NOT_FOUND".to_owned())
    );
    let (status, body) = admin
        .delete(&format!(
            "/_lattice/admin/v1/users/{}/media",
            uploader.user_id
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], json!(2));
    assert!(files_under(&cluster.media_store().join("local_content")).is_empty());
    assert!(files_under(&cluster.media_store().join("local_thumbnails")).is_empty());
}

#[actix_web::test]
async fn instances_without_the_media_role_do_not_serve_media() {
    let cluster = TestCluster::start().await;
    if !cluster.is_split() {
        return;
    }
    let alice = cluster.client().register("alice").await;
    let (status, body) = upload(&alice, "text/plain", "x", b"x".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

#[actix_web::test]
async fn url_previews_are_off_by_default() {
    let cluster = TestCluster::start().await;
    let (alice, _) = alice_on_two_media_instances(&cluster).await;
    let (status, body) = alice
        .get("/_matrix/client/v1/media/preview_url?url=http%3A%2F%2F127.0.0.1%2F")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

/// A tiny web server on 127.0.0.1 for URL previews: `/page` (Open Graph
/// tags, a relative `og:image`), `/plain` (only `<title>` and a meta
/// description), `/cat.png`, `/moved` (a redirect to `/page`) and `/big`
/// (a page of `big_len` bytes). The count of requests for `/page`.
struct PageServer {
    base: String,
    page_requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn serve_pages(image: Vec<u8>, big_len: usize) -> PageServer {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let page_requests = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = page_requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let image = image.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let html = |body: String| ("200 OK", "text/html; charset=utf-8", body.into_bytes());
                let (status, content_type, body, location) = match path.as_str() {
                    "/page" => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (s, t, b) = html(
                            "<html><head>\
                             <meta content='Cats &amp; dogs' property='og:title'>\
                             <meta property=\"og:description\" content=\"All about &quot;pets&quot;\"/>\
                             <meta property=og:image content=/cat.png>\
                             <title>ignored</title></head><body>hi</body></html>"
                                .to_owned(),
                        );
                        (s, t, b, None)
                    }
                    "/plain" => {
                        let (s, t, b) = html(
                            "<html><head><title>A plain\n page</title>\
                             <meta name=\"description\" content=\"Just a page\"></head></html>"
                                .to_owned(),
                        );
                        (s, t, b, None)
                    }
                    "/cat.png" => ("200 OK", "image/png", image, None),
                    "/moved" => ("302 Found", "text/plain", Vec::new(), Some("/page")),
                    "/big" => {
                        let (s, t, b) = html(format!(
                            "<html><head><title>big</title></head><body>{}</body></html>",
                            "x".repeat(big_len)
                        ));
                        (s, t, b, None)
                    }
                    _ => ("404 Not Found", "text/plain", b"no".to_vec(), None),
                };
                let mut head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                if let Some(location) = location {
                    head.push_str(&format!("Location: {location}\r\n"));
                }
                head.push_str("\r\n");
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    PageServer {
        base: format!("http://127.0.0.1:{port}"),
        page_requests,
    }
}

fn preview_path(url: &str) -> String {
    format!(
        "/_matrix/client/v1/media/preview_url?url={}",
        crate::cluster::enc(url)
    )
}

/// Previews on, 127.0.0.1 allowed, pages up to 64 KiB.
fn previews_on_for_localhost() -> Options {
    Options {
        settings: vec![
            ("media.url_preview_enabled", json!(true)),
            (
                "media.url_preview_ip_range_whitelist",
                json!(["127.0.0.1/32"]),
            ),
            ("media.max_spider_size", json!(64 * 1024)),
        ],
        ..Options::default()
    }
}

#[actix_web::test]
async fn a_url_preview_has_the_pages_open_graph_data_and_its_image_as_local_media() {
    use std::sync::atomic::Ordering;
    let cluster = TestCluster::start_with(previews_on_for_localhost()).await;
    let (alice, downloader) = alice_on_two_media_instances(&cluster).await;
    let image = png(40, 30);
    let server = serve_pages(image.clone(), 0).await;

    let page = format!("{}/page", server.base);
    let (status, og) = alice.get(&preview_path(&page)).await;
    assert_eq!(status, StatusCode::OK, "{og}");
    assert_eq!(og["og:title"], "Cats & dogs");
    assert_eq!(og["og:description"], "All about \"pets\"");
    assert_eq!(og["og:image:type"], "image/png");
    assert_eq!(og["og:image:width"], 40);
    assert_eq!(og["og:image:height"], 30);
    assert_eq!(og["matrix:image:size"], image.len());
    let mxc = og["og:image"].as_str().expect("og:image");
    let media_id = mxc
        .strip_prefix(&format!("mxc://{SERVER_NAME}/"))
        .unwrap_or_else(|| panic!("{mxc} is not our media"));
    // The image is local media: it downloads, byte for byte, anywhere.
    let (status, _, bytes) = get_raw(
        &downloader.client,
        &download_path(media_id),
        Some(&downloader.access_token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, image);

    // Asked again (with a `ts` now): the cached answer, the page not fetched again.
    let fetched = server.page_requests.load(Ordering::SeqCst);
    assert_eq!(fetched, 1);
    let ts = lattice::util::now_ms();
    let (status, again) = alice.get(&format!("{}&ts={ts}", preview_path(&page))).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, og);
    assert_eq!(server.page_requests.load(Ordering::SeqCst), 1);

    // A redirect is followed (and checked) to the page.
    let (status, moved) = alice
        .get(&preview_path(&format!("{}/moved", server.base)))
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["og:title"], "Cats & dogs");

    // Without Open Graph tags: the title and the meta description.
    let (status, plain) = alice
        .get(&preview_path(&format!("{}/plain", server.base)))
        .await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    assert_eq!(plain["og:title"], "A plain page");
    assert_eq!(plain["og:description"], "Just a page");
    assert!(plain.get("og:image").is_none(), "{plain}");
    assert_no_partial_files(&cluster);
}

#[actix_web::test]
async fn url_previews_refuse_denied_addresses_large_pages_and_other_schemes() {
    let server = serve_pages(png(4, 4), 100 * 1024).await;
    let page = format!("{}/page", server.base);

    // The default deny list covers loopback.
    let cluster = TestCluster::start_with(Options {
        settings: vec![("media.url_preview_enabled", json!(true))],
        ..Options::default()
    })
    .await;
    let (alice, _) = alice_on_two_media_instances(&cluster).await;
    let (status, body) = alice.get(&preview_path(&page)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    assert_eq!(body["error"], "IP address blocked");
    // Written as IPv6 or as a name, the same address is refused.
    let port = page.rsplit(':').next().and_then(|p| p.split('/').next());
    let port = port.expect("a port");
    for url in [
        format!("http://[::ffff:127.0.0.1]:{port}/page"),
        format!("http://localhost:{port}/page"),
    ] {
        let (status, body) = alice.get(&preview_path(&url)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{url}: {body}");
    }
    assert_eq!(
        server
            .page_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a denied page was fetched"
    );
    drop(cluster);

    let cluster = TestCluster::start_with(previews_on_for_localhost()).await;
    let (alice, _) = alice_on_two_media_instances(&cluster).await;
    // Larger than max_spider_size (64 KiB).
    let (status, body) = alice
        .get(&preview_path(&format!("{}/big", server.base)))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    // Not HTTP(S), or no URL at all.
    let (status, body) = alice.get(&preview_path("file:///etc/passwd")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = alice.get("/_matrix/client/v1/media/preview_url").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
    // A page that is not there.
    let (status, body) = alice
        .get(&preview_path(&format!("{}/missing", server.base)))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // The legacy path answers the same.
    let (status, body) = alice
        .get(&format!(
            "/_matrix/media/v3/preview_url?url={}",
            crate::cluster::enc(&format!("{}/plain", server.base))
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["og:title"], "A plain page");
}
