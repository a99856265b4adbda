//! `lattice bench media`: the content repository under load.
//!
//! Phases, each with `--concurrency` requests in flight (default 20):
//! 1. 10 MB uploads, `--messages` of them (default 40): the first 20 at once
//!    are the memory test: the server's resident memory is sampled
//!    every 20 ms (VmRSS of each `--pids` process, and VmHWM after), and must
//!    stay under [`RSS_TARGET_MB`] for the first target (the server), since an
//!    upload streams to disk and never holds its body;
//! 2. 1 MB uploads, `--messages` of them;
//! 3. downloads of everything uploaded, each checked for its length;
//! 4. thumbnails of a 1600x1200 PNG, four sizes round-robin, `--messages`
//!    x 4 requests.
//!
//! Upload and download MB/s are set beside a plain copy of the same bytes
//! (the same number of files of the same sizes, written then copied with
//! `std::fs::copy`) in `--scratch-dir`, on the disk the server's media store
//! is on when both are under the same directory, measured in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::bench::client::{ClientError, Session};
use crate::bench::latency::LatencySummary;
use crate::bench::pool::ClientPool;
use crate::bench::processes::{self, ProcessWatch};
use crate::bench::report::Report;
use crate::bench::workload::Load;
use crate::bench::{BenchError, Options};

/// The ceiling for the server while 20 uploads of 10 MB are in flight.
pub const RSS_TARGET_MB: f64 = 100.0;
const MB: usize = 1024 * 1024;
/// How often memory is sampled during the 10 MB uploads.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// Thumbnail sizes asked, round-robin (Synapse's defaults, both methods).
const THUMBNAILS: &[(u32, u32, &str)] = &[
    (32, 32, "crop"),
    (96, 96, "crop"),
    (320, 240, "scale"),
    (640, 480, "scale"),
];

/// What `bench media` measured (the `media` field of its JSON line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaFigures {
    pub uploads_10mb: Transfer,
    pub uploads_1mb: Transfer,
    pub downloads: Transfer,
    pub thumbnails: Transfer,
    /// The same bytes copied file to file on the scratch directory's disk.
    pub file_copy_mb_per_second: f64,
    /// Per `--pids` target: the largest VmRSS sampled while the first 20
    /// 10 MB uploads were in flight, and VmHWM (the process's own peak) after.
    pub upload_rss: Vec<UploadRss>,
    pub rss_target_mb: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub requests: u64,
    pub failed: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_second: f64,
    pub requests_per_second: f64,
    pub latency_ms: LatencySummary,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UploadRss {
    pub label: String,
    pub pid: u32,
    pub peak_sampled_mb: f64,
    pub vm_hwm_mb: f64,
}

/// Runs the media workload against `options.endpoints.base`.
pub async fn run(options: &Options, pool: &ClientPool) -> Result<Report, BenchError> {
    let concurrency = match options.load {
        Load::Closed { concurrency } => concurrency,
        Load::Open { .. } => {
            return Err(BenchError::Usage(
                "bench media runs closed loop only (--concurrency)".into(),
            ))
        }
    };
    let count = options.shape.messages.max(1);
    let setup_start = Instant::now();
    let run_id = crate::util::random_string(6).to_lowercase();
    let username = format!("bench_media_{run_id}");
    let session = pool
        .run(0, move |client| async move {
            client.register(&username, "bench-password").await
        })
        .await?
        .map_err(|error| BenchError::Setup {
            what: "register".into(),
            error,
        })?;
    let session = Arc::new(session);
    let ten = Bytes::from(pseudo_random(10 * MB, 10));
    let one = Bytes::from(pseudo_random(MB, 1));
    let image = Bytes::from(big_png());
    let setup_seconds = setup_start.elapsed().as_secs_f64();
    let progress = |what: &str| {
        if options.progress {
            eprintln!("{} {}: {what}", options.label, options.name);
        }
    };

    progress("file copy baseline");
    let copy_rate = file_copy_rate(&options.scratch_dir, &[(&ten, count), (&one, count)])?;

    progress("10 MB uploads (memory sampled)");
    let mut watch = ProcessWatch::new(options.pids.clone());
    watch.sample();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let pids: Vec<(String, u32)> = options
            .pids
            .iter()
            .map(|t| (t.label.clone(), t.pid))
            .collect();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peaks = vec![0u64; pids.len()];
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                for (peak, (_, pid)) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(processes::status_kb(*pid, "VmRSS:").unwrap_or(0));
                }
                tokio::time::sleep(RSS_SAMPLE_INTERVAL).await;
            }
            peaks
        })
    };
    let client_cpu_before = processes::own_cpu_seconds();
    let measured_start = Instant::now();
    // The memory test is the first 20 in flight together.
    let first = count.min(20);
    let (mut samples_10mb, mut ids) =
        upload_all(pool, &session, &ten, first, first.max(concurrency)).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peaks = sampler
        .await
        .map_err(|e| BenchError::Usage(format!("sampler: {e}")))?;
    let upload_rss: Vec<UploadRss> = options
        .pids
        .iter()
        .zip(peaks)
        .map(|(target, peak_kb)| UploadRss {
            label: target.label.clone(),
            pid: target.pid,
            peak_sampled_mb: peak_kb as f64 / 1024.0,
            vm_hwm_mb: processes::status_kb(target.pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
        })
        .collect();
    if count > first {
        let (rest, rest_ids) = upload_all(pool, &session, &ten, count - first, concurrency).await;
        samples_10mb = samples_10mb.merge(rest);
        ids.extend(rest_ids);
    }

    progress("1 MB uploads");
    let (samples_1mb, one_ids) = upload_all(pool, &session, &one, count, concurrency).await;
    ids.extend(one_ids);
    let (uploads_10mb, uploads_1mb) = (samples_10mb.transfer(), samples_1mb.transfer());

    progress("downloads");
    let downloads = download_all(pool, &session, &ids, concurrency).await;

    progress("thumbnails");
    let thumbnails = thumbnail_all(pool, &session, &image, count * 4, concurrency).await?;
    let measured_seconds = measured_start.elapsed().as_secs_f64();
    watch.sample();
    let client_cpu_seconds = processes::own_cpu_seconds() - client_cpu_before;

    let operations =
        uploads_10mb.requests + uploads_1mb.requests + downloads.requests + thumbnails.requests;
    let failed = uploads_10mb.failed + uploads_1mb.failed + downloads.failed + thumbnails.failed;
    let figures = MediaFigures {
        uploads_10mb,
        uploads_1mb,
        downloads,
        thumbnails,
        file_copy_mb_per_second: copy_rate,
        upload_rss,
        rss_target_mb: RSS_TARGET_MB,
    };
    let mut report = Report::empty(options, &run_id, setup_seconds);
    report.users = 1;
    report.messages = count;
    report.measured_seconds = measured_seconds;
    report.operations = operations;
    report.failed = failed;
    report.accepted = operations - failed;
    report.accepted_per_second = report.accepted as f64 / measured_seconds.max(1e-9);
    report.client_cpu_seconds = client_cpu_seconds;
    report.processes = watch.usage();
    report.media = Some(figures);
    report.judge();
    Ok(report)
}

impl Transfer {
    fn of(
        requests: u64,
        failed: u64,
        bytes: u64,
        seconds: f64,
        latencies: Vec<Duration>,
    ) -> Transfer {
        let seconds = seconds.max(1e-9);
        Transfer {
            requests,
            failed,
            bytes,
            seconds,
            mb_per_second: bytes as f64 / MB as f64 / seconds,
            requests_per_second: (requests - failed) as f64 / seconds,
            latency_ms: LatencySummary::of(latencies),
        }
    }
}

/// Raw figures of a phase, before they are summarised.
#[derive(Default)]
struct Samples {
    requests: u64,
    failed: u64,
    bytes: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Samples {
    fn merge(mut self, other: Samples) -> Samples {
        self.requests += other.requests;
        self.failed += other.failed;
        self.bytes += other.bytes;
        self.seconds += other.seconds;
        self.latencies.extend(other.latencies);
        self
    }

    fn transfer(self) -> Transfer {
        Transfer::of(
            self.requests,
            self.failed,
            self.bytes,
            self.seconds,
            self.latencies,
        )
    }
}

/// Uploads `body` `count` times, `concurrency` at once: the transfer and
/// the media ids.
async fn upload_all(
    pool: &ClientPool,
    session: &Arc<Session>,
    body: &Bytes,
    count: usize,
    concurrency: usize,
) -> (Samples, Vec<String>) {
    let start = Instant::now();
    let results: Vec<Result<(String, Duration), ClientError>> =
        futures::stream::iter((0..count).map(|index| {
            let session = session.clone();
            let body = body.clone();
            let job = pool.run(index, move |client| async move {
                let started = Instant::now();
                let uri = client
                    .upload_media(&session, "application/octet-stream", body)
                    .await?;
                Ok((uri, started.elapsed()))
            });
            async move { job.await.unwrap_or_else(|_| Err(stopped())) }
        }))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    let mut ids = Vec::new();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for result in results {
        match result {
            Ok((uri, took)) => {
                ids.push(uri);
                latencies.push(took);
            }
            Err(error) => {
                failed += 1;
                tracing::warn!(%error, "upload failed");
            }
        }
    }
    let bytes = (ids.len() * body.len()) as u64;
    let samples = Samples {
        requests: count as u64,
        failed,
        bytes,
        seconds,
        latencies,
    };
    (samples, ids)
}

/// Downloads every `mxc://` URI once, counting the bytes as they come.
async fn download_all(
    pool: &ClientPool,
    session: &Arc<Session>,
    uris: &[String],
    concurrency: usize,
) -> Transfer {
    let start = Instant::now();
    let results: Vec<Result<(u64, Duration), ClientError>> =
        futures::stream::iter(uris.iter().cloned().enumerate().map(|(index, uri)| {
            let session = session.clone();
            let job = pool.run(index, move |client| async move {
                let started = Instant::now();
                let bytes = client.download_media(&session, &uri).await?;
                Ok((bytes, started.elapsed()))
            });
            async move { job.await.unwrap_or_else(|_| Err(stopped())) }
        }))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    summarise(results, start.elapsed().as_secs_f64())
}

/// Uploads `image`, then asks `count` thumbnails of it, sizes round-robin.
async fn thumbnail_all(
    pool: &ClientPool,
    session: &Arc<Session>,
    image: &Bytes,
    count: usize,
    concurrency: usize,
) -> Result<Transfer, BenchError> {
    let uri = {
        let session = session.clone();
        let image = image.clone();
        pool.run(0, move |client| async move {
            client.upload_media(&session, "image/png", image).await
        })
        .await?
        .map_err(|error| BenchError::Setup {
            what: "upload the thumbnail source".into(),
            error,
        })?
    };
    let start = Instant::now();
    let results: Vec<Result<(u64, Duration), ClientError>> =
        futures::stream::iter((0..count).map(|index| {
            let session = session.clone();
            let uri = uri.clone();
            let (width, height, method) = THUMBNAILS[index % THUMBNAILS.len()];
            let job = pool.run(index, move |client| async move {
                let started = Instant::now();
                let bytes = client
                    .thumbnail_media(&session, &uri, width, height, method)
                    .await?;
                Ok((bytes, started.elapsed()))
            });
            async move { job.await.unwrap_or_else(|_| Err(stopped())) }
        }))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    Ok(summarise(results, start.elapsed().as_secs_f64()))
}

fn summarise(results: Vec<Result<(u64, Duration), ClientError>>, seconds: f64) -> Transfer {
    let requests = results.len() as u64;
    let mut failed = 0;
    let mut bytes = 0;
    let mut latencies = Vec::new();
    for result in results {
        match result {
            Ok((length, took)) => {
                bytes += length;
                latencies.push(took);
            }
            Err(error) => {
                failed += 1;
                tracing::warn!(%error, "media request failed");
            }
        }
    }
    Transfer::of(requests, failed, bytes, seconds, latencies)
}

fn stopped() -> ClientError {
    ClientError::Transport {
        kind: "pool",
        detail: "client thread stopped".into(),
    }
}

/// MB/s of copying files of the given sizes and counts in `dir`: each body
/// is written once, then copied `count` times (read and written), as an
/// upload is read from the socket and written to the store.
fn file_copy_rate(dir: &Path, bodies: &[(&Bytes, usize)]) -> Result<f64, BenchError> {
    let dir: PathBuf = dir.join(format!("media-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let mut bytes = 0u64;
        let mut seconds = 0.0;
        for (index, (body, count)) in bodies.iter().enumerate() {
            let source = dir.join(format!("source-{index}"));
            std::fs::write(&source, body)?;
            let start = Instant::now();
            for copy in 0..*count {
                let target = dir.join(format!("copy-{index}-{copy}"));
                bytes += std::fs::copy(&source, &target)?;
            }
            seconds += start.elapsed().as_secs_f64();
        }
        Ok::<_, std::io::Error>(bytes as f64 / MB as f64 / seconds.max(1e-9))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result?)
}

/// `len` bytes that do not compress (xorshift), different per `seed`.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// A 1600x1200 PNG (a photo-sized thumbnail source).
fn big_png() -> Vec<u8> {
    let image = image::RgbImage::from_fn(1600, 1200, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    // Encoding an image made here cannot fail but for memory.
    let _ = image::DynamicImage::ImageRgb8(image).write_to(&mut bytes, image::ImageFormat::Png);
    bytes.into_inner()
}

/// The rows `bench media` adds to the report's table.
pub fn table_rows(figures: &MediaFigures) -> Vec<(String, String)> {
    let transfer = |t: &Transfer| {
        format!(
            "{} of {} ok in {:.2} s = {:.1} MB/s, {:.1} /s, p50 {:.0} ms p99 {:.0} ms",
            t.requests - t.failed,
            t.requests,
            t.seconds,
            t.mb_per_second,
            t.requests_per_second,
            t.latency_ms.p50,
            t.latency_ms.p99
        )
    };
    let mut rows = vec![
        ("10 MB uploads".to_owned(), transfer(&figures.uploads_10mb)),
        ("1 MB uploads".to_owned(), transfer(&figures.uploads_1mb)),
        ("downloads".to_owned(), transfer(&figures.downloads)),
        ("thumbnails".to_owned(), transfer(&figures.thumbnails)),
        (
            "file copy".to_owned(),
            format!(
                "{:.1} MB/s (uploads reach {:.0} %, downloads {:.0} %)",
                figures.file_copy_mb_per_second,
                percent(upload_rate(figures), figures.file_copy_mb_per_second),
                percent(
                    figures.downloads.mb_per_second,
                    figures.file_copy_mb_per_second
                )
            ),
        ),
    ];
    for (index, rss) in figures.upload_rss.iter().enumerate() {
        // Only the first target, the server, is held to the target.
        let target = if index == 0 {
            format!(" (target < {:.0} MB)", figures.rss_target_mb)
        } else {
            String::new()
        };
        rows.push((
            format!("{} rss", rss.label),
            format!(
                "peak {:.1} MB sampled, VmHWM {:.1} MB, with 20 x 10 MB uploads in flight{target}",
                rss.peak_sampled_mb, rss.vm_hwm_mb
            ),
        ));
    }
    rows
}

/// Upload MB/s over both sizes.
fn upload_rate(figures: &MediaFigures) -> f64 {
    let bytes = figures.uploads_10mb.bytes + figures.uploads_1mb.bytes;
    let seconds = figures.uploads_10mb.seconds + figures.uploads_1mb.seconds;
    bytes as f64 / MB as f64 / seconds.max(1e-9)
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// The media run's problems: failures, and the server over the memory target.
pub fn problems(figures: &MediaFigures) -> Vec<String> {
    let mut problems = Vec::new();
    // The first target is the server (`bench-run.sh` lists it first).
    if let Some(server) = figures.upload_rss.first() {
        let peak = server.peak_sampled_mb.max(server.vm_hwm_mb);
        if peak >= figures.rss_target_mb {
            problems.push(format!(
                "{} peak rss {peak:.1} MB during the 10 MB uploads (target < {:.0} MB)",
                server.label, figures.rss_target_mb
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_do_not_repeat_and_have_their_length() {
        let a = pseudo_random(MB, 1);
        let b = pseudo_random(MB, 2);
        assert_eq!(a.len(), MB);
        assert_ne!(a, b);
        assert_ne!(a[..4096], a[4096..8192]);
    }

    #[test]
    fn the_memory_target_is_judged_on_the_server() {
        let mut figures = MediaFigures {
            rss_target_mb: RSS_TARGET_MB,
            ..MediaFigures::default()
        };
        figures.upload_rss.push(UploadRss {
            label: "lattice".into(),
            pid: 1,
            peak_sampled_mb: 60.0,
            vm_hwm_mb: 70.0,
        });
        figures.upload_rss.push(UploadRss {
            label: "postgres".into(),
            pid: 2,
            peak_sampled_mb: 300.0,
            vm_hwm_mb: 300.0,
        });
        assert!(problems(&figures).is_empty());
        figures.upload_rss[0].vm_hwm_mb = 120.0;
        assert_eq!(problems(&figures).len(), 1);
    }
}
