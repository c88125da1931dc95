//! Gateway-made errors: FHIR OperationOutcome, JSON or XML, with the request id and
//! nothing private in them.

mod support;

use http::Request;
use support::*;

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
    write_usual_files(&pki);
    let port = free_port();
    let listener = listener_toml("127.0.0.1:0");
    let toml = format!(
        r#"{listener}
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

/// One case of the contract's error table: what the client sent, over which route.
struct Case {
    what: &'static str,
    host: &'static str,
    path: &'static str,
    status: u16,
    code: &'static str,
}

#[tokio::test]
async fn every_gateway_made_error_is_an_outcome_with_the_request_id_and_nothing_private() {
    // Routes to every kind of upstream failure, all with recognisable private details.
    let pki = Pki::new();
    let wrong_name = Destination::start(&pki.private_ca.issue(&["elsewhere.internal"])).await;
    let slow = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let refused_port = free_port();
    pki.write_leaf(
        "public",
        &pki.public_ca.issue(&[PUBLIC_HOST, "other.example.org"]),
    );
    pki.write("private-ca.pem", &pki.private_ca.pem);
    let route = |name: &str, port: u16, extra: &str| {
        format!(
            r#"
[[routes]]
name = "{name}"
public_base = "https://{PUBLIC_HOST}/{name}"
upstream = "https://localhost:{port}/private-base-path"
upstream_ca = "private-ca.pem"
{extra}
"#
        )
    };
    let toml = [
        listener_toml("127.0.0.1:0"),
        route("refused", refused_port, ""),
        route("tls", wrong_name.addr.port(), ""),
        route("silent", silent_port, r#"connect_timeout = "300ms""#),
        route("slow", slow.addr.port(), r#"response_timeout = "300ms""#),
    ]
    .concat();
    let gw = TestGateway::start(&pki, &toml).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let private_ports = [
        refused_port,
        wrong_name.addr.port(),
        silent_port,
        slow.addr.port(),
    ]
    .map(|p| p.to_string());

    let cases = [
        Case {
            what: "dot-segment",
            host: PUBLIC_HOST,
            path: "/slow/../refused",
            status: 400,
            code: "invalid",
        },
        Case {
            what: "no route",
            host: PUBLIC_HOST,
            path: "/nowhere",
            status: 404,
            code: "not-found",
        },
        Case {
            what: "SNI and Host disagree",
            host: "other.example.org",
            path: "/slow/x",
            status: 421,
            code: "security",
        },
        Case {
            what: "refused",
            host: PUBLIC_HOST,
            path: "/refused/Patient/1",
            status: 502,
            code: "transient",
        },
        Case {
            what: "TLS verification",
            host: PUBLIC_HOST,
            path: "/tls/Patient/1",
            status: 502,
            code: "security",
        },
        Case {
            what: "connect timeout",
            host: PUBLIC_HOST,
            path: "/silent/Patient/1",
            status: 504,
            code: "timeout",
        },
        Case {
            what: "response timeout",
            host: PUBLIC_HOST,
            path: "/slow/slow?ms=3000",
            status: 504,
            code: "timeout",
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        for proto in BOTH {
            for xml in [false, true] {
                let id = format!("case-{i}-{proto:?}-{xml}");
                let mut conn = client.connect(PUBLIC_HOST, proto).await;
                let mut request = get_from(case.host, case.path, proto)
                    .header("x-request-id", &id)
                    .header("authorization", "Bearer SECRET-TOKEN");
                if xml {
                    request = request.header("accept", "application/fhir+xml");
                }
                let response = conn.send(request.body(empty()).unwrap()).await.unwrap();
                let context = format!("{} ({proto:?}, xml {xml})", case.what);
                assert_eq!(response.status().as_u16(), case.status, "{context}");
                assert_eq!(response.headers()["x-request-id"], id.as_str(), "{context}");
                let content_type = response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let body = text_of(response).await;
                if xml {
                    assert!(
                        content_type.starts_with("application/fhir+xml"),
                        "{context}: {content_type}"
                    );
                    assert!(body.starts_with("<OperationOutcome"), "{context}: {body}");
                    assert!(
                        body.contains(&format!(r#"<code value="{}"/>"#, case.code)),
                        "{context}: {body}"
                    );
                } else {
                    assert!(
                        content_type.starts_with("application/fhir+json"),
                        "{context}: {content_type}"
                    );
                    let json: serde_json::Value = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("{context}: not JSON ({e}): {body}"));
                    assert_eq!(json["resourceType"], "OperationOutcome", "{context}");
                    assert_eq!(json["issue"][0]["severity"], "error", "{context}");
                    assert_eq!(json["issue"][0]["code"], case.code, "{context}");
                }
                assert!(body.contains(&id), "{context}: no request id in {body}");
                let mut private: Vec<&str> = vec![
                    "localhost",
                    "127.0.0.1",
                    "private-base-path",
                    "elsewhere.internal",
                    "private-ca.pem",
                    "fhirgate.toml",
                    "SECRET-TOKEN",
                    "os error",
                    "rustls",
                    "hyper",
                    "InvalidCertificate",
                    "NotValidForName",
                ];
                private.extend(private_ports.iter().map(String::as_str));
                for word in private {
                    assert!(
                        !body.contains(word),
                        "{context}: the body names {word:?}: {body}"
                    );
                }
            }
        }
    }
    assert!(wrong_name.requests().is_empty());
    hold.abort();
}

#[tokio::test]
async fn a_generated_request_id_is_the_same_in_header_and_body() {
    let setup = Setup::new().await;
    for proto in BOTH {
        let response = setup.client().get("/nowhere", proto).await;
        assert_eq!(response.status(), 404);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!id.is_empty() && id.len() <= 128, "{id}");
        let body = text_of(response).await;
        assert!(body.contains(&id), "{proto:?}: {id} not in {body}");
    }
}

#[tokio::test]
async fn format_parameter_and_accept_choose_the_outcome_format() {
    let setup = Setup::new().await;
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let cases: [(&str, Option<&str>, &str); 6] = [
        ("/nowhere?_format=application/fhir%2Bxml", None, "xml"),
        ("/nowhere?_format=text/xml", None, "xml"),
        (
            "/nowhere?_format=json",
            Some("application/fhir+xml"),
            "json",
        ),
        ("/nowhere", Some("application/fhir+json"), "json"),
        (
            "/nowhere",
            Some("application/fhir+xml;q=0.9, application/fhir+json;q=0.1"),
            "xml",
        ),
        ("/nowhere", Some("*/*"), "json"),
    ];
    for (path, accept, expected) in cases {
        let mut request = Request::get(path);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = conn.send(request.body(empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 404);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with(&format!("application/fhir+{expected}")),
            "{path} Accept {accept:?}: {content_type}"
        );
        text_of(response).await;
    }
}
