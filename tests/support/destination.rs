//! A real destination on 127.0.0.1: TLS with the private certificate (or plain HTTP for the
//! plaintext opt-in), HTTP/1.1 and HTTP/2 by ALPN through hyper-util's auto builder. It
//! records every request exactly as it received it, so tests can compare "client sent" with
//! "destination received".
//!
//! Behaviour by the path's last segment(s), under any prefix:
//!
//! | path | answer |
//! |---|---|
//! | (anything else) | 200, a small Patient, fixed test headers: two `Set-Cookie`, `WWW-Authenticate`, `ETag`, `Content-Location`, `Server`, `Date` |
//! | `/status/NNN` | status NNN with the destination's own OperationOutcome |
//! | `/download?bytes=N[&chunked=1]` | N bytes of [`PatternBody`] in 64 KiB frames, with `Content-Length` unless chunked |
//! | `/upload` | `"LEN SHA256HEX"` of the request body, hashed as it arrives |
//! | `/trailers` | `hello world` and a trailer field `x-checksum: abc123` |
//! | `/break[?length=N]` | 256 KiB of body (announcing N bytes if asked), then the stream is aborted |
//! | `/slow?ms=N` | waits N ms before the response head |
//! | `/early[?ms=N]` | 413 at once, before reading any of the request body; its body after N ms |
//! | `/token` | an OAuth token JSON body with `Cache-Control: no-store` |
//! | `/empty` | 204 |
//! | `/hop-by-hop` | 200 with hop-by-hop response fields (only meaningful over HTTP/1.1) |
//!
//! Every request header `x-reply-header: NAME: VALUE` makes the destination append
//! `NAME: VALUE` (raw bytes) to its response, so a test can have any field sent back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{BoxError, Leaf, hex, server_config, server_config_with_alpn};

/// The destination's own error body for `/status/NNN`.
pub const DESTINATION_OUTCOME: &str = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"destination's own"}]}"#;

/// The body of the default answer.
pub const PATIENT: &str = r#"{"resourceType":"Patient","id":"1"}"#;

/// The body of `/token`.
pub const TOKEN: &str =
    r#"{"access_token":"eyJhbGciOiJFUzI1NiJ9.tok.sig","token_type":"Bearer","expires_in":300}"#;

/// A request body as the destination received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySummary {
    pub len: u64,
    pub sha256: String,
}

impl BodySummary {
    pub fn of(bytes: &[u8]) -> BodySummary {
        BodySummary {
            len: bytes.len() as u64,
            sha256: hex(&Sha256::digest(bytes)),
        }
    }
}

/// What the destination received, as it received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, raw.
    pub target: String,
    pub version: http::Version,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: Option<String>,
    /// Every header line, in order, with raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The request body once it has ended; `None` while it arrives or if it broke off.
    pub body: Option<BodySummary>,
    /// The request body has ended, complete or broken off.
    pub ended: bool,
    /// Bytes of the request body received, complete or not.
    pub body_bytes: u64,
    /// Trailer fields of the request body, in order.
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl Received {
    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.all_raw(name)
            .into_iter()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .collect()
    }

    /// Every value of `name`, in order, as raw bytes.
    pub fn all_raw(&self, name: &str) -> Vec<Vec<u8>> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The one value of `name`, if any (fails the test if there are several).
    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }
}

/// How a destination departs from the defaults.
#[derive(Clone, Copy, Default)]
struct Tuning {
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`.
    max_streams: Option<u32>,
    /// An HTTP/1.1 connection waiting this long for a request head is closed.
    idle_close: Option<Duration>,
}

/// A real FHIR-ish destination on 127.0.0.1 that records every request.
pub struct Destination {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// TCP connections accepted (pooling shows as one connection for many requests).
    pub connections: Arc<AtomicUsize>,
    /// Connections that have ended.
    pub closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Destination {
    /// Serves TLS with `leaf`, HTTP/2 and HTTP/1.1 by ALPN.
    pub async fn start(leaf: &Leaf) -> Destination {
        Self::start_with(Some(server_config(leaf))).await
    }

    /// Serves TLS with `leaf`, HTTP/1.1 only (ALPN `http/1.1`): the hop where hop-by-hop
    /// fields exist at all.
    pub async fn start_http1(leaf: &Leaf) -> Destination {
        Self::start_with(Some(server_config_with_alpn(leaf, &[b"http/1.1"]))).await
    }

    /// Serves plain HTTP/1.1 and HTTP/2 (for the plaintext opt-in).
    pub async fn start_plain() -> Destination {
        Self::start_with(None).await
    }

    /// Serves TLS with `leaf` on a given port of 127.0.0.1 (e.g. one a route already names).
    pub async fn start_on(leaf: &Leaf, port: u16) -> Destination {
        Self::start_tuned(Some(server_config(leaf)), port, Tuning::default()).await
    }

    /// Serves TLS with `leaf`, HTTP/2 and HTTP/1.1 by ALPN, allowing at most `streams`
    /// concurrent HTTP/2 streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub async fn start_with_max_streams(leaf: &Leaf, streams: u32) -> Destination {
        let tuning = Tuning {
            max_streams: Some(streams),
            ..Tuning::default()
        };
        Self::start_tuned(Some(server_config(leaf)), 0, tuning).await
    }

    /// Serves TLS with `leaf`, HTTP/1.1 only, and closes a keep-alive connection that has
    /// waited `idle` for its next request, as nginx does after its `keepalive_timeout`.
    pub async fn start_http1_closing_idle_after(leaf: &Leaf, idle: Duration) -> Destination {
        let tls = server_config_with_alpn(leaf, &[b"http/1.1"]);
        Self::start_tuned(
            Some(tls),
            0,
            Tuning {
                idle_close: Some(idle),
                ..Tuning::default()
            },
        )
        .await
    }

    async fn start_with(tls: Option<rustls::ServerConfig>) -> Destination {
        Self::start_tuned(tls, 0, Tuning::default()).await
    }

    async fn start_tuned(
        tls: Option<rustls::ServerConfig>,
        port: u16,
        tuning: Tuning,
    ) -> Destination {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.map(|c| TlsAcceptor::from(Arc::new(c)));
        let (rec, conns, ended) = (received.clone(), connections.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (rec, acceptor, ended) = (rec.clone(), acceptor.clone(), ended.clone());
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req| respond(req, rec.clone()));
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Some(streams) = tuning.max_streams {
                        builder.http2().max_concurrent_streams(streams);
                    }
                    if let Some(idle) = tuning.idle_close {
                        builder
                            .http1()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(idle);
                    }
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Destination {
            addr,
            received,
            connections,
            closed,
            task,
        }
    }

    /// Serves TLS with `leaf`, HTTP/2 only, and ends every connection gracefully (GOAWAY)
    /// after its first exchange, as nginx does once a connection's `keepalive_requests`
    /// are used up.
    pub async fn start_closing_after_one(leaf: &Leaf) -> Destination {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let acceptor = TlsAcceptor::from(Arc::new(server_config_with_alpn(leaf, &[b"h2"])));
        let (rec, conns, ended) = (received.clone(), connections.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (rec, acceptor, ended) = (rec.clone(), acceptor.clone(), ended.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve_one_exchange(tls, rec).await;
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Destination {
            addr,
            received,
            connections,
            closed,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.requests()
            .pop()
            .expect("the destination received no request")
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn query_param(target: &str, name: &str) -> Option<u64> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Records the request head at once, then its body and trailers as they end (hashed as they
/// arrive, never collected), then answers by path.
/// Serves one HTTP/2 connection until its first response is made, then closes it gracefully.
async fn serve_one_exchange(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    received: Arc<Mutex<Vec<Received>>>,
) {
    let served = Arc::new(tokio::sync::Notify::new());
    let notify = served.clone();
    let service = service_fn(move |req| {
        let (received, notify) = (received.clone(), notify.clone());
        async move {
            let response = respond(req, received).await;
            notify.notify_one();
            response
        }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = served.notified() => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

async fn respond(
    req: Request<Incoming>,
    received: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<BoxBody<Bytes, BoxError>>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let index = {
        let mut all = received.lock().unwrap();
        all.push(Received {
            method: req.method().to_string(),
            target: target.clone(),
            version: req.version(),
            authority: req.uri().authority().map(|a| a.to_string()).or_else(|| {
                req.headers()
                    .get("host")
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            }),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: None,
            ended: false,
            body_bytes: 0,
            trailers: Vec::new(),
        });
        all.len() - 1
    };
    let replies: Vec<(HeaderName, HeaderValue)> = req
        .headers()
        .get_all("x-reply-header")
        .iter()
        .filter_map(|v| {
            let raw = v.as_bytes();
            let colon = raw.iter().position(|b| *b == b':')?;
            let name = HeaderName::from_bytes(&raw[..colon]).ok()?;
            let value = HeaderValue::from_bytes(raw[colon + 1..].trim_ascii_start()).ok()?;
            Some((name, value))
        })
        .collect();
    let path = req.uri().path().to_owned();
    let head = req.method() == http::Method::HEAD;
    if path.ends_with("/early") {
        // Refused by its headers, before any of the body is read; the response body comes
        // after `ms`. Once it has, hyper resets the rest of an HTTP/2 upload (or closes an
        // HTTP/1.1 connection).
        let wait = Duration::from_millis(query_param(&target, "ms").unwrap_or(0));
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = tx
                .send_data(Bytes::from_static(b"refused before the body"))
                .await;
        });
        let mut response = Response::new(body.boxed());
        *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        return Ok(response);
    }

    // The body, hashed as it arrives.
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut trailers = Vec::new();
    let mut complete = true;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            complete = false;
            break;
        };
        match frame.into_data() {
            Ok(data) => {
                len += data.len() as u64;
                hasher.update(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.extend(
                        t.iter()
                            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())),
                    );
                }
            }
        }
    }
    let summary = BodySummary {
        len,
        sha256: hex(&hasher.finalize()),
    };
    {
        let mut all = received.lock().unwrap();
        all[index].body = complete.then(|| summary.clone());
        all[index].ended = true;
        all[index].body_bytes = len;
        all[index].trailers = trailers;
    }

    let mut response = answer(&path, &target, &summary).await;
    if head {
        // A HEAD answer has the GET answer's head and no body (RFC 9110 §9.3.2); hyper's
        // HTTP/2 server would send the body anyway, so it is dropped here.
        let (mut parts, body) = response.into_parts();
        if let Some(length) = body.size_hint().exact() {
            parts
                .headers
                .entry("content-length")
                .or_insert(length.into());
        }
        response = Response::from_parts(
            parts,
            Empty::new().map_err(|e: Infallible| match e {}).boxed(),
        );
    }
    for (name, value) in replies {
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

async fn answer(
    path: &str,
    target: &str,
    upload: &BodySummary,
) -> Response<BoxBody<Bytes, BoxError>> {
    if path.ends_with("/download") {
        let body = PatternBody::new(query_param(target, "bytes").unwrap_or(0));
        if query_param(target, "chunked") == Some(1) {
            // No length announced: HTTP/1.1 sends it chunked.
            Response::new(body.unsized_body().boxed())
        } else {
            let mut r = Response::new(body.boxed());
            r.headers_mut().insert(
                "content-length",
                query_param(target, "bytes").unwrap_or(0).into(),
            );
            r
        }
    } else if path.ends_with("/upload") {
        text(&format!("{} {}", upload.len, upload.sha256))
    } else if path.ends_with("/trailers") {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let body = FramesBody(vec![
            Frame::data(Bytes::from_static(b"hello ")),
            Frame::data(Bytes::from_static(b"world")),
            Frame::trailers(trailers),
        ]);
        let mut r = Response::new(body.boxed());
        r.headers_mut()
            .insert("trailer", "x-checksum".parse().unwrap());
        r
    } else if path.ends_with("/break") {
        // 256 KiB, a pause so the head and those bytes are surely on their way, then abort.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        tokio::spawn(async move {
            for _ in 0..4 {
                if tx.send_data(Bytes::from(vec![b'x'; 65536])).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.abort("destination broke off".into());
        });
        let mut r = Response::new(body.boxed());
        if let Some(length) = query_param(target, "length") {
            // Announce more than will ever come.
            r.headers_mut().insert("content-length", length.into());
        }
        r
    } else if path.ends_with("/big-head") {
        // A response head of about `bytes` bytes: fields of 4,000 bytes each, then `x-last`.
        let mut r = text("big head");
        let fields = query_param(target, "bytes").unwrap_or(0) / 4000;
        for i in 0..fields {
            let value = HeaderValue::from_str(&format!("{i:04}").repeat(1000)).unwrap();
            r.headers_mut().append("x-big", value);
        }
        r.headers_mut().insert("x-last", "end".parse().unwrap());
        r
    } else if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_millis(
            query_param(target, "ms").unwrap_or(1000),
        ))
        .await;
        text("slow")
    } else if let Some(code) = path
        .rsplit_once("/status/")
        .and_then(|(_, c)| c.parse::<u16>().ok())
    {
        let mut r = text(DESTINATION_OUTCOME);
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        r.headers_mut()
            .insert("content-type", "application/fhir+json".parse().unwrap());
        r
    } else if path.ends_with("/token") {
        let mut r = text(TOKEN);
        r.headers_mut()
            .insert("cache-control", "no-store".parse().unwrap());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    } else if path.ends_with("/empty") {
        let mut r = Response::new(Empty::new().map_err(|e: Infallible| match e {}).boxed());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    } else if path.ends_with("/hop-by-hop") {
        let mut r = text("hop");
        let h = r.headers_mut();
        for (name, value) in [
            ("connection", "X-Resp-Hop"),
            ("connection", "x-resp-hop-2"),
            ("x-resp-hop", "dropped"),
            ("x-resp-hop-2", "dropped"),
            ("keep-alive", "timeout=5, max=100"),
            ("proxy-authenticate", r#"Basic realm="proxy""#),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "kept"),
        ] {
            h.append(name, value.parse().unwrap());
        }
        r
    } else {
        let mut r = text(PATIENT);
        let h = r.headers_mut();
        h.append(
            "set-cookie",
            "session=abc; Path=/; Secure; HttpOnly".parse().unwrap(),
        );
        h.append("set-cookie", "pref=xyz; Path=/".parse().unwrap());
        h.insert(
            "www-authenticate",
            r#"Bearer realm="fhir", error="invalid_token""#.parse().unwrap(),
        );
        h.insert("etag", r#"W/"3""#.parse().unwrap());
        h.insert(
            "content-location",
            "https://fhir.example.org/dest-a/Patient/1/_history/3"
                .parse()
                .unwrap(),
        );
        h.insert("server", "test-destination/1.0".parse().unwrap());
        h.insert("date", "Tue, 01 Jan 2030 00:00:00 GMT".parse().unwrap());
        h.insert("content-type", "application/fhir+json".parse().unwrap());
        h.insert("x-destination", "yes".parse().unwrap());
        r
    }
}

fn text(s: &str) -> Response<BoxBody<Bytes, BoxError>> {
    Response::new(
        Full::new(Bytes::from(s.to_owned()))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    )
}

/// `n` bytes of a fixed pattern, in 64 KiB frames, generated as it goes (one shared 64 KiB
/// chunk, sliced: nothing is ever held whole).
pub struct PatternBody {
    remaining: u64,
    chunk: Bytes,
    exact_size: bool,
}

impl PatternBody {
    pub fn new(n: u64) -> PatternBody {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        PatternBody {
            remaining: n,
            chunk: Bytes::from(chunk),
            exact_size: true,
        }
    }

    /// The same bytes without announcing their length: HTTP/1.1 sends them chunked.
    pub fn unsized_body(mut self) -> PatternBody {
        self.exact_size = false;
        self
    }

    /// SHA-256 of the first `n` bytes of the pattern.
    pub fn sha256(n: u64) -> String {
        let mut body = PatternBody::new(n);
        let mut hasher = Sha256::new();
        while body.remaining > 0 {
            let take = body.remaining.min(body.chunk.len() as u64) as usize;
            hasher.update(&body.chunk[..take]);
            body.remaining -= take as u64;
        }
        hex(&hasher.finalize())
    }

    pub fn summary(n: u64) -> BodySummary {
        BodySummary {
            len: n,
            sha256: PatternBody::sha256(n),
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let take = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= take as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..take)))))
    }

    fn is_end_stream(&self) -> bool {
        self.exact_size && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_size {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Frames given in advance (data then trailers).
pub struct FramesBody(pub Vec<Frame<Bytes>>);

impl Body for FramesBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.0.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(self.0.remove(0))))
        }
    }
}
