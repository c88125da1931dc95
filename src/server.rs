//! Listeners: bind, accept, TLS handshake under one deadline, HTTP/1.1 or HTTP/2 by ALPN
//! (hyper-util's auto builder), and drain on shutdown.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use arc_swap::ArcSwap;

use crate::admin::{self, AdminState, Readiness};
use crate::audit::{AuditError, AuditKey, Auditor, SecurityAudit};
use crate::config::{Config, Limits};
use crate::headers::ForwardedMemo;
use crate::idle::Activity;
use crate::limits::{ConnectionLimits, ConnectionPermit};
use crate::linger;
use crate::metrics::{
    CertificateLabels, ConfigLabels, ConnectionLabels, HandshakeFailureLabels, ListenerLabels,
    Metrics, Name, ReloadLabels,
};
use crate::proxy::{self, ConnectionInfo, ErrorChain, Snapshot};
use crate::tls::{self, ListenerTls, TlsFileError, UNRECOGNIZED_NAME_ALERT, UpstreamTrustError};

/// A running gateway: every listener of a [`Config`] bound and serving.
///
/// The configuration can be replaced while it runs ([`Gateway::reload`]): new connections
/// and new exchanges use the new certificates and routes, exchanges in flight finish on the
/// old ones, listeners are added and removed as the new file says.
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    /// The file reloads read.
    config_file: PathBuf,
    /// The routes, upstream clients and audit handle every new exchange uses.
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Running listeners by name.
    listeners: Mutex<HashMap<String, RunningListener>>,
    /// The running configuration's hash, for the config_info metric.
    hash: Mutex<String>,
    /// Serialises reloads (SIGHUP and the file watcher may ask at once).
    reloading: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Flushed after the listeners have drained.
    audit: Option<Auditor>,
    /// Read by `/readyz`; `draining` is set first thing at shutdown.
    readiness: Arc<Readiness>,
    /// The admin listener's address, when there is one.
    admin_addr: Option<SocketAddr>,
    /// Stops the admin listener, last: `/readyz` answers "draining" throughout the drain.
    admin_stop: watch::Sender<bool>,
    /// Stops the file watcher.
    watch_stop: watch::Sender<bool>,
    connection_limits: Arc<ConnectionLimits>,
    /// Read at start only; every snapshot shares it, so buckets survive reloads.
    rate_limiter: Option<Arc<crate::limits::RateLimiter>>,
    limits: Limits,
    grace: Duration,
}

/// A bound listener and how to change or stop it.
struct RunningListener {
    bind: SocketAddr,
    addr: SocketAddr,
    /// Swapped on reload: the next handshake uses the new certificates.
    tls: Arc<ArcSwap<ListenerTls>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    ListenerTls(#[from] TlsFileError),
    #[error(transparent)]
    Upstream(#[from] UpstreamTrustError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Config(#[from] Box<crate::config::ConfigError>),
    #[error("admin: cannot bind {addr}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener {listener:?}: cannot bind {addr}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything built from a configuration before any socket is bound: what `check` verifies.
pub struct Prepared {
    pub snapshot: Snapshot,
    pub listeners: Vec<ListenerTls>,
}

/// Loads every certificate, key and trust anchor the configuration names.
///
/// `metrics` is where the upstream clients count their connections.
pub fn prepare(config: &Config, metrics: &Arc<Metrics>) -> Result<Prepared, StartError> {
    let listeners = config
        .listeners
        .iter()
        .map(|l| tls::listener_tls(&config.file, l))
        .collect::<Result<Vec<_>, _>>()?;
    let snapshot = Snapshot::build(config, metrics.clone())?;
    if let Some(audit) = &config.audit {
        // Only the key is checked here; the sink is opened when serving starts.
        AuditKey::load(&config.file, &audit.key_file)?;
    }
    Ok(Prepared {
        snapshot,
        listeners,
    })
}

impl Gateway {
    /// Loads every certificate and trust anchor, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let prepared = prepare(&config, &Arc::new(Metrics::new()))?;
        let mut snapshot = prepared.snapshot;
        match &config.audit {
            Some(audit) => snapshot.audit = Some(Auditor::start(&config.file, audit)?),
            None => {
                tracing::warn!("no [audit] section: exchanges are not recorded in an audit trail")
            }
        }
        let audit = snapshot.audit.clone();
        let metrics = snapshot.metrics.clone();
        let rate_limiter = snapshot.rate_limiter.clone();
        metrics
            .config_info
            .get_or_create(&ConfigLabels {
                hash: config.hash.clone(),
            })
            .set(1);
        log_routes(&config);
        let readiness = Arc::new(Readiness::default());
        let sockets = bind_listeners(&config, &HashMap::new()).await?;
        let (admin_stop, admin_stopped) = watch::channel(false);
        let admin_addr = match &config.admin {
            Some(admin) => {
                let socket = TcpListener::bind(admin.bind).await.map_err(|source| {
                    StartError::AdminBind {
                        addr: admin.bind,
                        source,
                    }
                })?;
                let addr = socket
                    .local_addr()
                    .map_err(|source| StartError::AdminBind {
                        addr: admin.bind,
                        source,
                    })?;
                tracing::info!(%addr, "admin listener: /healthz /readyz /metrics (plain HTTP)");
                let state = AdminState {
                    metrics: metrics.clone(),
                    readiness: readiness.clone(),
                    audit: audit.clone(),
                };
                tokio::spawn(admin::serve(socket, state, admin_stopped));
                Some(addr)
            }
            None => None,
        };
        let (watch_stop, watch_stopped) = watch::channel(false);
        let inner = Arc::new(Inner {
            config_file: config.file.clone(),
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            listeners: Mutex::new(HashMap::new()),
            hash: Mutex::new(config.hash.clone()),
            reloading: tokio::sync::Mutex::new(()),
            metrics,
            audit,
            readiness,
            admin_addr,
            admin_stop,
            watch_stop,
            connection_limits: ConnectionLimits::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            ),
            rate_limiter,
            limits: config.limits.clone(),
            grace: config.shutdown.grace,
        });
        inner.apply_listeners(&config, prepared.listeners, sockets);
        inner.readiness.serving.store(true, Ordering::Relaxed);
        tokio::spawn(watch_files(
            Arc::downgrade(&inner),
            watched_files(&config),
            watch_stopped,
        ));
        Ok(Gateway { inner })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        lock(&self.inner.listeners).get(listener).map(|l| l.addr)
    }

    /// The admin listener's address (useful with port 0).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr
    }

    /// Reopens the audit file (SIGHUP, after logrotate moved it).
    pub fn reopen_audit(&self) {
        if let Some(audit) = &self.inner.audit {
            audit.reopen();
        }
    }

    /// Reads the configuration file again and, if it is entirely valid, switches to it.
    /// If not, the running configuration stays, and the error is logged and counted.
    pub async fn reload(&self) -> Result<(), StartError> {
        self.inner.reload().await
    }

    /// Stops accepting, lets in-flight exchanges finish within the configured grace, returns.
    pub async fn shutdown(self) {
        let inner = &self.inner;
        // Readiness fails first, so load balancers stop sending before anything closes.
        inner.readiness.draining.store(true, Ordering::Relaxed);
        inner.readiness.serving.store(false, Ordering::Relaxed);
        let _ = inner.watch_stop.send(true);
        let running: Vec<RunningListener> =
            lock(&inner.listeners).drain().map(|(_, l)| l).collect();
        for listener in &running {
            let _ = listener.stop.send(true);
        }
        for listener in running {
            let _ = listener.task.await;
        }
        if let Some(audit) = &inner.audit {
            audit.close().await;
        }
        let _ = inner.admin_stop.send(true);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn log_routes(config: &Config) {
    for route in &config.routes {
        tracing::info!(
            route = %route.name,
            public_base = %route.public_base_text,
            upstream = %route.upstream.text,
            listener = route.listener.as_deref().unwrap_or("(any)"),
            "route"
        );
        if !route.upstream.tls {
            tracing::warn!(route = %route.name, upstream = %route.upstream.text,
                "plaintext upstream: exchanges on this route leave the gateway unencrypted (allow_plaintext_upstream = true)");
        }
    }
}

/// Binds the sockets a configuration needs that are not already bound (same name and
/// address), before anything is changed: a reload that cannot bind changes nothing.
async fn bind_listeners(
    config: &Config,
    running: &HashMap<String, (SocketAddr, SocketAddr)>,
) -> Result<HashMap<String, TcpListener>, StartError> {
    let mut sockets = HashMap::new();
    for cfg in &config.listeners {
        if running
            .get(&cfg.name)
            .is_some_and(|(bind, _)| *bind == cfg.bind)
        {
            continue;
        }
        let socket = TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| StartError::Bind {
                listener: cfg.name.clone(),
                addr: cfg.bind,
                source,
            })?;
        sockets.insert(cfg.name.clone(), socket);
    }
    Ok(sockets)
}

impl Inner {
    /// Makes the running listeners what `config` says: swaps certificates of listeners that
    /// stay, starts new ones on `sockets`, drains the ones that are gone.
    fn apply_listeners(
        &self,
        config: &Config,
        tls: Vec<ListenerTls>,
        mut sockets: HashMap<String, TcpListener>,
    ) {
        let mut running = lock(&self.listeners);
        let wanted: HashSet<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = running.remove(&name) {
                tracing::info!(listener = %name, "listener removed: draining its connections");
                let _ = old.stop.send(true);
            }
        }
        for (cfg, tls) in config.listeners.iter().zip(tls) {
            self.record_certificates(cfg, &tls);
            if let Some(socket) = sockets.remove(&cfg.name) {
                if let Some(old) = running.remove(&cfg.name) {
                    let _ = old.stop.send(true);
                }
                let Ok(addr) = socket.local_addr() else {
                    continue;
                };
                tracing::info!(listener = %cfg.name, %addr, certificates = %describe_certificates(&tls), "listening");
                let tls = Arc::new(ArcSwap::from_pointee(tls));
                let (stop, stopped) = watch::channel(false);
                let listener = Listener {
                    name: Arc::from(cfg.name.as_str()),
                    tls: tls.clone(),
                    snapshot: self.snapshot.clone(),
                    metrics: self.metrics.clone(),
                    http: http_builder(&self.limits),
                    limits: self.limits.clone(),
                    connection_limits: self.connection_limits.clone(),
                };
                let task = tokio::spawn(listener.run(socket, stopped, self.grace));
                running.insert(
                    cfg.name.clone(),
                    RunningListener {
                        bind: cfg.bind,
                        addr,
                        tls,
                        stop,
                        task,
                    },
                );
            } else if let Some(existing) = running.get(&cfg.name) {
                tracing::info!(listener = %cfg.name, certificates = %describe_certificates(&tls), "listener certificates replaced");
                existing.tls.store(Arc::new(tls));
            }
        }
    }

    fn record_certificates(&self, cfg: &crate::config::ListenerConfig, tls: &ListenerTls) {
        for certificate in tls.resolver.certificates() {
            self.metrics
                .certificate_expiry
                .get_or_create(&CertificateLabels {
                    listener: Name(Arc::from(cfg.name.as_str())),
                    name: certificate.names.first().cloned().unwrap_or_default(),
                })
                .set(certificate.not_after);
        }
    }

    async fn reload(&self) -> Result<(), StartError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        let outcome = match &result {
            Ok(()) => "success",
            Err(error) => {
                tracing::error!(error = %ErrorChain(error), "configuration reload failed; the running configuration stays");
                "failure"
            }
        };
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels { result: outcome })
            .inc();
        result
    }

    async fn try_reload(&self) -> Result<(), StartError> {
        let config = Config::load(&self.config_file).map_err(Box::new)?;
        let prepared = prepare(&config, &self.metrics)?;
        let running: HashMap<String, (SocketAddr, SocketAddr)> = lock(&self.listeners)
            .iter()
            .map(|(name, l)| (name.clone(), (l.bind, l.addr)))
            .collect();
        let sockets = bind_listeners(&config, &running).await?;
        // Everything is loaded and bound: switch. Exchanges in flight keep the old snapshot.
        let mut snapshot = prepared.snapshot;
        snapshot.audit = self.audit.clone();
        snapshot.metrics = self.metrics.clone();
        snapshot.rate_limiter = self.rate_limiter.clone();
        if config.audit.is_some() != self.audit.is_some() {
            tracing::warn!(
                "[audit] was added or removed: that takes a restart; the audit trail is unchanged"
            );
        }
        self.snapshot.store(Arc::new(snapshot));
        self.apply_listeners(&config, prepared.listeners, sockets);
        let mut hash = lock(&self.hash);
        let _ = self
            .metrics
            .config_info
            .remove(&ConfigLabels { hash: hash.clone() });
        self.metrics
            .config_info
            .get_or_create(&ConfigLabels {
                hash: config.hash.clone(),
            })
            .set(1);
        *hash = config.hash.clone();
        log_routes(&config);
        tracing::info!(hash = %config.hash, "configuration reloaded");
        Ok(())
    }
}

fn describe_certificates(tls: &ListenerTls) -> String {
    tls.resolver
        .certificates()
        .iter()
        .map(|c| {
            format!(
                "{} (expires {})",
                c.names.join(" "),
                crate::clock::rfc3339(c.not_after)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every file a configuration depends on: the file itself, certificates, keys, trust anchors.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.file.clone()];
    for listener in &config.listeners {
        for c in &listener.certificates {
            files.push(c.cert.path.clone());
            files.push(c.key.path.clone());
        }
    }
    for route in &config.routes {
        if let Some(ca) = &route.upstream_ca {
            files.push(ca.path.clone());
        }
    }
    files
}

/// What identifies a file's version: its modification time and length (and whether it is
/// there at all). Polled, because inotify misses the symlink swaps of mounted secrets.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// How often the configuration and the files it names are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Reloads when the configuration file or a file it names changes. A broken version is
/// tried once; the next change is tried again.
async fn watch_files(
    gateway: std::sync::Weak<Inner>,
    mut files: Vec<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = fingerprint(&files);
    loop {
        tokio::select! {
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = fingerprint(&files);
        if now == seen {
            continue;
        }
        let Some(inner) = gateway.upgrade() else {
            return;
        };
        tracing::info!("configuration or certificate files changed: reloading");
        // Files written in several steps settle first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if inner.reload().await.is_ok()
            && let Ok(config) = Config::load(&inner.config_file)
        {
            files = watched_files(&config);
        }
        seen = fingerprint(&files);
    }
}

/// See [`http_builder`].
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// hyper-util's auto builder: HTTP/2 when the client negotiated `h2` (or sends its preface),
/// HTTP/1.1 with keep-alive otherwise.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    // hyper's own header limits are a backstop at twice the configured ones: between the
    // two, the gateway itself answers 431 with an OperationOutcome (proxy::check_head);
    // beyond, hyper refuses before anything is allocated per header.
    let header_bytes_backstop = limits.max_header_bytes.saturating_mul(2);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Also bounds the wait for the next request on an idle keep-alive connection.
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers.saturating_mul(2))
        .max_buf_size(header_bytes_backstop.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_bytes_backstop).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): streams the client opens and resets before the
        // gateway has accepted them are bounded; past this the connection gets GOAWAY.
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        // Streams the client makes the gateway reset (protocol errors) are bounded too.
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        // Finds peers that vanished without closing, even while a stream is stalled.
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Resolves once the gateway is told to stop (or the `Gateway` handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One bound listener and what its connections share.
struct Listener {
    name: Arc<str>,
    /// Loaded once per handshake, so a reload applies to the next connection.
    tls: Arc<ArcSwap<ListenerTls>>,
    /// Loaded once per exchange, so a reload applies to the next exchange.
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    http: auto::Builder<TokioExecutor>,
    limits: Limits,
    /// Shared with the gateway's other listeners.
    connection_limits: Arc<ConnectionLimits>,
}

impl Listener {
    /// Accepts until told to stop, then waits up to `grace` for open connections to finish.
    async fn run(self, socket: TcpListener, mut stop: watch::Receiver<bool>, grace: Duration) {
        let this = Arc::new(self);
        // Every connection task holds a receiver; the sender sees when the last one is gone.
        let (open_tx, open_rx) = watch::channel(());
        loop {
            tokio::select! {
                accepted = socket.accept() => match accepted {
                    Ok((stream, peer)) => match this.connection_limits.admit(peer.ip()) {
                        Ok(permit) => {
                            let conn = this.clone();
                            let stop = stop.clone();
                            let open = open_rx.clone();
                            tokio::spawn(async move { conn.serve(stream, peer, stop, permit, open).await });
                        }
                        Err(limit) => {
                            // Closed before any TLS work is spent on it.
                            tracing::debug!(listener = %this.name, %peer, ?limit, "connection refused: limit reached");
                            drop(stream);
                        }
                    },
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning,
                        // and keep the listener.
                        tracing::warn!(listener = %this.name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = stopped(&mut stop) => break,
            }
        }
        drop(socket);
        drop(open_rx);
        tracing::info!(listener = %this.name, open = open_tx.receiver_count(), "draining");
        if tokio::time::timeout(grace, open_tx.closed()).await.is_err() {
            tracing::warn!(listener = %this.name, "grace period over; closing remaining connections");
        }
    }

    /// Counts a refused handshake and, for what may be an attack, writes a separate
    /// security record so it is visible in the audit trail.
    fn handshake_refused(
        &self,
        peer: SocketAddr,
        sni: Option<&str>,
        reason: &'static str,
        detail: String,
    ) {
        self.metrics
            .tls_handshake_failures
            .get_or_create(&HandshakeFailureLabels {
                listener: Name(self.name.clone()),
                reason,
            })
            .inc();
        // A connection closed before a ClientHello is a port probe or a load balancer's TCP
        // health check, not worth a security record.
        if reason == "closed" {
            return;
        }
        if let Some(audit) = &self.snapshot.load().audit {
            audit.security(SecurityAudit {
                at_ms: crate::clock::unix_now_ms(),
                peer,
                listener: self.name.to_string(),
                sni: sni.map(str::to_owned),
                reason: detail,
            });
        }
    }

    /// One connection: TLS handshake (SNI checked before a certificate is chosen), then HTTP.
    async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
        _permit: ConnectionPermit,
        _open: watch::Receiver<()>,
    ) {
        let _ = stream.set_nodelay(true);
        // The socket comes back once TLS and HTTP are done with it, to be closed without
        // losing the end of a response (see `linger`).
        let (stream, mut reclaimed) = linger::Reclaimable::new(stream);
        let deadline = tokio::time::Instant::now() + self.limits.tls_handshake_timeout;
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = match tokio::time::timeout_at(deadline, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(error)) => {
                tracing::debug!(listener = %self.name, %peer, %error, "TLS handshake failed before ClientHello");
                let reason = if error.kind() == std::io::ErrorKind::UnexpectedEof {
                    "closed"
                } else {
                    "not_tls"
                };
                self.handshake_refused(
                    peer,
                    None,
                    reason,
                    format!("no valid ClientHello: {error}"),
                );
                return;
            }
            Err(_) => {
                tracing::debug!(listener = %self.name, %peer, "TLS handshake timed out");
                self.handshake_refused(
                    peer,
                    None,
                    "timeout",
                    "no ClientHello within tls_handshake_timeout".into(),
                );
                return;
            }
        };
        let tls_config = self.tls.load_full();
        let sni = start
            .client_hello()
            .server_name()
            .map(|name| Box::<str>::from(name.to_ascii_lowercase()));
        if let Some(name) = &sni
            && !tls_config.resolver.covers(name)
        {
            // RFC 6066 §3: refuse rather than show one tenant's certificate for another name.
            tracing::info!(listener = %self.name, %peer, sni = %name, "TLS refused: no certificate for this server name");
            self.handshake_refused(
                peer,
                Some(name),
                "unrecognized_name",
                "unrecognized_name: no certificate for this server name".into(),
            );
            let mut io = start.io;
            let _ = io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            let _ = io.shutdown().await;
            return;
        }
        let tls = match tokio::time::timeout_at(
            deadline,
            start.into_stream(tls_config.server_config.clone()),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::info!(listener = %self.name, %peer, %error, "TLS handshake failed");
                self.handshake_refused(
                    peer,
                    sni.as_deref(),
                    "handshake",
                    format!("handshake failed: {error}"),
                );
                return;
            }
            Err(_) => {
                tracing::info!(listener = %self.name, %peer, "TLS handshake timed out");
                self.handshake_refused(
                    peer,
                    sni.as_deref(),
                    "timeout",
                    "handshake not finished within tls_handshake_timeout".into(),
                );
                return;
            }
        };
        let metrics = &self.metrics;
        metrics
            .tls_handshakes
            .get_or_create(&ListenerLabels {
                listener: Name(self.name.clone()),
            })
            .inc();
        let protocol = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => "h2",
            _ => "http/1.1",
        };
        let open = metrics
            .open_connections
            .get_or_create(&ConnectionLabels {
                listener: Name(self.name.clone()),
                protocol,
            })
            .clone();
        open.inc();
        // Decremented however the connection ends.
        let counted_open = OnDrop(move || {
            open.dec();
        });
        let activity = Activity::new();
        let info = Arc::new(ConnectionInfo {
            listener: self.name.clone(),
            peer,
            sni,
            activity: Some(activity.clone()),
            forwarded: ForwardedMemo::default(),
        });
        let snapshot = self.snapshot.clone();
        let service = service_fn(move |request| {
            // Each exchange runs on the configuration current when it starts.
            let snapshot = snapshot.load_full();
            let info = info.clone();
            // Boxed: the exchange's future is a few KiB, and hyper moves what the service
            // returns several times before it first polls it (into its stream, then into a task).
            // Allocated before the future is made, so that only its first state (the request
            // and two pointers) is written into the box: `Box::pin(future)` made the whole
            // future on the stack and copied all of it, some KiB, on every exchange.
            let slot = Box::new_uninit();
            Box::into_pin(Box::write(slot, async move {
                Ok::<_, Infallible>(proxy::handle(&snapshot, &info, request).await)
            }))
        });
        let connection = self
            .http
            .serve_connection(TokioIo::new(tls), service)
            .into_owned();
        let idle = activity.idle_for(self.limits.idle_timeout);
        let result = {
            let mut connection = std::pin::pin!(connection);
            let mut idle = std::pin::pin!(idle);
            // Drain and idle both end the connection gracefully: HTTP/2 sends GOAWAY and
            // lets open streams finish; HTTP/1.1 finishes the exchange in flight (its
            // response carries `Connection: close`) and closes.
            let mut closing = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    () = stopped(&mut stop), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    () = &mut idle, if !closing => {
                        tracing::debug!(listener = %self.name, %peer, "closing idle connection");
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            // The connection, and with it the TLS stream, is dropped here: the socket
            // comes back through `reclaimed`.
        };
        // A lingering socket no longer counts as an open connection in the metrics, but it
        // holds its place in the connection limits (`_permit`) and the drain (`_open`)
        // until it is closed.
        drop(counted_open);
        match result {
            Ok(()) => {
                if let Ok(socket) = reclaimed.try_recv() {
                    linger::close(socket).await;
                }
            }
            // A timeout (a slowloris client, a dead peer), a protocol error or a reset:
            // closed at once, as nginx does, so a hostile client cannot hold the socket.
            Err(error) => {
                tracing::debug!(listener = %self.name, %peer, %error, "connection ended with an error");
            }
        }
    }
}

/// Runs a closure when dropped: keeps a gauge right however a connection ends.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
