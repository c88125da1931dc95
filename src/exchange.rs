//! What is known about one exchange, reported exactly once when it ends.
//!
//! An exchange ends when its response body has been sent completely, when the upstream
//! breaks off mid-body, or when the client goes away first. The [`ExchangeRecord`] rides
//! inside the response body ([`crate::body::ResponseBody`]) and is reported from `Drop`, so
//! every one of those endings is covered without the proxy having to wait for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{HeaderValue, Method};

use crate::audit::{Auditor, ExchangeAudit};
use crate::body::RequestBodyState;
use crate::metrics::{MethodLabel, Metrics, RouteSeries};

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response (from the destination or the gateway) reached its end.
    Complete,
    /// The upstream's response body failed mid-stream; the client's response was aborted.
    UpstreamBroke,
    /// The client stopped reading (closed the connection or reset the stream) first.
    ClientAborted,
    /// The response was still streaming at `max_exchange_duration`; it was aborted.
    TimedOut,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::UpstreamBroke => "upstream-broke",
            Outcome::ClientAborted => "client-aborted",
            Outcome::TimedOut => "timed-out",
        }
    }
}

/// Where the response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Responder {
    /// The destination (or next intermediary) answered; its status is passed through.
    Upstream,
    /// The gateway answered itself with an OperationOutcome; the label says why
    /// (e.g. `no-route`, `upstream-tls`).
    Gateway(&'static str),
}

/// One exchange, reported once when dropped.
#[derive(Debug)]
pub struct ExchangeRecord {
    pub request_id: HeaderValue,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub method: Method,
    /// The public request target. Only its path is logged and audited (query strings can
    /// carry identifiers); kept as the `Uri`, whose clone shares the received bytes, so an
    /// exchange whose log line is filtered out copies nothing.
    pub uri: http::Uri,
    pub route: Option<Arc<str>>,
    pub status: u16,
    pub responder: Responder,
    pub started: Instant,
    /// Shared with the request body wrapper: bytes read, and why it was cut off, if it was.
    pub request_body: Arc<RequestBodyState>,
    pub bytes_out: u64,
    pub outcome: Outcome,
    /// Set when the audit trail is on: what only the audit record needs.
    pub audit: Option<AuditContext>,
    pub metrics: Arc<Metrics>,
    /// The route's series, once the route is known.
    pub series: Option<Arc<RouteSeries>>,
    /// When the exchange must be over (`max_exchange_duration`), once its route is known.
    pub deadline: Option<tokio::time::Instant>,
    /// Holds the route's concurrency slot until the exchange ends.
    pub route_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Keeps the connection from counting as idle until the exchange ends.
    pub in_flight: Option<crate::idle::InFlight>,
}

/// The parts of an exchange only its AuditEvent needs, collected while it runs.
#[derive(Debug)]
pub struct AuditContext {
    pub auditor: Auditor,
    /// Start, Unix milliseconds (the audit's single time source).
    pub started_ms: i64,
    pub private_path: Option<String>,
    pub below_base: Option<String>,
    pub query: Option<String>,
    pub token_fingerprint: Option<String>,
}

impl ExchangeRecord {
    /// The record of an exchange whose request head has just arrived: no route and no
    /// status yet, and counted as given up by the client until its response reaches its end.
    ///
    /// Boxed: the record travels inside the response body, which hyper moves several times
    /// on its way to the client; moving a pointer is cheaper than copying 440 bytes each time.
    pub fn new(
        request_id: HeaderValue,
        listener: Arc<str>,
        peer: SocketAddr,
        request: &http::request::Parts,
        metrics: Arc<Metrics>,
        in_flight: Option<crate::idle::InFlight>,
    ) -> Box<ExchangeRecord> {
        Box::new(ExchangeRecord {
            request_id,
            listener,
            peer,
            method: request.method.clone(),
            uri: request.uri.clone(),
            route: None,
            status: 0,
            responder: Responder::Upstream,
            started: Instant::now(),
            request_body: Arc::default(),
            bytes_out: 0,
            outcome: Outcome::ClientAborted,
            audit: None,
            metrics,
            series: None,
            deadline: None,
            route_slot: None,
            in_flight,
        })
    }

    fn count(&self, seconds: f64) {
        // A route's series are set together with the route; without them, none matched.
        let series = match &self.series {
            Some(series) => series.as_ref(),
            None => self.metrics.unrouted(),
        };
        series.exchanges.count(
            &self.metrics.exchanges,
            MethodLabel::of(&self.method),
            self.status,
        );
        series.duration.observe(seconds);
        series
            .bytes_received
            .inc_by(self.request_body.received.load(Ordering::Relaxed));
        series.bytes_sent.inc_by(self.bytes_out);
    }
}

impl Drop for ExchangeRecord {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let upstream = match self.responder {
            Responder::Upstream => "responded",
            Responder::Gateway(reason) => reason,
        };
        tracing::info!(
            target: "fhirgate::exchange",
            request_id = self.request_id.to_str().unwrap_or("-"),
            listener = &*self.listener,
            peer = %self.peer,
            method = %self.method,
            path = %self.uri.path(),
            route = self.route.as_deref().unwrap_or("-"),
            status = self.status,
            bytes_in = self.request_body.received.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            duration_ms = (duration_ms * 1000.0).round() / 1000.0,
            upstream,
            outcome = self.outcome.label(),
            "exchange"
        );
        self.count(duration_ms / 1000.0);
        if let Some(audit) = self.audit.take() {
            audit.auditor.exchange(ExchangeAudit {
                started_ms: audit.started_ms,
                ended_ms: audit.started_ms + self.started.elapsed().as_millis() as i64,
                method: self.method.to_string(),
                public_path: self.uri.path().to_owned(),
                private_path: audit.private_path,
                below_base: audit.below_base,
                query: audit.query,
                route: self.route.as_deref().map(str::to_owned),
                request_id: self.request_id.to_str().unwrap_or("-").to_owned(),
                status: self.status,
                bytes_in: self.request_body.received.load(Ordering::Relaxed),
                bytes_out: self.bytes_out,
                peer: self.peer.ip(),
                outcome: self.outcome,
                upstream,
                token_fingerprint: audit.token_fingerprint,
            });
        }
    }
}
