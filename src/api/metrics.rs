//! `GET /health` and `GET /metrics`, answered by every instance whatever its
//! roles and without authentication, and the middleware that counts requests.
//!
//! Requests are counted per endpoint, where the endpoint is the route pattern
//! actix matched (`/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}`),
//! never the raw path: room ids and transaction ids would make the number of
//! series unbounded. `/metrics` writes the Prometheus text format by hand; it
//! is a few lines of escaping and needs no client library.
//!
//! Besides requests, a scrape reports what an operator of a split deployment
//! watches: how many messages wait in each mailbox (a local actor's inbox, and
//! the Redis stream of each mailbox this instance serves, read with
//! `XLEN`/`XPENDING` at scrape time), how long this instance's remote mailbox
//! calls take (timed by the mailbox proxy in `lattice-actors`, per wire
//! name), how far this instance's view of each stream writer lags behind
//! what the writer announced, and how often actors were restarted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpResponse};
use lattice_actors::{
    ActorSnapshot, Backlog, CallKey, CallStats, RedisTransport, RedisTransportStats, Supervisor,
    SupervisorSnapshot, Transport,
};

use crate::streams::notifier::Notifier;
use crate::streams::replication::{Replication, WriterLag};

/// Upper bounds (seconds) of the latency histogram's buckets: from a cached
/// read to a `/sync` long-poll that waited its whole timeout.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The endpoint label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// The `Content-Type` of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for Redis to report a mailbox's backlog; a
/// mailbox whose backlog did not come in time is left out of that scrape.
const BACKLOG_TIMEOUT: Duration = Duration::from_millis(500);

/// The request counters of one instance, and what `/metrics` reports. The
/// node keeps one in an `Arc`, shared by the middleware of every HTTP worker
/// and the `/metrics` handler.
pub struct Metrics {
    instance_name: String,
    /// Read at every scrape for actor restarts and queue depths.
    supervisor: Arc<Supervisor>,
    /// The Redis transport of a split instance: its remote call latencies,
    /// and the backlog of the mailboxes in `served`.
    transport: Option<RedisTransport>,
    /// The destinations this instance serves through `transport`.
    served: Vec<String>,
    /// Replication of a split instance: announced positions, and this
    /// instance's view of the events stream they are compared with.
    replication: Option<Arc<Replication>>,
    /// Every stream's position as this instance has seen it persisted.
    streams: Option<Notifier>,
    started: Instant,
    in_flight: AtomicI64,
    endpoints: Mutex<BTreeMap<EndpointKey, EndpointStats>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct EndpointKey {
    method: &'static str,
    endpoint: String,
}

#[derive(Debug, Clone, Default)]
struct EndpointStats {
    /// Responses by status class: 1xx at index 0 ... 5xx at index 4.
    by_status_class: [u64; 5],
    /// Requests at or below each bound of [`LATENCY_BUCKETS`] (not
    /// cumulative here; the exposition adds them up).
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Metrics {
    pub fn new(instance_name: &str, supervisor: Arc<Supervisor>) -> Metrics {
        Metrics {
            instance_name: instance_name.to_owned(),
            supervisor,
            transport: None,
            served: Vec::new(),
            replication: None,
            streams: None,
            started: Instant::now(),
            in_flight: AtomicI64::new(0),
            endpoints: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reports the remote calls made through `transport`, and the backlog of
    /// the mailboxes this instance serves at `served` destinations.
    pub fn with_mailboxes(mut self, transport: RedisTransport, served: Vec<String>) -> Metrics {
        self.transport = Some(transport);
        self.served = served;
        self
    }

    /// Reports the position of every stream of the registry.
    pub fn with_streams(mut self, notifier: Notifier) -> Metrics {
        self.streams = Some(notifier);
        self
    }

    /// Reports replication lag of every stream: what writers announced
    /// against what this instance has processed.
    pub fn with_replication(mut self, replication: Arc<Replication>) -> Metrics {
        self.replication = Some(replication);
        self
    }

    /// The middleware counting every request into `self`; wrap it around the
    /// whole app so that requests no route matched are counted too.
    pub fn middleware(self: &Arc<Self>) -> RequestMetrics {
        RequestMetrics {
            metrics: Arc::clone(self),
        }
    }

    /// Counts one answered request. `endpoint` is the matched route pattern,
    /// `None` when no route matched.
    pub fn record(
        &self,
        method: &Method,
        endpoint: Option<&str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let key = EndpointKey {
            method: method_label(method),
            endpoint: endpoint.unwrap_or(UNMATCHED).to_owned(),
        };
        let seconds = elapsed.as_secs_f64();
        let Ok(mut endpoints) = self.endpoints.lock() else {
            return;
        };
        let stats = endpoints.entry(key).or_default();
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        stats.by_status_class[class] += 1;
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            stats.buckets[bucket] += 1;
        }
        stats.count += 1;
        stats.sum_seconds += seconds;
    }

    /// Everything `/metrics` reports, in the Prometheus text format.
    pub async fn render(&self) -> String {
        let mut scrape = Scrape {
            actors: self.supervisor.observe_all().await,
            ..Scrape::default()
        };
        if let Some(transport) = &self.transport {
            for destination in &self.served {
                match tokio::time::timeout(BACKLOG_TIMEOUT, transport.backlog(destination)).await {
                    Ok(Ok(backlog)) => scrape.backlogs.push((destination.clone(), backlog)),
                    Ok(Err(error)) => {
                        tracing::debug!(%destination, %error, "no mailbox backlog for /metrics")
                    }
                    Err(_) => {
                        tracing::debug!(%destination, "mailbox backlog timed out for /metrics")
                    }
                }
            }
            if let Some(calls) = transport.call_latency() {
                scrape.calls = calls.snapshot();
            }
            scrape.transport = Some(transport.redis_stats());
        }
        if let Some(notifier) = &self.streams {
            scrape.stream_positions = notifier.positions_by_stream();
        }
        if let Some(replication) = &self.replication {
            let stats = &replication.stats;
            scrape.lags = Some(replication.lags());
            scrape.replication_rejected = stats.rejected.load(Ordering::Relaxed);
            scrape.replication_reconnects = stats.reconnects.load(Ordering::Relaxed);
            scrape.stalled = stats.stalled();
            scrape.recoveries = stats.recoveries();
        }
        self.render_with(&scrape)
    }

    fn render_with(&self, scrape: &Scrape) -> String {
        let mut out = Exposition::default();
        out.family(
            "lattice_instance_info",
            "gauge",
            "This instance's name and version (always 1).",
        );
        out.sample(
            "lattice_instance_info",
            &[
                ("instance_name", &self.instance_name),
                ("version", env!("CARGO_PKG_VERSION")),
            ],
            1.0,
        );
        out.family(
            "lattice_uptime_seconds",
            "gauge",
            "Seconds since this instance started serving.",
        );
        out.sample(
            "lattice_uptime_seconds",
            &[],
            self.started.elapsed().as_secs_f64(),
        );
        out.family(
            "lattice_http_requests_in_flight",
            "gauge",
            "HTTP requests being handled now (long-polls included).",
        );
        out.sample(
            "lattice_http_requests_in_flight",
            &[],
            self.in_flight.load(Ordering::Relaxed) as f64,
        );
        self.render_requests(&mut out);
        render_actors(&mut out, &scrape.actors);
        render_mailboxes(&mut out, scrape);
        render_calls(&mut out, &scrape.calls);
        render_replication(&mut out, scrape);
        render_streams(&mut out, scrape);
        out.finish()
    }

    fn render_requests(&self, out: &mut Exposition) {
        let endpoints = match self.endpoints.lock() {
            Ok(endpoints) => endpoints.clone(),
            Err(_) => return,
        };
        out.family(
            "lattice_http_requests_total",
            "counter",
            "HTTP requests answered, by method, route pattern and status class.",
        );
        for (key, stats) in &endpoints {
            for (index, count) in stats.by_status_class.iter().enumerate() {
                if *count == 0 {
                    continue;
                }
                let status = format!("{}xx", index + 1);
                out.sample(
                    "lattice_http_requests_total",
                    &[
                        ("method", key.method),
                        ("endpoint", &key.endpoint),
                        ("status", &status),
                    ],
                    *count as f64,
                );
            }
        }
        let name = "lattice_http_request_duration_seconds";
        out.family(
            name,
            "histogram",
            "Time from receiving a request to its response head, by method and route pattern.",
        );
        for (key, stats) in &endpoints {
            let labels = [("method", key.method), ("endpoint", key.endpoint.as_str())];
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(stats.buckets) {
                cumulative += count;
                let le = format_value(*bound);
                out.sample(
                    &format!("{name}_bucket"),
                    &[labels[0], labels[1], ("le", &le)],
                    cumulative as f64,
                );
            }
            out.sample(
                &format!("{name}_bucket"),
                &[labels[0], labels[1], ("le", "+Inf")],
                stats.count as f64,
            );
            out.sample(&format!("{name}_sum"), &labels, stats.sum_seconds);
            out.sample(&format!("{name}_count"), &labels, stats.count as f64);
        }
    }
}

/// What one scrape gathered besides the request counters, which it reads
/// while rendering.
#[derive(Default)]
struct Scrape {
    actors: SupervisorSnapshot,
    /// The Redis mailboxes this instance serves, with their backlog.
    backlogs: Vec<(String, Backlog)>,
    /// Remote calls this instance made.
    calls: Vec<(CallKey, CallStats)>,
    /// The counters of a split instance's Redis transport.
    transport: Option<RedisTransportStats>,
    /// `None` without replication (the monolith): no stream has a writer
    /// elsewhere, so there is nothing to lag behind.
    lags: Option<Vec<WriterLag>>,
    replication_rejected: u64,
    replication_reconnects: u64,
    /// The writers the stall watchdog finds stalled, as `(stream, writer)`.
    stalled: Vec<(String, String)>,
    /// Catch-ups from PostgreSQL that found what replication had not
    /// brought, by stream.
    recoveries: BTreeMap<String, u64>,
    /// Each stream's persisted-up-to position here.
    stream_positions: std::collections::BTreeMap<&'static str, i64>,
}

/// A metric family read from every actor's snapshot: name, type, help, value.
type ActorFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ActorSnapshot) -> u64,
);

fn render_actors(out: &mut Exposition, snapshot: &SupervisorSnapshot) {
    let families: [ActorFamily; 3] = [
        (
            "lattice_actor_restarts_total",
            "counter",
            "Times the supervisor restarted an actor after it failed.",
            |a| a.restarts,
        ),
        (
            "lattice_actor_handled_messages_total",
            "counter",
            "Messages an actor handled, over all its incarnations.",
            |a| a.handled,
        ),
        (
            "lattice_actor_expired_messages_total",
            "counter",
            "Messages dropped because their deadline passed in the inbox.",
            |a| a.expired,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        for actor in &snapshot.actors {
            out.sample(name, &[("actor", &actor.name)], value(actor) as f64);
        }
    }
}

fn render_mailboxes(out: &mut Exposition, scrape: &Scrape) {
    out.family(
        "lattice_mailbox_depth",
        "gauge",
        "Messages waiting for their actor: in a local actor's inbox (transport=\"local\", \
         mailbox = the actor), or in the Redis stream of a mailbox this instance serves, \
         not yet delivered to an owner (transport=\"redis\", mailbox = the destination).",
    );
    for actor in &scrape.actors.actors {
        out.sample(
            "lattice_mailbox_depth",
            &[("mailbox", &actor.name), ("transport", "local")],
            actor.queued as f64,
        );
    }
    for (destination, backlog) in &scrape.backlogs {
        out.sample(
            "lattice_mailbox_depth",
            &[("mailbox", destination), ("transport", "redis")],
            backlog.queued as f64,
        );
    }
    out.family(
        "lattice_mailbox_pending",
        "gauge",
        "Messages of a Redis mailbox this instance serves that an owner took and has not \
         acknowledged yet: being handled, or left by an owner that died.",
    );
    for (destination, backlog) in &scrape.backlogs {
        out.sample(
            "lattice_mailbox_pending",
            &[("mailbox", destination)],
            backlog.pending as f64,
        );
    }
    let Some(transport) = &scrape.transport else {
        return;
    };
    out.family(
        "lattice_mailbox_rejected_total",
        "counter",
        "Redis mailbox messages this instance dropped unhandled, by reason: hmac (a request \
         whose HMAC did not verify), reply_hmac (the same for a reply), replay (a copy of a \
         request already accepted, or one without a near deadline), malformed.",
    );
    for (reason, count) in [
        ("hmac", transport.common.hmac_rejected),
        ("reply_hmac", transport.common.reply_hmac_rejected),
        ("replay", transport.replayed),
        ("malformed", transport.malformed),
    ] {
        out.sample(
            "lattice_mailbox_rejected_total",
            &[("reason", reason)],
            count as f64,
        );
    }
}

fn render_calls(out: &mut Exposition, calls: &[(CallKey, CallStats)]) {
    let name = "lattice_mailbox_call_seconds";
    out.family(
        name,
        "histogram",
        "Time this instance waited for remote mailbox calls, answered or failed, by message \
         wire name and destination.",
    );
    for (key, stats) in calls {
        let labels = [
            ("message", key.wire_name),
            ("destination", key.destination.as_str()),
        ];
        for (bound, count) in stats.latency.cumulative() {
            let le = format_value(bound);
            out.sample(
                &format!("{name}_bucket"),
                &[labels[0], labels[1], ("le", &le)],
                count as f64,
            );
        }
        out.sample(
            &format!("{name}_bucket"),
            &[labels[0], labels[1], ("le", "+Inf")],
            stats.latency.count as f64,
        );
        out.sample(&format!("{name}_sum"), &labels, stats.latency.sum_seconds);
        out.sample(
            &format!("{name}_count"),
            &labels,
            stats.latency.count as f64,
        );
    }
    out.family(
        "lattice_mailbox_call_failures_total",
        "counter",
        "Remote mailbox calls that failed, by message, destination and error \
         (timeout, unreachable, decode, remote, closed).",
    );
    for (key, stats) in calls {
        for (error, count) in &stats.failures {
            out.sample(
                "lattice_mailbox_call_failures_total",
                &[
                    ("message", key.wire_name),
                    ("destination", &key.destination),
                    ("error", error),
                ],
                *count as f64,
            );
        }
    }
}

/// A gauge read from every writer's lag: name, help, value.
type LagFamily = (&'static str, &'static str, fn(&WriterLag) -> i64);

fn render_streams(out: &mut Exposition, scrape: &Scrape) {
    if scrape.stream_positions.is_empty() {
        return;
    }
    out.family(
        "lattice_stream_position",
        "gauge",
        "The position up to which every writer of each stream has persisted, as this instance has seen it.",
    );
    for (stream, position) in &scrape.stream_positions {
        out.sample(
            "lattice_stream_position",
            &[("stream", stream)],
            *position as f64,
        );
    }
}

fn render_replication(out: &mut Exposition, scrape: &Scrape) {
    let Some(lags) = &scrape.lags else {
        return;
    };
    let families: [LagFamily; 3] = [
        (
            "lattice_replication_lag",
            "Stream positions a writer announced that this instance has not processed yet.",
            WriterLag::lag,
        ),
        (
            "lattice_replication_position",
            "The position of a stream writer this instance has processed (and serves up to).",
            |lag| lag.processed,
        ),
        (
            "lattice_replication_announced_position",
            "The latest position a stream writer announced that this instance heard.",
            |lag| lag.announced,
        ),
    ];
    for (name, help, value) in families {
        out.family(name, "gauge", help);
        for lag in lags {
            out.sample(
                name,
                &[("stream", &lag.stream), ("writer", &lag.writer)],
                value(lag) as f64,
            );
        }
    }
    out.family(
        "lattice_replication_stalled",
        "gauge",
        "1 while a stream writer is stalled for this instance: PostgreSQL stayed ahead of what replication brought for a whole check, and its rows are read back from PostgreSQL.",
    );
    for lag in lags {
        let stalled = scrape
            .stalled
            .iter()
            .any(|(stream, writer)| *stream == lag.stream && *writer == lag.writer);
        out.sample(
            "lattice_replication_stalled",
            &[("stream", &lag.stream), ("writer", &lag.writer)],
            if stalled { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "lattice_replication_recoveries_total",
        "counter",
        "Catch-ups from PostgreSQL that found rows or positions replication had not brought.",
    );
    let mut streams: Vec<&str> = lags.iter().map(|lag| lag.stream.as_str()).collect();
    streams.extend(scrape.recoveries.keys().map(String::as_str));
    streams.sort_unstable();
    streams.dedup();
    for stream in streams {
        out.sample(
            "lattice_replication_recoveries_total",
            &[("stream", stream)],
            scrape.recoveries.get(stream).copied().unwrap_or(0) as f64,
        );
    }
    out.family(
        "lattice_replication_rejected_total",
        "counter",
        "Replication messages dropped unapplied: bad or missing HMAC, or malformed.",
    );
    out.sample(
        "lattice_replication_rejected_total",
        &[],
        scrape.replication_rejected as f64,
    );
    out.family(
        "lattice_replication_reconnects_total",
        "counter",
        "Times the replication subscription was lost and set up again.",
    );
    out.sample(
        "lattice_replication_reconnects_total",
        &[],
        scrape.replication_reconnects as f64,
    );
}

/// A bounded set of method labels: a client can send any token as a method,
/// and each would otherwise become a series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Builds a Prometheus text exposition (format 0.0.4). Other parts of the
/// node can add their own families with it.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, label_value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(label_value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str(r"\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str(r"\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Integers without a fraction, infinities as Prometheus spells them.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// `/health` and `/metrics`. They need the node's [`Metrics`] in the app
/// data, as `web::Data<Metrics>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/health")
            .route(web::get().to(health))
            .route(web::head().to(health)),
    )
    .service(web::resource("/metrics").route(web::get().to(metrics)));
}

/// GET /health
///
/// `200 OK` while the instance serves HTTP; for load balancers and `lattice up`.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("OK")
}

/// GET /metrics
pub async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(metrics.render().await)
}

/// The middleware made by [`Metrics::middleware`].
pub struct RequestMetrics {
    metrics: Arc<Metrics>,
}

impl<S, B> Transform<S, ServiceRequest> for RequestMetrics
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestMetricsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestMetricsService {
            service,
            metrics: Arc::clone(&self.metrics),
        }))
    }
}

pub struct RequestMetricsService<S> {
    service: S,
    metrics: Arc<Metrics>,
}

/// Counts a request in flight until it is dropped, which also covers a
/// long-poll whose client went away before the answer.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn new(metrics: &Arc<Metrics>) -> InFlight {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(metrics))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, B> Service<ServiceRequest> for RequestMetricsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let endpoint = request.match_pattern();
        let in_flight = InFlight::new(&self.metrics);
        let response = self.service.call(request);
        Box::pin(async move {
            let response = response.await;
            let status = match &response {
                Ok(response) => response.status(),
                Err(error) => error.as_response_error().status_code(),
            };
            in_flight
                .0
                .record(&method, endpoint.as_deref(), status, started.elapsed());
            drop(in_flight);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test as actix_test, App};

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new("main", Arc::new(Supervisor::new())))
    }

    #[test]
    fn labels_and_values_are_escaped_and_formatted() {
        let mut out = Exposition::default();
        out.family("x_total", "counter", "A help\nline with \\.");
        out.sample("x_total", &[("a", "q\"uo\\te\nd")], 3.0);
        out.sample("x_total", &[], 0.25);
        out.sample("x_total", &[("le", "+Inf")], f64::INFINITY);
        assert_eq!(
            out.finish(),
            "# HELP x_total A help\\nline with \\\\.\n\
             # TYPE x_total counter\n\
             x_total{a=\"q\\\"uo\\\\te\\nd\"} 3\n\
             x_total 0.25\n\
             x_total{le=\"+Inf\"} +Inf\n"
        );
    }

    #[test]
    fn a_histogram_is_cumulative_with_sum_and_count() {
        let metrics = metrics();
        let endpoint = Some("/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}");
        for millis in [2, 2, 40, 3000] {
            metrics.record(
                &Method::PUT,
                endpoint,
                StatusCode::OK,
                Duration::from_millis(millis),
            );
        }
        metrics.record(
            &Method::PUT,
            endpoint,
            StatusCode::FORBIDDEN,
            Duration::from_millis(1),
        );
        let text = metrics.render_with(&Scrape::default());
        let labels = r#"method="PUT",endpoint="/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}""#;
        for line in [
            format!("lattice_http_requests_total{{{labels},status=\"2xx\"}} 4"),
            format!("lattice_http_requests_total{{{labels},status=\"4xx\"}} 1"),
            format!("lattice_http_request_duration_seconds_bucket{{{labels},le=\"0.001\"}} 1"),
            format!("lattice_http_request_duration_seconds_bucket{{{labels},le=\"0.0025\"}} 3"),
            format!("lattice_http_request_duration_seconds_bucket{{{labels},le=\"0.05\"}} 4"),
            format!("lattice_http_request_duration_seconds_bucket{{{labels},le=\"2.5\"}} 4"),
            format!("lattice_http_request_duration_seconds_bucket{{{labels},le=\"5\"}} 5"),
            format!("lattice_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 5"),
            format!("lattice_http_request_duration_seconds_sum{{{labels}}} 3.045"),
            format!("lattice_http_request_duration_seconds_count{{{labels}}} 5"),
            "# TYPE lattice_http_request_duration_seconds histogram".to_owned(),
            r#"lattice_instance_info{instance_name="main",version="0.1.0"} 1"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("3xx"), "{text}");
    }

    #[test]
    fn methods_are_a_bounded_set() {
        let odd = Method::from_bytes(b"BREW").expect("a token");
        assert_eq!(method_label(&odd), "other");
        assert_eq!(method_label(&Method::GET), "GET");
    }

    #[actix_web::test]
    async fn the_middleware_counts_route_patterns_not_paths() {
        let metrics = metrics();
        // Stands in for role gating: a middleware inside this one that
        // refuses a request with an error instead of a response.
        async fn refuse_sync(
            request: ServiceRequest,
            next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
        ) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
            if request.path().ends_with("/sync") {
                return Err(actix_web::error::ErrorNotFound("not here"));
            }
            next.call(request).await
        }
        let app = actix_test::init_service(
            App::new()
                .app_data(web::Data::from(Arc::clone(&metrics)))
                .wrap(actix_web::middleware::from_fn(refuse_sync))
                .wrap(metrics.middleware())
                .configure(configure)
                .service(
                    web::scope("/_matrix/client/v3")
                        .service(
                            web::resource("/rooms/{room_id}/send/{event_type}/{txn_id}")
                                .route(web::put().to(HttpResponse::Ok)),
                        )
                        .service(web::resource("/sync").route(web::get().to(HttpResponse::Ok))),
                )
                .default_service(web::to(HttpResponse::NotFound)),
        )
        .await;
        for txn in ["1", "2"] {
            let request = actix_test::TestRequest::put()
                .uri(&format!(
                    "/_matrix/client/v3/rooms/!r:x/send/m.room.message/{txn}"
                ))
                .to_request();
            assert_eq!(actix_test::call_service(&app, request).await.status(), 200);
        }
        let request = actix_test::TestRequest::get()
            .uri("/nowhere/at/all")
            .to_request();
        assert_eq!(actix_test::call_service(&app, request).await.status(), 404);
        let request = actix_test::TestRequest::get()
            .uri("/_matrix/client/v3/sync")
            .to_request();
        let refused = actix_test::try_call_service(&app, request).await;
        assert_eq!(
            refused.err().map(|e| e.as_response_error().status_code()),
            Some(StatusCode::NOT_FOUND)
        );

        let request = actix_test::TestRequest::get().uri("/health").to_request();
        let response = actix_test::call_service(&app, request).await;
        assert_eq!(response.status(), 200);
        assert_eq!(actix_test::read_body(response).await, "OK");

        let request = actix_test::TestRequest::get().uri("/metrics").to_request();
        let response = actix_test::call_service(&app, request).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(CONTENT_TYPE)
        );
        let body = actix_test::read_body(response).await;
        let text = String::from_utf8_lossy(&body);
        for line in [
            r#"lattice_http_requests_total{method="PUT",endpoint="/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}",status="2xx"} 2"#,
            r#"lattice_http_requests_total{method="GET",endpoint="unmatched",status="4xx"} 1"#,
            r#"lattice_http_requests_total{method="GET",endpoint="/health",status="2xx"} 1"#,
            r#"lattice_http_requests_total{method="GET",endpoint="/_matrix/client/v3/sync",status="4xx"} 1"#,
            // The scrape itself is still in flight while it renders.
            "lattice_http_requests_in_flight 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("!r:x"), "{text}");
    }

    #[test]
    fn redis_mailboxes_remote_calls_and_replication_lag_are_reported() {
        let calls = lattice_actors::CallLatency::default();
        calls.record(
            "events.send.v1",
            "events@events1",
            Ok(()),
            Duration::from_millis(4),
        );
        calls.record(
            "events.send.v1",
            "events@events1",
            Err(&lattice_actors::MailboxError::Timeout),
            Duration::from_secs(30),
        );
        let scrape = Scrape {
            backlogs: vec![(
                "events@events1".to_owned(),
                Backlog {
                    queued: 3,
                    pending: 1,
                },
            )],
            calls: calls.snapshot(),
            lags: Some(vec![WriterLag {
                stream: "events".into(),
                writer: "events1".into(),
                announced: 42,
                processed: 40,
            }]),
            replication_rejected: 5,
            stalled: vec![("events".into(), "events1".into())],
            recoveries: [("events".to_owned(), 2)].into(),
            transport: Some(RedisTransportStats {
                replayed: 3,
                ..RedisTransportStats::default()
            }),
            ..Scrape::default()
        };
        let text = metrics().render_with(&scrape);
        let labels = r#"message="events.send.v1",destination="events@events1""#;
        for line in [
            r#"lattice_mailbox_depth{mailbox="events@events1",transport="redis"} 3"#.to_owned(),
            r#"lattice_mailbox_pending{mailbox="events@events1"} 1"#.to_owned(),
            format!("lattice_mailbox_call_seconds_bucket{{{labels},le=\"0.0025\"}} 0"),
            format!("lattice_mailbox_call_seconds_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("lattice_mailbox_call_seconds_bucket{{{labels},le=\"10\"}} 1"),
            format!("lattice_mailbox_call_seconds_bucket{{{labels},le=\"30\"}} 2"),
            format!("lattice_mailbox_call_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("lattice_mailbox_call_seconds_count{{{labels}}} 2"),
            format!("lattice_mailbox_call_seconds_sum{{{labels}}} 30.004"),
            format!("lattice_mailbox_call_failures_total{{{labels},error=\"timeout\"}} 1"),
            r#"lattice_replication_lag{stream="events",writer="events1"} 2"#.to_owned(),
            r#"lattice_replication_position{stream="events",writer="events1"} 40"#.to_owned(),
            r#"lattice_replication_announced_position{stream="events",writer="events1"} 42"#
                .to_owned(),
            "lattice_replication_rejected_total 5".to_owned(),
            r#"lattice_replication_stalled{stream="events",writer="events1"} 1"#.to_owned(),
            r#"lattice_replication_recoveries_total{stream="events"} 2"#.to_owned(),
            "# TYPE lattice_replication_recoveries_total counter".to_owned(),
            r#"lattice_mailbox_rejected_total{reason="replay"} 3"#.to_owned(),
            r#"lattice_mailbox_rejected_total{reason="hmac"} 0"#.to_owned(),
            "# TYPE lattice_mailbox_call_seconds histogram".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn a_monolith_reports_no_replication() {
        let text = metrics().render_with(&Scrape::default());
        assert!(!text.contains("lattice_replication_lag"), "{text}");
        assert!(!text.contains("lattice_replication_stalled"), "{text}");
        assert!(
            text.contains("# TYPE lattice_mailbox_depth gauge"),
            "{text}"
        );
    }

    #[test]
    fn actor_restarts_and_queues_are_reported() {
        let snapshot: SupervisorSnapshot = serde_json::from_value(serde_json::json!({
            "actors": [{
                "name": "event_persister", "status": "running", "incarnation": 3,
                "restarts": 2, "handled": 40, "expired": 1, "queued": 7,
                "last_failure": null, "state": null
            }]
        }))
        .expect("a snapshot");
        let text = metrics().render_with(&Scrape {
            actors: snapshot,
            ..Scrape::default()
        });
        for line in [
            r#"lattice_actor_restarts_total{actor="event_persister"} 2"#,
            r#"lattice_mailbox_depth{mailbox="event_persister",transport="local"} 7"#,
            r#"lattice_actor_handled_messages_total{actor="event_persister"} 40"#,
            r#"lattice_actor_expired_messages_total{actor="event_persister"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
