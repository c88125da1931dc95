//! A real client: TLS to the gateway's address with the server name (SNI) the test chooses
//! — or none — and HTTP/1.1 or HTTP/2 by ALPN, with hyper's connection-level client on top,
//! so one test can hold one connection and see whether it is reused.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{BodySummary, ClientBody, PUBLIC_HOST, bounded, client_config, hex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

pub const BOTH: [Proto; 2] = [Proto::Http1, Proto::Http2];

impl Proto {
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Proto::Http1 => &[b"http/1.1"],
            Proto::Http2 => &[b"h2"],
        }
    }

    pub fn version(self) -> http::Version {
        match self {
            Proto::Http1 => http::Version::HTTP_11,
            Proto::Http2 => http::Version::HTTP_2,
        }
    }
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

    /// Opens a TLS connection presenting `sni` (or none) and offering `alpn`.
    pub async fn tls(
        &self,
        sni: Option<&str>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut config = client_config(&self.ca_pem, alpn);
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
            None => {
                // No SNI: skip name verification (the test checks which certificate the
                // gateway presented, not whether it is trusted for a name).
                config.enable_sni = false;
                config
                    .dangerous()
                    .set_certificate_verifier(Arc::new(NoVerify));
                ServerName::try_from(PUBLIC_HOST.to_owned()).unwrap()
            }
        };
        self.tls_with(config, name).await
    }

    /// Opens a TLS connection with a configuration the test made (e.g. TLS 1.2 only).
    pub async fn tls_with(
        &self,
        config: rustls::ClientConfig,
        name: ServerName<'static>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        bounded("TLS handshake with the gateway", async {
            let tcp = TcpStream::connect(self.addr).await?;
            TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
        })
        .await
    }

    /// A new connection with `sni`, speaking `proto`.
    pub async fn connect(&self, sni: &str, proto: Proto) -> Conn {
        let tls = self
            .tls(Some(sni), proto.alpn())
            .await
            .expect("TLS handshake with the gateway");
        Conn::over(tls, proto).await
    }

    /// One GET for `path` on a new connection to `PUBLIC_HOST`.
    pub async fn get(&self, path: &str, proto: Proto) -> Response<Incoming> {
        let mut conn = self.connect(PUBLIC_HOST, proto).await;
        conn.send(get(path))
            .await
            .expect("response from the gateway")
    }
}

impl Conn {
    /// Whether the gateway has closed the connection (or sent HTTP/2 GOAWAY).
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }

    /// Waits (bounded by [`TIMEOUT`]) until the gateway has closed the connection.
    pub async fn closed(&self) {
        bounded("the gateway closing the connection", async {
            while !self.is_closed() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// HTTP over an established TLS stream.
    pub async fn over(tls: TlsStream<TcpStream>, proto: Proto) -> Conn {
        let io = TokioIo::new(tls);
        match proto {
            Proto::Http1 => {
                let (send, conn) = bounded(
                    "HTTP/1.1 handshake",
                    hyper::client::conn::http1::handshake(io),
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                Conn::H1(send)
            }
            Proto::Http2 => {
                let (send, conn) = bounded(
                    "HTTP/2 handshake",
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io),
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                Conn::H2(send)
            }
        }
    }

    /// Sends `req` (to `PUBLIC_HOST` unless it names a host) and waits, bounded, for the
    /// response head.
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
                bounded("sending an HTTP/1.1 request", async {
                    s.ready().await?;
                    s.send_request(req).await
                })
                .await
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
                bounded("sending an HTTP/2 request", async {
                    s.ready().await?;
                    s.send_request(req).await
                })
                .await
            }
        }
    }
}

/// A GET request for `path` with no body.
pub fn get(path: &str) -> Request<ClientBody> {
    Request::get(path).body(empty()).unwrap()
}

/// A GET for `path` addressed to `host`, the way `proto` carries it (`Host` for HTTP/1.1,
/// `:authority` for HTTP/2).
pub fn get_from(host: &str, path: &str, proto: Proto) -> http::request::Builder {
    match proto {
        Proto::Http1 => Request::get(path).header("host", host),
        Proto::Http2 => Request::get(format!("https://{host}{path}")),
    }
}

pub fn empty() -> ClientBody {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// Reads a whole (small) body as text, bounded.
pub async fn text_of(response: Response<Incoming>) -> String {
    let bytes = bounded("reading a response body", response.into_body().collect())
        .await
        .expect("a complete response body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads a body frame by frame, hashing it (never holding it whole). `Err` carries how many
/// bytes arrived before the body failed.
pub async fn hash_body(response: Response<Incoming>) -> Result<BodySummary, (u64, hyper::Error)> {
    let mut body = response.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    loop {
        let frame = tokio::time::timeout(super::TIMEOUT, body.frame())
            .await
            .unwrap_or_else(|_| panic!("the body stalled after {len} bytes"));
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    hasher.update(data);
                }
            }
            Some(Err(e)) => return Err((len, e)),
        }
    }
    Ok(BodySummary {
        len,
        sha256: hex(&hasher.finalize()),
    })
}

/// Every value of `name` in a response, in order, as text.
pub fn header_lines(response: &Response<Incoming>, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Accepts any server certificate: only for the "no SNI" tests, which check which
/// certificate the gateway presented, not whether it is trusted.
#[derive(Debug)]
pub struct NoVerify;

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
pub fn presented_names(tls: &TlsStream<TcpStream>) -> Vec<String> {
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
