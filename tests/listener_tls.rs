//! Listener TLS: certificate by SNI, no SNI → first, unknown SNI refused, minimum version,
//! ALPN h2 and http/1.1, keep-alive, several listeners.

mod support;

use support::*;

async fn two_certificate_gateway(min_tls: &str) -> (Pki, TestGateway) {
    let pki = Pki::new();
    pki.write_leaf("first", &pki.public_ca.issue(&["first.example.org"]));
    pki.write_leaf(
        "second",
        &pki.public_ca
            .issue(&["second.example.org", "*.tenants.example.org"]),
    );
    pki.write("private-ca.pem", &pki.private_ca.pem);
    let toml = format!(
        r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
min_tls_version = "{min_tls}"
  [[listeners.certificates]]
  cert = "first.pem"
  key = "first.key"
  [[listeners.certificates]]
  cert = "second.pem"
  key = "second.key"
[[listeners]]
name = "second-listener"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "second.pem"
  key = "second.key"
[[routes]]
name = "r"
public_base = "https://first.example.org/"
upstream = "https://localhost:1/fhir"
upstream_ca = "private-ca.pem"
"#
    );
    let gw = TestGateway::start(&pki, &toml).await;
    (pki, gw)
}

#[tokio::test]
async fn certificate_is_chosen_by_sni() {
    let (pki, gw) = two_certificate_gateway("1.2").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let first = client.tls(Some("first.example.org"), &[]).await.unwrap();
    assert_eq!(presented_names(&first), ["first.example.org"]);
    let second = client.tls(Some("second.example.org"), &[]).await.unwrap();
    assert_eq!(
        presented_names(&second),
        ["second.example.org", "*.tenants.example.org"]
    );
    let wildcard = client
        .tls(Some("acme.tenants.example.org"), &[])
        .await
        .unwrap();
    assert_eq!(presented_names(&wildcard)[0], "second.example.org");
}

#[tokio::test]
async fn no_sni_gets_the_first_certificate() {
    let (pki, gw) = two_certificate_gateway("1.2").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let tls = client.tls(None, &[]).await.unwrap();
    assert_eq!(presented_names(&tls), ["first.example.org"]);
}

#[tokio::test]
async fn unknown_sni_fails_the_handshake_with_unrecognized_name() {
    let (pki, gw) = two_certificate_gateway("1.2").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for name in ["third.example.org", "a.b.tenants.example.org"] {
        let error = client
            .tls(Some(name), &[])
            .await
            .expect_err("handshake must fail");
        let text = format!("{error:?}");
        assert!(
            text.contains("UnrecognisedName") || text.contains("UnrecognizedName"),
            "{name}: {text}"
        );
    }
}

/// Client offering only TLS 1.2.
fn tls12_only(pki: &Pki) -> rustls::ClientConfig {
    client_config_versions(&pki.public_ca.pem, &[], &[&rustls::version::TLS12])
}

fn first_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("first.example.org").unwrap()
}

#[tokio::test]
async fn minimum_tls_version_is_enforced() {
    let (pki, gw) = two_certificate_gateway("1.3").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let result = client.tls_with(tls12_only(&pki), first_name()).await;
    assert!(
        result.is_err(),
        "a TLS 1.2-only client was accepted by a 1.3 listener"
    );
    // The same listener accepts TLS 1.3.
    let tls = client.tls(Some("first.example.org"), &[]).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn tls12_is_accepted_by_default() {
    let (pki, gw) = two_certificate_gateway("1.2").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let tls = client
        .tls_with(tls12_only(&pki), first_name())
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    // And a modern client gets TLS 1.3.
    let tls = client.tls(Some("first.example.org"), &[]).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn alpn_offers_h2_and_http11() {
    let (pki, gw) = two_certificate_gateway("1.2").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let h2 = client
        .tls(Some("first.example.org"), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h1 = client
        .tls(Some("first.example.org"), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client that offers no ALPN at all is served HTTP/1.1.
    let none = client.tls(Some("first.example.org"), &[]).await.unwrap();
    assert_eq!(none.get_ref().1.alpn_protocol(), None);
}

#[tokio::test]
async fn a_client_without_alpn_is_served_http11() {
    let setup = Setup::new().await;
    let tls = setup.client().tls(Some(PUBLIC_HOST), &[]).await.unwrap();
    let mut conn = Conn::over(tls, Proto::Http1).await;
    let response = conn.send(get("/dest-a/Patient/1")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(text_of(response).await, PATIENT);
}

#[tokio::test]
async fn http2_streams_run_concurrently_on_one_connection() {
    let setup = Setup::new().await;
    let conn = setup.client().connect(PUBLIC_HOST, Proto::Http2).await;
    let Conn::H2(send) = conn else { unreachable!() };
    // Ten exchanges at once on one connection, one of them slow: the others do not wait.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let path = if i == 0 {
                "https://fhir.example.org/dest-a/slow?ms=1500".to_owned()
            } else {
                format!("https://fhir.example.org/dest-a/Patient/{i}")
            };
            let request = http::Request::get(path).body(empty()).unwrap();
            let response = bounded("an HTTP/2 exchange", send.send_request(request))
                .await
                .unwrap();
            let status = response.status();
            let elapsed = started.elapsed();
            text_of(response).await;
            (i, status, elapsed)
        }));
    }
    for task in tasks {
        let (i, status, elapsed) = task.await.unwrap();
        assert_eq!(status, 200, "stream {i}");
        if i != 0 {
            assert!(
                elapsed < std::time::Duration::from_millis(1200),
                "stream {i} waited for the slow one: {elapsed:?}"
            );
        }
    }
    assert_eq!(setup.destination.requests().len(), 10);
}

#[tokio::test]
async fn both_protocols_are_served_and_http11_keeps_the_connection_alive() {
    let setup = Setup::new().await;
    let client = setup.client();
    let mut h1 = client.connect(PUBLIC_HOST, Proto::Http1).await;
    // Five exchanges on one HTTP/1.1 connection: the gateway keeps it open.
    for i in 0..5 {
        let response = h1.send(get(&format!("/dest-a/Patient/{i}"))).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_11);
        assert!(
            response
                .headers()
                .get("connection")
                .is_none_or(|c| c != "close"),
            "the gateway announced it closes the connection"
        );
        text_of(response).await;
    }
    let mut h2 = client.connect(PUBLIC_HOST, Proto::Http2).await;
    let response = h2.send(get("/dest-a/Patient/h2")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(setup.destination.requests().len(), 6);
}

#[tokio::test]
async fn several_listeners_serve_at_once() {
    let (pki, gw) = two_certificate_gateway("1.2").await;
    let second = Client::new(&pki.public_ca.pem, gw.addr_of("second-listener"));
    let tls = second.tls(Some("second.example.org"), &[]).await.unwrap();
    assert_eq!(presented_names(&tls)[0], "second.example.org");
    // The first listener is still up, with its own certificates.
    let first = Client::new(&pki.public_ca.pem, gw.addr);
    assert!(first.tls(Some("first.example.org"), &[]).await.is_ok());
    assert!(second.tls(Some("first.example.org"), &[]).await.is_err());
}
