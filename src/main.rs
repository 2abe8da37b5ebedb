//! The `pgtenant` command: run the proxy, run the demo, mint password verifiers, check a
//! configuration file, or check a database's RLS posture.

#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines, clippy::cognitive_complexity)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use pgtenant::config::{Config, LogFormat};
use pgtenant::metrics::Metrics;
use pgtenant::verified::install::KeyStep;

/// mimalloc: returns freed memory to the system, so thousands of clients that connected
/// (TLS, SCRAM) and went idle leave no fragmented heap behind; also faster than glibc malloc.
/// The `system-alloc` feature leaves the system's malloc in place, for heap profilers
/// (valgrind massif, heaptrack) that see only malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// PostgreSQL proxy that authenticates clients as tenants, pools connections per
/// transaction, and injects each tenant's context (set_config(..., true)) into every
/// transaction so Row Level Security always sees the right tenant.
#[derive(Parser, Debug)]
#[command(name = "pgtenant", version, about, long_about = None)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "PGTENANT_CONFIG",
        default_value = "config.toml",
        global = true
    )]
    config: PathBuf,
    /// Override server.listen (address clients connect to).
    #[arg(long, env = "PGTENANT_LISTEN", global = true)]
    listen: Option<SocketAddr>,
    /// Override server.metrics_listen (HTTP /metrics, /healthz, /readyz).
    #[arg(long, env = "PGTENANT_METRICS_LISTEN", global = true)]
    metrics_listen: Option<SocketAddr>,
    /// Override server.log_format.
    #[arg(long, env = "PGTENANT_LOG_FORMAT", value_enum, global = true)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `pgtenant=debug` (also RUST_LOG).
    #[arg(long, env = "PGTENANT_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Boot a throwaway PostgreSQL with the example RLS schema and run the proxy in front of it.
    Demo,
    /// Print a SCRAM-SHA-256 verifier for a tenant password, SASLprep'd as PostgreSQL does
    /// (reads the password from stdin when not given).
    HashPassword {
        /// The password; omit it to read one line from standard input.
        password: Option<String>,
    },
    /// Validate a configuration file and list every problem; exits non-zero when invalid.
    CheckConfig,
    /// Check the RLS posture of each configured database through its backend role (and a
    /// DBA role if given): print every finding with the SQL that fixes it.
    ///
    /// Exit status: 0 no finding that counts; 1 a critical finding (with --strict, any
    /// finding); 2 a database could not be reached or a check could not run; 64 invalid
    /// configuration or arguments.
    Doctor {
        /// Check only [databases.<name>] (default: every configured database).
        #[arg(long, value_name = "NAME")]
        database: Option<String>,
        /// Also log in as this role and run the catalog checks through it, e.g.
        /// postgresql://postgres:secret@db:5432 (its database part is ignored: each checked
        /// database is used). Prefer the environment variable: a URL on the command line
        /// shows in `ps`.
        #[arg(
            long,
            env = "PGTENANT_DOCTOR_DBA_URL",
            value_name = "URL",
            hide_env_values = true
        )]
        dba_url: Option<String>,
        /// `table` for people, `json` for CI.
        #[arg(long, value_enum, default_value = "table")]
        format: pgtenant::doctor::output::Format,
        /// Warnings make the exit status non-zero too (as doctor.strict does at start-up).
        #[arg(long)]
        strict: bool,
    },
    /// Database objects pgtenant needs (run with a DBA role).
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Subcommand, Debug)]
enum DbCommand {
    /// Create or update the verified-context schema, key table, functions and grants
    /// (idempotent), and install the configured key.
    Install {
        /// Print the SQL instead of running it (the key is never printed).
        #[arg(long)]
        print: bool,
        /// Start a key rotation: the configured key becomes current, the old one stays
        /// valid as previous until --finish-rotation.
        #[arg(long, conflicts_with = "finish_rotation")]
        rotate: bool,
        /// End a key rotation: drop the previous key (after every pgtenant reloaded).
        #[arg(long)]
        finish_rotation: bool,
        /// Connection string of a DBA role (libpq URL or key=value; no TLS).
        #[arg(long, env = "PGTENANT_DBA_URL")]
        dba_url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::HashPassword { password }) => hash_password(password.clone()),
        Some(Command::CheckConfig) => match load(&cli) {
            Ok(_) => {
                println!("{}: OK", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Some(Command::Doctor {
            database,
            dba_url,
            format,
            strict,
        }) => doctor(
            &cli,
            database.as_deref(),
            dba_url.as_deref(),
            *format,
            *strict,
        ),
        Some(Command::Db(DbCommand::Install {
            print,
            rotate,
            finish_rotation,
            dba_url,
        })) => {
            init_tracing(&cli, LogFormat::Text);
            let step = match (rotate, finish_rotation) {
                (true, _) => KeyStep::Rotate,
                (_, true) => KeyStep::FinishRotation,
                _ => KeyStep::Install,
            };
            runtime(1).block_on(async {
                report(db_install(&cli, *print, step, dba_url.as_deref()).await)
            })
        }
        Some(Command::Demo) => {
            init_tracing(&cli, LogFormat::Text);
            runtime(0).block_on(async {
                report(pgtenant::demo::run(cli.listen, cli.metrics_listen).await)
            })
        }
        Some(Command::Run) | None => {
            let cfg = match load(&cli) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(64);
                }
            };
            init_tracing(&cli, cfg.server.log_format);
            let threads = cfg.server.worker_threads;
            runtime(threads).block_on(async { report(serve(cli, cfg).await) })
        }
    }
}

fn load(cli: &Cli) -> Result<Config, pgtenant::config::ConfigError> {
    let mut cfg = Config::load(&cli.config)?;
    if let Some(l) = cli.listen {
        cfg.server.listen = l;
    }
    if let Some(m) = cli.metrics_listen {
        cfg.server.metrics_listen = Some(m);
    }
    if let Some(f) = cli.log_format {
        cfg.server.log_format = f;
    }
    Ok(cfg)
}

async fn serve(cli: Cli, cfg: Config) -> anyhow::Result<()> {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut running = pgtenant::server::start(cfg, Arc::new(Metrics::new()), shutdown).await?;
    running
        .server
        .set_config_source(Box::new(move || load(&cli)));
    tokio::select! {
        _ = pgtenant::server::wait_for_signal() => {
            tracing::info!("shutting down");
            let _ = stop.send(true);
            (&mut running.task).await?;
        }
        r = &mut running.task => r?,
    }
    Ok(())
}

/// `pgtenant db install`: prints or runs the verified-context SQL.
async fn db_install(
    cli: &Cli,
    print: bool,
    step: KeyStep,
    dba_url: Option<&str>,
) -> anyhow::Result<()> {
    let cfg = load(cli)?;
    let objects = cfg.verified_objects();
    if print {
        print!("{}", objects.install_sql());
        print!("{}", objects.key_sql_comment());
        return Ok(());
    }
    let key = cfg.context.key.clone().ok_or_else(|| {
        anyhow::anyhow!("context.mode: db install needs context.mode = \"verified\" and its key")
    })?;
    let url =
        dba_url.ok_or_else(|| anyhow::anyhow!("--dba-url (or PGTENANT_DBA_URL) is required"))?;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let summary = pgtenant::verified::install::run(&client, &objects, &key, step).await?;
    println!("{summary}");
    Ok(())
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn doctor(
    cli: &Cli,
    database: Option<&str>,
    dba_url: Option<&str>,
    format: pgtenant::doctor::output::Format,
    strict: bool,
) -> ExitCode {
    use pgtenant::doctor::command;
    let usage = |e: &dyn std::fmt::Display| {
        eprintln!("{e}");
        ExitCode::from(command::EXIT_USAGE)
    };
    let cfg = match load(cli) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let databases = match command::select(&cfg, database) {
        Ok(d) => d,
        Err(e) => return usage(&e),
    };
    let dba = match dba_url.map(command::DbaLogin::parse).transpose() {
        Ok(d) => d,
        Err(e) => return usage(&e),
    };
    init_tracing(cli, LogFormat::Text);
    let report = runtime(1).block_on(command::check(&cfg, &databases, dba.as_ref()));
    print!("{}", pgtenant::doctor::output::render(&report, format));
    ExitCode::from(command::exit_status(&report, strict))
}

fn hash_password(password: Option<String>) -> ExitCode {
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("could not read a password from standard input");
                return ExitCode::from(1);
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        eprintln!("the password must not be empty");
        return ExitCode::from(1);
    }
    println!(
        "{}",
        pgtenant::auth::scram::ScramVerifier::hash_password(&password)
    );
    ExitCode::SUCCESS
}

/// One worker runs as tokio's current-thread scheduler: the same single thread of work
/// without the multi-thread scheduler's stealing and per-poll bookkeeping (one hand-off
/// fewer per wake-up, and no idle worker to notify).
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let workers = pgtenant::config::worker_threads(threads);
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all().build().expect("tokio runtime")
}

fn init_tracing(cli: &Cli, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format.unwrap_or(format) {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
