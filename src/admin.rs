//! The admin listener: plain HTTP on a private address (default 127.0.0.1:9901), never on a
//! public listener.
//!
//! * `GET /healthz` — 200 while the process serves at all (liveness).
//! * `GET /readyz` — 200 when listeners are bound, the audit sink is healthy and the gateway
//!   is not draining; 503 otherwise (readiness: take it out of the load balancer).
//! * `GET /metrics` — Prometheus text exposition ([`crate::metrics`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::Auditor;
use crate::metrics::Metrics;

/// What readiness depends on, flipped by the server as it starts and drains.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Every listener is bound and accepting.
    pub serving: AtomicBool,
    /// Shutdown has begun: fail readiness at once so traffic moves elsewhere.
    pub draining: AtomicBool,
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub audit: Option<Auditor>,
}

impl AdminState {
    /// Why the gateway is not ready, if it is not.
    fn not_ready(&self) -> Option<&'static str> {
        if self.readiness.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if !self.readiness.serving.load(Ordering::Relaxed) {
            Some("starting")
        } else if self.audit.as_ref().is_some_and(|a| !a.is_healthy()) {
            Some("audit sink cannot be written")
        } else {
            None
        }
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.not_ready() {
                None => text(StatusCode::OK, "ready\n"),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            },
            "/metrics" => {
                if let Some(audit) = &self.audit {
                    self.metrics
                        .audit_queue_depth
                        .set(audit.queue_depth() as i64);
                }
                let mut response = text(StatusCode::OK, &self.metrics.encode());
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "endpoints: /healthz /readyz /metrics\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

/// Serves the admin endpoints until `stop` turns true.
pub async fn serve(socket: TcpListener, state: AdminState, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = state.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `fhirgate health`: asks `/readyz` at `addr`; `Ok(())` when ready.
pub async fn check_ready(addr: SocketAddr) -> Result<(), String> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get("/readyz")
            .header(http::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        if response.status() == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("{addr}/readyz answered {}", response.status()))
        }
    };
    tokio::time::timeout(Duration::from_secs(3), ask)
        .await
        .map_err(|_| format!("{addr}/readyz did not answer within 3 s"))?
}
