//! Listener TLS: certificate by SNI, no SNI → first, unknown SNI refused, minimum version,
//! ALPN h2 and http/1.1, keep-alive, several listeners.

mod common;

use common::*;
use std::sync::Arc;

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

#[tokio::test]
async fn minimum_tls_version_is_enforced() {
    let (pki, gw) = two_certificate_gateway("1.3").await;
    let only_tls12 = {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.public_ca.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    };
    use rustls::pki_types::pem::PemObject;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("first.example.org").unwrap();
    let result = tokio_rustls::TlsConnector::from(Arc::new(only_tls12))
        .connect(name, tcp)
        .await;
    assert!(
        result.is_err(),
        "a TLS 1.2-only client was accepted by a 1.3 listener"
    );

    // The same listener accepts TLS 1.3, and a 1.2 listener accepts 1.2.
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let tls = client.tls(Some("first.example.org"), &[]).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn tls12_is_accepted_by_default() {
    let (pki, gw) = two_certificate_gateway("1.2").await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.public_ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("first.example.org").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
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
}

#[tokio::test]
async fn both_protocols_are_served_and_http11_keeps_the_connection_alive() {
    let setup = Setup::new().await;
    let client = setup.client();
    let mut h1 = client.connect(PUBLIC_HOST, Proto::Http1).await;
    for i in 0..5 {
        let response = h1.send(get(&format!("/dest-a/Patient/{i}"))).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_11);
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
