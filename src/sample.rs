//! A **sample** FHIR destination, for `fhirgate dev` and for tests. Not a FHIR server.
//!
//! It is deliberately tiny and fake: a few canned resources, an OAuth-style token endpoint
//! that hands out random bearer tokens, one read that needs such a token, and the bulk-data
//! async pattern (`Prefer: respond-async` → 202 → poll → streamed NDJSON download). Its only
//! job is to show what passes through the gateway unchanged, so it answers the way a real
//! destination behind an intermediary must: every link it returns uses its **public** base
//! URL, because the gateway never rewrites bodies or `Content-Location` (IG use cases).
//!
//! Served under [`BASE_PATH`] on its private address:
//!
//! | request | answer |
//! |---|---|
//! | `GET /metadata` | a minimal CapabilityStatement |
//! | `GET /Patient/example` | a Patient, JSON, or XML on `_format=xml` / `Accept: …xml` |
//! | `GET /Patient?name=…` | a searchset Bundle whose `fullUrl`s use the public base |
//! | `GET /.well-known/smart-configuration` | SMART discovery, `token_endpoint` on the public base |
//! | `POST /token` | `{"access_token":…,"token_type":"Bearer","expires_in":300}`, `Cache-Control: no-store` |
//! | `GET /Observation/protected` | needs `Authorization: Bearer <issued token>`, else 401 |
//! | `GET /$export` + `Prefer: respond-async` | 202, `Content-Location: <public>/bulkstatus/1` |
//! | `GET /bulkstatus/1` | the export manifest, output `<public>/bulkfiles/patients.ndjson` |
//! | `GET /bulkfiles/patients.ndjson` | about 3.7 MB of generated Patients, streamed |
//! | anything else | 404 OperationOutcome |

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_LOCATION, CONTENT_TYPE, HeaderValue, PRAGMA,
    WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// The private base path the sample serves under.
pub const BASE_PATH: &str = "/fhir";

/// Patients in the bulk export file: about 3.7 MB of NDJSON, enough to see it stream.
const EXPORT_PATIENTS: u64 = 20_000;

type SampleBody = UnsyncBoxBody<Bytes, Infallible>;

/// A running sample destination. Dropping it (or [`stop`](Self::stop)) closes the listener
/// and every open connection.
pub struct SampleDestination {
    /// The bound address (the port is the real one when started on port 0).
    pub addr: SocketAddr,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    task: JoinHandle<()>,
}

impl SampleDestination {
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for SampleDestination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on `addr` with `tls`, its private certificate.
/// `public_base` is the URL clients reach it by through the gateway
/// (`https://localhost:8443/fhir`); every link it returns is built on it.
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
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve(stream, acceptor.clone(), state.clone()));
                    }
                    // Out of file descriptors and the like: back off rather than spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(SampleDestination { addr, task })
}

async fn serve(stream: TcpStream, acceptor: TlsAcceptor, state: Arc<State>) {
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.respond(request).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

struct State {
    /// The destination's public FHIR base URL, as the originator sees it.
    public_base: String,
    /// Bearer tokens this sample has issued (they never expire: it is a sample).
    tokens: Mutex<HashSet<String>>,
}

impl State {
    async fn respond(&self, request: Request<Incoming>) -> Response<SampleBody> {
        let Some(path) = request.uri().path().strip_prefix(BASE_PATH) else {
            return not_found();
        };
        let base = &self.public_base;
        match (request.method(), path) {
            (&Method::GET, "/metadata") => fhir_json(StatusCode::OK, capability_statement()),
            (&Method::GET, "/Patient/example") if wants_xml(&request) => {
                with_type(full(StatusCode::OK, PATIENT_XML), "application/fhir+xml")
            }
            (&Method::GET, "/Patient/example") => fhir_json(StatusCode::OK, patient()),
            (&Method::GET, "/Patient") => self.search(request.uri().query().unwrap_or("")),
            (&Method::GET, "/.well-known/smart-configuration") => json(
                StatusCode::OK,
                json!({
                    "token_endpoint": format!("{base}/token"),
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post"],
                    "capabilities": ["client-confidential-symmetric"],
                }),
            ),
            (&Method::POST, "/token") => self.token(request).await,
            (&Method::GET, "/Observation/protected") => self.protected(&request),
            (&Method::GET, "/$export") => export_kickoff(&request, base),
            (&Method::GET, "/bulkstatus/1") => json(
                StatusCode::OK,
                json!({
                    "transactionTime": crate::clock::rfc3339(crate::clock::unix_now()),
                    "request": format!("{base}/$export"),
                    "requiresAccessToken": false,
                    "output": [{"type": "Patient", "url": format!("{base}/bulkfiles/patients.ndjson")}],
                    "error": [],
                }),
            ),
            (&Method::GET, "/bulkfiles/patients.ndjson") => with_type(
                Response::new(PatientLines { next: 0 }.boxed_unsync()),
                "application/fhir+ndjson",
            ),
            _ => not_found(),
        }
    }

    /// FHIR string search: case-insensitive prefix match on any part of the name.
    fn search(&self, query: &str) -> Response<SampleBody> {
        let name = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("name="))
            .unwrap_or("")
            .to_ascii_lowercase();
        let matches = ["chalmers", "peter", "james"]
            .iter()
            .any(|part| part.starts_with(&name));
        let base = &self.public_base;
        let entries: Vec<Value> = if matches {
            vec![json!({
                "fullUrl": format!("{base}/Patient/example"),
                "resource": patient(),
                "search": {"mode": "match"},
            })]
        } else {
            Vec::new()
        };
        fhir_json(
            StatusCode::OK,
            json!({
                "resourceType": "Bundle",
                "type": "searchset",
                "total": entries.len(),
                "link": [{"relation": "self", "url": format!("{base}/Patient?{query}")}],
                "entry": entries,
            }),
        )
    }

    /// A token endpoint that trusts everyone: reads (and ignores) the form body.
    async fn token(&self, request: Request<Incoming>) -> Response<SampleBody> {
        let _ = request.into_body().collect().await;
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone());
        let mut response = json(
            StatusCode::OK,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": 300}),
        );
        // RFC 6749 §5.1: token responses must not be cached.
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        response
    }

    fn protected(&self, request: &Request<Incoming>) -> Response<SampleBody> {
        let token = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
            .map(|(_, token)| token.trim());
        let challenge = match token {
            Some(token)
                if self
                    .tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(token) =>
            {
                return fhir_json(StatusCode::OK, observation());
            }
            // RFC 6750 §3.1: no error code when the request carried no token at all.
            None => r#"Bearer realm="sample""#,
            Some(_) => r#"Bearer realm="sample", error="invalid_token""#,
        };
        let mut response = outcome(
            StatusCode::UNAUTHORIZED,
            "login",
            "a bearer token from /token is required",
        );
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }
}

/// Bulk Data kick-off: only the async pattern is offered.
fn export_kickoff(request: &Request<Incoming>, base: &str) -> Response<SampleBody> {
    let respond_async = request
        .headers()
        .get_all("prefer")
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("respond-async")));
    if !respond_async {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "$export needs Prefer: respond-async",
        );
    }
    let mut response = full(StatusCode::ACCEPTED, "");
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/bulkstatus/1")) {
        response.headers_mut().insert(CONTENT_LOCATION, location);
    }
    response
}

/// FHIR `_format` (any xml flavour) wins over `Accept`.
fn wants_xml(request: &Request<Incoming>) -> bool {
    let query = request.uri().query().unwrap_or("");
    if let Some(format) = query.split('&').find_map(|p| p.strip_prefix("_format=")) {
        return format.contains("xml");
    }
    request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("xml") && !v.contains("json"))
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<SampleBody> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn with_type(
    mut response: Response<SampleBody>,
    content_type: &'static str,
) -> Response<SampleBody> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON body, with a final newline so `curl` output ends cleanly in a terminal.
fn json_body(status: StatusCode, value: Value) -> Response<SampleBody> {
    full(status, format!("{value}\n"))
}

fn json(status: StatusCode, value: Value) -> Response<SampleBody> {
    with_type(json_body(status, value), "application/json")
}

fn fhir_json(status: StatusCode, value: Value) -> Response<SampleBody> {
    with_type(json_body(status, value), "application/fhir+json")
}

fn outcome(status: StatusCode, code: &str, text: &str) -> Response<SampleBody> {
    fhir_json(
        status,
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": format!("sample destination: {text}")}],
        }),
    )
}

fn not_found() -> Response<SampleBody> {
    outcome(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such resource in this sample",
    )
}

fn capability_statement() -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": "fhirgate sample destination"},
        "fhirVersion": "4.0.1",
        "format": ["json", "xml"],
        "rest": [{
            "mode": "server",
            "resource": [
                {"type": "Patient", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [{"name": "name", "type": "string"}]},
                {"type": "Observation", "interaction": [{"code": "read"}]},
            ],
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}],
        }],
    })
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "example",
        "active": true,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
    })
}

const PATIENT_XML: &str = concat!(
    r#"<Patient xmlns="http://hl7.org/fhir"><id value="example"/><active value="true"/>"#,
    r#"<name><use value="official"/><family value="Chalmers"/><given value="Peter"/><given value="James"/></name>"#,
    r#"<gender value="male"/><birthDate value="1974-12-25"/></Patient>"#,
    "\n"
);

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "protected",
        "status": "final",
        "code": {"text": "Sample protected observation"},
        "valueString": "only with a token",
    })
}

/// Generated NDJSON Patient lines, made a batch at a time as the client reads: the file is
/// never held whole, so the download shows the gateway streaming.
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
        if self.is_end_stream() {
            return Poll::Ready(None);
        }
        let mut batch = String::with_capacity(64 * 1024);
        while self.next < EXPORT_PATIENTS && batch.len() < 60 * 1024 {
            let n = self.next;
            let _ = writeln!(
                batch,
                r#"{{"resourceType":"Patient","id":"p{n}","meta":{{"tag":[{{"code":"sample-data"}}]}},"active":true,"name":[{{"family":"Sample{n}","given":["Pat"]}}],"gender":"unknown","birthDate":"1970-01-01"}}"#
            );
            self.next += 1;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(batch)))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= EXPORT_PATIENTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_export_file_is_a_few_megabytes_of_patient_lines() {
        let body = PatientLines { next: 0 }.collect().await.unwrap().to_bytes();
        assert!(body.len() > 3 << 20, "{} bytes", body.len());
        let lines: Vec<&[u8]> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len() as u64, EXPORT_PATIENTS);
        for line in [lines[0], lines[lines.len() - 1]] {
            let patient: Value = serde_json::from_slice(line).unwrap();
            assert_eq!(patient["resourceType"], "Patient");
        }
    }
}
