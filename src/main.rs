//! The `lattice` command line: serve, generate-config, register-user.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lattice::config::Config;

/// The process's allocator (see Cargo.toml): returns freed memory to the
/// system and is faster than glibc's under many small allocations.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "lattice",
    version,
    about = "A Matrix homeserver that scales out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run an instance.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// This instance's unique name.
        #[arg(long, default_value = "main")]
        instance: String,
        /// Comma-separated roles; all roles when omitted (the monolith).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Print a documented configuration with a fresh signing key.
    GenerateConfig {
        #[arg(long)]
        server_name: String,
        /// Write this `listen` address instead of 127.0.0.1:8008.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Write this `database.url`.
        #[arg(long)]
        database_url: Option<String>,
        /// Write `enable_registration: true` (anyone may create an account).
        #[arg(long)]
        enable_registration: bool,
        /// Write `rate_limits.enabled: false`.
        #[arg(long)]
        disable_rate_limits: bool,
    },
    /// Create a user account directly in the database.
    RegisterUser {
        #[arg(long)]
        config: PathBuf,
        /// The localpart (`alice`) or full user id.
        #[arg(long)]
        user: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        admin: bool,
    },
    /// Measure a homeserver (any, through the Client-Server API) under a named workload.
    Bench(lattice::bench::BenchArgs),
    /// Run a whole topology on this machine: one child process per instance, restarted when it dies.
    Up(lattice::up::UpArgs),
    /// Print the reverse-proxy configuration that routes requests to a topology's instances.
    Routes(lattice::up::RoutesArgs),
    /// Administer a running deployment through its database.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Show which instance owns which shards of each sharded kind (events,
    /// background), or move one by hand.
    Shards {
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<ShardsAction>,
    },
}

#[derive(Subcommand)]
enum ShardsAction {
    /// Move a shard to a live member and pin it there (it stays until that
    /// member stops or dies). The old owner finishes what it is writing.
    Move {
        /// `events` or `background`.
        kind: String,
        /// 0 to 255.
        shard: i32,
        /// The instance that takes it: a live member of the kind.
        to: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::GenerateConfig {
            server_name,
            listen,
            database_url,
            enable_registration,
            disable_rate_limits,
        } => generate_config(
            &server_name,
            &lattice::config::SampleSettings {
                listen,
                database_url,
                enable_registration,
                disable_rate_limits,
            },
        ),
        Command::Serve {
            config,
            instance,
            roles,
        } => run_async(serve(config, instance, roles)),
        Command::RegisterUser {
            config,
            user,
            password,
            admin,
        } => run_async(register_user(config, user, password, admin)),
        Command::Bench(args) => lattice::bench::run(args).map_err(Into::into),
        Command::Up(args) => lattice::up::run(args).map_err(Into::into),
        Command::Routes(args) => lattice::up::routes(args).map_err(Into::into),
        Command::Admin {
            command: AdminCommand::Shards { config, action },
        } => run_async(admin_shards(config, action)),
    };
    if let Err(error) = result {
        eprintln!("lattice: {error:#}");
        std::process::exit(1);
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn generate_config(
    server_name: &str,
    settings: &lattice::config::SampleSettings,
) -> anyhow::Result<()> {
    if ruma::ServerName::parse(server_name).is_err() {
        anyhow::bail!("`{server_name}` is not a valid server name");
    }
    let key = lattice::signing_key::SigningKey::generate();
    let sample = lattice::config::sample(server_name, &key.to_config_string());
    print!(
        "{}",
        lattice::config::sample_with_settings(&sample, settings)?
    );
    Ok(())
}

fn init_logging(config: &Config) {
    // ruma logs every auth check at info; keep that out of the default output.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            tracing_subscriber::EnvFilter::try_new(format!("ruma_state_res=warn,{}", config.log))
        })
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file should be plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .init();
}

async fn serve(config_path: PathBuf, instance: String, roles: Vec<String>) -> anyhow::Result<()> {
    let config = Config::load(Some(&config_path))?;
    init_logging(&config);
    let roles = lattice::roles::Role::parse_list(&roles)?;
    let listener = bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let workers = config.http_workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let running =
        lattice::node::Node::start_with_roles(config, &instance, &roles, listener, workers).await?;
    wait_for_shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Connections the kernel queues for `accept` (it caps this at
/// `net.core.somaxconn`). The standard library's 128 overflows when a few
/// hundred clients connect at once, and each refused SYN costs its client a
/// one-second retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn admin_shards(config_path: PathBuf, action: Option<ShardsAction>) -> anyhow::Result<()> {
    let config = Config::load(Some(&config_path))?;
    let pool = lattice::storage::connect(&config.database.url, 2)?;
    lattice::storage::migrate(&pool).await?;
    if let Some(ShardsAction::Move { kind, shard, to }) = action {
        let epoch = lattice::shards::move_shard(&pool, &kind, shard, &to).await?;
        println!("{kind} shard {shard} now belongs to {to} (epoch {epoch}), pinned there");
        return Ok(());
    }
    for kind in lattice::shards::KINDS {
        let described = lattice::shards::describe(&pool, kind).await?;
        print!("{}", lattice::shards::summary(&described));
    }
    Ok(())
}

async fn register_user(
    config_path: PathBuf,
    user: String,
    password: String,
    admin: bool,
) -> anyhow::Result<()> {
    let config = Config::load(Some(&config_path))?;
    let pool = lattice::storage::connect(&config.database.url, 2)?;
    lattice::storage::migrate(&pool).await?;
    let localpart = user
        .strip_prefix('@')
        .and_then(|rest| rest.split(':').next())
        .unwrap_or(&user)
        .to_lowercase();
    let user_id = format!("@{}:{}", localpart, config.server_name);
    ruma::UserId::parse(&user_id).map_err(|e| anyhow::anyhow!("invalid user id {user_id}: {e}"))?;
    let hash = lattice::passwords::PasswordHasher::default()
        .hash(password)
        .await?;
    if !lattice::storage::accounts::create_user(&pool, &user_id, &localpart, Some(&hash), admin)
        .await?
    {
        anyhow::bail!("user {user_id} already exists");
    }
    println!("created {user_id}{}", if admin { " (admin)" } else { "" });
    Ok(())
}
