//! `lattice up --topology FILE`: a whole topology on one machine, as child
//! processes of this same binary (`lattice serve --instance NAME --roles ...`),
//! and `lattice routes --nginx`, the proxy configuration in front of it.
//!
//! `up` checks the [`topology`] and its agreement with the homeserver
//! configuration before starting anything, then keeps every instance running:
//! a child that exits is started again after an exponential backoff (logged
//! with its name and exit status). Children run in process groups of their
//! own, so a Ctrl-C in the terminal reaches `up` only; on Ctrl-C or SIGTERM,
//! `up` sends each child SIGTERM, waits a grace period for them to finish
//! their requests, kills the ones still running, and exits. A second Ctrl-C
//! kills at once. Each line a child prints comes out prefixed with its
//! instance name.

pub mod nginx;
pub mod topology;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lattice_actors::{Backoff, BackoffConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::up::topology::{Instance, Topology, TopologyError};

/// How a child that keeps failing is restarted: after 1 s, then 2, 4, ...
/// up to 30 s; a child that ran for a minute starts the sequence over.
pub const RESTART_BACKOFF: BackoffConfig = BackoffConfig {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
    multiplier: 2,
    reset_after: Duration::from_secs(60),
};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The topology file (see config/split.yaml).
    #[arg(long)]
    pub topology: PathBuf,
    /// Seconds each instance has to stop after SIGTERM before it is killed.
    #[arg(long, default_value_t = 10)]
    pub grace_period: u64,
    /// Only check the topology and the homeserver configuration, print the
    /// commands that would run, and exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    /// The topology file (see config/split.yaml).
    #[arg(long)]
    pub topology: PathBuf,
    /// Print an nginx configuration (the only format so far).
    #[arg(long, required = true)]
    pub nginx: bool,
    /// What nginx listens on: a port, `address:port`, or `443 ssl`.
    #[arg(long, default_value = "8080")]
    pub listen: String,
    /// nginx's `server_name` (`_`: any host).
    #[arg(long, default_value = "_")]
    pub server_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `lattice routes`: prints the proxy configuration of a topology.
pub fn routes(args: RoutesArgs) -> Result<(), UpError> {
    let topology = Topology::load(&args.topology)?;
    print!(
        "{}",
        nginx::render(
            &topology,
            &nginx::NginxOptions {
                listen: args.listen,
                server_name: args.server_name,
            },
        )
    );
    Ok(())
}

/// `lattice up`: runs the topology until Ctrl-C or SIGTERM; SIGHUP reads
/// the topology file again and applies it (see [`Fleet::apply`]).
pub fn run(args: UpArgs) -> Result<(), UpError> {
    let source = TopologySource {
        path: args.topology.clone(),
        program: std::env::current_exe()?,
        inherited: std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect(),
    };
    let children = source.children()?;
    if args.check {
        for child in &children {
            println!("{}", child.command_line());
        }
        return Ok(());
    }
    for child in &children {
        child.check_listen()?;
    }
    init_logging();
    let grace = Duration::from_secs(args.grace_period);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(supervise_all(source, children, grace))
}

/// Where `up` reads its topology, on start and on SIGHUP.
struct TopologySource {
    path: PathBuf,
    program: PathBuf,
    /// The names of the environment variables `up` was started with.
    inherited: Vec<String>,
}

impl TopologySource {
    /// The topology's instances as children, once it is checked against
    /// the homeserver configuration.
    fn children(&self) -> Result<Vec<ChildSpec>, UpError> {
        let topology = Topology::load(&self.path)?;
        let config = topology.homeserver_config()?;
        let mistakes = topology.check_against(&config);
        if !mistakes.is_empty() {
            return Err(TopologyError::Mistakes(mistakes).into());
        }
        Ok(topology
            .instances
            .iter()
            .map(|instance| ChildSpec::new(&topology, instance, &self.program, &self.inherited))
            .collect())
    }
}

/// What `up` is asking its children to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// SIGTERM sent; wait for the grace period.
    Terminate,
    /// Kill now.
    Kill,
}

/// How to start one instance.
#[derive(Debug, Clone)]
struct ChildSpec {
    name: String,
    /// The name padded to the longest, for aligned output.
    label: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Where it listens (also in `env`).
    listen: String,
}

impl ChildSpec {
    fn new(
        topology: &Topology,
        instance: &Instance,
        program: &std::path::Path,
        inherited: &[String],
    ) -> ChildSpec {
        let width = topology
            .instances
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(0);
        let mut args = vec![
            "serve".to_owned(),
            "--config".to_owned(),
            topology.homeserver.display().to_string(),
            "--instance".to_owned(),
            instance.name.clone(),
        ];
        if !instance.runs_every_role() {
            args.push("--roles".to_owned());
            args.push(instance.role_list());
        }
        ChildSpec {
            name: instance.name.clone(),
            label: format!("{:>width$}", instance.name),
            program: program.to_owned(),
            args,
            env: topology.child_env(instance, inherited),
            listen: instance.listen.to_string(),
        }
    }

    /// What makes the running process this instance: its command line
    /// (name and roles) and its address. A child whose identity changed is
    /// restarted; one whose settings alone changed gets them at its next
    /// start.
    fn identity(&self) -> (&PathBuf, &[String], &str) {
        (&self.program, &self.args, &self.listen)
    }

    /// Only a hint: the port may be taken between this check and the
    /// child's bind, and the child then fails and is restarted.
    fn check_listen(&self) -> Result<(), UpError> {
        match TcpListener::bind(&self.listen) {
            Ok(_) => Ok(()),
            Err(error) => Err(std::io::Error::new(
                error.kind(),
                format!(
                    "topology: key `instances.{}.listen`: cannot listen on {}: {error}",
                    self.name, self.listen
                ),
            )
            .into()),
        }
    }

    /// The command as a shell would run it, for `--check`.
    fn command_line(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(name, value)| format!("{name}={}", shell_quote(value)))
            .collect();
        words.push(shell_quote(&self.program.display().to_string()));
        words.extend(self.args.iter().map(|a| shell_quote(a)));
        words.join(" ")
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: the terminal's Ctrl-C goes to `up`,
            // which stops children in order.
            .process_group(0)
            // Should `up` itself die, take the children with it.
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let label: Arc<str> = Arc::from(self.label.as_str());
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout, Arc::clone(&label), false));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(stderr, label, true));
        }
        Ok(child)
    }
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,=@".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Copies a child's output line by line, each prefixed with `label | `.
async fn forward_lines(stream: impl AsyncRead + Unpin, label: Arc<str>, to_stderr: bool) {
    use std::io::Write as _;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                // One write per line, so lines of different children never interleave.
                let formatted = format!("{label} | {text}\n");
                let _ = if to_stderr {
                    std::io::stderr().lock().write_all(formatted.as_bytes())
                } else {
                    std::io::stdout().lock().write_all(formatted.as_bytes())
                };
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn supervise_all(
    source: TopologySource,
    children: Vec<ChildSpec>,
    grace: Duration,
) -> Result<(), UpError> {
    let mut signals = Signals::new()?;
    let mut fleet = Fleet::new(grace);
    fleet.apply(children);
    // Until Ctrl-C or SIGTERM; SIGHUP applies the topology file again.
    while signals.next().await == Signal::Reload {
        tracing::info!(topology = %source.path.display(), "reading the topology again");
        match source.children() {
            Ok(children) => fleet.apply(children),
            Err(error) => {
                tracing::error!("the topology was not applied, every instance runs on: {error}")
            }
        }
    }
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopping every instance (Ctrl-C again kills them)"
    );
    fleet.stop(Stop::Terminate);
    loop {
        let kill = tokio::select! {
            _ = fleet.all_stopped() => break,
            signal = signals.next() => signal == Signal::Stop,
        };
        if kill {
            tracing::warn!("killing every instance");
            fleet.stop(Stop::Kill);
            fleet.all_stopped().await;
            break;
        }
    }
    tracing::info!("every instance stopped");
    Ok(())
}

/// The children `up` runs, each supervised by a task of its own.
struct Fleet {
    grace: Duration,
    tasks: tokio::task::JoinSet<()>,
    /// The instances of the topology as last applied, by name.
    running: BTreeMap<String, Supervised>,
    /// Instances removed from the topology, stopping or stopped.
    removed: Vec<watch::Sender<Stop>>,
}

/// What `up` keeps of one supervised child.
struct Supervised {
    /// How to start it: replaced when the topology changes.
    spec: watch::Sender<ChildSpec>,
    stop: watch::Sender<Stop>,
}

impl Fleet {
    fn new(grace: Duration) -> Fleet {
        Fleet {
            grace,
            tasks: tokio::task::JoinSet::new(),
            running: BTreeMap::new(),
            removed: Vec::new(),
        }
    }

    /// Makes the running children those of `children`, touching no other:
    /// a new instance is started, one no longer there is stopped (SIGTERM,
    /// so it hands its shards over first), one whose roles or address
    /// changed is restarted, and one whose settings alone changed runs on
    /// and gets them at its next start (the others learn of a new writer
    /// through the shard table, not their settings).
    fn apply(&mut self, children: Vec<ChildSpec>) {
        let names: Vec<String> = children.iter().map(|child| child.name.clone()).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !names.contains(name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(supervised) = self.running.remove(&name) {
                tracing::info!(instance = %name, "removed from the topology; stopping it");
                supervised.stop.send_replace(Stop::Terminate);
                self.removed.push(supervised.stop);
            }
        }
        let first = self.running.is_empty();
        for child in children {
            match self.running.get(&child.name) {
                None => {
                    if !first {
                        if let Err(error) = child.check_listen() {
                            tracing::warn!("{error}; starting it all the same");
                        }
                        tracing::info!(instance = %child.name, "added to the topology; starting it");
                    }
                    let name = child.name.clone();
                    let (spec, spec_receiver) = watch::channel(child);
                    let (stop, stop_receiver) = watch::channel(Stop::Running);
                    self.tasks
                        .spawn(supervise(spec_receiver, stop_receiver, self.grace));
                    self.running.insert(name, Supervised { spec, stop });
                }
                Some(supervised) => {
                    let current = supervised.spec.borrow().clone();
                    if current.identity() != child.identity() {
                        tracing::info!(instance = %child.name, "its roles or address changed; restarting it");
                    } else if current.env != child.env || current.label != child.label {
                        tracing::info!(instance = %child.name, "its settings changed; they apply when it next starts");
                    } else {
                        continue;
                    }
                    supervised.spec.send_replace(child);
                }
            }
        }
    }

    /// Asks every child, running or removed, to stop.
    fn stop(&self, how: Stop) {
        for stop in self
            .running
            .values()
            .map(|supervised| &supervised.stop)
            .chain(&self.removed)
        {
            stop.send_replace(how);
        }
    }

    async fn all_stopped(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How one run of a child ended.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    /// Told to stop: the supervisor ends.
    Stopped,
    /// Its roles or address changed: start it again at once.
    Changed,
}

/// Runs one instance until told to stop, restarting it when it exits or
/// when its roles or address change.
async fn supervise(
    mut spec: watch::Receiver<ChildSpec>,
    mut stop: watch::Receiver<Stop>,
    grace: Duration,
) {
    let mut backoff = Backoff::new(RESTART_BACKOFF);
    let mut restarts = 0u64;
    loop {
        if *stop.borrow() != Stop::Running {
            return;
        }
        let child = spec.borrow_and_update().clone();
        let started = Instant::now();
        let outcome = match child.spawn() {
            Ok(mut process) => {
                tracing::info!(
                    instance = %child.name,
                    pid = process.id().unwrap_or_default(),
                    "started"
                );
                let ended = loop {
                    tokio::select! {
                        status = process.wait() => break Ended::Exited(status),
                        _ = stop.wait_for(|s| *s != Stop::Running) => break Ended::Stopped,
                        changed = spec.changed() => {
                            if changed.is_err() {
                                break Ended::Stopped;
                            }
                            if spec.borrow().identity() != child.identity() {
                                break Ended::Changed;
                            }
                        }
                    }
                };
                match ended {
                    Ended::Exited(status) => status.map(|s| s.to_string()),
                    Ended::Stopped => {
                        terminate(&child.name, &mut process, &mut stop, grace).await;
                        return;
                    }
                    Ended::Changed => {
                        terminate(&child.name, &mut process, &mut stop, grace).await;
                        backoff = Backoff::new(RESTART_BACKOFF);
                        continue;
                    }
                }
            }
            Err(error) => Err(error),
        };
        let ran_for = started.elapsed();
        let delay = backoff.next_delay(ran_for);
        restarts += 1;
        match outcome {
            Ok(status) => tracing::warn!(
                instance = %child.name,
                %status,
                ran_for = ?ran_for,
                restart_in = ?delay,
                restarts,
                "instance exited; restarting"
            ),
            Err(error) => tracing::warn!(
                instance = %child.name,
                %error,
                restart_in = ?delay,
                restarts,
                "could not start instance; retrying"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s != Stop::Running) => return,
            // Changed while waiting to restart: start the new one now.
            _ = spec.wait_for(|new| new.identity() != child.identity()) => {}
        }
    }
}

/// SIGTERM, then SIGKILL after `grace` or when told to kill.
async fn terminate(
    name: &str,
    process: &mut Child,
    stop: &mut watch::Receiver<Stop>,
    grace: Duration,
) {
    if *stop.borrow() != Stop::Kill {
        if let Some(pid) = process.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            if let Err(error) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
                tracing::warn!(instance = %name, %error, "could not send SIGTERM");
            }
        }
        tokio::select! {
            status = process.wait() => {
                log_stopped(name, status);
                return;
            }
            _ = tokio::time::sleep(grace) => {
                tracing::warn!(instance = %name, "still running after the grace period; killing it");
            }
            _ = stop.wait_for(|s| *s == Stop::Kill) => {}
        }
    }
    let _ = process.start_kill();
    log_stopped(name, process.wait().await);
}

fn log_stopped(name: &str, status: std::io::Result<ExitStatus>) {
    match status {
        Ok(status) => tracing::info!(instance = %name, %status, "stopped"),
        Err(error) => tracing::warn!(instance = %name, %error, "could not wait for instance"),
    }
}

/// What a signal asks of `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// Ctrl-C or SIGTERM.
    Stop,
    /// SIGHUP: apply the topology file again.
    Reload,
}

/// Ctrl-C, SIGTERM and SIGHUP, as one stream of requests.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop,
            _ = self.terminate.recv() => Signal::Stop,
            _ = self.hangup.recv() => Signal::Reload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_exponentially_and_reset_after_a_healthy_run() {
        let mut backoff = Backoff::new(RESTART_BACKOFF);
        let crash = Duration::from_millis(200);
        let delays: Vec<u64> = (0..8)
            .map(|_| backoff.next_delay(crash).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        // A child that ran a minute was healthy: the next failure is new.
        assert_eq!(
            backoff.next_delay(Duration::from_secs(61)),
            Duration::from_secs(1)
        );
        assert_eq!(backoff.next_delay(crash), Duration::from_secs(2));
    }

    #[test]
    fn words_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_quote("127.0.0.1:8008"), "127.0.0.1:8008");
        assert_eq!(shell_quote(r#"["events1"]"#), r#"'["events1"]'"#);
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
        assert_eq!(shell_quote(""), "''");
    }

    fn fake_child(script: String) -> ChildSpec {
        ChildSpec {
            name: "fake".into(),
            label: "fake".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script],
            env: vec![],
            listen: "127.0.0.1:0".into(),
        }
    }

    /// A child that ignores SIGTERM is killed once the grace period is over.
    #[tokio::test]
    async fn a_child_deaf_to_sigterm_is_killed_after_the_grace_period() {
        let ready = std::env::temp_dir().join(format!("lattice-up-deaf-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        // The child says when its trap is set: before that, SIGTERM would end it.
        let child = fake_child(format!(
            "trap '' TERM; touch '{}'; while true; do sleep 0.05; done",
            ready.display()
        ));
        let (stop, receiver) = watch::channel(Stop::Running);
        let (_spec, spec) = watch::channel(child);
        let task = tokio::spawn(supervise(spec, receiver, Duration::from_millis(300)));
        for _ in 0..500 {
            if ready.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ready.exists(), "the child never started");
        let _ = std::fs::remove_file(&ready);
        let asked = Instant::now();
        stop.send_replace(Stop::Terminate);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("killed after the grace period")
            .expect("the supervisor task ended normally");
        assert!(asked.elapsed() >= Duration::from_millis(300));
    }

    /// A child that dies is started again, and SIGTERM stops it.
    #[tokio::test]
    async fn a_dying_child_is_restarted_and_stopped_on_request() {
        let directory =
            std::env::temp_dir().join(format!("lattice-up-test-{}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("temp dir");
        let starts = directory.join("starts");
        let _ = std::fs::remove_file(&starts);
        // Counts its starts; the first run dies at once, later ones wait for SIGTERM.
        let script = format!(
            "echo run >> {starts}; if [ $(wc -l < {starts}) -lt 2 ]; then exit 3; fi; \
             trap 'exit 0' TERM; while true; do sleep 0.05; done",
            starts = starts.display()
        );
        let child = fake_child(script);
        let (stop, receiver) = watch::channel(Stop::Running);
        let (_spec, spec) = watch::channel(child);
        let task = tokio::spawn(supervise(spec, receiver, Duration::from_secs(5)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&starts).map_or(0, |s| s.lines().count()) < 2 {
            assert!(Instant::now() < deadline, "the child was not restarted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send_replace(Stop::Terminate);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stopped within the grace period")
            .expect("the supervisor task ended normally");
        let _ = std::fs::remove_dir_all(&directory);
    }

    /// Applying a changed topology starts the added instance, stops the
    /// removed one, restarts the one whose command changed, and leaves the
    /// one whose settings alone changed running.
    #[tokio::test]
    async fn a_changed_topology_touches_only_the_instances_that_changed() {
        let directory =
            std::env::temp_dir().join(format!("lattice-up-apply-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).expect("temp dir");
        // Each child appends its name and its first argument to `starts`
        // when it starts, and to `stops` when SIGTERM ends it.
        let child = |name: &str, word: &str, setting: &str| {
            let script = format!(
                "echo {name}-$0 >> {starts}; trap 'echo {name}-$0 >> {stops}; exit 0' TERM; \
                 while true; do sleep 0.05; done",
                starts = directory.join("starts").display(),
                stops = directory.join("stops").display(),
            );
            ChildSpec {
                name: name.into(),
                label: name.into(),
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script, word.into()],
                env: vec![("LATTICE__SETTING".into(), setting.into())],
                listen: "127.0.0.1:0".into(),
            }
        };
        let lines = |file: &str| -> Vec<String> {
            let mut lines: Vec<String> = std::fs::read_to_string(directory.join(file))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        let wait_for = |file: &'static str, expected: Vec<&'static str>| {
            let lines = &lines;
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while lines(file) != expected {
                    assert!(
                        Instant::now() < deadline,
                        "{file}: {:?}, expected {expected:?}",
                        lines(file)
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let mut fleet = Fleet::new(Duration::from_secs(5));
        fleet.apply(vec![
            child("kept", "one", "a"),
            child("moved", "one", "a"),
            child("dropped", "one", "a"),
        ]);
        wait_for("starts", vec!["dropped-one", "kept-one", "moved-one"]).await;
        fleet.apply(vec![
            child("kept", "one", "b"),
            child("moved", "two", "b"),
            child("added", "one", "b"),
        ]);
        let every_run = vec![
            "added-one",
            "dropped-one",
            "kept-one",
            "moved-one",
            "moved-two",
        ];
        wait_for("starts", every_run.clone()).await;
        wait_for("stops", vec!["dropped-one", "moved-one"]).await;
        fleet.stop(Stop::Terminate);
        tokio::time::timeout(Duration::from_secs(10), fleet.all_stopped())
            .await
            .expect("every child stopped");
        // Every process ended: the one whose setting changed ran only its
        // first (a restart would be a second `kept-one` in each list).
        assert_eq!(
            lines("starts")
                .iter()
                .filter(|l| l.starts_with("kept"))
                .count(),
            1
        );
        wait_for("starts", every_run.clone()).await;
        wait_for("stops", every_run).await;
        let _ = std::fs::remove_dir_all(&directory);
    }
}
