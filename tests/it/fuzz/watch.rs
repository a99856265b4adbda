//! What the servers must never log: panics and ERROR events of Lattice's own
//! code. Both are process-wide (a panic hook, the global tracing
//! subscriber), and the other tests of this binary run beside each other,
//! so a test that watches runs alone in a child process of the test binary:
//! everything that process logs is its own.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// Set in the child process that runs the watched test.
const CHILD: &str = "LATTICE_TEST_WATCHED_CHILD";

/// Whether this process is the child [`run_in_child`] started.
pub fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs the test `name` (`module::test`) alone in a child process of this
/// test binary and fails with its output if it fails; prints its output
/// either way (seen with `--nocapture` or on failure).
pub fn run_in_child(name: &str) {
    let binary = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(binary)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed in its own process ({}); its output is above",
        output.status
    );
}

/// Panics and ERROR events recorded since [`Watch::install`].
#[derive(Clone, Default)]
pub struct Watch {
    records: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    /// Installs the panic hook and the global subscriber (with the usual
    /// `RUST_LOG` output beside the recorder). Only in the child process.
    pub fn install() -> Watch {
        assert!(is_child(), "a watch is only installed in its own process");
        let watch = Watch::default();
        let records = Arc::clone(&watch.records);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Ok(mut records) = records.lock() {
                records.push(format!(
                    "panic on thread {}: {info}",
                    thread.name().unwrap_or("unnamed")
                ));
            }
            previous(info);
        }));
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .with(ErrorRecorder(Arc::clone(&watch.records)))
            .try_init();
        watch
    }

    /// Everything recorded so far.
    pub fn records(&self) -> Vec<String> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Records ERROR events whose target is Lattice's code.
struct ErrorRecorder(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorRecorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() != tracing::Level::ERROR || !metadata.target().starts_with("lattice") {
            return;
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        if let Ok(mut records) = self.0.lock() {
            records.push(format!("ERROR {}:{}", metadata.target(), fields.0));
        }
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}
