//! Shared harness for the integration tests: a test PKI made with rcgen at run time, a real
//! TLS destination that records what it received, a gateway started in-process (or as a
//! child process), and a real HTTP client whose SNI and address are chosen separately.
//!
//! Tests read as "client sent / destination received / client saw".

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ClientBody = BoxBody<Bytes, BoxError>;

/// The public host name the gateway's listener certificate is for.
pub const PUBLIC_HOST: &str = "fhir.example.org";

// ---------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------

/// A certificate authority made at test time.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA issued by this one.
    pub fn intermediate(&self, name: &str) -> (Ca, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pem = cert.pem();
        (
            Ca {
                pem: pem.clone(),
                issuer: Issuer::new(params, key),
            },
            pem,
        )
    }

    /// A server certificate that expires `days` from now.
    pub fn issue_expiring_in(&self, names: &[&str], days: i64) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate valid now for `names` (DNS names or IP literals).
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_valid(names, 2020, 2099)
    }

    /// A server certificate that expired in 2021.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        self.issue_valid(names, 2020, 2021)
    }

    fn issue_valid(&self, names: &[&str], from_year: i32, until_year: i32) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.not_before = rcgen::date_time_ymd(from_year, 1, 1);
        params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Everything a typical test needs: a public CA for the listener, a private CA for the
/// destination, and a folder for files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub public_ca: Ca,
    pub private_ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            public_ca: Ca::new("Test public CA"),
            private_ca: Ca::new("Test private CA"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes `leaf` as `NAME.pem` / `NAME.key`.
    pub fn write_leaf(&self, name: &str, leaf: &Leaf) {
        self.write(&format!("{name}.pem"), &leaf.cert_pem);
        self.write(&format!("{name}.key"), &leaf.key_pem);
    }
}

pub fn server_config(leaf: &Leaf) -> rustls::ServerConfig {
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

// ---------------------------------------------------------------------------------------
// Destination
// ---------------------------------------------------------------------------------------

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
}

impl Received {
    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

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

/// A real FHIR-ish destination on 127.0.0.1 that records every request.
pub struct Destination {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Destination {
    /// Serves TLS with `leaf` (HTTP/1.1 and HTTP/2 by ALPN).
    pub async fn start(leaf: &Leaf) -> Destination {
        Self::start_with(Some(server_config(leaf))).await
    }

    /// Serves plain HTTP/1.1 and HTTP/2 (for the plaintext opt-in).
    pub async fn start_plain() -> Destination {
        Self::start_with(None).await
    }

    async fn start_with(tls: Option<rustls::ServerConfig>) -> Destination {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.map(|c| TlsAcceptor::from(Arc::new(c)));
        let (rec, conns) = (received.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (rec, acceptor) = (rec.clone(), acceptor.clone());
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req| respond(req, rec.clone()));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
                });
            }
        });
        Destination {
            addr,
            received,
            connections,
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
}

fn query_param(target: &str, name: &str) -> Option<u64> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Destination behaviour by path ending (any prefix).
async fn respond(
    req: Request<Incoming>,
    received: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<BoxBody<Bytes, BoxError>>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    received.lock().unwrap().push(Received {
        method: req.method().to_string(),
        target: target.clone(),
        version: req.version(),
        authority: req.uri().authority().map(|a| a.to_string()).or_else(|| {
            req.headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_owned())
        }),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
    });
    let path = req.uri().path().to_owned();
    let response = if path.ends_with("/download") {
        let n = query_param(&target, "bytes").unwrap_or(0);
        let mut r = Response::new(PatternBody::new(n).boxed());
        if query_param(&target, "chunked") != Some(1) {
            r.headers_mut().insert("content-length", n.into());
        }
        r
    } else if path.ends_with("/upload") {
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                len += data.len() as u64;
                hasher.update(data);
            }
        }
        text(&format!("{len} {}", hex(&hasher.finalize())))
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
        Response::new(body.boxed())
    } else if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_millis(
            query_param(&target, "ms").unwrap_or(1000),
        ))
        .await;
        text("slow")
    } else if let Some(code) = path
        .rsplit_once("/status/")
        .and_then(|(_, c)| c.parse::<u16>().ok())
    {
        let mut r = text(
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"destination's own"}]}"#,
        );
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        r.headers_mut()
            .insert("content-type", "application/fhir+json".parse().unwrap());
        r
    } else if path.ends_with("/token") {
        let mut r = text(
            r#"{"access_token":"eyJhbGciOiJFUzI1NiJ9.tok.sig","token_type":"Bearer","expires_in":300}"#,
        );
        r.headers_mut()
            .insert("cache-control", "no-store".parse().unwrap());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    } else if path.ends_with("/empty") {
        let mut r = Response::new(Empty::new().map_err(|e: Infallible| match e {}).boxed());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    } else {
        let mut r = text(r#"{"resourceType":"Patient","id":"1"}"#);
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
    };
    Ok(response)
}

fn text(s: &str) -> Response<BoxBody<Bytes, BoxError>> {
    Response::new(
        Full::new(Bytes::from(s.to_owned()))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` bytes of a fixed pattern, in 64 KiB frames, generated as it goes.
pub struct PatternBody {
    remaining: u64,
    chunk: Bytes,
}

impl PatternBody {
    pub fn new(n: u64) -> PatternBody {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        PatternBody {
            remaining: n,
            chunk: Bytes::from(chunk),
        }
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
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Frames given in advance (data then trailers).
struct FramesBody(Vec<Frame<Bytes>>);

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

// ---------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------

/// A gateway started in-process from a TOML text written into the PKI's folder.
pub struct TestGateway {
    pub gateway: Option<fhirgate::server::Gateway>,
    pub addr: SocketAddr,
}

impl TestGateway {
    pub async fn start(pki: &Pki, toml: &str) -> TestGateway {
        let path = pki.write("fhirgate.toml", toml);
        let config = fhirgate::config::Config::parse(toml, &path).unwrap_or_else(|e| panic!("{e}"));
        let first = config.listeners[0].name.clone();
        let gateway = fhirgate::server::Gateway::start(config)
            .await
            .unwrap_or_else(|e| panic!("{}", fhirgate::proxy::ErrorChain(&e)));
        let addr = gateway.local_addr(&first).unwrap();
        TestGateway {
            gateway: Some(gateway),
            addr,
        }
    }

    pub fn addr_of(&self, listener: &str) -> SocketAddr {
        self.gateway.as_ref().unwrap().local_addr(listener).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
    }
}

/// The usual set-up: a destination with a private certificate for `localhost`, a listener
/// certificate for `fhir.example.org`, and one route `/dest-a` → `/fhir`.
pub struct Setup {
    pub pki: Pki,
    pub destination: Destination,
    pub gateway: TestGateway,
}

impl Setup {
    pub async fn new() -> Setup {
        Self::with_route_extra("").await
    }

    /// `extra` is appended to the `[[routes]]` table of `dest-a`.
    pub async fn with_route_extra(extra: &str) -> Setup {
        let pki = Pki::new();
        let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
        pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
        pki.write("private-ca.pem", &pki.private_ca.pem);
        let toml = format!(
            r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"

[[routes]]
name = "dest-a"
public_base = "https://{PUBLIC_HOST}/dest-a"
upstream = "https://localhost:{port}/fhir"
upstream_ca = "private-ca.pem"
{extra}
"#,
            port = destination.addr.port()
        );
        let gateway = TestGateway::start(&pki, &toml).await;
        Setup {
            pki,
            destination,
            gateway,
        }
    }

    /// A client for the public listener, trusting the public CA.
    pub fn client(&self) -> Client {
        Client::new(&self.pki.public_ca.pem, self.gateway.addr)
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// A real HTTP client: TLS to `addr` with the SNI it is told, HTTP/1.1 or HTTP/2 by ALPN.
#[derive(Clone)]
pub struct Client {
    ca_pem: String,
    addr: SocketAddr,
}

/// One open client connection.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<ClientBody>),
    H2(hyper::client::conn::http2::SendRequest<ClientBody>),
}

impl Client {
    pub fn new(ca_pem: &str, addr: SocketAddr) -> Client {
        Client {
            ca_pem: ca_pem.to_owned(),
            addr,
        }
    }

    /// Opens a TLS connection presenting `sni` (or none) and returns the TLS stream.
    pub async fn tls(
        &self,
        sni: Option<&str>,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut config = client_config(&self.ca_pem, alpn);
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
            None => {
                // No SNI: connect by IP and skip name verification (only the chain is tested elsewhere).
                config.enable_sni = false;
                config
                    .dangerous()
                    .set_certificate_verifier(Arc::new(NoVerify));
                ServerName::try_from(PUBLIC_HOST.to_owned()).unwrap()
            }
        };
        let tcp = TcpStream::connect(self.addr).await?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    pub async fn connect(&self, sni: &str, proto: Proto) -> Conn {
        let alpn: &[&[u8]] = match proto {
            Proto::Http1 => &[b"http/1.1"],
            Proto::Http2 => &[b"h2"],
        };
        let tls = self
            .tls(Some(sni), alpn)
            .await
            .expect("TLS handshake with the gateway");
        let io = TokioIo::new(tls);
        match proto {
            Proto::Http1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                Conn::H1(send)
            }
            Proto::Http2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                Conn::H2(send)
            }
        }
    }

    /// One request on a new connection to `PUBLIC_HOST`.
    pub async fn get(&self, path: &str, proto: Proto) -> Response<Incoming> {
        let mut conn = self.connect(PUBLIC_HOST, proto).await;
        conn.send(get(path))
            .await
            .expect("response from the gateway")
    }
}

impl Conn {
    pub async fn send(
        &mut self,
        mut req: Request<ClientBody>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Conn::H1(s) => {
                if !req.headers().contains_key("host") {
                    req.headers_mut()
                        .insert("host", PUBLIC_HOST.parse().unwrap());
                }
                s.ready().await?;
                s.send_request(req).await
            }
            Conn::H2(s) => {
                if req.uri().authority().is_none() {
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or("/".into());
                    *req.uri_mut() = format!("https://{PUBLIC_HOST}{pq}").parse().unwrap();
                }
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// A GET request for `path` with no body.
pub fn get(path: &str) -> Request<ClientBody> {
    Request::get(path).body(empty()).unwrap()
}

pub fn empty() -> ClientBody {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// Reads a whole (small) body as text.
pub async fn text_of(response: Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Accepts any server certificate: only for the "no SNI" test, which checks which
/// certificate the gateway presented, not whether it is trusted.
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// DNS names of the leaf certificate a TLS connection presented.
pub fn presented_names(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<String> {
    let leaf = &tls.get_ref().1.peer_certificates().expect("a certificate")[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().expect("SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Waits until `addr` accepts TCP, for a child-process gateway (bounded).
pub async fn wait_for_port(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr} after 10 s");
}

/// A port that was free a moment ago (for a gateway run as a child process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn config_dir(pki: &Pki) -> &Path {
    pki.dir.path()
}
