//! The few Client-Server API calls the bench makes, over awc, against any
//! homeserver: register (with the `m.login.dummy` user-interactive flow),
//! login, filters, createRoom, join, send and `/sync`.
//!
//! An awc client is tied to the thread that made it, so each client thread of
//! the [`pool`](crate::bench::pool) has its own `MatrixClient`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use awc::http::Method;
use serde::Deserialize;
use serde_json::{json, Value};

/// The largest response body read (a sync of a busy room can be large).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Deadline of every request but `/sync`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a `/sync` may take beyond the long-poll it asked for.
const SYNC_GRACE: Duration = Duration::from_secs(60);

/// Where requests go: most to `base`, `/sync` to `sync`, sends and the
/// measured joins to `send` (for topologies without a router in front).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub base: String,
    /// Never empty: `base` when no sync URL was given.
    sync: Vec<String>,
    pub send: String,
}

impl Endpoints {
    pub fn new(base: &str, sync: &[String], send: Option<&str>) -> Endpoints {
        let clean = |url: &str| url.trim_end_matches('/').to_owned();
        let mut sync: Vec<String> = sync.iter().map(|url| clean(url)).collect();
        if sync.is_empty() {
            sync.push(clean(base));
        }
        Endpoints {
            base: clean(base),
            sync,
            send: clean(send.unwrap_or(base)),
        }
    }

    /// Where `user_id`'s syncs go: always the same one of the sync URLs.
    pub fn sync_for(&self, user_id: &str) -> &str {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same user goes to the same instance
        // in every run.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user_id.hash(&mut hasher);
        &self.sync[(hasher.finish() % self.sync.len() as u64) as usize]
    }
}

/// A failed request, as the run's error table counts it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP {status} {errcode}: {error}")]
    Matrix {
        status: u16,
        errcode: String,
        error: String,
        retry_after: Option<Duration>,
    },
    #[error("{kind}: {detail}")]
    Transport { kind: &'static str, detail: String },
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The key of the error table: the Matrix errcode, else what went wrong.
    pub fn errcode(&self) -> String {
        match self {
            ClientError::Matrix { errcode, .. } => errcode.clone(),
            ClientError::Transport { kind, .. } => (*kind).to_owned(),
            ClientError::Protocol(_) => "bad response".to_owned(),
        }
    }

    /// How long to wait before trying again, when trying again may help.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Matrix {
                status: 429,
                retry_after,
                ..
            } => Some(retry_after.unwrap_or(Duration::from_millis(500))),
            ClientError::Matrix { status, .. } if *status >= 500 => {
                Some(Duration::from_millis(500))
            }
            ClientError::Transport { .. } => Some(Duration::from_millis(500)),
            _ => None,
        }
    }

    fn is(&self, code: &str) -> bool {
        matches!(self, ClientError::Matrix { errcode, .. } if errcode == code)
    }
}

/// An account the bench registered: what every later request needs.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub access_token: String,
}

/// The parts of a `/sync` response the bench reads.
#[derive(Debug, Default, Deserialize)]
pub struct SyncResponse {
    pub next_batch: String,
    #[serde(default)]
    pub rooms: Option<SyncRooms>,
    #[serde(default)]
    pub to_device: Option<ToDeviceSection>,
}

/// `/sync`'s `to_device`: `{sender, type, content}` events.
#[derive(Debug, Default, Deserialize)]
pub struct ToDeviceSection {
    #[serde(default)]
    pub events: Vec<TimelineEvent>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SyncRooms {
    #[serde(default)]
    pub join: std::collections::HashMap<String, JoinedRoom>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JoinedRoom {
    #[serde(default)]
    pub timeline: Option<Timeline>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Timeline {
    #[serde(default)]
    pub events: Vec<TimelineEvent>,
    #[serde(default)]
    pub limited: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct TimelineEvent {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub state_key: Option<String>,
    #[serde(default)]
    pub content: EventContent,
}

#[derive(Debug, Default, Deserialize)]
pub struct EventContent {
    /// The tag the bench puts in every message it sends.
    #[serde(rename = "lattice.bench", default)]
    pub bench: Option<BenchTag>,
    #[serde(default)]
    pub membership: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BenchTag {
    pub run: String,
    pub id: u64,
}

pub struct MatrixClient {
    http: awc::Client,
    endpoints: Arc<Endpoints>,
}

impl MatrixClient {
    /// Must be called on the thread (and inside the `LocalSet`) that uses it.
    pub fn new(endpoints: Arc<Endpoints>) -> MatrixClient {
        let connector = awc::Connector::new()
            // No pool limit: the idle workload holds 10,000 long polls open.
            .limit(0)
            .timeout(Duration::from_secs(30))
            // Below the 5 s idle keep-alive of actix-web servers, so a pooled
            // connection is not reused just as the server closes it.
            .conn_keep_alive(Duration::from_secs(4));
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(REQUEST_TIMEOUT)
            .disable_redirects()
            .finish();
        MatrixClient { http, endpoints }
    }

    async fn request(
        &self,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ClientError> {
        let mut request = self.http.request(method, url).timeout(timeout);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(transport_error)?;
        let bytes = response
            .body()
            .limit(MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| ClientError::Transport {
                kind: "body",
                detail: e.to_string(),
            })?;
        Ok((response.status().as_u16(), bytes))
    }

    /// A request whose success is a 2xx with a JSON body.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.request(method, url, token, body, timeout).await?;
        if !(200..300).contains(&status) {
            return Err(matrix_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// POST /register, first without `auth` to learn the session and flows,
    /// then completing `m.login.dummy` (Synapse and Lattice both offer it when
    /// registration is open without verification). A user that already exists
    /// (a retry after a lost response) logs in instead.
    pub async fn register(&self, username: &str, password: &str) -> Result<Session, ClientError> {
        let url = format!("{}/_matrix/client/v3/register", self.endpoints.base);
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": "lattice bench",
        });
        let (status, bytes) = self
            .request(
                Method::POST,
                url.clone(),
                None,
                Some(&body),
                REQUEST_TIMEOUT,
            )
            .await?;
        let parse = |bytes: &[u8]| {
            serde_json::from_slice::<Value>(bytes)
                .map_err(|e| ClientError::Protocol(format!("register: {e}")))
        };
        let first = match status {
            200..=299 => return registered(parse(&bytes)?),
            401 => parse(&bytes)?,
            _ => {
                let error = matrix_error(status, &bytes);
                if error.is("M_USER_IN_USE") {
                    return self.login(username, password).await;
                }
                return Err(error);
            }
        };
        let offers_dummy = first["flows"].as_array().is_some_and(|flows| {
            flows
                .iter()
                .any(|flow| flow["stages"] == json!(["m.login.dummy"]))
        });
        if !offers_dummy {
            return Err(ClientError::Protocol(format!(
                "register: the server offers no m.login.dummy flow: {}",
                first["flows"]
            )));
        }
        body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
        match self
            .call::<Value>(Method::POST, url, None, Some(&body), REQUEST_TIMEOUT)
            .await
        {
            Ok(value) => registered(value),
            Err(error) if error.is("M_USER_IN_USE") => self.login(username, password).await,
            Err(error) => Err(error),
        }
    }

    /// POST /login with a password.
    pub async fn login(&self, username: &str, password: &str) -> Result<Session, ClientError> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": username },
            "password": password,
            "initial_device_display_name": "lattice bench",
        });
        let url = format!("{}/_matrix/client/v3/login", self.endpoints.base);
        let value: Value = self
            .call(Method::POST, url, None, Some(&body), REQUEST_TIMEOUT)
            .await?;
        registered(value)
    }

    /// POST /user/{userId}/filter, answering the filter id.
    pub async fn create_filter(
        &self,
        session: &Session,
        filter: &Value,
    ) -> Result<String, ClientError> {
        let url = format!(
            "{}/_matrix/client/v3/user/{}/filter",
            self.endpoints.base,
            path_segment(&session.user_id)
        );
        let value: Value = self
            .call(
                Method::POST,
                url,
                Some(&session.access_token),
                Some(filter),
                REQUEST_TIMEOUT,
            )
            .await?;
        value["filter_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("filter: no filter_id".into()))
    }

    /// POST /createRoom (public, so members join by id), answering the room id.
    pub async fn create_room(&self, session: &Session, name: &str) -> Result<String, ClientError> {
        let url = format!("{}/_matrix/client/v3/createRoom", self.endpoints.base);
        let body = json!({ "preset": "public_chat", "name": name });
        let value: Value = self
            .call(
                Method::POST,
                url,
                Some(&session.access_token),
                Some(&body),
                REQUEST_TIMEOUT,
            )
            .await?;
        value["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("createRoom: no room_id".into()))
    }

    /// POST /join/{roomId}. `measured` joins go to the send endpoint.
    pub async fn join(
        &self,
        session: &Session,
        room_id: &str,
        measured: bool,
    ) -> Result<(), ClientError> {
        let base = if measured {
            &self.endpoints.send
        } else {
            &self.endpoints.base
        };
        let url = format!("{base}/_matrix/client/v3/join/{}", path_segment(room_id));
        self.call::<Value>(
            Method::POST,
            url,
            Some(&session.access_token),
            Some(&json!({})),
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// PUT /rooms/{roomId}/send/m.room.message/{txnId}, answering the event id.
    pub async fn send_message(
        &self,
        session: &Session,
        room_id: &str,
        txn_id: &str,
        content: &Value,
    ) -> Result<String, ClientError> {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            self.endpoints.send,
            path_segment(room_id),
            path_segment(txn_id)
        );
        let value: Value = self
            .call(
                Method::PUT,
                url,
                Some(&session.access_token),
                Some(content),
                REQUEST_TIMEOUT,
            )
            .await?;
        value["event_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("send: no event_id".into()))
    }

    /// PUT /sendToDevice/{eventType}/{txnId} with `messages` (user → device
    /// or `*` → content).
    pub async fn send_to_device(
        &self,
        session: &Session,
        kind: &str,
        txn_id: &str,
        messages: &Value,
    ) -> Result<(), ClientError> {
        let url = format!(
            "{}/_matrix/client/v3/sendToDevice/{}/{}",
            self.endpoints.send,
            path_segment(kind),
            path_segment(txn_id)
        );
        self.call::<Value>(
            Method::PUT,
            url,
            Some(&session.access_token),
            Some(&json!({ "messages": messages })),
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// PUT /rooms/{roomId}/typing/{userId}: typing for `timeout`.
    pub async fn send_typing(
        &self,
        session: &Session,
        room_id: &str,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/typing/{}",
            self.endpoints.send,
            path_segment(room_id),
            path_segment(&session.user_id)
        );
        let body = json!({ "typing": true, "timeout": timeout.as_millis() as u64 });
        self.call::<Value>(
            Method::PUT,
            url,
            Some(&session.access_token),
            Some(&body),
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// POST /rooms/{roomId}/receipt/m.read/{eventId}.
    pub async fn send_read_receipt(
        &self,
        session: &Session,
        room_id: &str,
        event_id: &str,
    ) -> Result<(), ClientError> {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            self.endpoints.send,
            path_segment(room_id),
            path_segment(event_id)
        );
        self.call::<Value>(
            Method::POST,
            url,
            Some(&session.access_token),
            Some(&json!({})),
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// GET /sync, long-polling up to `timeout` when `since` is given.
    pub async fn sync(
        &self,
        session: &Session,
        filter_id: &str,
        since: Option<&str>,
        timeout: Duration,
    ) -> Result<SyncResponse, ClientError> {
        let mut url = format!(
            "{}/_matrix/client/v3/sync?filter={}&timeout={}",
            self.endpoints.sync_for(&session.user_id),
            path_segment(filter_id),
            timeout.as_millis()
        );
        if let Some(since) = since {
            url.push_str("&since=");
            url.push_str(&path_segment(since));
        }
        self.call(
            Method::GET,
            url,
            Some(&session.access_token),
            None,
            timeout + SYNC_GRACE,
        )
        .await
    }
}

fn registered(value: Value) -> Result<Session, ClientError> {
    #[derive(Deserialize)]
    struct Registered {
        user_id: String,
        access_token: Option<String>,
    }
    let registered: Registered = serde_json::from_value(value)
        .map_err(|e| ClientError::Protocol(format!("register: {e}")))?;
    let access_token = registered
        .access_token
        .ok_or_else(|| ClientError::Protocol("register: no access_token".into()))?;
    Ok(Session {
        user_id: registered.user_id,
        access_token,
    })
}

fn matrix_error(status: u16, body: &[u8]) -> ClientError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let errcode = value["errcode"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let error = value["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let retry_after = value["retry_after_ms"].as_u64().map(Duration::from_millis);
    ClientError::Matrix {
        status,
        errcode,
        error,
        retry_after,
    }
}

fn transport_error(error: awc::error::SendRequestError) -> ClientError {
    use awc::error::SendRequestError;
    let kind = match &error {
        SendRequestError::Timeout => "timeout",
        SendRequestError::Connect(_) => "connect",
        _ => "transport",
    };
    ClientError::Transport {
        kind,
        detail: error.to_string(),
    }
}

impl MatrixClient {
    /// POST /_matrix/media/v3/upload: the `mxc://` URI.
    pub async fn upload_media(
        &self,
        session: &Session,
        content_type: &str,
        body: Bytes,
    ) -> Result<String, ClientError> {
        let url = format!("{}/_matrix/media/v3/upload", self.endpoints.base);
        let mut response = self
            .http
            .post(url)
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(&session.access_token)
            .insert_header(("Content-Type", content_type))
            .send_body(body)
            .await
            .map_err(transport_error)?;
        let bytes = response.body().await.map_err(|e| ClientError::Transport {
            kind: "body",
            detail: e.to_string(),
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(matrix_error(status, &bytes));
        }
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        value["content_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("upload: no content_uri".into()))
    }

    /// GET /_matrix/client/v1/media/download/...: the bytes counted as they
    /// come (never held).
    pub async fn download_media(&self, session: &Session, mxc: &str) -> Result<u64, ClientError> {
        let path = mxc_path(mxc)?;
        self.count_body(
            session,
            format!(
                "{}/_matrix/client/v1/media/download/{path}",
                self.endpoints.base
            ),
        )
        .await
    }

    /// GET /_matrix/client/v1/media/thumbnail/...: the thumbnail's size.
    pub async fn thumbnail_media(
        &self,
        session: &Session,
        mxc: &str,
        width: u32,
        height: u32,
        method: &str,
    ) -> Result<u64, ClientError> {
        let path = mxc_path(mxc)?;
        self.count_body(
            session,
            format!(
                "{}/_matrix/client/v1/media/thumbnail/{path}?width={width}&height={height}&method={method}",
                self.endpoints.base
            ),
        )
        .await
    }

    async fn count_body(&self, session: &Session, url: String) -> Result<u64, ClientError> {
        use futures::StreamExt;
        let mut response = self
            .http
            .get(url)
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(&session.access_token)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.body().await.unwrap_or_default();
            return Err(matrix_error(status, &bytes));
        }
        let mut length = 0u64;
        while let Some(chunk) = response.next().await {
            let chunk = chunk.map_err(|e| ClientError::Transport {
                kind: "body",
                detail: e.to_string(),
            })?;
            length += chunk.len() as u64;
        }
        Ok(length)
    }
}

/// `server/mediaId` of an `mxc://` URI, each part path-encoded.
fn mxc_path(mxc: &str) -> Result<String, ClientError> {
    let (server, media_id) = mxc
        .strip_prefix("mxc://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| ClientError::Protocol(format!("not an mxc URI: {mxc}")))?;
    Ok(format!(
        "{}/{}",
        path_segment(server),
        path_segment(media_id)
    ))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a
/// path segment or a query value.
pub fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_escape_sigils_and_separators() {
        assert_eq!(path_segment("!abc:example.org"), "%21abc%3Aexample.org");
        assert_eq!(path_segment("s12_4~x/y z"), "s12_4~x%2Fy%20z");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn each_user_syncs_with_one_instance_and_users_spread_over_all() {
        let one = Endpoints::new("http://a/", &[], None);
        assert_eq!(one.sync_for("@u1:x"), "http://a");
        let urls = vec!["http://s1".to_owned(), "http://s2/".to_owned()];
        let two = Endpoints::new("http://a", &urls, None);
        let users: Vec<String> = (0..100).map(|i| format!("@user{i}:x")).collect();
        for user in &users {
            assert_eq!(two.sync_for(user), two.sync_for(user));
        }
        let on_first = users
            .iter()
            .filter(|user| two.sync_for(user) == "http://s1")
            .count();
        assert!((30..=70).contains(&on_first), "{on_first} of 100 on s1");
        assert!(users.iter().all(|user| two.sync_for(user) != "http://a"));
    }

    #[test]
    fn errors_keep_the_errcode_and_the_retry_delay() {
        let error = matrix_error(
            429,
            br#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":250}"#,
        );
        assert_eq!(error.errcode(), "M_LIMIT_EXCEEDED");
        assert_eq!(error.retry_after(), Some(Duration::from_millis(250)));
        let error = matrix_error(403, br#"{"errcode":"M_FORBIDDEN","error":"no"}"#);
        assert_eq!(error.retry_after(), None);
        let error = matrix_error(502, b"<html>bad gateway</html>");
        assert_eq!(error.errcode(), "HTTP 502");
        assert!(error.retry_after().is_some());
    }

    #[test]
    fn sync_responses_parse_with_only_what_the_bench_reads() {
        let body = json!({
            "next_batch": "s9",
            "rooms": { "join": { "!r:x": { "timeline": { "limited": true, "events": [
                { "type": "m.room.message", "sender": "@a:x", "event_id": "$e",
                  "content": { "body": "hi", "lattice.bench": { "run": "abc", "id": 12 } } },
                { "type": "m.room.member", "state_key": "@b:x", "content": { "membership": "join" } }
            ] } } }, "invite": {}, "leave": {} },
            "presence": { "events": [] }
        });
        let sync: SyncResponse = serde_json::from_value(body).unwrap();
        let room = &sync.rooms.unwrap().join["!r:x"];
        let timeline = room.timeline.as_ref().unwrap();
        assert!(timeline.limited);
        assert_eq!(
            timeline.events[0].content.bench,
            Some(BenchTag {
                run: "abc".into(),
                id: 12
            })
        );
        assert_eq!(timeline.events[1].state_key.as_deref(), Some("@b:x"));
        assert_eq!(
            timeline.events[1].content.membership.as_deref(),
            Some("join")
        );
        let empty: SyncResponse = serde_json::from_value(json!({ "next_batch": "s1" })).unwrap();
        assert!(empty.rooms.is_none());
    }
}
