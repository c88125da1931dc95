//! Gateway-made errors: FHIR OperationOutcome, JSON or XML, with the request id and
//! nothing private in them.

mod common;

use common::*;
use http::Request;

#[tokio::test]
async fn outcome_is_json_by_default_and_carries_the_request_id() {
    let setup = Setup::new().await;
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let request = Request::get("/nowhere")
        .header("x-request-id", "trace-me-1")
        .body(empty())
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    assert_eq!(response.headers()["x-request-id"], "trace-me-1");
    let body = text_of(response).await;
    assert!(
        body.starts_with(r#"{"resourceType":"OperationOutcome""#),
        "{body}"
    );
    assert!(body.contains(r#""code":"not-found""#), "{body}");
    assert!(body.contains("trace-me-1"), "{body}");
}

#[tokio::test]
async fn outcome_is_xml_when_accept_or_format_asks() {
    let setup = Setup::new().await;
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http2).await;
    let by_accept = Request::get("/nowhere")
        .header("accept", "application/fhir+xml")
        .body(empty())
        .unwrap();
    let response = conn.send(by_accept).await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/fhir+xml; charset=utf-8"
    );
    let body = text_of(response).await;
    assert!(
        body.starts_with(r#"<OperationOutcome xmlns="http://hl7.org/fhir">"#),
        "{body}"
    );

    let by_format = conn.send(get("/nowhere?_format=xml")).await.unwrap();
    assert_eq!(
        by_format.headers()["content-type"],
        "application/fhir+xml; charset=utf-8"
    );
    assert!(
        text_of(by_format)
            .await
            .contains(r#"<code value="not-found"/>"#)
    );
}

#[tokio::test]
async fn upstream_failures_name_nothing_private() {
    // A route to a port nothing listens on, with a recognisable private name.
    let pki = Pki::new();
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    pki.write("private-ca.pem", &pki.private_ca.pem);
    let port = free_port();
    let toml = format!(
        r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"
[[routes]]
name = "dead"
public_base = "https://{PUBLIC_HOST}/dead"
upstream = "https://127.0.0.1:{port}/secret-private-path"
upstream_ca = "private-ca.pem"
"#
    );
    let gw = TestGateway::start(&pki, &toml).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let response = client.get("/dead/Patient/1", Proto::Http1).await;
    assert_eq!(response.status(), 502);
    let body = text_of(response).await;
    assert!(
        body.contains(r#""resourceType":"OperationOutcome""#),
        "{body}"
    );
    for private in [
        "127.0.0.1",
        &port.to_string(),
        "secret-private-path",
        "refused",
        "os error",
        "fhirgate.toml",
    ] {
        assert!(!body.contains(private), "body leaks {private:?}: {body}");
    }
}
