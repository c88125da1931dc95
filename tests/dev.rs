//! `fhirgate dev`: one command, no files; the printed CA file and URLs work as printed,
//! through the gateway to the sample destination, and Ctrl-C / SIGTERM stops it cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_the_sample_destination_through_the_gateway() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["dev", "--port", &port.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let printed: Vec<String> = stdout
        .by_ref()
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("Press Ctrl-C"))
        .collect();
    let printed = printed.join("\n");
    let ca_file = printed
        .split_whitespace()
        .find(|w| w.ends_with("public-ca.pem"))
        .unwrap_or_else(|| panic!("no CA file in:\n{printed}"));
    let base = format!("https://localhost:{port}/fhir");
    assert!(
        printed.contains(&format!("curl --cacert {ca_file} {base}/metadata")),
        "{printed}"
    );
    let ca = std::fs::read_to_string(ca_file).unwrap();

    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::new(&ca, addr);
    let host = format!("localhost:{port}");
    let mut conn = client.connect("localhost", Proto::Http1).await;
    let mut send = async |request: Request<ClientBody>| {
        let mut request = request;
        request.headers_mut().insert("host", host.parse().unwrap());
        conn.send(request).await.unwrap()
    };

    let metadata = send(get("/fhir/metadata")).await;
    assert_eq!(metadata.status(), 200);
    assert!(text_of(metadata).await.contains("CapabilityStatement"));

    let patient = send(get("/fhir/Patient/example")).await;
    assert_eq!(patient.headers()["content-type"], "application/fhir+json");
    assert!(text_of(patient).await.contains(r#""id":"example""#));
    let xml = send(get("/fhir/Patient/example?_format=xml")).await;
    assert!(
        text_of(xml)
            .await
            .starts_with("<Patient xmlns=\"http://hl7.org/fhir\">")
    );

    let bundle = text_of(send(get("/fhir/Patient?name=chalmers")).await).await;
    assert!(
        bundle.contains(&format!(r#""fullUrl":"{base}/Patient/example""#)),
        "{bundle}"
    );

    let refused = send(get("/fhir/Observation/protected")).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Bearer realm="sample""#
    );
    text_of(refused).await;
    let token_response = send(
        Request::post("/fhir/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full("grant_type=client_credentials"))
            .unwrap(),
    )
    .await;
    let token_body = text_of(token_response).await;
    let token = token_body
        .split(r#""access_token":""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no token in {token_body}"))
        .to_owned();
    let allowed = send(
        Request::get("/fhir/Observation/protected")
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(allowed.status(), 200);
    text_of(allowed).await;

    let kickoff = send(
        Request::get("/fhir/$export")
            .header("prefer", "respond-async")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(kickoff.status(), 202);
    assert_eq!(
        kickoff.headers()["content-location"],
        format!("{base}/bulkstatus/1").as_str()
    );
    text_of(kickoff).await;
    let manifest = text_of(send(get("/fhir/bulkstatus/1")).await).await;
    assert!(
        manifest.contains(&format!("{base}/bulkfiles/patients.ndjson")),
        "{manifest}"
    );
    let download = send(get("/fhir/bulkfiles/patients.ndjson")).await;
    assert_eq!(
        download.headers()["content-type"],
        "application/fhir+ndjson"
    );
    let ndjson = download.into_body().collect().await.unwrap().to_bytes();
    assert!(ndjson.len() > 2 << 20, "only {} bytes", ndjson.len());
    assert!(
        ndjson
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .all(|l| l.starts_with(br#"{"resourceType":"Patient""#))
    );

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("fhirgate dev did not stop within 5 s of Ctrl-C")
    });
    assert!(status.success(), "{status:?}");
    assert!(
        !std::path::Path::new(ca_file).exists(),
        "the temporary folder was left behind"
    );
}
