//! Routing per the contract: host + segment-boundary prefix, longest wins, listener
//! restriction, raw bytes; dot-segments 400, SNI ≠ Host 421, no route 404.

mod common;

use common::*;
use http::Request;

/// Three routes on one host and one restricted to a second listener.
async fn setup() -> (Pki, Destination, TestGateway) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    pki.write_leaf(
        "public",
        &pki.public_ca.issue(&[PUBLIC_HOST, "other.example.org"]),
    );
    pki.write("private-ca.pem", &pki.private_ca.pem);
    let port = destination.addr.port();
    let toml = format!(
        r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"
[[listeners]]
name = "partners"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"

[[routes]]
name = "dest-a"
public_base = "https://{PUBLIC_HOST}/dest-a"
upstream = "https://localhost:{port}/fhir"
upstream_ca = "private-ca.pem"
[[routes]]
name = "dest-a-r4"
public_base = "https://{PUBLIC_HOST}/dest-a/r4"
upstream = "https://localhost:{port}/r4base"
upstream_ca = "private-ca.pem"
[[routes]]
name = "whole-host"
public_base = "https://other.example.org/"
upstream = "https://localhost:{port}/other"
upstream_ca = "private-ca.pem"
[[routes]]
name = "partners-only"
public_base = "https://{PUBLIC_HOST}/partners"
upstream = "https://localhost:{port}/p"
upstream_ca = "private-ca.pem"
listener = "partners"
"#
    );
    let gateway = TestGateway::start(&pki, &toml).await;
    (pki, destination, gateway)
}

async fn status_and_target(
    client: &Client,
    host: &str,
    path: &str,
    dest: &Destination,
) -> (u16, Option<String>) {
    let before = dest.requests().len();
    let mut conn = client.connect(host, Proto::Http1).await;
    let request = Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap();
    let response = conn.send(request).await.unwrap();
    let status = response.status().as_u16();
    let after = dest.requests();
    let target = (after.len() > before).then(|| after.last().unwrap().target.clone());
    (status, target)
}

#[tokio::test]
async fn path_is_rewritten_on_segment_boundaries_longest_prefix_first() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let cases = [
        ("/dest-a", "/fhir"),
        ("/dest-a/", "/fhir/"),
        ("/dest-a/Patient/1", "/fhir/Patient/1"),
        ("/dest-a/r4", "/r4base"),
        (
            "/dest-a/r4/Observation?code=1234-5",
            "/r4base/Observation?code=1234-5",
        ),
        (
            "/dest-a/Patient?name=J%C3%BCrgen&x=%2F%3F",
            "/fhir/Patient?name=J%C3%BCrgen&x=%2F%3F",
        ),
        ("/dest-a/Binary/a%2Fb", "/fhir/Binary/a%2Fb"),
    ];
    for (path, expected) in cases {
        let (status, target) = status_and_target(&client, PUBLIC_HOST, path, &dest).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(target.as_deref(), Some(expected), "{path}");
    }
}

#[tokio::test]
async fn public_path_slash_matches_the_whole_host() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let (status, target) =
        status_and_target(&client, "other.example.org", "/Patient/1", &dest).await;
    assert_eq!((status, target.as_deref()), (200, Some("/other/Patient/1")));
    let (status, target) = status_and_target(&client, "other.example.org", "/", &dest).await;
    assert_eq!((status, target.as_deref()), (200, Some("/other/")));
}

#[tokio::test]
async fn no_route_is_404_and_nothing_is_forwarded() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for path in ["/dest-ab", "/dest%2Da/Patient", "/", "/partners/x"] {
        let (status, target) = status_and_target(&client, PUBLIC_HOST, path, &dest).await;
        assert_eq!((status, target), (404, None), "{path}");
    }
}

#[tokio::test]
async fn host_matching_ignores_case_and_port() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let request = Request::get("/dest-a/x")
        .header("host", "FHIR.Example.Org:8443")
        .body(empty())
        .unwrap();
    assert_eq!(conn.send(request).await.unwrap().status(), 200);
    assert_eq!(dest.last().target, "/fhir/x");
}

#[tokio::test]
async fn listener_restriction_applies() {
    let (pki, dest, gw) = setup().await;
    let partners = Client::new(&pki.public_ca.pem, gw.addr_of("partners"));
    let (status, target) =
        status_and_target(&partners, PUBLIC_HOST, "/partners/Patient", &dest).await;
    assert_eq!((status, target.as_deref()), (200, Some("/p/Patient")));
    // Unrestricted routes are served on every listener.
    let (status, _) = status_and_target(&partners, PUBLIC_HOST, "/dest-a/x", &dest).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn dot_segments_are_refused_before_routing() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for path in [
        "/dest-a/../admin",
        "/dest-a/./Patient",
        "/dest-a/%2e%2e/x",
        "/dest-a/.%2E/x",
        "/dest-a/%2E",
    ] {
        let (status, target) = status_and_target(&client, PUBLIC_HOST, path, &dest).await;
        assert_eq!((status, target), (400, None), "{path}");
    }
    // Not dot-segments: passed on.
    let (status, _) = status_and_target(
        &client,
        PUBLIC_HOST,
        "/dest-a/.well-known/smart-configuration",
        &dest,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sni_and_host_must_agree() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for proto in [Proto::Http1, Proto::Http2] {
        let mut conn = client.connect(PUBLIC_HOST, proto).await;
        let request = match proto {
            Proto::Http1 => Request::get("/Patient/1")
                .header("host", "other.example.org")
                .body(empty())
                .unwrap(),
            Proto::Http2 => Request::get("https://other.example.org/Patient/1")
                .body(empty())
                .unwrap(),
        };
        let before = dest.requests().len();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 421, "{proto:?}");
        assert_eq!(
            dest.requests().len(),
            before,
            "a misdirected request reached the destination"
        );
    }
}

#[tokio::test]
async fn client_without_sni_is_routed_by_host() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let tls = client.tls(None, &[b"http/1.1"]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("/dest-a/Patient/9")
        .header("host", PUBLIC_HOST)
        .body(empty())
        .unwrap();
    assert_eq!(send.send_request(request).await.unwrap().status(), 200);
    assert_eq!(dest.last().target, "/fhir/Patient/9");
}
