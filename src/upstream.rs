//! Upstream side: a route's connections to the destination's private URL (or to the next,
//! delegated intermediary), over TLS with the route's trust anchors.
//!
//! Exchanges go over a shared HTTP/2 connection ([`crate::multiplexed`]) or pooled HTTP/1.1
//! keep-alive connections ([`crate::pooled`]), by the route's `upstream_http2` and the
//! upstream's ALPN answer; hyper-rustls does the TLS. This module adds what a gateway needs
//! on top: one deadline over TCP connect + TLS handshake, a response deadline that starts
//! when the request body has been sent, and a classification of every failure into an
//! [`UpstreamFailure`].

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Either;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use crate::body::{RequestBody, UpstreamBody};
use crate::config::RouteConfig;
use crate::error::{BoxError, GatewayError, UpstreamFailure};
use crate::metrics::{Metrics, Name, RouteLabels, UpstreamCertificateLabels};
use crate::multiplexed::{Multiplexed, Sent};
use crate::pooled::Pooled;
use crate::readahead::{ReadAhead, ReadAheadConnector};
use crate::tls::{UpstreamTrustError, upstream_client_config};

/// The largest response head the gateway takes from an upstream, over either protocol: as
/// HAProxy's 16 KiB buffer allows, and twice or four times nginx's default
/// `proxy_buffer_size`. A larger one fails the exchange with 502 (`transient`).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A route's upstream: where exchanges go and the pool of connections to get there.
pub struct Upstream {
    pooled: Pooled,
    /// The HTTP/2 connection (`upstream_http2`, the default); the pooled connections carry
    /// HTTP/1.1 exchanges.
    multiplexed: Option<Multiplexed>,
    scheme: Scheme,
    authority: Authority,
    /// Upstream base path, prepended to the rest of the request path.
    base_path: String,
    response_timeout: Duration,
}

impl Upstream {
    /// Builds the client for `route`, loading its trust anchors.
    pub fn new(
        config_file: &Path,
        route: &RouteConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Upstream, UpstreamTrustError> {
        let tls = upstream_client_config(config_file, route)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        // The HTTP/2 connection offers both protocols by ALPN; the pooled connections,
        // which only speak HTTP/1.1, offer only that.
        let https = |http2: bool| {
            let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.clone());
            let builder = if route.upstream.tls {
                builder.https_only()
            } else {
                builder.https_or_http()
            };
            let builder = builder.enable_http1();
            if http2 {
                builder
                    .enable_http2()
                    .wrap_connector(ReadAheadConnector(http.clone()))
            } else {
                builder.wrap_connector(ReadAheadConnector(http.clone()))
            }
        };
        let route_name = Name(Arc::from(route.name.as_str()));
        let connector = Connector {
            inner: https(false),
            timeout: route.connect_timeout,
            open: metrics
                .upstream_connections
                .get_or_create(&RouteLabels {
                    route: route_name.clone(),
                })
                .clone(),
            certificate_expiry: metrics
                .upstream_certificate_expiry
                .get_or_create(&UpstreamCertificateLabels {
                    route: route_name,
                    host: route.upstream.host.clone(),
                })
                .clone(),
            parked: Arc::default(),
        };
        let scheme = if route.upstream.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let authority = Authority::try_from(route.upstream.authority.as_str()).map_err(|_| {
            UpstreamTrustError::BadAuthority {
                route: route.name.clone(),
            }
        })?;
        // What both kinds of connection dial.
        let target = absolute_uri(&scheme, &authority, PathAndQuery::from_static("/"))
            .expect("scheme, authority and path make a URI");
        let multiplexed = route.upstream_http2.then(|| {
            let connector = Connector {
                inner: https(true),
                ..connector.clone()
            };
            Multiplexed::new(connector, target.clone(), route.upstream_idle_timeout)
        });
        let pooled = Pooled::new(
            connector,
            target,
            &authority,
            route.upstream_idle_timeout,
            route.upstream_max_idle,
        );
        Ok(Upstream {
            pooled,
            multiplexed,
            scheme,
            authority,
            base_path: route.upstream.path.clone(),
            response_timeout: route.response_timeout,
        })
    }

    /// The upstream base path (see [`crate::route::upstream_path_and_query`]).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The absolute upstream URI for an already rewritten path and query.
    pub fn uri(&self, path_and_query: String) -> Result<Uri, GatewayError> {
        // Parsed in the string's own buffer, not copied into a new one.
        let path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(path_and_query))
            .map_err(|_| GatewayError::Malformed("request target cannot be forwarded"))?;
        absolute_uri(&self.scheme, &self.authority, path_and_query)
            .map_err(|e| GatewayError::Internal(e.into()))
    }

    /// Sends one request and waits for the response headers.
    ///
    /// `body_sent` resolves when the request body has been read to its end; the response
    /// deadline (`response_timeout`) starts then, so a long upload is never cut short.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
        body_sent: oneshot::Receiver<()>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let response_deadline = async {
            // An error means the body was dropped unfinished; the request fails on its own then,
            // but start the clock anyway so nothing waits forever.
            let _ = body_sent.await;
            tokio::time::sleep(self.response_timeout).await;
        };
        tokio::select! {
            result = self.dispatch(request) => result,
            () = response_deadline => Err(GatewayError::Upstream {
                kind: UpstreamFailure::ResponseTimeout,
                source: "no response headers within response_timeout".into(),
            }),
        }
    }

    /// Over the HTTP/2 connection when there is one, otherwise over a pooled one.
    async fn dispatch(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let request = match &self.multiplexed {
            Some(multiplexed) => match multiplexed.send(request).await {
                Sent::Done(result) => return result.map(|r| r.map(Either::Right)),
                Sent::Http1(request) => request,
            },
            None => request,
        };
        let response = self.pooled.send(request).await?;
        Ok(response.map(Either::Left))
    }
}

/// `scheme://authority` followed by `path_and_query`.
fn absolute_uri(
    scheme: &Scheme,
    authority: &Authority,
    path_and_query: PathAndQuery,
) -> Result<Uri, http::uri::InvalidUriParts> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts)
}

/// A failed attempt to open an upstream connection, already classified.
#[derive(Debug, thiserror::Error)]
#[error("upstream connection failed ({})", kind.label())]
pub struct ConnectError {
    pub kind: UpstreamFailure,
    #[source]
    pub source: BoxError,
}

impl ConnectError {
    /// Classifies an error of the TCP connector or of the TLS handshake.
    fn from_connector(source: BoxError) -> Self {
        let kind = connect_failure_kind(source.as_ref());
        ConnectError { kind, source }
    }
}

/// TLS failures surface as `io::Error`s wrapping a `rustls::Error` (hyper-rustls wraps that
/// once more), which `source()` does not reveal: look inside with `get_ref`.
fn connect_failure_kind(error: &(dyn std::error::Error + 'static)) -> UpstreamFailure {
    let mut io_kind = None;
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return UpstreamFailure::Tls;
        }
        cause = match e.downcast_ref::<io::Error>() {
            Some(io) => {
                if io.kind() != io::ErrorKind::Other {
                    io_kind = Some(io.kind());
                }
                io.get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static))
            }
            None => e.source(),
        };
    }
    match io_kind {
        // The peer hung up during the TLS handshake.
        Some(io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => UpstreamFailure::Tls,
        Some(io::ErrorKind::TimedOut) => UpstreamFailure::ConnectTimeout,
        _ => UpstreamFailure::Refused,
    }
}

/// hyper-rustls' connector under one deadline covering TCP connect and TLS handshake, with
/// every connection counted and the upstream's certificate expiry noted.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<ReadAheadConnector>,
    timeout: Duration,
    /// `fhirgate_upstream_connections{route}`.
    open: Gauge,
    /// `fhirgate_upstream_certificate_expiry_timestamp_seconds{route,host}`.
    certificate_expiry: Gauge,
    /// A connection opened for HTTP/2 on which the upstream chose HTTP/1.1: the pooled
    /// client's next connection, so it is not opened twice.
    parked: Arc<Mutex<Option<UpstreamStream>>>,
}

impl Connector {
    /// Keeps `stream` for the next [`tower_service::Service::call`].
    pub fn park(&self, stream: UpstreamStream) {
        *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
    }
}

/// An upstream connection as the connector makes it.
pub type UpstreamStream = Counted<MaybeHttpsStream<TokioIo<ReadAhead>>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<UpstreamStream, ConnectError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamStream;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(ConnectError::from_connector)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(stream) = self.parked.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Box::pin(std::future::ready(Ok(stream)));
        }
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        let open = self.open.clone();
        let certificate_expiry = self.certificate_expiry.clone();
        Box::pin(async move {
            let stream = match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result.map_err(ConnectError::from_connector)?,
                Err(elapsed) => {
                    return Err(ConnectError {
                        kind: UpstreamFailure::ConnectTimeout,
                        source: elapsed.into(),
                    });
                }
            };
            if let MaybeHttpsStream::Https(tls) = &stream
                && let Some(leaf) = tls
                    .inner()
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                && let Some(not_after) = crate::tls::not_after(leaf)
            {
                certificate_expiry.set(not_after);
            }
            open.inc();
            Ok(Counted {
                inner: stream,
                open,
            })
        })
    }
}

/// An upstream connection that counts itself open until the pool drops it.
pub struct Counted<S> {
    inner: S,
    open: Gauge,
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<S: Connection> Connection for Counted<S> {
    fn connected(&self) -> Connected {
        // Carries the negotiated ALPN protocol: the HTTP/2 connection checks the upstream chose h2.
        self.inner.connected()
    }
}

impl<S: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(error: io::Error) -> UpstreamFailure {
        connect_failure_kind(&error)
    }

    #[test]
    fn tls_errors_are_found_however_deeply_wrapped() {
        let rustls_error = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let once = io::Error::new(io::ErrorKind::InvalidData, rustls_error.clone());
        assert_eq!(kind(once), UpstreamFailure::Tls);
        // hyper-rustls wraps tokio-rustls' io::Error in another one.
        let twice = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, rustls_error));
        assert_eq!(kind(twice), UpstreamFailure::Tls);
    }

    #[test]
    fn socket_errors_are_classified_by_kind() {
        assert_eq!(
            kind(io::ErrorKind::ConnectionRefused.into()),
            UpstreamFailure::Refused
        );
        assert_eq!(
            kind(io::Error::other(io::Error::from(io::ErrorKind::TimedOut))),
            UpstreamFailure::ConnectTimeout
        );
        assert_eq!(
            kind(io::ErrorKind::UnexpectedEof.into()),
            UpstreamFailure::Tls
        );
        assert_eq!(
            kind(io::Error::other("dns error")),
            UpstreamFailure::Refused
        );
    }
}
