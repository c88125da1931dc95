//! The `fhirgate` command: command line, logging set-up and exit codes. No proxy logic.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhirgate::config::Config;
use fhirgate::logging::{self, LogFormat};
use fhirgate::proxy::ErrorChain;
use fhirgate::server::{self, Gateway};

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

    /// Log line format (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the configuration, load every certificate, key and trust anchor, print the
    /// route table; exit non-zero on any problem.
    Check,
    /// Development mode: throw-away CAs and certificates, a sample FHIR destination, and a
    /// gateway on 127.0.0.1:PORT, with curl commands that work as printed.
    Dev {
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            logging::init(cli.log_format);
            run(&cli.config)
        }
        Command::Check => check(&cli.config),
        Command::Dev { port } => {
            logging::init(cli.log_format);
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

fn check(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    let prepared = match server::prepare(&config) {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("error: {}", ErrorChain(&error));
            return ExitCode::FAILURE;
        }
    };
    println!("configuration {} is valid\n", config.file.display());
    println!("LISTENER  BIND  CERTIFICATE NAMES");
    for (listener, tls) in config.listeners.iter().zip(&prepared.listeners) {
        let names: Vec<&str> = tls
            .resolver
            .certificates()
            .iter()
            .flat_map(|c| c.names.iter().map(String::as_str))
            .collect();
        println!("{}  {}  {}", listener.name, listener.bind, names.join(", "));
    }
    println!();
    print!("{}", describe_routes(&config));
    ExitCode::SUCCESS
}

/// The route table as a text table.
fn describe_routes(config: &Config) -> String {
    let name_width = config
        .routes
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let base_width = config
        .routes
        .iter()
        .map(|r| r.public_base_text.len())
        .max()
        .unwrap_or(0)
        .max(11);
    let mut out = format!(
        "{:<name_width$}  {:<base_width$}  UPSTREAM  LISTENER\n",
        "ROUTE", "PUBLIC BASE"
    );
    for r in &config.routes {
        out.push_str(&format!(
            "{:<name_width$}  {:<base_width$}  {}  {}\n",
            r.name,
            r.public_base_text,
            r.upstream.text,
            r.listener.as_deref().unwrap_or("(any)")
        ));
    }
    out
}

/// One worker per CPU the process may run on (tokio reads the affinity mask and honours
/// TOKIO_WORKER_THREADS), so `taskset -c 1 fhirgate run` uses one.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        tracing::info!("stopping");
        environment.stop().await;
        ExitCode::SUCCESS
    })
}

fn run(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let gateway = match Gateway::start(config).await {
            Ok(gateway) => gateway,
            Err(error) => {
                tracing::error!(error = %ErrorChain(&error), "cannot start");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "fhirgate started");
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections, draining exchanges in flight");
        tokio::select! {
            () = gateway.shutdown() => {}
            () = shutdown_signal() => tracing::warn!("second signal: exiting at once"),
        }
        ExitCode::SUCCESS
    })
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
