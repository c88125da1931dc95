//! Configuration: the TOML file's serde types and the validated, immutable [`Config`] the
//! rest of the gateway uses.
//!
//! This is the only serde-aware module. Raw file types (`Raw*`, `deny_unknown_fields`) are
//! converted once into types that cannot be invalid: parsed socket addresses, URLs split into
//! host and path, durations, absolute file paths. Every error names the file, the key and,
//! where there is one, the line ([`ConfigError`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A validated configuration. Cheap to clone; never mutated after [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from (for messages and relative paths).
    pub file: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub limits: Limits,
    pub shutdown: ShutdownConfig,
    /// The audit trail; `None` when the file has no `[audit]` section.
    pub audit: Option<AuditConfig>,
    /// The admin listener; `None` when the file has no `[admin]` section.
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    /// SHA-256 of the file's text (hex, 16 digits), to tell which configuration is loaded.
    pub hash: String,
}

/// `[log]`: how the gateway logs (the command line and `RUST_LOG` override it).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter: `info`, `warn`, `info,fhirgate::exchange=warn`, …
    pub level: String,
    /// `true` for one JSON object per line (log shippers).
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            json: false,
        }
    }
}

/// `[admin]`: plain-HTTP health and metrics endpoints, never on a public listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

/// `[audit]`: one FHIR AuditEvent per exchange, chained with an HMAC.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub sink: AuditSink,
    /// The secret keying the chain and token fingerprints (the file's raw bytes, ≥ 32).
    pub key_file: FileRef,
    /// This gateway's name in each AuditEvent's source/observer.
    pub source: String,
    /// Query strings can carry patient identifiers: off unless asked for.
    pub record_query: bool,
    pub fsync: FsyncPolicy,
    pub on_failure: OnAuditFailure,
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// An append-only file, reopened on SIGHUP (logrotate).
    File(PathBuf),
    /// Standard output (containers), `path = "-"`.
    Stdout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After each record.
    Always,
    /// At most every 100 ms.
    Interval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAuditFailure {
    /// Refuse new exchanges with 503 until the sink can be written again.
    Refuse,
    /// Keep serving; records that cannot be written go to the log.
    LogAndContinue,
}

/// One `[[listeners]]` table: a TLS-only socket holding the public certificates.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Unique; routes may name it in `listener`.
    pub name: String,
    pub bind: SocketAddr,
    pub min_tls_version: TlsVersion,
    /// At least one; the first is presented to clients that send no SNI.
    pub certificates: Vec<CertificateConfig>,
}

/// The lowest TLS version a listener accepts (US Core: 1.2 or higher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// One `[[listeners.certificates]]` entry: a PEM chain (leaf first) and its private key.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    pub cert: FileRef,
    pub key: FileRef,
}

/// A file named by the configuration, kept with where it was named so that a problem found
/// while reading it (missing, unreadable, not PEM, key mismatch) can point at the key and line.
#[derive(Debug, Clone)]
pub struct FileRef {
    /// Absolute, or relative to the working directory when the config file's was.
    pub path: PathBuf,
    /// Dotted key path, e.g. `listeners[0].certificates[1].key`.
    pub key: String,
    /// 1-based line of the value in the config file.
    pub line: Option<usize>,
}

/// Idle pooled HTTP/1.1 connections a route keeps unless `upstream_max_idle` says
/// otherwise: enough for a busy destination's bursts to find connections open, few enough
/// that many routes after a burst do not hold thousands of them (each with its TLS state
/// and buffers) for `upstream_idle_timeout`.
pub const DEFAULT_UPSTREAM_MAX_IDLE: usize = 128;

/// One `[[routes]]` table.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique; appears in logs, audit and metrics.
    pub name: String,
    /// The destination's public FHIR base URL as the operator wrote it (for messages).
    pub public_base_text: String,
    /// Host of `public_base`, lower-cased, without port.
    pub public_host: String,
    /// Path of `public_base`, raw bytes as written, without a trailing `/` unless it is `/`.
    pub public_path: String,
    pub upstream: UpstreamUrl,
    /// Trust anchors for the private certificate; `None` means the system roots.
    pub upstream_ca: Option<FileRef>,
    /// Only requests arriving on this listener match.
    pub listener: Option<String>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Append RFC 7239 `Forwarded` and `Via` towards the upstream.
    pub forwarded: bool,
    /// Larger request bodies are refused with 413; `None` (the default) is no limit.
    pub max_request_body_bytes: Option<u64>,
    /// Offer HTTP/2 to the upstream by ALPN (the default); `false` keeps to pooled HTTP/1.1
    /// connections, which costs less CPU against a destination that sends small HTTP/2
    /// frames (nginx: 8 KiB) when bodies are large.
    pub upstream_http2: bool,
    /// How long an upstream connection is kept open with no new exchange on it.
    pub upstream_idle_timeout: Duration,
    /// Pooled HTTP/1.1 connections kept open with no exchange on them, at most; past that
    /// the least recently used is closed. 0 closes each connection after its exchange.
    pub upstream_max_idle: usize,
    /// Exchanges in flight to this upstream at once; more are refused with 503 so one slow
    /// destination cannot hold every connection. `None` (the default) is no cap.
    pub max_concurrent_exchanges: Option<usize>,
    /// Overrides `[limits] max_exchange_duration` for this route.
    pub max_exchange_duration: Option<Duration>,
    /// Line of the `[[routes]]` entry's `name`, for messages about the route as a whole.
    pub line: Option<usize>,
}

/// A route's private base URL, split for the request rewrite.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    /// The URL as the operator wrote it (logged, never sent to clients).
    pub text: String,
    /// `true` for `https://`; `http://` is only accepted with `allow_plaintext_upstream`.
    pub tls: bool,
    /// Host name or IP literal (without brackets), used for SNI and certificate verification.
    pub host: String,
    /// Explicit port, or 443 / 80 by scheme.
    pub port: u16,
    /// `host[:port]` as it goes in the upstream `Host` header (the default port omitted).
    pub authority: String,
    /// Base path, raw, without a trailing `/` unless it is exactly `/`.
    pub path: String,
}

/// `[limits]`: attack protection with safe defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Request target (path and query) size: larger is 414.
    pub max_uri_bytes: usize,
    /// Header lines in an HTTP/1.1 request: more is 431.
    pub max_headers: usize,
    /// A request body that sends nothing for this long is cut off (408).
    pub body_idle_timeout: Duration,
    /// Per client address token bucket; `None` (the default) is off.
    pub rate_limit: Option<RateLimit>,
    /// HTTP/2 streams one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Cap on a whole exchange, request head to the last response byte; `None` (the
    /// default) is off, because bulk-data downloads can rightly take hours.
    pub max_exchange_duration: Option<Duration>,
}

/// Requests per second from one client address, with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 65536,
            max_connections: 20000,
            max_connections_per_ip: 2048,
            max_uri_bytes: 8192,
            max_headers: 100,
            body_idle_timeout: Duration::from_secs(30),
            rate_limit: None,
            max_concurrent_streams: 100,
            max_exchange_duration: None,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long in-flight exchanges may finish after SIGTERM.
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(30),
        }
    }
}

/// A configuration problem, located as precisely as the problem allows.
///
/// Displayed as `FILE:LINE: KEY: PROBLEM`, e.g.
/// `config/fhirgate.toml:12: routes[0].upstream: "ftp://x" is not an https:// URL`.
#[derive(Debug, thiserror::Error)]
#[error("{}{}{}{kind}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_ref().map(|k| format!(": {k}: ")).unwrap_or_else(|| ": ".into()))]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path of the offending value, when the problem has one.
    pub key: Option<String>,
    /// 1-based line in the config file.
    pub line: Option<usize>,
    /// Displayed as part of this error (with its own cause), so not chained again as a source.
    pub kind: ConfigErrorKind,
}

/// What is wrong. Each variant's text includes its cause, so one line says it all.
#[derive(Debug, thiserror::Error)]
pub enum ConfigErrorKind {
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    /// TOML syntax, a wrong type, a missing or an unknown key (the message names it).
    #[error("{}", .0.message().trim_end())]
    Syntax(Box<toml::de::Error>),
    /// A value that parsed but makes no sense; the text says what is wrong and how to fix it.
    #[error("{0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------------------
// The file as written: serde types, unknown keys refused.
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    shutdown: RawShutdown,
    audit: Option<RawAudit>,
    admin: Option<RawAdmin>,
    log: Option<RawLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    bind: Spanned<String>,
    min_tls_version: Option<Spanned<String>>,
    #[serde(default)]
    certificates: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    public_base: Spanned<String>,
    upstream: Spanned<String>,
    upstream_ca: Option<Spanned<String>>,
    listener: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    response_timeout: Option<Spanned<String>>,
    forwarded: Option<bool>,
    allow_plaintext_upstream: Option<bool>,
    max_request_body_bytes: Option<Spanned<i64>>,
    max_concurrent_exchanges: Option<Spanned<i64>>,
    max_exchange_duration: Option<Spanned<String>>,
    upstream_http2: Option<bool>,
    upstream_idle_timeout: Option<Spanned<String>>,
    upstream_max_idle: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    tls_handshake_timeout: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_ip: Option<Spanned<i64>>,
    max_uri_bytes: Option<Spanned<i64>>,
    max_headers: Option<Spanned<i64>>,
    body_idle_timeout: Option<Spanned<String>>,
    rate_limit_per_ip: Option<Spanned<f64>>,
    rate_limit_burst: Option<Spanned<f64>>,
    max_concurrent_streams: Option<Spanned<i64>>,
    max_exchange_duration: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    record_query: Option<bool>,
    fsync: Option<Spanned<String>>,
    on_failure: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------
// Validation: raw → Config.
// ---------------------------------------------------------------------------------------

impl Config {
    /// Reads and validates the file at `path`. Relative paths inside it resolve from its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            line: None,
            kind: ConfigErrorKind::Read(e),
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let v = Validator {
            file: path,
            text,
            dir: path.parent().unwrap_or(Path::new("")),
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            line: e.span().map(|span| v.line_of(span.start)),
            kind: ConfigErrorKind::Syntax(Box::new(e)),
        })?;
        v.config(raw)
    }
}

/// Converts the raw file into a [`Config`], locating every problem.
struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    dir: &'a Path,
}

impl Validator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(
        &self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: Some(key.into()),
            line: span.map(|s| self.line_of(s.start)),
            kind: ConfigErrorKind::Invalid(message.into()),
        }
    }

    fn file_ref(&self, key: String, value: &Spanned<String>) -> Result<FileRef, ConfigError> {
        if value.get_ref().trim().is_empty() {
            return Err(self.error(
                key,
                Some(value.span()),
                "is empty; give the path of a PEM file",
            ));
        }
        Ok(FileRef {
            path: self.dir.join(value.get_ref()),
            line: Some(self.line_of(value.span().start)),
            key,
        })
    }

    fn duration(
        &self,
        key: String,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                Err(self.error(key, Some(value.span()), "must be longer than zero"))
            }
            Ok(d) => Ok(d),
            Err(message) => Err(self.error(key, Some(value.span()), message)),
        }
    }

    fn positive(
        &self,
        key: &str,
        value: Option<&Spanned<i64>>,
        default: usize,
    ) -> Result<usize, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        match usize::try_from(*value.get_ref()) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.error(
                format!("limits.{key}"),
                Some(value.span()),
                format!(
                    "{} is not allowed; give a whole number greater than zero",
                    value.get_ref()
                ),
            )),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        if raw.listeners.is_empty() {
            return Err(self.error(
                "listeners",
                None,
                "no listener is configured; add a [[listeners]] table",
            ));
        }
        if raw.routes.is_empty() {
            return Err(self.error(
                "routes",
                None,
                "no route is configured; add a [[routes]] table",
            ));
        }
        let mut listeners = Vec::new();
        let mut listener_names = HashSet::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let listener = self.listener(i, l)?;
            if !listener_names.insert(listener.name.clone()) {
                return Err(self.error(
                    format!("listeners[{i}].name"),
                    Some(l.name.span()),
                    format!(
                        "listener name {:?} is used twice; names must be unique",
                        listener.name
                    ),
                ));
            }
            listeners.push(listener);
        }
        let mut routes: Vec<RouteConfig> = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let route = self.route(i, r, &listener_names)?;
            if routes.iter().any(|other| other.name == route.name) {
                return Err(self.error(
                    format!("routes[{i}].name"),
                    Some(r.name.span()),
                    format!(
                        "route name {:?} is used twice; names must be unique",
                        route.name
                    ),
                ));
            }
            if let Some(other) = routes.iter().find(|o| {
                o.public_host == route.public_host
                    && o.public_path == route.public_path
                    && o.listener == route.listener
            }) {
                return Err(self.error(
                    format!("routes[{i}].public_base"),
                    Some(r.public_base.span()),
                    format!(
                        "{:?} has the same host and path as route {:?}; only one of them could ever match",
                        route.public_base_text, other.name
                    ),
                ));
            }
            routes.push(route);
        }
        let defaults = Limits::default();
        let l = &raw.limits;
        let limits = Limits {
            tls_handshake_timeout: self.duration(
                "limits.tls_handshake_timeout".into(),
                l.tls_handshake_timeout.as_ref(),
                defaults.tls_handshake_timeout,
            )?,
            header_read_timeout: self.duration(
                "limits.header_read_timeout".into(),
                l.header_read_timeout.as_ref(),
                defaults.header_read_timeout,
            )?,
            idle_timeout: self.duration(
                "limits.idle_timeout".into(),
                l.idle_timeout.as_ref(),
                defaults.idle_timeout,
            )?,
            max_header_bytes: self.positive(
                "max_header_bytes",
                l.max_header_bytes.as_ref(),
                defaults.max_header_bytes,
            )?,
            max_connections: self.positive(
                "max_connections",
                l.max_connections.as_ref(),
                defaults.max_connections,
            )?,
            max_connections_per_ip: self.positive(
                "max_connections_per_ip",
                l.max_connections_per_ip.as_ref(),
                defaults.max_connections_per_ip,
            )?,
            max_uri_bytes: self.positive(
                "max_uri_bytes",
                l.max_uri_bytes.as_ref(),
                defaults.max_uri_bytes,
            )?,
            max_headers: self.positive(
                "max_headers",
                l.max_headers.as_ref(),
                defaults.max_headers,
            )?,
            body_idle_timeout: self.duration(
                "limits.body_idle_timeout".into(),
                l.body_idle_timeout.as_ref(),
                defaults.body_idle_timeout,
            )?,
            rate_limit: self.rate_limit(l)?,
            max_concurrent_streams: u32::try_from(self.positive(
                "max_concurrent_streams",
                l.max_concurrent_streams.as_ref(),
                defaults.max_concurrent_streams as usize,
            )?)
            .unwrap_or(u32::MAX),
            max_exchange_duration: l
                .max_exchange_duration
                .as_ref()
                .map(|d| {
                    self.duration(
                        "limits.max_exchange_duration".into(),
                        Some(d),
                        Duration::ZERO,
                    )
                })
                .transpose()?,
        };
        let shutdown = ShutdownConfig {
            grace: self.duration(
                "shutdown.grace".into(),
                raw.shutdown.grace.as_ref(),
                ShutdownConfig::default().grace,
            )?,
        };
        let audit = raw.audit.as_ref().map(|a| self.audit(a)).transpose()?;
        let log = raw
            .log
            .as_ref()
            .map(|l| self.log(l))
            .transpose()?
            .unwrap_or_default();
        let admin = raw
            .admin
            .as_ref()
            .map(|a| self.admin(a, &listeners))
            .transpose()?;
        let hash = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(self.text.as_bytes());
            digest[..8].iter().map(|b| format!("{b:02x}")).collect()
        };
        Ok(Config {
            log,
            admin,
            hash,
            file: self.file.to_path_buf(),
            listeners,
            routes,
            limits,
            shutdown,
            audit,
        })
    }

    fn rate_limit(&self, l: &RawLimits) -> Result<Option<RateLimit>, ConfigError> {
        let Some(rate) = &l.rate_limit_per_ip else {
            if let Some(burst) = &l.rate_limit_burst {
                return Err(self.error(
                    "limits.rate_limit_burst",
                    Some(burst.span()),
                    "has no effect without rate_limit_per_ip; set both, or neither",
                ));
            }
            return Ok(None);
        };
        let per_second = *rate.get_ref();
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(self.error(
                "limits.rate_limit_per_ip",
                Some(rate.span()),
                format!("{per_second} is not allowed; give requests per second greater than zero, or leave the key out for no rate limit"),
            ));
        }
        let burst = match &l.rate_limit_burst {
            None => (per_second * 2.0).max(1.0),
            Some(b) if b.get_ref().is_finite() && *b.get_ref() >= 1.0 => *b.get_ref(),
            Some(b) => {
                return Err(self.error(
                    "limits.rate_limit_burst",
                    Some(b.span()),
                    format!(
                        "{} is not allowed; the burst is at least 1 request",
                        b.get_ref()
                    ),
                ));
            }
        };
        Ok(Some(RateLimit { per_second, burst }))
    }

    fn log(&self, raw: &RawLog) -> Result<LogConfig, ConfigError> {
        let level = match &raw.level {
            None => "info".to_owned(),
            Some(l) if crate::logging::valid_level(l.get_ref()) => l.get_ref().clone(),
            Some(l) => {
                return Err(self.error(
                    "log.level",
                    Some(l.span()),
                    format!("{:?} is not a log filter; use error, warn, info, debug or trace (per module: \"info,fhirgate::exchange=warn\")", l.get_ref()),
                ));
            }
        };
        let json = match raw
            .format
            .as_ref()
            .map(|f| (f.get_ref().as_str(), f.span()))
        {
            None | Some(("human", _)) => false,
            Some(("json", _)) => true,
            Some((other, span)) => {
                return Err(self.error(
                    "log.format",
                    Some(span),
                    format!("{other:?} is not a format; use \"human\" or \"json\""),
                ));
            }
        };
        Ok(LogConfig { level, json })
    }

    fn admin(
        &self,
        raw: &RawAdmin,
        listeners: &[ListenerConfig],
    ) -> Result<AdminConfig, ConfigError> {
        let Some(bind) = raw.bind.as_ref() else {
            return Ok(AdminConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 9901)),
            });
        };
        let addr = bind.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.error(
                "admin.bind",
                Some(bind.span()),
                format!(
                    "{:?} is not a socket address; write IP:PORT, e.g. \"127.0.0.1:9901\"",
                    bind.get_ref()
                ),
            )
        })?;
        // Plain HTTP with metrics must never share a socket with the public TLS listeners.
        if addr.port() != 0 && listeners.iter().any(|l| l.bind.port() == addr.port()) {
            return Err(self.error(
                "admin.bind",
                Some(bind.span()),
                format!("{addr} uses the port of a public listener; give the admin listener its own, private port"),
            ));
        }
        Ok(AdminConfig { bind: addr })
    }

    fn audit(&self, raw: &RawAudit) -> Result<AuditConfig, ConfigError> {
        let sink = match raw.path.as_ref() {
            None => AuditSink::File(self.dir.join("audit.ndjson")),
            Some(p) if p.get_ref() == "-" => AuditSink::Stdout,
            Some(p) if p.get_ref().trim().is_empty() => {
                return Err(self.error(
                    "audit.path",
                    Some(p.span()),
                    "is empty; give a file path, or \"-\" for standard output",
                ));
            }
            Some(p) => AuditSink::File(self.dir.join(p.get_ref())),
        };
        let Some(key_file) = raw.key_file.as_ref() else {
            return Err(self.error(
                "audit.key_file",
                None,
                "is required: the audit chain and token fingerprints are keyed with a secret; create one with `head -c 32 /dev/urandom > audit.key` and name it here",
            ));
        };
        let key_file = self.file_ref("audit.key_file".into(), key_file)?;
        let source = match raw.source.as_ref() {
            None => "fhirgate".to_owned(),
            Some(s) if s.get_ref().trim().is_empty() => {
                return Err(self.error(
                    "audit.source",
                    Some(s.span()),
                    "is empty; name this gateway, e.g. \"fhirgate-1\"",
                ));
            }
            Some(s) => s.get_ref().clone(),
        };
        let fsync = match raw.fsync.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("interval", _)) => FsyncPolicy::Interval,
            Some(("always", _)) => FsyncPolicy::Always,
            Some((other, span)) => {
                return Err(self.error(
                    "audit.fsync",
                    Some(span),
                    format!("{other:?} is not a policy; use \"always\" or \"interval\""),
                ));
            }
        };
        let on_failure = match raw
            .on_failure
            .as_ref()
            .map(|f| (f.get_ref().as_str(), f.span()))
        {
            None | Some(("refuse", _)) => OnAuditFailure::Refuse,
            Some(("log-and-continue", _)) => OnAuditFailure::LogAndContinue,
            Some((other, span)) => {
                return Err(self.error(
                    "audit.on_failure",
                    Some(span),
                    format!("{other:?} is not a choice; use \"refuse\" or \"log-and-continue\""),
                ));
            }
        };
        Ok(AuditConfig {
            sink,
            key_file,
            source,
            record_query: raw.record_query.unwrap_or(false),
            fsync,
            on_failure,
        })
    }

    fn listener(&self, i: usize, raw: &RawListener) -> Result<ListenerConfig, ConfigError> {
        let key = |k: &str| format!("listeners[{i}].{k}");
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(self.error(
                key("name"),
                Some(raw.name.span()),
                "is empty; give the listener a name",
            ));
        }
        let bind = raw.bind.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.error(
                key("bind"),
                Some(raw.bind.span()),
                format!("{:?} is not a socket address; write IP:PORT, e.g. \"0.0.0.0:8443\" or \"[::]:8443\"", raw.bind.get_ref()),
            )
        })?;
        let min_tls_version = match raw.min_tls_version.as_ref() {
            None => TlsVersion::V1_2,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => TlsVersion::V1_2,
                "1.3" => TlsVersion::V1_3,
                other => {
                    return Err(self.error(
                        key("min_tls_version"),
                        Some(v.span()),
                        format!("{other:?} is not supported; use \"1.2\" or \"1.3\""),
                    ));
                }
            },
        };
        if raw.certificates.is_empty() {
            return Err(self.error(
                key("certificates"),
                Some(raw.name.span()),
                "the listener has no certificate; add a [[listeners.certificates]] table with cert and key",
            ));
        }
        let certificates = raw
            .certificates
            .iter()
            .enumerate()
            .map(|(c, cert)| {
                Ok(CertificateConfig {
                    cert: self
                        .file_ref(format!("listeners[{i}].certificates[{c}].cert"), &cert.cert)?,
                    key: self
                        .file_ref(format!("listeners[{i}].certificates[{c}].key"), &cert.key)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(ListenerConfig {
            name,
            bind,
            min_tls_version,
            certificates,
        })
    }

    fn route(
        &self,
        i: usize,
        raw: &RawRoute,
        listeners: &HashSet<String>,
    ) -> Result<RouteConfig, ConfigError> {
        let key = |k: &str| format!("routes[{i}].{k}");
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(self.error(
                key("name"),
                Some(raw.name.span()),
                "is empty; give the route a name",
            ));
        }
        let public = parse_url(raw.public_base.get_ref())
            .map_err(|m| self.error(key("public_base"), Some(raw.public_base.span()), m))?;
        if !public.tls {
            return Err(self.error(
                key("public_base"),
                Some(raw.public_base.span()),
                format!(
                    "{:?} is not https://; the public base URL is served over TLS only, write https://host/path",
                    raw.public_base.get_ref()
                ),
            ));
        }
        let upstream = parse_url(raw.upstream.get_ref())
            .map_err(|m| self.error(key("upstream"), Some(raw.upstream.span()), m))?;
        let allow_plaintext = raw.allow_plaintext_upstream.unwrap_or(false);
        if !upstream.tls && !allow_plaintext {
            return Err(self.error(
                key("upstream"),
                Some(raw.upstream.span()),
                format!(
                    "{:?} is plain http://; the IG requires TLS on every hop. Use https://, or set allow_plaintext_upstream = true on this route to accept the risk",
                    raw.upstream.get_ref()
                ),
            ));
        }
        let listener = match &raw.listener {
            None => None,
            Some(l) if listeners.contains(l.get_ref()) => Some(l.get_ref().clone()),
            Some(l) => {
                let mut known: Vec<&str> = listeners.iter().map(String::as_str).collect();
                known.sort_unstable();
                return Err(self.error(
                    key("listener"),
                    Some(l.span()),
                    format!(
                        "no listener is named {:?}; the listeners are: {}",
                        l.get_ref(),
                        known.join(", ")
                    ),
                ));
            }
        };
        Ok(RouteConfig {
            name,
            public_base_text: raw.public_base.get_ref().clone(),
            public_host: public.host,
            public_path: public.path,
            upstream: UpstreamUrl {
                text: raw.upstream.get_ref().clone(),
                tls: upstream.tls,
                authority: upstream.authority,
                host: upstream.host,
                port: upstream.port,
                path: upstream.path,
            },
            upstream_ca: raw
                .upstream_ca
                .as_ref()
                .map(|ca| self.file_ref(key("upstream_ca"), ca))
                .transpose()?,
            listener,
            connect_timeout: self.duration(
                key("connect_timeout"),
                raw.connect_timeout.as_ref(),
                Duration::from_secs(5),
            )?,
            response_timeout: self.duration(
                key("response_timeout"),
                raw.response_timeout.as_ref(),
                Duration::from_secs(60),
            )?,
            forwarded: raw.forwarded.unwrap_or(true),
            max_request_body_bytes: match &raw.max_request_body_bytes {
                None => None,
                Some(v) => Some(u64::try_from(*v.get_ref()).ok().filter(|n| *n > 0).ok_or_else(|| {
                    self.error(
                        key("max_request_body_bytes"),
                        Some(v.span()),
                        format!("{} is not allowed; give a whole number of bytes greater than zero, or leave the key out for no limit", v.get_ref()),
                    )
                })?),
            },
            upstream_http2: raw.upstream_http2.unwrap_or(true),
            upstream_idle_timeout: self.duration(
                key("upstream_idle_timeout"),
                raw.upstream_idle_timeout.as_ref(),
                // Below nginx's 75 s keepalive_timeout, so the gateway closes an idle
                // connection before the upstream does and never sends on one being closed.
                Duration::from_secs(60),
            )?,
            upstream_max_idle: match &raw.upstream_max_idle {
                None => DEFAULT_UPSTREAM_MAX_IDLE,
                Some(v) => usize::try_from(*v.get_ref()).map_err(|_| {
                    self.error(
                        key("upstream_max_idle"),
                        Some(v.span()),
                        format!("{} is not allowed; give a whole number of connections, 0 or more", v.get_ref()),
                    )
                })?,
            },
            max_concurrent_exchanges: match &raw.max_concurrent_exchanges {
                None => None,
                Some(v) => Some(usize::try_from(*v.get_ref()).ok().filter(|n| *n > 0).ok_or_else(|| {
                    self.error(
                        key("max_concurrent_exchanges"),
                        Some(v.span()),
                        format!("{} is not allowed; give a whole number greater than zero, or leave the key out for no cap", v.get_ref()),
                    )
                })?),
            },
            max_exchange_duration: raw
                .max_exchange_duration
                .as_ref()
                .map(|d| self.duration(key("max_exchange_duration"), Some(d), Duration::ZERO))
                .transpose()?,
            line: Some(self.line_of(raw.name.span().start)),
        })
    }
}

/// `"250ms"`, `"5s"`, `"2m"`, `"1h"`: a whole number and a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let bad = || {
        format!(
            "{text:?} is not a duration; write a whole number and a unit: \"250ms\", \"5s\", \"2m\" or \"1h\""
        )
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = |factor: u64| {
        number
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(bad)
    };
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(bad()),
    }
}

/// A base URL split the way routing and forwarding need it.
#[derive(Debug, PartialEq, Eq)]
struct BaseUrl {
    tls: bool,
    /// Lower-case, IPv6 without brackets.
    host: String,
    port: u16,
    /// For the `Host` header: `host[:port]`, the scheme's default port omitted.
    authority: String,
    /// Raw; no trailing slash unless it is `/`.
    path: String,
}

fn parse_url(text: &str) -> Result<BaseUrl, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("{text:?} is not a URL; write https://host[:port]/path"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(format!(
                "{text:?} is not an https:// URL; write https://host[:port]/path"
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{text:?} has no host; write https://host[:port]/path"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{text:?} contains user information; credentials do not belong in a base URL"
        ));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(format!(
            "{text:?} has a query or fragment; a base URL is scheme, host, port and path only"
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!(
            "{text:?} has no host; write https://host[:port]/path"
        ));
    }
    // RFC 1035 §2.3.4; the route table matches no longer host.
    if host.len() > 253 {
        return Err(format!(
            "{text:?} has a host name longer than 253 characters, which no DNS name can be"
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = if port == default_port {
        bracketed
    } else {
        format!("{bracketed}:{port}")
    };
    let raw_path = uri.path();
    if raw_path.split('/').any(|s| {
        let s = s.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    }) {
        return Err(format!(
            "{text:?} has a '.' or '..' path segment; write the path without them"
        ));
    }
    let trimmed = raw_path.trim_end_matches('/');
    let path = if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    };
    Ok(BaseUrl {
        tls,
        host,
        port,
        authority,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
[[listeners]]
name = "public"
bind = "0.0.0.0:8443"

  [[listeners.certificates]]
  cert = "certs/public.pem"
  key  = "certs/public.key"

[[listeners]]
name = "internal"
bind = "127.0.0.1:9443"
min_tls_version = "1.3"
  [[listeners.certificates]]
  cert = "/abs/internal.pem"
  key  = "/abs/internal.key"

[[routes]]
name = "dest-a"
public_base = "https://Fhir.Example.org:8443/dest-a/"
upstream = "https://dest-a.internal:9443/fhir"
upstream_ca = "certs/private-ca.pem"
listener = "public"
connect_timeout = "250ms"
response_timeout = "2m"
forwarded = false

[[routes]]
name = "dest-b"
public_base = "https://fhir.dest-b.org"
upstream = "https://[::1]:9443/"

[limits]
max_header_bytes = 32768

[shutdown]
grace = "1h"

[audit]
path = "audit.ndjson"
key_file = "audit.key"

[admin]
bind = "127.0.0.1:9901"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/fhirgate/fhirgate.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn valid_config_parses_with_defaults() {
        let c = parse(VALID).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].min_tls_version, TlsVersion::V1_2);
        assert_eq!(c.listeners[1].min_tls_version, TlsVersion::V1_3);
        assert_eq!(
            c.listeners[0].certificates[0].cert.path,
            Path::new("/etc/fhirgate/certs/public.pem")
        );
        assert_eq!(
            c.listeners[0].certificates[0].cert.key,
            "listeners[0].certificates[0].cert"
        );
        assert_eq!(c.listeners[0].certificates[0].cert.line, Some(7));
        assert_eq!(
            c.listeners[1].certificates[0].key.path,
            Path::new("/abs/internal.key")
        );
        let a = &c.routes[0];
        assert_eq!(
            (a.public_host.as_str(), a.public_path.as_str()),
            ("fhir.example.org", "/dest-a")
        );
        assert_eq!(a.upstream.authority, "dest-a.internal:9443");
        assert_eq!(a.upstream.path, "/fhir");
        assert_eq!(
            a.upstream_ca.as_ref().unwrap().path,
            Path::new("/etc/fhirgate/certs/private-ca.pem")
        );
        assert_eq!(a.listener.as_deref(), Some("public"));
        assert_eq!(a.connect_timeout, Duration::from_millis(250));
        assert_eq!(a.response_timeout, Duration::from_secs(120));
        assert!(!a.forwarded);
        let b = &c.routes[1];
        assert_eq!(b.public_path, "/");
        assert_eq!((b.upstream.host.as_str(), b.upstream.port), ("::1", 9443));
        assert_eq!(b.upstream.authority, "[::1]:9443");
        assert_eq!(b.upstream.path, "/");
        assert_eq!(b.connect_timeout, Duration::from_secs(5));
        assert_eq!(b.response_timeout, Duration::from_secs(60));
        assert_eq!(b.upstream_idle_timeout, Duration::from_secs(60));
        assert_eq!(b.upstream_max_idle, 128);
        assert!(b.forwarded);
        assert_eq!(c.limits.max_header_bytes, 32768);
        assert_eq!(c.limits.max_connections, 20000);
        assert_eq!(c.shutdown.grace, Duration::from_secs(3600));
    }

    #[test]
    fn default_port_is_left_out_of_the_authority() {
        let url = parse_url("https://dest:443/x").unwrap();
        assert_eq!(url.authority, "dest");
        let url = parse_url("http://dest:80").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str(), url.tls),
            ("dest", "/", false)
        );
    }

    #[test]
    fn upstream_idle_timeout_is_read_and_must_be_longer_than_zero() {
        let set = |value: &str| {
            VALID.replace(
                "forwarded = false",
                &format!("forwarded = false\nupstream_idle_timeout = \"{value}\""),
            )
        };
        let c = parse(&set("10s")).unwrap();
        assert_eq!(c.routes[0].upstream_idle_timeout, Duration::from_secs(10));
        let e = error(&set("0s"));
        assert!(e.contains("routes[0].upstream_idle_timeout"), "{e}");
        assert!(e.contains("fhirgate.toml:27"), "{e}");
    }

    #[test]
    fn upstream_max_idle_is_read_zero_allowed_and_never_negative() {
        let set = |value: &str| {
            VALID.replace(
                "forwarded = false",
                &format!("forwarded = false\nupstream_max_idle = {value}"),
            )
        };
        assert_eq!(parse(&set("4")).unwrap().routes[0].upstream_max_idle, 4);
        assert_eq!(parse(&set("0")).unwrap().routes[0].upstream_max_idle, 0);
        let e = error(&set("-1"));
        assert!(e.contains("routes[0].upstream_max_idle"), "{e}");
        assert!(e.contains("fhirgate.toml:27"), "{e}");
        assert!(e.contains("-1 is not allowed"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = error(&VALID.replace("forwarded = false", "forwarded = false\nfrowarded = true"));
        assert!(e.contains("fhirgate.toml:27"), "{e}");
        assert!(e.contains("frowarded"), "{e}");
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let cases = [
            (
                VALID.replace("https://dest-a.internal:9443/fhir", "ftp://dest-a/x"),
                "routes[0].upstream",
                ":21:",
            ),
            (
                VALID.replace("\"250ms\"", "\"5 parsecs\""),
                "routes[0].connect_timeout",
                ":24:",
            ),
            (
                VALID.replace("\"2m\"", "\"0s\""),
                "routes[0].response_timeout",
                ":25:",
            ),
            (
                VALID.replace("0.0.0.0:8443", "localhost"),
                "listeners[0].bind",
                ":4:",
            ),
            (
                VALID.replace("name = \"dest-b\"", "name = \"dest-a\""),
                "routes[1].name",
                ":29:",
            ),
            (
                VALID.replace("name = \"internal\"", "name = \"public\""),
                "listeners[1].name",
                ":11:",
            ),
            (
                VALID.replace("listener = \"public\"", "listener = \"nope\""),
                "routes[0].listener",
                ":23:",
            ),
            (
                VALID.replace(
                    "https://dest-a.internal:9443/fhir",
                    "http://dest-a.internal/fhir",
                ),
                "routes[0].upstream",
                ":21:",
            ),
            (
                VALID.replace("https://fhir.dest-b.org", "http://fhir.dest-b.org"),
                "routes[1].public_base",
                ":30:",
            ),
            (
                VALID
                    .replace(
                        "https://fhir.dest-b.org",
                        "https://fhir.example.org:1/dest-a",
                    )
                    .replace("listener = \"public\"\n", ""),
                "routes[1].public_base",
                ":29:",
            ),
            (
                VALID.replace("\"1.3\"", "\"1.1\""),
                "listeners[1].min_tls_version",
                ":13:",
            ),
            (
                VALID.replace("max_header_bytes = 32768", "max_header_bytes = 0"),
                "limits.max_header_bytes",
                ":34:",
            ),
            (
                VALID.replace("https://[::1]:9443/", "https://u:p@dest/"),
                "routes[1].upstream",
                ":31:",
            ),
            (
                VALID.replace("https://[::1]:9443/", "https://dest/a/../b"),
                "routes[1].upstream",
                ":31:",
            ),
        ];
        for (text, key, line) in cases {
            let e = error(&text);
            assert!(e.starts_with("/etc/fhirgate/fhirgate.toml"), "{e}");
            assert!(e.contains(key), "{key}: {e}");
            assert!(e.contains(line), "{key} {line}: {e}");
        }
    }

    #[test]
    fn same_host_and_path_on_another_listener_is_allowed() {
        let text = VALID.replace("https://fhir.dest-b.org", "https://fhir.example.org/dest-a");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn plaintext_upstream_needs_the_opt_in() {
        let text = VALID.replace("https://[::1]:9443/", "http://dest-b.internal/fhir") + "";
        assert!(error(&text).contains("allow_plaintext_upstream"));
        let text = text.replace(
            "upstream = \"http://dest-b.internal/fhir\"",
            "upstream = \"http://dest-b.internal/fhir\"\nallow_plaintext_upstream = true",
        );
        let c = parse(&text).unwrap();
        assert!(!c.routes[1].upstream.tls);
    }

    #[test]
    fn listeners_and_routes_are_required() {
        assert!(error("").contains("listeners"));
        let only_listener = VALID.split("[[routes]]").next().unwrap();
        assert!(error(only_listener).contains("routes"));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = error("[[listeners]]\nname = \"x\"\nbind = \n");
        assert!(e.contains("fhirgate.toml:3"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "-1s",
            "5 s",
            "5sec",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
