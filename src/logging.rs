//! Log set-up: human-readable lines for a terminal, or one JSON object per line for log
//! shippers. The level comes from `RUST_LOG` (default `info`).
//!
//! What is logged is chosen where it is logged: exchange lines carry the request id, route,
//! method, path, status, byte counts, duration and outcome — never a header value, so no
//! token, cookie or key can reach the log.

use tracing_subscriber::EnvFilter;

/// Whether `level` is a valid filter (`info`, `warn,fhirgate=debug`, …).
pub fn valid_level(level: &str) -> bool {
    EnvFilter::try_new(level).is_ok()
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the global subscriber, writing to standard error. `RUST_LOG`, when set, wins
/// over `level` (the configuration's `[log] level`, default `info`).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into files or log shippers.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second call (tests starting several gateways in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
