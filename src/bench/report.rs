//! What a run reports: one [`Report`] per workload run, printed as a readable
//! table and as one JSON line; and the markdown summary of several runs read
//! back from their JSON lines, with ratios between two servers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::bench::baseline::Baseline;
use crate::bench::latency::LatencySummary;
use crate::bench::processes::ProcessUsage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The run's name (`chat`, `chat-paced`, ...); runs of the same name on
    /// different servers are compared.
    pub name: String,
    pub workload: String,
    /// Which server this measured (`lattice`, `synapse`, ...).
    pub server: String,
    pub base_url: String,
    pub run_id: String,
    pub started_unix: u64,
    pub users: usize,
    pub rooms: usize,
    pub per_room: usize,
    pub senders: usize,
    pub messages: usize,
    /// `closed` (fixed concurrency) or `open` (fixed arrival rate).
    pub load: String,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub setup_seconds: f64,
    /// From the first operation's start to the last one's answer.
    pub measured_seconds: f64,
    pub operations: u64,
    pub accepted: u64,
    pub failed: u64,
    pub accepted_per_second: f64,
    pub send_latency_ms: LatencySummary,
    pub delivery_latency_ms: LatencySummary,
    pub deliveries_expected: u64,
    pub delivered: u64,
    pub undelivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    /// Sync responses whose timeline said `limited` (events skipped).
    pub limited_timelines: u64,
    /// Sync responses received during the measured phase.
    pub syncs: u64,
    /// CPU the load generator itself used in the measured phase (to show it
    /// was not the bottleneck).
    #[serde(default)]
    pub client_cpu_seconds: f64,
    /// `"<request> <errcode>"` → count, retried ones included.
    pub errors: BTreeMap<String, u64>,
    pub processes: Vec<ProcessUsage>,
    /// For `idle`: the servers' memory before and with every long poll open.
    pub idle_memory: Vec<IdleMemory>,
    /// For `chat-todevice`: the to-device messages and their delivery.
    #[serde(default)]
    pub to_device: Option<ToDeviceDelivery>,
    pub baseline: Option<Baseline>,
    /// For `media`: transfers, thumbnails, the file-copy baseline and memory.
    #[serde(default)]
    pub media: Option<crate::bench::media::MediaFigures>,
    /// Everything that must be zero and was not; empty means the run is clean.
    pub problems: Vec<String>,
}

/// The to-device messages of a run: one per receiving device, and how
/// long after its send left each device's `/sync` showed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToDeviceDelivery {
    pub expected: u64,
    pub delivered: u64,
    pub undelivered: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    pub latency_ms: LatencySummary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleMemory {
    pub label: String,
    pub open_syncs: usize,
    pub rss_before_mb: f64,
    pub rss_open_mb: f64,
    pub kb_per_sync: f64,
}

impl Report {
    /// A report of `options`'s run with nothing measured yet, for workloads
    /// (`media`) that fill in only what they measure.
    pub fn empty(options: &crate::bench::Options, run_id: &str, setup_seconds: f64) -> Report {
        let (concurrency, rate, load) = match options.load {
            crate::bench::workload::Load::Closed { concurrency } => {
                (Some(concurrency), None, "closed")
            }
            crate::bench::workload::Load::Open { rate } => (None, Some(rate), "open"),
        };
        Report {
            name: options.name.clone(),
            workload: options.workload.name().to_owned(),
            server: options.label.clone(),
            base_url: options.endpoints.base.clone(),
            run_id: run_id.to_owned(),
            started_unix: 0,
            users: 0,
            rooms: 0,
            per_room: 0,
            senders: 0,
            messages: 0,
            load: load.to_owned(),
            concurrency,
            rate,
            setup_seconds,
            measured_seconds: 0.0,
            operations: 0,
            accepted: 0,
            failed: 0,
            accepted_per_second: 0.0,
            send_latency_ms: LatencySummary::default(),
            delivery_latency_ms: LatencySummary::default(),
            deliveries_expected: 0,
            delivered: 0,
            undelivered: 0,
            duplicated: 0,
            out_of_order: 0,
            unexpected: 0,
            limited_timelines: 0,
            syncs: 0,
            client_cpu_seconds: 0.0,
            errors: BTreeMap::new(),
            processes: Vec::new(),
            idle_memory: Vec::new(),
            to_device: None,
            baseline: None,
            media: None,
            problems: Vec::new(),
        }
    }

    /// Fills [`Report::problems`] from the counts.
    pub fn judge(&mut self) {
        let mut problems = Vec::new();
        let mut check = |count: u64, what: &str| {
            if count > 0 {
                problems.push(format!("{count} {what}"));
            }
        };
        check(self.undelivered, "undelivered");
        check(self.duplicated, "duplicated");
        check(self.out_of_order, "out of order");
        check(self.unexpected, "unexpected deliveries");
        check(self.failed, "operations failed");
        if let Some(to_device) = &self.to_device {
            check(to_device.undelivered, "to-device undelivered");
            check(to_device.duplicated, "to-device duplicated");
            check(to_device.unexpected, "to-device unexpected");
        }
        check(
            self.operations.saturating_sub(self.accepted + self.failed),
            "operations never answered",
        );
        if let Some(media) = &self.media {
            problems.extend(crate::bench::media::problems(media));
        }
        self.problems = problems;
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let load = match (self.concurrency, self.rate) {
            (_, Some(rate)) => format!("open loop at {rate} /s"),
            (Some(c), None) => format!("closed loop, {c} in flight"),
            _ => self.load.clone(),
        };
        let _ = writeln!(
            out,
            "lattice bench: {} ({}) on {} at {}",
            self.name, self.workload, self.server, self.base_url
        );
        let _ = writeln!(
            out,
            "  {} users, {} rooms of {}, {} senders x {} messages, {load}",
            self.users, self.rooms, self.per_room, self.senders, self.messages
        );
        let row = |out: &mut String, key: &str, value: String| {
            let _ = writeln!(out, "  {key:<20} {value}");
        };
        row(&mut out, "set-up", format!("{:.1} s", self.setup_seconds));
        if let Some(media) = &self.media {
            for (key, value) in crate::bench::media::table_rows(media) {
                row(&mut out, &key, value);
            }
        }
        row(
            &mut out,
            "accepted",
            format!(
                "{} of {} in {:.2} s = {:.1} /s",
                self.accepted, self.operations, self.measured_seconds, self.accepted_per_second
            ),
        );
        // The message rows mean nothing for `media`, which sends none.
        if self.media.is_none() {
            row(&mut out, "send latency", latency_row(&self.send_latency_ms));
            row(
                &mut out,
                "delivery latency",
                latency_row(&self.delivery_latency_ms),
            );
            row(
                &mut out,
                "deliveries",
                format!(
                    "{} expected, {} delivered, {} undelivered, {} duplicated, {} out of order, {} unexpected",
                    self.deliveries_expected,
                    self.delivered,
                    self.undelivered,
                    self.duplicated,
                    self.out_of_order,
                    self.unexpected
                ),
            );
            if let Some(to_device) = &self.to_device {
                row(
                    &mut out,
                    "to-device delivery",
                    latency_row(&to_device.latency_ms),
                );
                row(
                    &mut out,
                    "to-device messages",
                    format!(
                        "{} expected, {} delivered, {} undelivered, {} duplicated, {} unexpected",
                        to_device.expected,
                        to_device.delivered,
                        to_device.undelivered,
                        to_device.duplicated,
                        to_device.unexpected
                    ),
                );
            }
            row(
                &mut out,
                "syncs",
                format!(
                    "{} responses, {} limited timelines",
                    self.syncs, self.limited_timelines
                ),
            );
        }
        row(
            &mut out,
            "load generator",
            format!("cpu {:.2} s", self.client_cpu_seconds),
        );
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(&mut out, "errors", errors);
        for process in &self.processes {
            let share = if self.measured_seconds > 0.0 {
                format!(
                    " ({:.0} % of a core)",
                    100.0 * process.cpu_seconds / self.measured_seconds
                )
            } else {
                String::new()
            };
            row(
                &mut out,
                &format!("{} ({})", process.label, process.pid),
                format!(
                    "cpu {:.2} s{share}, peak rss {:.1} MB over {} processes",
                    process.cpu_seconds, process.peak_rss_mb, process.processes
                ),
            );
        }
        for idle in &self.idle_memory {
            row(
                &mut out,
                &format!("{} memory", idle.label),
                format!(
                    "{:.1} MB before, {:.1} MB with {} long polls open = {:.1} KB per poll",
                    idle.rss_before_mb, idle.rss_open_mb, idle.open_syncs, idle.kb_per_sync
                ),
            );
        }
        if let Some(baseline) = &self.baseline {
            row(
                &mut out,
                "postgres baseline",
                format!(
                    "{:.0} rows/s one per transaction ({} connections): {} reaches {:.1} %",
                    baseline.single_row_rows_per_second,
                    baseline.single_row_connections,
                    self.server,
                    fraction(
                        self.accepted_per_second,
                        baseline.single_row_rows_per_second
                    )
                ),
            );
            row(
                &mut out,
                "",
                format!(
                    "{:.0} rows/s in batches of {} ({} connections): {} reaches {:.1} %",
                    baseline.batch_rows_per_second,
                    baseline.batch_size,
                    baseline.batch_connections,
                    self.server,
                    fraction(self.accepted_per_second, baseline.batch_rows_per_second)
                ),
            );
        }
        if self.ok() {
            let _ = writeln!(out, "  RESULT: ok");
        } else {
            let _ = writeln!(out, "  RESULT: FAILED: {}", self.problems.join(", "));
        }
        out
    }
}

fn latency_row(summary: &LatencySummary) -> String {
    if summary.count == 0 {
        return "no samples".to_owned();
    }
    format!(
        "p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples)",
        summary.p50, summary.p95, summary.p99, summary.max, summary.count
    )
}

fn fraction(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// The markdown summary of `reports` (later reports of the same name and
/// server replace earlier ones): one row per run, then the ratios of the first
/// server named `lattice` (or else the first seen) to every other server.
/// With `medians`, repeated runs are repetitions: the ratios are those of the
/// medians over every repetition instead.
pub fn summary_markdown(reports: &[Report], medians: bool) -> String {
    let mut latest: Vec<&Report> = Vec::new();
    for report in reports {
        match latest
            .iter_mut()
            .find(|r| r.name == report.name && r.server == report.server)
        {
            Some(slot) => *slot = report,
            None => latest.push(report),
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | server | shape | accepted/s | send p50 / p99 ms | delivery p50 / p99 ms | undelivered / dup / out of order | server CPU s | peak RSS MB |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &latest {
        let load = match (r.concurrency, r.rate) {
            (_, Some(rate)) => format!("at {rate}/s"),
            (Some(c), None) => format!("{c} in flight"),
            _ => String::new(),
        };
        let shape = if r.workload == "join-storm" {
            format!("{} joins, {} watchers, {load}", r.operations, r.per_room)
        } else {
            format!(
                "{} users, {} rooms of {}, {} msgs, {load}",
                r.users, r.rooms, r.per_room, r.operations
            )
        };
        let server = r.processes.first();
        let _ = writeln!(
            out,
            "| {} | {} | {shape} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {} / {} / {} | {} | {} |{}",
            r.name,
            r.server,
            rate(r.accepted_per_second),
            r.send_latency_ms.p50,
            r.send_latency_ms.p99,
            r.delivery_latency_ms.p50,
            r.delivery_latency_ms.p99,
            r.undelivered,
            r.duplicated,
            r.out_of_order,
            server.map_or("-".into(), |p| format!("{:.1}", p.cpu_seconds)),
            server.map_or("-".into(), |p| format!("{:.0}", p.peak_rss_mb)),
            if r.ok() { "" } else { " **FAILED**" },
        );
    }
    let to_device: Vec<(&Report, &ToDeviceDelivery)> = latest
        .iter()
        .filter_map(|r| r.to_device.as_ref().map(|t| (*r, t)))
        .collect();
    if !to_device.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| run | server | to-device messages | delivered / undelivered / dup | to-device delivery p50 / p99 ms |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|");
        for (r, t) in to_device {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} / {} / {} | {:.1} / {:.1} |",
                r.name,
                r.server,
                t.expected,
                t.delivered,
                t.undelivered,
                t.duplicated,
                t.latency_ms.p50,
                t.latency_ms.p99,
            );
        }
    }
    let idle: Vec<&Report> = latest
        .iter()
        .copied()
        .filter(|r| !r.idle_memory.is_empty())
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(out);
        for r in idle {
            for m in &r.idle_memory {
                let _ = writeln!(
                    out,
                    "- {} `{}`: {} {:.1} MB with {} long polls open ({:.1} MB before them, {:.1} KB per poll)",
                    r.server,
                    r.name,
                    m.label,
                    m.rss_open_mb,
                    m.open_syncs,
                    m.rss_before_mb,
                    m.kb_per_sync
                );
            }
        }
    }
    let baselines: Vec<&Report> = latest
        .iter()
        .copied()
        .filter(|r| r.baseline.is_some())
        .collect();
    if !baselines.is_empty() {
        let _ = writeln!(out);
        for r in baselines {
            if let Some(b) = &r.baseline {
                let _ = writeln!(
                    out,
                    "- PostgreSQL baseline beside `{}` on {}: {:.0} event rows/s one per transaction ({} connections), {:.0} rows/s in batches of {}; {} reached {:.1} % and {:.1} % of them",
                    r.name,
                    r.server,
                    b.single_row_rows_per_second,
                    b.single_row_connections,
                    b.batch_rows_per_second,
                    b.batch_size,
                    r.server,
                    fraction(r.accepted_per_second, b.single_row_rows_per_second),
                    fraction(r.accepted_per_second, b.batch_rows_per_second),
                );
            }
        }
    }
    let mut servers: Vec<&str> = Vec::new();
    for r in &latest {
        if !servers.contains(&r.server.as_str()) {
            servers.push(&r.server);
        }
    }
    let reference = servers
        .iter()
        .copied()
        .find(|s| *s == "lattice")
        .or(servers.first().copied());
    if medians {
        if let Some(reference) = reference {
            medians_table(&mut out, reports, &servers, reference);
        }
        return out;
    }
    if let Some(reference) = reference {
        let others: Vec<&str> = servers
            .iter()
            .copied()
            .filter(|s| *s != reference)
            .collect();
        for other in others {
            if other.starts_with(&format!("{reference}-")) {
                variant_table(&mut out, &latest, reference, other);
                continue;
            }
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "| run | {reference} / {other}: throughput | send p99 | delivery p99 |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|");
            for ours in latest.iter().filter(|r| r.server == reference) {
                let Some(theirs) = latest
                    .iter()
                    .find(|r| r.server == other && r.name == ours.name)
                else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    ours.name,
                    ratio(ours.accepted_per_second, theirs.accepted_per_second),
                    ratio(ours.send_latency_ms.p99, theirs.send_latency_ms.p99),
                    ratio(ours.delivery_latency_ms.p99, theirs.delivery_latency_ms.p99),
                );
            }
        }
    }
    out
}

/// The medians over every repetition of each run and server, and the ratios
/// of the reference server's medians to each other server's: one run of each
/// is noise (`.ci/bench-run.sh --baseline` alternates the two servers
/// `BENCH_REPEAT` times).
fn medians_table(out: &mut String, reports: &[Report], servers: &[&str], reference: &str) {
    let runs_of = |name: &str, server: &str| -> Vec<&Report> {
        reports
            .iter()
            .filter(|r| r.name == name && r.server == server)
            .collect()
    };
    let mut names: Vec<&str> = Vec::new();
    for report in reports {
        if !names.contains(&report.name.as_str()) {
            names.push(&report.name);
        }
    }
    let medians = |runs: &[&Report]| {
        (
            median(runs.iter().map(|r| r.accepted_per_second)),
            median(runs.iter().map(|r| r.send_latency_ms.p99)),
            median(runs.iter().map(|r| r.delivery_latency_ms.p99)),
        )
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| run | server | runs | median accepted/s | median send p99 ms | median delivery p99 ms | all runs ok |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
    for name in &names {
        for server in servers {
            let runs = runs_of(name, server);
            if runs.is_empty() {
                continue;
            }
            let (rate_median, send, delivery) = medians(&runs);
            let _ = writeln!(
                out,
                "| {name} | {server} | {} | {} | {send:.1} | {delivery:.1} | {} |",
                runs.len(),
                rate(rate_median),
                if runs.iter().all(|r| r.ok()) {
                    "yes"
                } else {
                    "**no**"
                },
            );
        }
    }
    for other in servers.iter().filter(|s| **s != reference) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| run | {reference} / {other}, medians: throughput | send p99 | delivery p99 |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for name in &names {
            let (ours, theirs) = (runs_of(name, reference), runs_of(name, other));
            if ours.is_empty() || theirs.is_empty() {
                continue;
            }
            let (ours, theirs) = (medians(&ours), medians(&theirs));
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} |",
                ratio(ours.0, theirs.0),
                ratio(ours.1, theirs.1),
                ratio(ours.2, theirs.2),
            );
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// How much slower than the monolith a topology of several processes may
/// deliver at the same load: its delivery p99 at most this many times the
/// monolith's (issue 4's bench target).
const VARIANT_DELIVERY_P99_TARGET: f64 = 2.0;

/// The table of `variant` (another deployment of `reference`, named
/// `<reference>-...`, such as `lattice-split`) against `reference`: ratios
/// variant / reference, and whether each run's delivery p99 met the target.
fn variant_table(out: &mut String, latest: &[&Report], reference: &str, variant: &str) {
    let target = VARIANT_DELIVERY_P99_TARGET;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| run | {variant} / {reference}: throughput | send p99 | delivery p99 | delivery p99 at most {target}× {reference}'s |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    for ours in latest.iter().filter(|r| r.server == variant) {
        let Some(base) = latest
            .iter()
            .find(|r| r.server == reference && r.name == ours.name)
        else {
            continue;
        };
        let (delivery, base_delivery) =
            (ours.delivery_latency_ms.p99, base.delivery_latency_ms.p99);
        let verdict = if !ours.ok() || !base.ok() {
            "missed: a run saw problems".to_owned()
        } else if ours.delivery_latency_ms.count == 0 || base.delivery_latency_ms.count == 0 {
            "-: no deliveries measured".to_owned()
        } else if delivery <= target * base_delivery {
            format!("met ({delivery:.1} ms vs {base_delivery:.1} ms)")
        } else {
            format!("**missed** ({delivery:.1} ms vs {base_delivery:.1} ms)")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {verdict} |",
            ours.name,
            ratio(ours.accepted_per_second, base.accepted_per_second),
            ratio(ours.send_latency_ms.p99, base.send_latency_ms.p99),
            ratio(delivery, base_delivery),
        );
    }
}

/// Operations per second: whole numbers, but slow servers keep a decimal.
fn rate(per_second: f64) -> String {
    if per_second < 10.0 {
        format!("{per_second:.1}")
    } else {
        format!("{per_second:.0}")
    }
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        "-".to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report(name: &str, server: &str, rate: f64, p99: f64) -> Report {
        Report {
            name: name.into(),
            workload: "chat".into(),
            server: server.into(),
            base_url: "http://127.0.0.1:1".into(),
            run_id: "abc".into(),
            started_unix: 0,
            users: 10,
            rooms: 2,
            per_room: 5,
            senders: 10,
            messages: 2,
            load: "closed".into(),
            concurrency: Some(4),
            rate: None,
            setup_seconds: 1.0,
            measured_seconds: 2.0,
            operations: 20,
            accepted: 20,
            failed: 0,
            accepted_per_second: rate,
            send_latency_ms: LatencySummary {
                count: 20,
                p50: 1.0,
                p95: 2.0,
                p99,
                max: 9.0,
            },
            delivery_latency_ms: LatencySummary {
                count: 100,
                p50: 2.0,
                p95: 3.0,
                p99: p99 * 2.0,
                max: 12.0,
            },
            deliveries_expected: 100,
            delivered: 100,
            undelivered: 0,
            duplicated: 0,
            out_of_order: 0,
            unexpected: 0,
            limited_timelines: 0,
            syncs: 50,
            client_cpu_seconds: 0.5,
            errors: BTreeMap::new(),
            processes: Vec::new(),
            idle_memory: Vec::new(),
            media: None,
            to_device: None,
            baseline: None,
            problems: Vec::new(),
        }
    }

    #[test]
    fn repeated_runs_are_summarised_by_their_medians() {
        let reports = vec![
            report("chat", "baseline", 1000.0, 10.0),
            report("chat", "lattice", 900.0, 30.0),
            report("chat", "baseline", 1200.0, 12.0),
            report("chat", "lattice", 1100.0, 11.0),
            report("chat", "baseline", 1100.0, 11.0),
            report("chat", "lattice", 1000.0, 10.0),
        ];
        let markdown = summary_markdown(&reports, true);
        // Medians: lattice 1000/s and send p99 11 ms, baseline 1100/s and 11 ms;
        // lattice's 30 ms outlier does not count.
        assert!(
            markdown.contains("| chat | lattice | 3 | 1000 | 11.0 | 22.0 | yes |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| chat | baseline | 3 | 1100 | 11.0 | 22.0 | yes |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| chat | 0.91× | 1.00× | 1.00× |"),
            "{markdown}"
        );
        let latest_only = summary_markdown(&reports, false);
        assert!(!latest_only.contains("medians"), "{latest_only}");
    }

    #[test]
    fn a_clean_run_has_no_problems_and_a_dirty_one_lists_each() {
        let mut clean = report("chat", "lattice", 100.0, 5.0);
        clean.judge();
        assert!(clean.ok());
        assert!(clean.table().contains("RESULT: ok"));

        let mut dirty = clean.clone();
        dirty.undelivered = 3;
        dirty.out_of_order = 1;
        dirty.accepted = 18;
        dirty.failed = 1;
        dirty.judge();
        assert_eq!(
            dirty.problems,
            vec![
                "3 undelivered",
                "1 out of order",
                "1 operations failed",
                "1 operations never answered"
            ]
        );
        assert!(dirty.table().contains("RESULT: FAILED: 3 undelivered"));
    }

    #[test]
    fn reports_round_trip_through_their_json_line() {
        let original = report("chat", "lattice", 100.0, 5.0);
        let line = serde_json::to_string(&original).unwrap();
        assert!(!line.contains('\n'));
        let back: Report = serde_json::from_str(&line).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn the_summary_compares_lattice_with_the_other_server() {
        let reports = vec![
            report("chat", "synapse", 40.0, 80.0),
            report("chat", "lattice", 1000.0, 60.0), // replaced below
            report("chat", "lattice", 2000.0, 20.0),
            report("big-room", "lattice", 300.0, 10.0),
        ];
        let markdown = summary_markdown(&reports, false);
        assert_eq!(
            markdown.matches("| chat | lattice |").count(),
            1,
            "{markdown}"
        );
        assert!(
            markdown.contains("| chat | 50.00× | 0.25× | 0.25× |"),
            "{markdown}"
        );
        assert!(markdown.contains("lattice / synapse"), "{markdown}");
        assert!(
            markdown
                .contains("| chat | synapse | 10 users, 2 rooms of 5, 20 msgs, 4 in flight | 40 |"),
            "{markdown}"
        );
        let slow = summary_markdown(&[report("chat", "synapse", 0.34, 1.0)], false);
        assert!(slow.contains("in flight | 0.3 |"), "{slow}");
        assert_eq!(
            markdown.matches("| big-room |").count(),
            1,
            "no synapse big-room to compare: {markdown}"
        );
    }

    #[test]
    fn a_variant_of_lattice_is_compared_with_it_against_the_target() {
        let reports = vec![
            report("chat", "lattice", 1000.0, 10.0),
            report("chat-paced", "lattice", 1000.0, 10.0),
            report("chat", "lattice-split", 800.0, 15.0),
            report("chat-paced", "lattice-split", 500.0, 30.0),
        ];
        let markdown = summary_markdown(&reports, false);
        assert!(
            markdown.contains("| run | lattice-split / lattice: throughput |"),
            "{markdown}"
        );
        assert!(!markdown.contains("lattice / lattice-split"), "{markdown}");
        assert!(
            markdown.contains("| chat | 0.80× | 1.50× | 1.50× | met (30.0 ms vs 20.0 ms) |"),
            "{markdown}"
        );
        assert!(
            markdown.contains(
                "| chat-paced | 0.50× | 3.00× | 3.00× | **missed** (60.0 ms vs 20.0 ms) |"
            ),
            "{markdown}"
        );

        let mut lost = report("chat", "lattice-split", 800.0, 5.0);
        lost.undelivered = 1;
        lost.judge();
        let markdown = summary_markdown(&[report("chat", "lattice", 1000.0, 10.0), lost], false);
        assert!(
            markdown.contains("missed: a run saw problems"),
            "{markdown}"
        );
    }
}
