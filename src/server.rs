//! Listeners: bind, accept, TLS handshake under one deadline, HTTP/1.1 or HTTP/2 by ALPN
//! (hyper-util's auto builder), and drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::LazyConfigAcceptor;

use crate::admin::{self, AdminState, Readiness};
use crate::audit::{AuditError, AuditKey, Auditor, SecurityAudit};
use crate::config::{Config, Limits};
use crate::limits::{ConnectionLimits, ConnectionPermit};
use crate::metrics::{
    CertificateLabels, ConfigLabels, ConnectionLabels, HandshakeFailureLabels, ListenerLabels, Name,
};
use crate::proxy::{self, ConnectionInfo, Snapshot};
use crate::tls::{self, ListenerTls, TlsFileError, UNRECOGNIZED_NAME_ALERT, UpstreamTrustError};

/// A running gateway: every listener of a [`Config`] bound and serving.
pub struct Gateway {
    addrs: Vec<(String, SocketAddr)>,
    /// Tells every accept loop to stop accepting and drain.
    stop: watch::Sender<bool>,
    /// One task per listener; each ends once its connections have drained.
    listeners: JoinSet<()>,
    /// Flushed after the listeners have drained.
    audit: Option<Auditor>,
    /// Read by `/readyz`; `draining` is set first thing at shutdown.
    readiness: Arc<Readiness>,
    /// The admin listener's address, when there is one.
    admin_addr: Option<SocketAddr>,
    /// Stops the admin listener, last: `/readyz` answers "draining" throughout the drain.
    admin_stop: watch::Sender<bool>,
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
pub fn prepare(config: &Config) -> Result<Prepared, StartError> {
    let listeners = config
        .listeners
        .iter()
        .map(|l| tls::listener_tls(&config.file, l))
        .collect::<Result<Vec<_>, _>>()?;
    let snapshot = Snapshot::build(config)?;
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
        let prepared = prepare(&config)?;
        let mut snapshot = prepared.snapshot;
        match &config.audit {
            Some(audit) => snapshot.audit = Some(Auditor::start(&config.file, audit)?),
            None => {
                tracing::warn!("no [audit] section: exchanges are not recorded in an audit trail")
            }
        }
        let audit = snapshot.audit.clone();
        let metrics = snapshot.metrics.clone();
        metrics
            .config_info
            .get_or_create(&ConfigLabels {
                hash: config.hash.clone(),
            })
            .set(1);
        let snapshot = Arc::new(snapshot);
        let readiness = Arc::new(Readiness::default());
        for route in config.routes.iter().filter(|r| !r.upstream.tls) {
            tracing::warn!(route = %route.name, upstream = %route.upstream.text,
                "plaintext upstream: exchanges on this route leave the gateway unencrypted (allow_plaintext_upstream = true)");
        }
        let connection_limits = ConnectionLimits::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        );
        for route in &config.routes {
            tracing::info!(
                route = %route.name,
                public_base = %route.public_base_text,
                upstream = %route.upstream.text,
                listener = route.listener.as_deref().unwrap_or("(any)"),
                "route"
            );
        }
        let (stop, stopped) = watch::channel(false);
        let mut addrs = Vec::new();
        let mut listeners = JoinSet::new();
        for (cfg, tls) in config.listeners.iter().zip(prepared.listeners) {
            let socket = TcpListener::bind(cfg.bind)
                .await
                .map_err(|source| StartError::Bind {
                    listener: cfg.name.clone(),
                    addr: cfg.bind,
                    source,
                })?;
            let addr = socket.local_addr().map_err(|source| StartError::Bind {
                listener: cfg.name.clone(),
                addr: cfg.bind,
                source,
            })?;
            let certificates: Vec<String> = tls
                .resolver
                .certificates()
                .iter()
                .map(|c| {
                    format!(
                        "{} (expires {})",
                        c.names.join(" "),
                        crate::clock::rfc3339(c.not_after)
                    )
                })
                .collect();
            tracing::info!(listener = %cfg.name, %addr, certificates = %certificates.join(", "), "listening");
            for certificate in tls.resolver.certificates() {
                metrics
                    .certificate_expiry
                    .get_or_create(&CertificateLabels {
                        listener: Name(Arc::from(cfg.name.as_str())),
                        name: certificate.names.first().cloned().unwrap_or_default(),
                    })
                    .set(certificate.not_after);
            }
            addrs.push((cfg.name.clone(), addr));
            let listener = Listener {
                name: Arc::from(cfg.name.as_str()),
                tls,
                snapshot: snapshot.clone(),
                http: http_builder(&config.limits),
                limits: config.limits.clone(),
                connection_limits: connection_limits.clone(),
            };
            listeners.spawn(listener.run(socket, stopped.clone(), config.shutdown.grace));
        }
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
        readiness.serving.store(true, Ordering::Relaxed);
        Ok(Gateway {
            admin_stop,
            readiness,
            admin_addr,
            audit,
            addrs,
            stop,
            listeners,
        })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    /// The admin listener's address (useful with port 0).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Reopens the audit file (SIGHUP, after logrotate moved it).
    pub fn reopen_audit(&self) {
        if let Some(audit) = &self.audit {
            audit.reopen();
        }
    }

    /// Stops accepting, lets in-flight exchanges finish within the configured grace, returns.
    pub async fn shutdown(mut self) {
        // Readiness fails first, so load balancers stop sending before anything closes.
        self.readiness.draining.store(true, Ordering::Relaxed);
        self.readiness.serving.store(false, Ordering::Relaxed);
        let _ = self.stop.send(true);
        while self.listeners.join_next().await.is_some() {}
        if let Some(audit) = &self.audit {
            audit.close().await;
        }
        let _ = self.admin_stop.send(true);
    }
}

/// hyper-util's auto builder: HTTP/2 when the client negotiated `h2` (or sends its preface),
/// HTTP/1.1 with keep-alive otherwise.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Resolves once the gateway is told to stop (or the `Gateway` handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One bound listener and what its connections share.
struct Listener {
    name: Arc<str>,
    tls: ListenerTls,
    snapshot: Arc<Snapshot>,
    http: auto::Builder<TokioExecutor>,
    limits: Limits,
    /// Shared with the gateway's other listeners.
    connection_limits: Arc<ConnectionLimits>,
}

impl Listener {
    /// Accepts until told to stop, then waits up to `grace` for open connections to finish.
    async fn run(self, socket: TcpListener, mut stop: watch::Receiver<bool>, grace: Duration) {
        let this = Arc::new(self);
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = socket.accept() => match accepted {
                    Ok((stream, peer)) => match this.connection_limits.admit(peer.ip()) {
                        Ok(permit) => {
                            let conn = this.clone();
                            let watcher = graceful.watcher();
                            tokio::spawn(async move { conn.serve(stream, peer, watcher, permit).await });
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
        tracing::info!(listener = %this.name, open = graceful.count(), "draining");
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
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
        self.snapshot
            .metrics
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
        if let Some(audit) = &self.snapshot.audit {
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
        watcher: Watcher,
        _permit: ConnectionPermit,
    ) {
        let _ = stream.set_nodelay(true);
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
        let sni = start
            .client_hello()
            .server_name()
            .map(|name| Box::<str>::from(name.to_ascii_lowercase()));
        if let Some(name) = &sni
            && !self.tls.resolver.covers(name)
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
            start.into_stream(self.tls.server_config.clone()),
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
        let metrics = &self.snapshot.metrics;
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
        let _open = OnDrop(move || {
            open.dec();
        });
        let info = Arc::new(ConnectionInfo {
            listener: self.name.clone(),
            peer,
            sni,
        });
        let snapshot = self.snapshot.clone();
        let service = service_fn(move |request| {
            let snapshot = snapshot.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(proxy::handle(&snapshot, &info, request).await) }
        });
        let connection = self
            .http
            .serve_connection(TokioIo::new(tls), service)
            .into_owned();
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(listener = %self.name, %peer, %error, "connection ended with an error");
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
