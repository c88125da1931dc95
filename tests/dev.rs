//! `fhirgate dev`: one command, no files. Started as a process, it prints a CA file and curl
//! commands; the URLs it prints work as printed, through the gateway to the sample
//! destination, and SIGTERM (as Ctrl-C) stops it cleanly and removes its temporary folder.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::{ClientBody, client_config, empty, free_port, full};

/// The child process, killed if the test fails before it is stopped.
struct DevProcess(Child);

impl Drop for DevProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `fhirgate dev --port PORT` and returns it with what it printed up to
/// "Press Ctrl-C to stop.".
fn start_dev(port: u16) -> (DevProcess, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["dev", "--port", &port.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("fhirgate dev starts");
    let stdout = child.stdout.take().unwrap();
    let child = DevProcess(child);
    // A thread reads standard output to its end, so the test can give up after a bounded
    // time and the pipe never fills.
    let (lines, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    loop {
        let line = printed
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!("fhirgate dev printed no curl commands; it printed:\n{text}")
            });
        text.push_str(&line);
        text.push('\n');
        if line.starts_with("Press Ctrl-C") {
            return (child, text);
        }
    }
}

/// The URLs of the printed curl commands, quotes removed.
fn printed_urls(printed: &str) -> Vec<String> {
    printed
        .lines()
        .filter(|l| l.trim_start().starts_with("curl") || l.trim_start().starts_with("TOKEN="))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.trim_matches('\'').starts_with("https://"))
                .map(|w| w.trim_matches('\'').to_owned())
        })
        .collect()
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, ClientBody>;

/// A client like curl's: it resolves `localhost` itself, trusts only the printed CA, and
/// negotiates HTTP/2 or HTTP/1.1.
fn https_client(ca_pem: &str) -> HttpsClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(ca_pem, &[]))
        .https_only()
        .enable_all_versions()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn send(client: &HttpsClient, request: Request<ClientBody>) -> (Response<()>, Bytes) {
    let uri = request.uri().clone();
    let response = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("{uri}: {e:?}"));
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), body)
}

fn get(url: &str) -> Request<ClientBody> {
    Request::get(url).body(empty()).unwrap()
}

fn text(body: &Bytes) -> &str {
    std::str::from_utf8(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_the_sample_destination_through_the_gateway_as_printed() {
    let port = free_port();
    let (mut child, printed) = start_dev(port);
    let ca_file = printed
        .split_whitespace()
        .find(|w| w.ends_with("public-ca.pem"))
        .unwrap_or_else(|| panic!("no CA file in:\n{printed}"))
        .to_owned();
    let base = format!("https://localhost:{port}/fhir");
    assert!(
        printed.contains(&format!("curl --cacert {ca_file} {base}/metadata\n")),
        "{printed}"
    );

    // Every URL printed is one this test requests, so the instructions cannot drift.
    let mut expected = vec![
        format!("{base}/metadata"),
        format!("{base}/Patient/example"),
        format!("{base}/Patient/example?_format=xml"),
        format!("{base}/Patient?name=chalmers"),
        format!("{base}/.well-known/smart-configuration"),
        format!("{base}/Observation/protected"),
        format!("{base}/token"),
        format!("{base}/Observation/protected"),
        format!("{base}/$export"),
        format!("{base}/bulkstatus/1"),
        format!("{base}/bulkfiles/patients.ndjson"),
    ];
    let mut urls = printed_urls(&printed);
    urls.sort();
    expected.sort();
    assert_eq!(urls, expected, "{printed}");

    let client = https_client(&std::fs::read_to_string(&ca_file).unwrap());

    // Client sent a capabilities read; client saw the destination's CapabilityStatement.
    let (metadata, body) = send(&client, get(&format!("{base}/metadata"))).await;
    assert_eq!(metadata.status(), StatusCode::OK);
    assert_eq!(metadata.headers()["content-type"], "application/fhir+json");
    assert!(text(&body).contains(r#""resourceType":"CapabilityStatement""#));

    // A read as JSON, then as XML by `_format` and by `Accept`.
    let (patient, body) = send(&client, get(&format!("{base}/Patient/example"))).await;
    assert_eq!(patient.status(), StatusCode::OK);
    assert_eq!(patient.headers()["content-type"], "application/fhir+json");
    assert!(text(&body).contains(r#""id":"example""#));
    let (xml, body) = send(&client, get(&format!("{base}/Patient/example?_format=xml"))).await;
    assert_eq!(xml.headers()["content-type"], "application/fhir+xml");
    assert!(text(&body).starts_with(r#"<Patient xmlns="http://hl7.org/fhir">"#));
    let by_accept = Request::get(format!("{base}/Patient/example"))
        .header("accept", "application/fhir+xml")
        .body(empty())
        .unwrap();
    let (_, body) = send(&client, by_accept).await;
    assert!(text(&body).starts_with("<Patient"), "{}", text(&body));

    // A search: the destination wrote its public base into the Bundle, unchanged.
    let (_, bundle) = send(&client, get(&format!("{base}/Patient?name=chalmers"))).await;
    let bundle: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(
        bundle["entry"][0]["fullUrl"],
        format!("{base}/Patient/example")
    );

    // SMART discovery names the token endpoint on the public base.
    let (_, smart) = send(
        &client,
        get(&format!("{base}/.well-known/smart-configuration")),
    )
    .await;
    let smart: serde_json::Value = serde_json::from_slice(&smart).unwrap();
    assert_eq!(smart["token_endpoint"], format!("{base}/token"));

    // Without a token: 401 and the destination's challenge, passed through.
    let (refused, _) = send(&client, get(&format!("{base}/Observation/protected"))).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Bearer realm="sample""#
    );

    // The token endpoint's body and Cache-Control reach the client untouched.
    let token_request = Request::post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full("grant_type=client_credentials"))
        .unwrap();
    let (token_response, body) = send(&client, token_request).await;
    assert_eq!(token_response.status(), StatusCode::OK);
    assert_eq!(token_response.headers()["cache-control"], "no-store");
    let token: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 300);
    let token = token["access_token"].as_str().unwrap();
    let with_token = Request::get(format!("{base}/Observation/protected"))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let (allowed, body) = send(&client, with_token).await;
    assert_eq!(allowed.status(), StatusCode::OK);
    assert!(text(&body).contains(r#""resourceType":"Observation""#));

    // Bulk export: kick-off → 202 + Content-Location → manifest → streamed NDJSON.
    let kickoff = Request::get(format!("{base}/$export"))
        .header("prefer", "respond-async")
        .body(empty())
        .unwrap();
    let (accepted, _) = send(&client, kickoff).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let status_url = accepted.headers()["content-location"].to_str().unwrap();
    assert_eq!(status_url, format!("{base}/bulkstatus/1"));
    let (_, manifest) = send(&client, get(status_url)).await;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let output_url = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(output_url, format!("{base}/bulkfiles/patients.ndjson"));
    let (download, ndjson) = send(&client, get(output_url)).await;
    assert_eq!(
        download.headers()["content-type"],
        "application/fhir+ndjson"
    );
    assert!(ndjson.len() > 3 << 20, "only {} bytes", ndjson.len());
    let lines: Vec<&[u8]> = ndjson
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert!(lines.len() > 10_000);
    for line in lines {
        assert!(line.starts_with(br#"{"resourceType":"Patient""#));
    }

    // An unknown path: the destination's own 404 OperationOutcome.
    let (missing, body) = send(&client, get(&format!("{base}/Nothing/here"))).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(text(&body).contains("OperationOutcome"));
    drop(client);

    // Where curl exists, the printed block is also run as printed, in a shell.
    if Path::new("/usr/bin/curl").exists() {
        run_printed_commands(&printed, &base);
    } else {
        eprintln!("no /usr/bin/curl: the printed commands were checked with the Rust client only");
    }

    // SIGTERM, as a container stop or Ctrl-C: a clean exit, the temporary folder gone.
    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "fhirgate dev did not stop within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let dir = Path::new(&ca_file).parent().unwrap();
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

/// Runs the printed block (comments included) with `sh`, exactly as a person would paste it.
fn run_printed_commands(printed: &str, base: &str) {
    let script: String = printed
        .lines()
        .skip_while(|l| !l.starts_with("Try"))
        .skip(1)
        .take_while(|l| !l.starts_with("Press Ctrl-C"))
        .map(|l| format!("{l}\n"))
        .collect();
    let output = Command::new("sh")
        .args(["-e", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script}\n{stdout}\n{stderr}");
    let lower = stdout.to_ascii_lowercase();
    for expected in [
        r#""resourceType":"CapabilityStatement""#.to_owned(),
        r#"<Patient xmlns="http://hl7.org/fhir">"#.to_owned(),
        format!(r#""fullUrl":"{base}/Patient/example""#),
        format!(r#""token_endpoint":"{base}/token""#),
        r#"www-authenticate: Bearer realm="sample""#.to_owned(),
        r#""resourceType":"Observation""#.to_owned(),
        format!("content-location: {base}/bulkstatus/1"),
        format!(r#""url":"{base}/bulkfiles/patients.ndjson""#),
    ] {
        assert!(
            lower.contains(&expected.to_ascii_lowercase()),
            "{expected} not in the output of\n{script}\n{stdout}\n{stderr}"
        );
    }
    assert_eq!(
        stdout.lines().last().map(str::trim),
        Some("20000"),
        "{stdout}"
    );
}
