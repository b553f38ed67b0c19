//! `netcron <api|scheduler|executor|ingest|migrate|all|keygen|inventory>`: parses the command line, loads the
//! role's settings once, and runs the role until SIGTERM or ctrl-c.

mod oneshot;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use netcron_common::catalog;
use netcron_common::config::{self, ConfigError};
use netcron_common::metrics::Telemetry;
use netcron_common::ops;
use netcron_migration::{Migrator, MigratorTrait};
use netcron_store::DatabaseSettings;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "netcron",
    version,
    about = "Durable scheduled network command runner"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

// Parsed once at start; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Role {
    /// Serve the REST API (applies migrations first unless NETCRON_AUTO_MIGRATE=false).
    #[command(after_help = catalog::help("api"))]
    Api,
    /// Turn due cron fire times into runs on the tasks stream.
    #[command(after_help = catalog::help("scheduler"))]
    Scheduler,
    /// Run tasks from the tasks stream over SSH.
    #[command(after_help = catalog::help("executor"))]
    Executor,
    /// Store results from the results stream in Postgres (also part of `api`).
    #[command(after_help = catalog::help("ingest"))]
    Ingest,
    /// Apply pending database migrations and exit.
    #[command(after_help = catalog::help("migrate"))]
    Migrate,
    /// Every role in one process (single-node mode); creates the database if it is missing.
    #[command(after_help = catalog::help("all"))]
    All {
        /// Run a private Postgres and Redis whatever the URLs say (NETCRON_EMBEDDED=always).
        #[arg(long)]
        embedded: bool,
    },
    /// Print a new random NETCRON_SECRET_KEY.
    Keygen,
    /// Manage accounts from the command line (the way to get the first admin in).
    #[command(subcommand)]
    User(UserCommand),
    /// Collect one Windows inventory now, without the services, into a JSON file.
    Inventory(oneshot::InventoryArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account in the database named by DATABASE_URL (migrating it first). Without
    /// --password-stdin a random password is made and printed once.
    Add {
        name: String,
        /// The role: viewer, operator, editor or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Same as --role admin.
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    config::load_dotenv();
    netcron_common::telemetry::init();
    if let Role::Keygen = cli.role {
        let key = netcron_common::secret::SecretKey::generate_base64();
        #[allow(clippy::print_stdout)]
        {
            println!("{key}");
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netcron: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Configuration errors are one clear line; anything else shows its cause chain.
            if let Some(config) = e.downcast_ref::<ConfigError>() {
                eprintln!("netcron: {config}");
            } else {
                eprintln!("netcron: {}", netcron_common::startup::describe(&e));
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(role: Role) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match role {
        Role::Api => {
            let mut settings = netcron_api::Settings::from_env()?;
            settings.redis.url = settings.redis.resolve(&shutdown).await?;
            netcron_api::run(settings, Telemetry::default(), shutdown).await
        }
        Role::Scheduler => {
            let mut settings = netcron_scheduler::Settings::from_env()?;
            settings.redis.url = settings.redis.resolve(&shutdown).await?;
            let ops =
                ops::addr_from_env("NETCRON_SCHEDULER_OPS_ADDR", ([0, 0, 0, 0], 9091).into())?;
            let telemetry = serve_ops(ops, &shutdown).await?;
            netcron_scheduler::run(settings, telemetry, shutdown).await
        }
        Role::Executor => {
            let mut settings = netcron_executor::Settings::from_env()?;
            settings.redis.url = settings.redis.resolve(&shutdown).await?;
            let ops = ops::addr_from_env("NETCRON_EXECUTOR_OPS_ADDR", ([0, 0, 0, 0], 9092).into())?;
            let telemetry = serve_ops(ops, &shutdown).await?;
            netcron_executor::run(settings, telemetry, shutdown).await
        }
        Role::Ingest => {
            let mut settings = netcron_ingest::Settings::from_env()?;
            settings.redis.url = settings.redis.resolve(&shutdown).await?;
            let ops = ops::addr_from_env("NETCRON_INGEST_OPS_ADDR", ([0, 0, 0, 0], 9093).into())?;
            let telemetry = serve_ops(ops, &shutdown).await?;
            netcron_ingest::run(settings, telemetry, shutdown).await
        }
        Role::Migrate => {
            let settings = DatabaseSettings::from_env()?;
            let db = netcron_store::db::connect(&settings.url).await?;
            Migrator::up(&db, None).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Role::All { embedded } => run_all(embedded, shutdown).await,
        Role::Keygen => Ok(()),
        Role::User(command) => user(command).await,
        Role::Inventory(args) => {
            if oneshot::run(args).await? {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "the inventory collection failed; see the output file"
                ))
            }
        }
    }
}

/// `netcron user …`: accounts from the command line.
async fn user(command: UserCommand) -> anyhow::Result<()> {
    use netcron_common::secret::SecretString;
    use netcron_services::people;
    let UserCommand::Add {
        name,
        role,
        admin,
        display_name,
        password_stdin,
    } = command;
    let role: people::Role = if admin {
        people::Role::Admin
    } else {
        role.parse()
            .map_err(|e: String| anyhow::anyhow!("--role: {e}"))?
    };
    let name = people::parse_user_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (password, made) = if password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        (line.trim_end_matches(['\r', '\n']).to_owned(), false)
    } else {
        (
            netcron_common::secret::SecretKey::generate_base64()[..20].to_owned(),
            true,
        )
    };
    let settings = DatabaseSettings::from_env()?;
    let db = netcron_store::db::connect(&settings.url).await?;
    Migrator::up(&db, None).await?;
    let user = people::create_user(
        &db,
        people::NewUser {
            name,
            display_name: display_name.unwrap_or_default(),
            kind: people::AccountKind::Person,
            role,
            password: Some(SecretString::new(password.clone())),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "created {} ({}) with the role {}",
            user.name, user.id, user.role
        );
        if made {
            println!("password (shown once): {password}");
        }
    }
    Ok(())
}

/// Single-node mode: every role in this process, sharing one shutdown signal. If one role
/// fails, the others are stopped too, so the process never runs half of netcron.
async fn run_all(embedded: bool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut api = netcron_api::Settings::from_env()?;
    let mut scheduler = netcron_scheduler::Settings::from_env()?;
    let mut executor = netcron_executor::Settings::from_env()?;
    let mut private = netcron_embedded::EmbeddedSettings::from_env()?;
    if embedded {
        private.mode = netcron_embedded::Mode::Always;
    }
    let wanted = netcron_embedded::wanted(private.mode, &api.database.url, &api.redis.url);
    // Started here, on the main thread (this future is the runtime's `block_on`), which lives
    // as long as the process: a server's parent-death signal follows the thread that started
    // it. Dropped at the end of this function, after every role has stopped.
    let servers = netcron_embedded::start(&private, wanted, &api.database.url, &api.redis.url)?;
    if let Some(url) = servers.as_ref().and_then(|s| s.database_url.clone()) {
        scheduler.database.url.clone_from(&url);
        api.database.url = url;
    }
    if let Some(url) = servers.as_ref().and_then(|s| s.redis_url.clone()) {
        api.redis.url = url;
    }
    // One Sentinel forwarder for the process, if REDIS_URL names Sentinels.
    let redis = api.redis.resolve(&shutdown).await?;
    api.redis.url.clone_from(&redis);
    scheduler.redis.url.clone_from(&redis);
    executor.redis.url = redis;
    api.create_database = true;
    // One process, one set of metrics and readiness checks, served on the api's port, which
    // is bound first: while Postgres is away the process is alive and says why it is not ready.
    let telemetry = Telemetry::default();
    let mut roles = tokio::task::JoinSet::new();
    let (built, api_built) = tokio::sync::oneshot::channel();
    roles.spawn(netcron_api::run_reporting(
        api,
        telemetry.clone(),
        shutdown.clone(),
        Some(built),
    ));
    // The other roles start once the api has created and migrated the database, so the
    // scheduler never polls a schema that is not there yet.
    if api_built.await.is_ok() {
        roles.spawn(netcron_scheduler::run(
            scheduler,
            telemetry.clone(),
            shutdown.clone(),
        ));
        roles.spawn(netcron_executor::run(executor, telemetry, shutdown.clone()));
    }
    let mut result = Ok(());
    while let Some(joined) = roles.join_next().await {
        let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            shutdown.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    drop(servers);
    result
}

/// Binds the role's ops endpoint (`/health`, `/ready`, `/metrics`) before the role connects to
/// anything, so an orchestrator sees the process alive (and not ready) while it waits for its
/// dependencies.
async fn serve_ops(
    addr: Option<std::net::SocketAddr>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Telemetry> {
    let telemetry = Telemetry::default();
    if let Some(addr) = addr {
        let server = ops::OpsServer::bind(addr, telemetry.clone())
            .await
            .with_context(|| format!("binding the ops endpoint to {addr}"))?;
        tokio::spawn(server.run(shutdown.clone()));
    }
    Ok(telemetry)
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
