//! CPU time and memory of the server's processes, read from `/proc`.
//!
//! Each watched pid stands for its whole process tree (PostgreSQL serves every
//! connection from a child of the postmaster), found again at every sample.
//! CPU seconds are what the tree used between the first and the last sample;
//! a process first seen after the first sample was born in between and counts
//! from zero. Peak RSS is the largest sum of the tree's resident memory
//! sampled, with pages shared between processes split among them (PSS), so a
//! PostgreSQL tree's shared buffers count once.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, 100 on every
/// Linux architecture the kernel still builds for with a stable ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process to watch, as `--pids` names it: `lattice=1234` or just `1234`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub label: String,
    pub pid: u32,
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        let (label, pid) = match text.split_once('=') {
            Some((label, pid)) => (label.trim().to_owned(), pid),
            None => (format!("pid {}", text.trim()), text),
        };
        let pid = pid
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a pid (or label=pid)"))?;
        Ok(Target { label, pid })
    }
}

/// What one watched tree used during the measured phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    pub label: String,
    pub pid: u32,
    pub processes: usize,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    pub last_rss_mb: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct ProcessSample {
    ppid: u32,
    cpu_ticks: u64,
}

/// Samples the trees of `targets`, keeping per pid the first and last CPU time.
pub struct ProcessWatch {
    targets: Vec<Target>,
    first_ticks: Vec<HashMap<u32, u64>>,
    last_ticks: Vec<HashMap<u32, u64>>,
    peak_rss_kb: Vec<u64>,
    last_rss_kb: Vec<u64>,
    samples: u64,
}

impl ProcessWatch {
    pub fn new(targets: Vec<Target>) -> ProcessWatch {
        let n = targets.len();
        ProcessWatch {
            targets,
            first_ticks: vec![HashMap::new(); n],
            last_ticks: vec![HashMap::new(); n],
            peak_rss_kb: vec![0; n],
            last_rss_kb: vec![0; n],
            samples: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Reads `/proc` once (a few hundred small files; called a few times a second).
    pub fn sample(&mut self) {
        if self.targets.is_empty() {
            return;
        }
        let all = read_all_processes();
        let first_sample = self.samples == 0;
        for (index, target) in self.targets.iter().enumerate() {
            let tree = tree_of(target.pid, &all);
            let mut rss = 0;
            for pid in &tree {
                let Some(sample) = all.get(pid) else { continue };
                rss += resident_kb(*pid);
                let first = self.first_ticks[index]
                    .entry(*pid)
                    .or_insert(if first_sample { sample.cpu_ticks } else { 0 });
                // A recycled pid would go backwards; start it again.
                if sample.cpu_ticks < *first {
                    *first = 0;
                }
                self.last_ticks[index].insert(*pid, sample.cpu_ticks);
            }
            self.last_rss_kb[index] = rss;
            self.peak_rss_kb[index] = self.peak_rss_kb[index].max(rss);
        }
        self.samples += 1;
    }

    /// The trees' resident set sizes now, in MB, by label.
    pub fn rss_now(&self) -> Vec<(String, f64)> {
        let all = read_all_processes();
        self.targets
            .iter()
            .map(|target| {
                let kb: u64 = tree_of(target.pid, &all).into_iter().map(resident_kb).sum();
                (target.label.clone(), kb as f64 / 1024.0)
            })
            .collect()
    }

    pub fn usage(&self) -> Vec<ProcessUsage> {
        self.targets
            .iter()
            .enumerate()
            .map(|(index, target)| {
                let ticks: u64 = self.last_ticks[index]
                    .iter()
                    .map(|(pid, last)| {
                        last - self.first_ticks[index].get(pid).copied().unwrap_or(0)
                    })
                    .sum();
                ProcessUsage {
                    label: target.label.clone(),
                    pid: target.pid,
                    processes: self.last_ticks[index].len(),
                    cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
                    peak_rss_mb: self.peak_rss_kb[index] as f64 / 1024.0,
                    last_rss_mb: self.last_rss_kb[index] as f64 / 1024.0,
                }
            })
            .collect()
    }
}

/// CPU seconds this process (the load generator, every thread) has used so far.
pub fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .map_or(0.0, |sample| sample.cpu_ticks as f64 / TICKS_PER_SECOND)
}

/// How often the measured phase samples `/proc`.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

fn read_all_processes() -> HashMap<u32, ProcessSample> {
    let mut all = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(sample) = parse_stat(&stat) else {
            continue;
        };
        all.insert(pid, sample);
    }
    all
}

/// Resident memory of `pid` in KB, pages shared with other processes divided
/// among them (PSS), so that summing a PostgreSQL tree counts its shared
/// buffers once; plain RSS where the kernel has no `smaps_rollup`.
fn resident_kb(pid: u32) -> u64 {
    if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        if let Some(kb) = field_kb(&rollup, "Pss:") {
            return kb;
        }
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| field_kb(&status, "VmRSS:"))
        .unwrap_or(0)
}

/// Fields of `/proc/<pid>/stat` after the command name (which may contain
/// spaces and parentheses, so the line is split after its last `)`):
/// state ppid ... utime (14th field) stime (15th).
fn parse_stat(stat: &str) -> Option<ProcessSample> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcessSample {
        ppid,
        cpu_ticks: utime + stime,
    })
}

/// The KB value of the first line starting with `key` (`VmRSS:`, `Pss:`).
/// A `kB` field of `/proc/<pid>/status` of that one process (`VmRSS:`,
/// `VmHWM:`, its peak resident size).
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kb(&status, key)
}

fn field_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and all its descendants that exist in `all`.
fn tree_of(root: u32, all: &HashMap<u32, ProcessSample>) -> Vec<u32> {
    if !all.contains_key(&root) {
        return Vec::new();
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, sample) in all {
        children.entry(sample.ppid).or_default().push(pid);
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        if let Some(kids) = children.get(&tree[next]) {
            tree.extend(kids.iter().copied().filter(|&k| k != root));
        }
        next += 1;
    }
    tree
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "1234 (post gres) (x)) S 1 1234 1234 0 -1 4194560 5000 0 0 0 250 75 0 0 20 0 1 0 100 1000000 500 18446744073709551615";
        let sample = parse_stat(line).unwrap();
        assert_eq!(sample.ppid, 1);
        assert_eq!(sample.cpu_ticks, 325);
    }

    #[test]
    fn memory_is_read_in_kilobytes() {
        let status = "Name:\tlattice\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nThreads:\t8\n";
        assert_eq!(field_kb(status, "VmRSS:"), Some(51234));
        let rollup = "55c1-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  1756 kB\nPss:   199 kB\nPss_Anon: 108 kB\n";
        assert_eq!(field_kb(rollup, "Pss:"), Some(199));
    }

    #[test]
    fn trees_include_grandchildren_only_of_the_root() {
        let sample = |ppid| ProcessSample {
            ppid,
            ..Default::default()
        };
        let all: HashMap<u32, ProcessSample> = [
            (10, sample(1)),
            (11, sample(10)),
            (12, sample(11)),
            (20, sample(1)),
        ]
        .into();
        let mut tree = tree_of(10, &all);
        tree.sort();
        assert_eq!(tree, vec![10, 11, 12]);
        assert!(tree_of(99, &all).is_empty());
    }

    #[test]
    fn targets_take_an_optional_label() {
        assert_eq!(
            Target::parse("lattice=42").unwrap(),
            Target {
                label: "lattice".into(),
                pid: 42
            }
        );
        assert_eq!(Target::parse("7").unwrap().label, "pid 7");
        assert!(Target::parse("x=y").is_err());
    }

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let mut watch = ProcessWatch::new(vec![Target {
            label: "self".into(),
            pid: std::process::id(),
        }]);
        watch.sample();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert_ne!(x, 1);
        watch.sample();
        let usage = &watch.usage()[0];
        assert!(usage.cpu_seconds > 0.0, "{usage:?}");
        assert!(usage.peak_rss_mb > 1.0, "{usage:?}");
    }
}
