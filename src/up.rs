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

/// `lattice up`: runs the topology until Ctrl-C or SIGTERM.
pub fn run(args: UpArgs) -> Result<(), UpError> {
    let topology = Topology::load(&args.topology)?;
    let config = topology.homeserver_config()?;
    let mistakes = topology.check_against(&config);
    if !mistakes.is_empty() {
        return Err(TopologyError::Mistakes(mistakes).into());
    }
    let program = std::env::current_exe()?;
    let inherited: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    let children: Vec<ChildSpec> = topology
        .instances
        .iter()
        .map(|instance| ChildSpec::new(&topology, instance, &program, &inherited))
        .collect();
    if args.check {
        for child in &children {
            println!("{}", child.command_line());
        }
        return Ok(());
    }
    for instance in &topology.instances {
        // Only a hint: the port may be taken between this check and the
        // child's bind, and the child then fails and is restarted.
        if let Err(error) = TcpListener::bind(instance.listen) {
            return Err(std::io::Error::new(
                error.kind(),
                format!(
                    "topology: key `instances.{}.listen`: cannot listen on {}: {error}",
                    instance.name, instance.listen
                ),
            )
            .into());
        }
    }
    init_logging();
    let grace = Duration::from_secs(args.grace_period);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(supervise_all(children, grace))
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

async fn supervise_all(children: Vec<ChildSpec>, grace: Duration) -> Result<(), UpError> {
    let mut signals = Signals::new()?;
    let (stop, stop_receiver) = watch::channel(Stop::Running);
    let mut tasks = tokio::task::JoinSet::new();
    for child in children {
        tasks.spawn(supervise(child, stop_receiver.clone(), grace));
    }
    signals.next().await;
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopping every instance (Ctrl-C again kills them)"
    );
    stop.send_replace(Stop::Terminate);
    let all_stopped = async { while tasks.join_next().await.is_some() {} };
    tokio::pin!(all_stopped);
    tokio::select! {
        _ = &mut all_stopped => {}
        _ = signals.next() => {
            tracing::warn!("killing every instance");
            stop.send_replace(Stop::Kill);
            all_stopped.await;
        }
    }
    tracing::info!("every instance stopped");
    Ok(())
}

/// Runs one instance until told to stop, restarting it when it exits.
async fn supervise(child: ChildSpec, mut stop: watch::Receiver<Stop>, grace: Duration) {
    let mut backoff = Backoff::new(RESTART_BACKOFF);
    let mut restarts = 0u64;
    loop {
        if *stop.borrow() != Stop::Running {
            return;
        }
        let started = Instant::now();
        let outcome = match child.spawn() {
            Ok(mut process) => {
                tracing::info!(
                    instance = %child.name,
                    pid = process.id().unwrap_or_default(),
                    "started"
                );
                let exited = tokio::select! {
                    status = process.wait() => Some(status),
                    _ = stop.wait_for(|s| *s != Stop::Running) => None,
                };
                match exited {
                    Some(status) => status.map(|s| s.to_string()),
                    None => {
                        terminate(&child.name, &mut process, &mut stop, grace).await;
                        return;
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
    if *stop.borrow() == Stop::Terminate {
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

/// Ctrl-C and SIGTERM, as one stream of "stop" requests.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
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
        let task = tokio::spawn(supervise(child, receiver, Duration::from_millis(300)));
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
        let task = tokio::spawn(supervise(child, receiver, Duration::from_secs(5)));
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
}
