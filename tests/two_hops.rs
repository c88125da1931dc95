//! The delegated-intermediary scenario of the IG: client → gateway A → gateway B →
//! destination, each hop its own TLS connection, with the same pass-through guarantees.

mod common;

use common::*;
use http::Request;

#[tokio::test]
async fn gateway_to_gateway_to_destination() {
    // Hop 2: gateway B, holding the certificate of B's name, forwards to the destination.
    let setup = Setup::new().await; // B: public name fhir.example.org, route /dest-a → destination /fhir
    let pki = &setup.pki;
    // Hop 1: gateway A on the public edge, for "edge.example.org", forwarding to B's
    // listener. B's certificate is issued by the public CA, so that is A's upstream_ca.
    pki.write_leaf("edge", &pki.public_ca.issue(&["edge.example.org"]));
    pki.write("b-ca.pem", &pki.public_ca.pem);
    // There is no name resolution for test names, so A reaches B by IP: B's certificate
    // also covers 127.0.0.1, and B's route is for host 127.0.0.1 (A sends no SNI for an
    // IP, so B routes by Host, which A sets to B's authority).
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST, "127.0.0.1"]));
    let b = TestGateway::start(
        pki,
        &format!(
            r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"
[[routes]]
name = "dest-a"
public_base = "https://127.0.0.1/dest-a"
upstream = "https://localhost:{}/fhir"
upstream_ca = "private-ca.pem"
"#,
            setup.destination.addr.port()
        ),
    )
    .await;
    let a = TestGateway::start(
        pki,
        &format!(
            r#"
[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "edge.pem"
  key = "edge.key"
[[routes]]
name = "to-b"
public_base = "https://edge.example.org/org-x"
upstream = "https://127.0.0.1:{b}/dest-a"
upstream_ca = "b-ca.pem"
[[routes]]
name = "to-b-nowhere"
public_base = "https://edge.example.org/org-y"
upstream = "https://127.0.0.1:{b}/not-routed-by-b"
upstream_ca = "b-ca.pem"
"#,
            b = b.addr.port()
        ),
    )
    .await;

    let client = Client::new(&pki.public_ca.pem, a.addr);
    for proto in [Proto::Http1, Proto::Http2] {
        let mut conn = client.connect("edge.example.org", proto).await;
        let request = Request::get("https://edge.example.org/org-x/Patient/1?_id=1")
            .header("host", "edge.example.org")
            .header("authorization", "Bearer TWO-HOP-TOKEN")
            .header("x-request-id", "two-hops-1")
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 200, "{proto:?}");
        let cookies: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies.len(), 2);
        assert_eq!(response.headers()["server"], "test-destination/1.0");
        assert_eq!(response.headers()["x-request-id"], "two-hops-1");
        assert_eq!(
            text_of(response).await,
            r#"{"resourceType":"Patient","id":"1"}"#
        );

        let got = setup.destination.last();
        assert_eq!(got.target, "/fhir/Patient/1?_id=1");
        assert_eq!(got.one("authorization").unwrap(), "Bearer TWO-HOP-TOKEN");
        assert_eq!(got.one("x-request-id").unwrap(), "two-hops-1");
        // Each hop appended its own Forwarded element and Via entry.
        let forwarded = got.all("forwarded");
        assert_eq!(forwarded.len(), 2, "{forwarded:?}");
        assert!(
            forwarded[0].ends_with("host=edge.example.org"),
            "{forwarded:?}"
        );
        assert_eq!(got.all("via").len(), 2);
    }

    // A refuses what it must itself; an error made by B passes through A unchanged.
    let mut conn = client.connect("edge.example.org", Proto::Http1).await;
    let request = Request::get("/org-x/../x")
        .header("host", "edge.example.org")
        .body(empty())
        .unwrap();
    assert_eq!(conn.send(request).await.unwrap().status(), 400);
    let request = Request::get("/org-y/Patient/1")
        .header("host", "edge.example.org")
        .header("x-request-id", "made-by-b")
        .body(empty())
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_eq!(response.status(), 404);
    let body = text_of(response).await;
    assert!(
        body.contains("OperationOutcome") && body.contains("made-by-b"),
        "{body}"
    );
}
