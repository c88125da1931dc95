//! One exchange, top to bottom: request id → host and SNI → route → request rewrite →
//! upstream → response passed back → exchange record.
//!
//! [`handle`] is the outer function: it owns the exchange record and turns a
//! [`GatewayError`] into an OperationOutcome. `Snapshot::forward` (private) is the inner one and
//! reads as the request's story.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{HOST, TE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use crate::audit::Auditor;
use crate::body::{RequestBody, ResponseBody, UpstreamBody};
use crate::clock;
use crate::config::Config;
use crate::error::{GatewayError, OutcomeFormat, UpstreamFailure, outcome_format};
use crate::exchange::{AuditContext, ExchangeRecord, Responder};
use crate::headers::{self, ForwardedMemo, X_REQUEST_ID};
use crate::limits::RateLimiter;
use crate::metrics::{FailureLabels, Metrics, Name, RouteSeries};
use crate::route::{self, RouteTable};
use crate::tls::UpstreamTrustError;
use crate::upstream::Upstream;

/// What the gateway knows about the connection an exchange arrived on.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Name of the listener that accepted it (routes may be restricted to one).
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// The TLS server name the client asked for, lower-case; `None` when it sent no SNI.
    pub sni: Option<Box<str>>,
    /// Exchanges in flight on the connection, for its idle timeout (`None` outside a server).
    pub activity: Option<Arc<crate::idle::Activity>>,
    /// The `Forwarded` element of this connection's exchanges, made once.
    pub forwarded: ForwardedMemo,
}

/// Everything an exchange needs from the configuration, built once and shared read-only.
pub struct Snapshot {
    table: RouteTable,
    /// Indexed by [`route::RouteMatch::index`].
    routes: Vec<RouteState>,
    /// The audit trail, when configured; started by the server, not by `check`.
    pub audit: Option<Auditor>,
    /// The gateway's metrics (they outlive any one configuration).
    pub metrics: Arc<Metrics>,
    /// Per client address rate limit, when configured (kept across reloads by the server).
    pub rate_limiter: Option<Arc<RateLimiter>>,
    max_uri_bytes: usize,
    max_header_bytes: usize,
    max_headers: usize,
    body_idle_timeout: std::time::Duration,
}

struct RouteState {
    name: Arc<str>,
    upstream: Upstream,
    forwarded: bool,
    max_request_body_bytes: Option<u64>,
    /// The route's metric series, shared by its exchanges.
    series: Arc<RouteSeries>,
    /// `max_concurrent_exchanges`: one permit per exchange in flight.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The route's `max_exchange_duration`, or the global one.
    max_exchange_duration: Option<std::time::Duration>,
}

impl Snapshot {
    /// Builds the route table and one upstream client per route (loading trust anchors).
    pub fn build(config: &Config, metrics: Arc<Metrics>) -> Result<Snapshot, UpstreamTrustError> {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Ok(RouteState {
                    name: Arc::from(r.name.as_str()),
                    upstream: Upstream::new(&config.file, r, &metrics)?,
                    forwarded: r.forwarded,
                    max_request_body_bytes: r.max_request_body_bytes,
                    series: Arc::new(RouteSeries::new(
                        &metrics,
                        &Name(Arc::from(r.name.as_str())),
                    )),
                    slots: r
                        .max_concurrent_exchanges
                        .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
                    max_exchange_duration: r
                        .max_exchange_duration
                        .or(config.limits.max_exchange_duration),
                })
            })
            .collect::<Result<Vec<_>, UpstreamTrustError>>()?;
        Ok(Snapshot {
            table: RouteTable::new(&config.routes),
            routes,
            audit: None,
            metrics,
            rate_limiter: config.limits.rate_limit.map(RateLimiter::new),
            max_uri_bytes: config.limits.max_uri_bytes,
            max_header_bytes: config.limits.max_header_bytes,
            max_headers: config.limits.max_headers,
            body_idle_timeout: config.limits.body_idle_timeout,
        })
    }

    /// The inner story of an exchange. Sets `record.route` as soon as it is known.
    async fn forward(
        &self,
        conn: &ConnectionInfo,
        mut parts: Parts,
        body: Incoming,
        request_id: &HeaderValue,
        record: &mut ExchangeRecord,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        // 0. Sizes the gateway accepts at all.
        let target_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if target_len > self.max_uri_bytes {
            return Err(GatewayError::UriTooLong);
        }
        if parts.headers.len() > self.max_headers
            || header_section_bytes(&parts) > self.max_header_bytes
        {
            return Err(GatewayError::HeaderTooLarge);
        }

        // 1. Which host the client asked for; `Host` is replaced by the upstream's below.
        let host_header = take_single_host(&mut parts)?;
        let host = match (parts.uri.authority(), &host_header) {
            // HTTP/2 :authority, or an HTTP/1.1 absolute-form target (RFC 9112 §3.2.2).
            (Some(authority), _) => authority.as_str(),
            (None, Some(value)) => value
                .to_str()
                .map_err(|_| GatewayError::Malformed("Host is not valid"))?,
            (None, None) => return Err(GatewayError::Malformed("missing Host")),
        };
        let host_name = route::host_without_port(host);

        // 2. The TLS server name must agree, so one tenant's connection is never used to
        //    reach another (RFC 9110 §15.5.20: 421 makes the client retry on a new one).
        if let Some(sni) = &conn.sni
            && !sni.eq_ignore_ascii_case(host_name)
        {
            return Err(GatewayError::MisdirectedRequest);
        }

        // 3. Route on the raw path; dot-segments could escape a route's prefix upstream.
        let path = parts.uri.path();
        if route::has_dot_segment(path) {
            return Err(GatewayError::DotSegment);
        }
        let matched = self
            .table
            .lookup(host_name, path, &conn.listener)
            .ok_or(GatewayError::NoRoute)?;
        let route = &self.routes[matched.index];
        record.route = Some(route.name.clone());
        record.series = Some(route.series.clone());
        if let Some(slots) = &route.slots {
            // Refused at once rather than queued: a queue would only move the pile-up here.
            let slot = slots.clone().try_acquire_owned();
            record.route_slot = Some(slot.map_err(|_| GatewayError::RouteBusy)?);
        }
        record.deadline = route
            .max_exchange_duration
            .map(|limit| tokio::time::Instant::from_std(record.started) + limit);
        if let Some(audit) = &mut record.audit {
            audit.below_base = Some(matched.remainder.to_owned());
        }

        // 4. Rewrite: upstream URI, hop-by-hop fields, Forwarded/Via, request id.
        let target = route::upstream_path_and_query(
            route.upstream.base_path(),
            matched.remainder,
            parts.uri.query(),
        );
        let uri = route.upstream.uri(target)?;
        if let Some(audit) = &mut record.audit {
            audit.private_path = Some(uri.path().to_owned());
        }
        let accepts_trailers = headers::accepts_trailers(&parts.headers);
        headers::remove_hop_by_hop(&mut parts.headers);
        if route.forwarded {
            conn.forwarded
                .append(&mut parts.headers, conn.peer.ip(), host);
            headers::append_via(&mut parts.headers, parts.version);
        }
        if accepts_trailers {
            // The gateway's own hop-by-hop declaration: it can pass trailer fields on.
            parts
                .headers
                .insert(TE, HeaderValue::from_static("trailers"));
        }
        parts.headers.insert(X_REQUEST_ID, request_id.clone());
        parts.uri = uri;
        // The upstream hop is negotiated anew (ALPN); hyper sets Host or :authority from the URI.
        parts.version = Version::HTTP_11;

        // 5. Send, streaming the body; wait for the response head.
        if let Some(limit) = route.max_request_body_bytes
            && parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|length| length > limit)
        {
            return Err(GatewayError::PayloadTooLarge);
        }
        let state = record.request_body.clone();
        let (body, body_sent) = RequestBody::new(
            body,
            state.clone(),
            route.max_request_body_bytes,
            self.body_idle_timeout,
        );
        let request = Request::from_parts(parts, body);
        // The upstream future (2.5 KB) is made in each arm rather than before the match:
        // made before, it would be copied into the arm's awaited future.
        let result = match record.deadline {
            Some(deadline) => {
                tokio::time::timeout_at(deadline, route.upstream.send(request, body_sent))
                    .await
                    .unwrap_or(Err(GatewayError::ExchangeTooLong))
            }
            None => route.upstream.send(request, body_sent).await,
        };
        // A body the gateway itself cut off explains the failed upstream request.
        result.map_err(|error| {
            if state.too_large.load(Ordering::Relaxed) {
                GatewayError::PayloadTooLarge
            } else if state.idle.load(Ordering::Relaxed) {
                GatewayError::RequestTimeout
            } else if state.broken.load(Ordering::Relaxed) {
                GatewayError::Malformed("The request body is malformed or was broken off.")
            } else {
                error
            }
        })
    }
}

/// The size of the request head as an HTTP/1.1 request line and header lines (the same
/// measure for HTTP/2, whose HPACK-compressed size says little about what it costs to hold).
fn header_section_bytes(parts: &Parts) -> usize {
    let request_line = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n ".len();
    parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum::<usize>()
        + request_line
}

/// The access token of an `Authorization: Bearer …` or `Authorization: DPoP …` request
/// (RFC 6750, RFC 9449), for its keyed fingerprint in the audit record.
fn token(headers: &http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    (scheme.eq_ignore_ascii_case(b"bearer") || scheme.eq_ignore_ascii_case(b"dpop"))
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Removes `Host`, refusing a request that carries more than one (RFC 9112 §3.2).
fn take_single_host(parts: &mut Parts) -> Result<Option<HeaderValue>, GatewayError> {
    let mut values = match parts.headers.entry(HOST) {
        http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1,
        http::header::Entry::Vacant(_) => return Ok(None),
    };
    let first = values.next();
    if values.next().is_some() {
        return Err(GatewayError::Malformed("more than one Host"));
    }
    Ok(first)
}

/// Serves one exchange. Never fails: gateway errors become OperationOutcome responses.
pub async fn handle(
    snapshot: &Snapshot,
    conn: &ConnectionInfo,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let request_id = headers::request_id(&parts.headers);
    let format = outcome_format(&parts.headers, parts.uri.query());
    let mut record = ExchangeRecord::new(
        request_id.clone(),
        conn.listener.clone(),
        conn.peer,
        &parts,
        snapshot.metrics.clone(),
        conn.activity.as_ref().map(|a| a.begin()),
    );
    if let Some(auditor) = &snapshot.audit {
        // Records are never dropped: while the audit queue is full this waits, and while
        // the sink cannot be written (on_failure = "refuse") the exchange is refused.
        if !auditor.admit().await {
            return gateway_response(&GatewayError::AuditUnavailable, format, record);
        }
        record.audit = Some(AuditContext {
            auditor: auditor.clone(),
            started_ms: clock::unix_now_ms(),
            private_path: None,
            below_base: None,
            query: parts
                .uri
                .query()
                .filter(|_| auditor.records_query())
                .map(str::to_owned),
            token_fingerprint: token(&parts.headers).map(|t| auditor.fingerprint(t)),
        });
    }
    if let Some(limiter) = &snapshot.rate_limiter
        && let Err(retry_after_secs) = limiter.check(conn.peer.ip())
    {
        return gateway_response(
            &GatewayError::RateLimited { retry_after_secs },
            format,
            record,
        );
    }
    match snapshot
        .forward(conn, parts, body, &request_id, &mut record)
        .await
    {
        Ok(response) => pass_back(response, request_id, record),
        Err(error) => gateway_response(&error, format, record),
    }
}

/// The destination's response, unchanged but for hop-by-hop fields and `X-Request-Id`.
fn pass_back(
    response: Response<UpstreamBody>,
    request_id: HeaderValue,
    mut record: Box<ExchangeRecord>,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    headers::rewrite_response(&mut parts.headers, request_id);
    parts.version = Version::HTTP_11;
    record.status = parts.status.as_u16();
    Response::from_parts(parts, ResponseBody::upstream(body, record))
}

/// A gateway-made OperationOutcome. The details go to the log, under the request id.
fn gateway_response(
    error: &GatewayError,
    format: OutcomeFormat,
    mut record: Box<ExchangeRecord>,
) -> Response<ResponseBody> {
    let request_id = record.request_id.to_str().unwrap_or("-");
    let response = error.to_response(request_id, format);
    let status = response.status();
    if status.is_server_error() {
        tracing::warn!(target: "fhirgate::exchange", request_id, route = record.route.as_deref().unwrap_or("-"), error = %ErrorChain(error), "gateway error");
    } else {
        tracing::debug!(target: "fhirgate::exchange", request_id, error = %ErrorChain(error), "request refused");
    }
    record.status = status.as_u16();
    record.responder = Responder::Gateway(reason(error));
    if let GatewayError::Upstream { kind, .. } = error {
        let route = record.route.clone().unwrap_or_else(|| Arc::from("-"));
        record
            .metrics
            .upstream_failures
            .get_or_create(&FailureLabels {
                route: Name(route),
                kind: kind.label(),
            })
            .inc();
    }
    let (mut parts, bytes) = response.into_parts();
    parts
        .headers
        .insert(X_REQUEST_ID, record.request_id.clone());
    Response::from_parts(parts, ResponseBody::full(bytes, record))
}

/// A short label for the log line saying why the gateway answered itself.
fn reason(error: &GatewayError) -> &'static str {
    match error {
        GatewayError::NoRoute => "no-route",
        GatewayError::DotSegment => "dot-segment",
        GatewayError::Malformed(_) => "malformed",
        GatewayError::MisdirectedRequest => "misdirected",
        GatewayError::Upstream { kind, .. } => match kind {
            UpstreamFailure::Refused => "upstream-refused",
            UpstreamFailure::Tls => "upstream-tls",
            UpstreamFailure::Broken => "upstream-broken",
            UpstreamFailure::ConnectTimeout => "upstream-connect-timeout",
            UpstreamFailure::ResponseTimeout => "upstream-response-timeout",
        },
        GatewayError::Overloaded => "overloaded",
        GatewayError::ShuttingDown => "shutting-down",
        GatewayError::AuditUnavailable => "audit-unavailable",
        GatewayError::HeaderTooLarge => "header-too-large",
        GatewayError::UriTooLong => "uri-too-long",
        GatewayError::PayloadTooLarge => "body-too-large",
        GatewayError::RequestTimeout => "body-idle",
        GatewayError::RateLimited { .. } => "rate-limited",
        GatewayError::RouteBusy => "route-busy",
        GatewayError::ExchangeTooLong => "exchange-too-long",
        GatewayError::Internal(_) => "internal",
    }
}

/// Displays an error with its whole cause chain, for the log.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}
