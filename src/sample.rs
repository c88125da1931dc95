//! A **sample** FHIR destination, for `fhirgate dev` and for trying the gateway out.
//!
//! It is deliberately tiny and fake: a handful of canned resources, an OAuth-style token
//! endpoint that hands out random bearer tokens, one protected read, and the bulk-data
//! async pattern (`Prefer: respond-async` → 202 → poll → NDJSON download). It is not a FHIR
//! server; it only shows what passes through the gateway unchanged.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_LOCATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The private base path the sample serves under.
pub const BASE_PATH: &str = "/fhir";

/// Patients in the sample bulk export file (about 3 MB of NDJSON).
const EXPORT_PATIENTS: u64 = 20_000;

type SampleBody = UnsyncBoxBody<Bytes, Infallible>;

/// A running sample destination.
pub struct SampleDestination {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SampleDestination {
    /// Serves HTTPS (HTTP/1.1 and HTTP/2) on `addr` with `tls`. `public_base` is the URL
    /// clients reach it by through the gateway, used in links it returns (the gateway never
    /// rewrites bodies, so the destination must know its public URL).
    pub async fn start(
        addr: SocketAddr,
        mut tls: rustls::ServerConfig,
        public_base: String,
    ) -> std::io::Result<SampleDestination> {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            public_base,
            tokens: Mutex::new(HashSet::new()),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.respond(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(SampleDestination { addr, task })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

struct State {
    public_base: String,
    /// Bearer tokens this sample has issued.
    tokens: Mutex<HashSet<String>>,
}

impl State {
    async fn respond(&self, req: Request<Incoming>) -> Response<SampleBody> {
        let Some(path) = req.uri().path().strip_prefix(BASE_PATH) else {
            return not_found();
        };
        let path = path.to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/metadata") => {
                fhir_json(StatusCode::OK, CAPABILITY_STATEMENT.to_owned())
            }
            (&Method::GET, "/Patient/example") => {
                if wants_xml(&req, &query) {
                    let mut r = full(StatusCode::OK, PATIENT_XML.to_owned());
                    r.headers_mut()
                        .insert(CONTENT_TYPE, "application/fhir+xml".parse().unwrap());
                    r
                } else {
                    fhir_json(StatusCode::OK, PATIENT_JSON.to_owned())
                }
            }
            (&Method::GET, "/Patient") => self.search(&query),
            (&Method::GET, "/.well-known/smart-configuration") => json(
                StatusCode::OK,
                format!(
                    r#"{{"token_endpoint":"{base}/token","grant_types_supported":["client_credentials"],"capabilities":["client-confidential-symmetric"]}}"#,
                    base = self.public_base
                ),
            ),
            (&Method::POST, "/token") => {
                // Drain the form body; a sample accepts any client.
                let _ = req.into_body().collect().await;
                let token = uuid::Uuid::new_v4().simple().to_string();
                self.tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(token.clone());
                let mut r = json(
                    StatusCode::OK,
                    format!(
                        r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":300}}"#
                    ),
                );
                r.headers_mut()
                    .insert(CACHE_CONTROL, "no-store".parse().unwrap());
                r
            }
            (&Method::GET, "/Observation/protected") => self.protected(&req),
            (&Method::GET, "/$export") => {
                let async_requested = req
                    .headers()
                    .get_all("prefer")
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| v.contains("respond-async")));
                if !async_requested {
                    return outcome(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        "$export needs Prefer: respond-async",
                    );
                }
                let mut r = full(StatusCode::ACCEPTED, String::new());
                r.headers_mut().insert(
                    CONTENT_LOCATION,
                    format!("{}/bulkstatus/1", self.public_base)
                        .parse()
                        .unwrap(),
                );
                r
            }
            (&Method::GET, "/bulkstatus/1") => json(
                StatusCode::OK,
                format!(
                    r#"{{"transactionTime":"2026-01-01T00:00:00Z","request":"{base}/$export","requiresAccessToken":false,"output":[{{"type":"Patient","url":"{base}/bulkfiles/patients.ndjson"}}],"error":[]}}"#,
                    base = self.public_base
                ),
            ),
            (&Method::GET, "/bulkfiles/patients.ndjson") => {
                let mut r = Response::new(PatientLines { next: 0 }.boxed_unsync());
                r.headers_mut()
                    .insert(CONTENT_TYPE, "application/fhir+ndjson".parse().unwrap());
                r
            }
            _ => not_found(),
        }
    }

    fn search(&self, query: &str) -> Response<SampleBody> {
        let name = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("name="))
            .unwrap_or("");
        let matches = name.is_empty() || "chalmers peter".contains(&name.to_ascii_lowercase());
        let entries = if matches {
            format!(
                r#"[{{"fullUrl":"{base}/Patient/example","resource":{PATIENT_JSON},"search":{{"mode":"match"}}}}]"#,
                base = self.public_base
            )
        } else {
            "[]".to_owned()
        };
        fhir_json(
            StatusCode::OK,
            format!(
                r#"{{"resourceType":"Bundle","type":"searchset","total":{total},"link":[{{"relation":"self","url":"{base}/Patient?{query}"}}],"entry":{entries}}}"#,
                total = usize::from(matches),
                base = self.public_base,
            ),
        )
    }

    fn protected(&self, req: &Request<Incoming>) -> Response<SampleBody> {
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let valid = token.is_some_and(|t| {
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(t)
        });
        if valid {
            return fhir_json(StatusCode::OK, OBSERVATION_JSON.to_owned());
        }
        let mut r = outcome(
            StatusCode::UNAUTHORIZED,
            "login",
            "a bearer token from /token is required",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            r#"Bearer realm="sample""#.parse().unwrap(),
        );
        r
    }
}

fn wants_xml(req: &Request<Incoming>, query: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv.starts_with("_format=") && kv.contains("xml"))
        || req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("xml") && !v.contains("json"))
}

fn full(status: StatusCode, body: String) -> Response<SampleBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, body: String) -> Response<SampleBody> {
    let mut r = full(status, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

fn fhir_json(status: StatusCode, body: String) -> Response<SampleBody> {
    let mut r = full(status, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, "application/fhir+json".parse().unwrap());
    r
}

fn outcome(status: StatusCode, code: &str, text: &str) -> Response<SampleBody> {
    fhir_json(
        status,
        format!(
            r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"{code}","diagnostics":"sample destination: {text}"}}]}}"#
        ),
    )
}

fn not_found() -> Response<SampleBody> {
    outcome(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such resource in this sample",
    )
}

/// Generated NDJSON Patient lines, one frame per line batch: never held whole.
struct PatientLines {
    next: u64,
}

impl Body for PatientLines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next >= EXPORT_PATIENTS {
            return Poll::Ready(None);
        }
        let mut chunk = String::with_capacity(64 * 1024);
        while self.next < EXPORT_PATIENTS && chunk.len() < 60 * 1024 {
            let n = self.next;
            chunk.push_str(&format!(
                r#"{{"resourceType":"Patient","id":"p{n}","active":true,"name":[{{"family":"Sample{n}","given":["Pat"]}}],"gender":"unknown","birthDate":"1970-01-01","meta":{{"tag":[{{"code":"sample-data"}}]}}}}"#
            ));
            chunk.push('\n');
            self.next += 1;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= EXPORT_PATIENTS
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

const CAPABILITY_STATEMENT: &str = r#"{"resourceType":"CapabilityStatement","status":"active","date":"2026-01-01","kind":"instance","software":{"name":"fhirgate sample destination"},"fhirVersion":"4.0.1","format":["json","xml"],"rest":[{"mode":"server","resource":[{"type":"Patient","interaction":[{"code":"read"},{"code":"search-type"}]},{"type":"Observation","interaction":[{"code":"read"}]}],"operation":[{"name":"export","definition":"http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]}]}"#;

const PATIENT_JSON: &str = r#"{"resourceType":"Patient","id":"example","active":true,"name":[{"use":"official","family":"Chalmers","given":["Peter","James"]}],"gender":"male","birthDate":"1974-12-25"}"#;

const PATIENT_XML: &str = r#"<Patient xmlns="http://hl7.org/fhir"><id value="example"/><active value="true"/><name><use value="official"/><family value="Chalmers"/><given value="Peter"/><given value="James"/></name><gender value="male"/><birthDate value="1974-12-25"/></Patient>"#;

const OBSERVATION_JSON: &str = r#"{"resourceType":"Observation","id":"protected","status":"final","code":{"text":"Sample protected observation"},"valueString":"only with a token"}"#;
