//! The `fhirgate` command: command line, logging set-up and exit codes. No proxy logic.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhirgate::config::Config;
use fhirgate::logging::{self, LogFormat};
use fhirgate::proxy::ErrorChain;
use fhirgate::server::Gateway;

/// fhirgate: the inbound gateway intermediary of the FHIR Hybrid / Intermediary Exchange
/// guide — TLS-terminating, pass-through, streaming.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "FHIRGATE_CONFIG",
        default_value = "config/fhirgate.toml"
    )]
    config: PathBuf,

    /// Log line format; overrides `[log] format` (default human). The level comes from
    /// RUST_LOG, else `[log] level`, else info.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the configuration, load every certificate, key and trust anchor, check
    /// chains, expiry and coverage, print listeners and the route table; exit non-zero on
    /// any problem.
    Check {
        /// Also connect to every upstream and complete the TLS handshake (no request is sent).
        #[arg(long)]
        probe: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: ReportFormat,
    },
    /// Development mode: throw-away CAs and certificates, a sample FHIR destination, and a
    /// gateway on 127.0.0.1:PORT, with curl commands that work as printed.
    Dev {
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
    /// Ask the admin listener's /readyz (for container health checks); exit 0 when ready.
    Health {
        /// The admin listener's address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the HMAC chain of an audit file: "OK N records", or the first line that
    /// breaks it (exit 1).
    Verify {
        /// The audit file (NDJSON).
        file: PathBuf,
        /// The key file named by `[audit] key_file`.
        #[arg(long)]
        key_file: PathBuf,
        /// The chain value the file starts from, for a segment after a rotation: the
        /// `chain` of the previous segment's last line. Default: the start of a chain.
        #[arg(long)]
        previous: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config, cli.log_format),
        Command::Check { probe, format } => check(&cli.config, probe, format),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    key_file,
                    previous,
                },
        } => audit_verify(&file, &key_file, previous.as_deref()),
        Command::Health { admin } => {
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(fhirgate::admin::check_ready(admin)) {
                Ok(()) => {
                    println!("ready");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("not ready: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev { port } => {
            logging::init(cli.log_format.unwrap_or(LogFormat::Human), "info");
            dev(port)
        }
    }
}

/// Loads the configuration or says, on standard error, exactly what is wrong with it.
fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => Some(config),
        Err(error) => {
            eprintln!("error: {}", ErrorChain(&error));
            None
        }
    }
}

/// How `check` prints its report.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

fn check(path: &Path, probe: bool, format: ReportFormat) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let report = runtime.block_on(fhirgate::check::check(path, probe));
    match format {
        ReportFormat::Text if report.ok => print!("{}", report.to_text()),
        // Problems go to standard error, so scripts can tell them from the table.
        ReportFormat::Text => eprint!("{}", report.to_text()),
        ReportFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => eprintln!("error: {error}"),
        },
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn audit_verify(file: &Path, key_file: &Path, previous: Option<&str>) -> ExitCode {
    use fhirgate::audit::{AuditKey, Verdict, parse_chain, verify};
    let key = match std::fs::read(key_file) {
        Ok(bytes) => match AuditKey::from_bytes(bytes) {
            Ok(key) => key,
            Err(len) => {
                eprintln!(
                    "error: {}: the key has {len} bytes; audit keys have at least 32",
                    key_file.display()
                );
                return ExitCode::FAILURE;
            }
        },
        Err(error) => {
            eprintln!(
                "error: {}: cannot read the key: {error}",
                key_file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let start = match previous.map(parse_chain) {
        None => [0; 32],
        Some(Some(chain)) => chain,
        Some(None) => {
            eprintln!("error: --previous must be the 64 hex digits of a chain value");
            return ExitCode::FAILURE;
        }
    };
    let reader = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(error) => {
            eprintln!("error: {}: cannot read: {error}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match verify(reader, &key, start) {
        Ok(Verdict::Ok { records }) => {
            println!("OK {records} records");
            ExitCode::SUCCESS
        }
        Ok(Verdict::Broken { line, why }) => {
            println!("{}:{line}: {why}", file.display());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {}: {error}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// One worker per CPU the process may run on (the affinity mask, or TOKIO_WORKER_THREADS),
/// so `taskset -c 1 fhirgate run` uses one. With a single CPU the current-thread scheduler
/// does the same work without the multi-thread scheduler's cross-thread wake-ups.
fn runtime() -> Option<tokio::runtime::Runtime> {
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            None
        }
    }
}

fn dev(port: u16) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let environment = match fhirgate::dev::DevEnvironment::start(port).await {
            Ok(environment) => environment,
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        // A closed stdout (`fhirgate dev | head`) must not stop the gateway.
        let _ = std::io::Write::write_all(
            &mut std::io::stdout(),
            environment.instructions().as_bytes(),
        );
        shutdown_signal().await;
        tracing::info!("stopping: draining the gateway, then removing the temporary folder");
        tokio::select! {
            () = environment.stop() => {}
            // The environment is dropped with the future: the folder still goes.
            () = shutdown_signal() => tracing::warn!("second signal: exiting at once"),
        }
        ExitCode::SUCCESS
    })
}

fn log_format_name(format: LogFormat) -> &'static str {
    match format {
        LogFormat::Human => "human",
        LogFormat::Json => "json",
    }
}

fn run(path: &Path, log_format: Option<LogFormat>) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    let log_format = log_format.unwrap_or(if config.log.json {
        LogFormat::Json
    } else {
        LogFormat::Human
    });
    logging::init(log_format, &config.log.level);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let audit = match &config.audit {
        Some(audit) => match &audit.sink {
            fhirgate::config::AuditSink::File(path) => path.display().to_string(),
            fhirgate::config::AuditSink::Stdout => "stdout".to_owned(),
        },
        None => "not configured".to_owned(),
    };
    runtime.block_on(async {
        let gateway = match Gateway::start(config).await {
            Ok(gateway) => gateway,
            Err(error) => {
                tracing::error!(error = %ErrorChain(&error), "cannot start");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %path.display(),
            log = %format!("stderr ({})", log_format_name(log_format)),
            audit = %audit,
            "fhirgate started"
        );
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = hangup() => {
                    // SIGHUP: reload the configuration (the old one stays if the new one is
                    // broken), and reopen the audit file logrotate may have moved.
                    tracing::info!("SIGHUP: reloading the configuration and reopening the audit file");
                    let _ = gateway.reload().await;
                    gateway.reopen_audit();
                }
            }
        }
        tracing::info!("shutting down: no new connections, draining exchanges in flight");
        tokio::select! {
            () = gateway.shutdown() => {}
            () = shutdown_signal() => tracing::warn!("second signal: exiting at once"),
        }
        ExitCode::SUCCESS
    })
}

/// Resolves on the next SIGHUP (never on systems without it).
async fn hangup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            hup.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// Resolves on SIGTERM (container stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
