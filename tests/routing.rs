//! Routing per the contract: host + segment-boundary prefix, longest wins, listener
//! restriction, raw bytes; dot-segments 400, SNI ≠ Host 421, no route 404.

mod support;

use http::Request;
use support::*;

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

/// Client sent GET `path` for `host` (with SNI `host`) over HTTP/1.1; returns the status the
/// client saw and the request target the destination received, if any.
async fn status_and_target(
    client: &Client,
    host: &str,
    path: &str,
    dest: &Destination,
) -> (u16, Option<String>) {
    status_and_target_over(client, host, path, dest, Proto::Http1).await
}

/// Like [`status_and_target`], over `proto` (`Host` or `:authority`).
async fn status_and_target_over(
    client: &Client,
    host: &str,
    path: &str,
    dest: &Destination,
    proto: Proto,
) -> (u16, Option<String>) {
    let before = dest.requests().len();
    let mut conn = client.connect(host, proto).await;
    let request = get_from(host, path, proto).body(empty()).unwrap();
    let response = conn.send(request).await.unwrap();
    let status = response.status().as_u16();
    text_of(response).await;
    let after = dest.requests();
    assert!(after.len() <= before + 1, "one request became several");
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
        ("/dest-a/Patient/%7e1%7E", "/fhir/Patient/%7e1%7E"),
        ("/dest-a/Patient//1", "/fhir/Patient//1"),
        ("/dest-a?_count=1", "/fhir?_count=1"),
        ("/dest-a/?", "/fhir/?"),
        (
            "/dest-a/Observation?date=ge2020-01-01&date=le2021&code=a%7Cb|c&x=%2e%2E/..",
            "/fhir/Observation?date=ge2020-01-01&date=le2021&code=a%7Cb|c&x=%2e%2E/..",
        ),
        ("/dest-a/Patient/a..b/x.y", "/fhir/Patient/a..b/x.y"),
    ];
    for proto in BOTH {
        for (path, expected) in cases {
            let (status, target) =
                status_and_target_over(&client, PUBLIC_HOST, path, &dest, proto).await;
            assert_eq!(status, 200, "{proto:?} {path}");
            assert_eq!(target.as_deref(), Some(expected), "{proto:?} {path}");
        }
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
    for proto in BOTH {
        for path in [
            "/dest-ab",
            "/dest-ab/Patient",
            "/dest%2Da/Patient",
            "/dest-a%2FPatient",
            "/DEST-A/Patient",
            "/",
            "/partners/x",
        ] {
            let (status, target) =
                status_and_target_over(&client, PUBLIC_HOST, path, &dest, proto).await;
            assert_eq!((status, target), (404, None), "{proto:?} {path}");
        }
    }
    // A host no route names (a client without SNI may send any Host): 404 too.
    let tls = client.tls(None, Proto::Http1.alpn()).await.unwrap();
    let mut conn = Conn::over(tls, Proto::Http1).await;
    let request = get_from("nobody.example.org", "/dest-a/Patient", Proto::Http1)
        .body(empty())
        .unwrap();
    let before = dest.requests().len();
    assert_eq!(conn.send(request).await.unwrap().status(), 404);
    assert_eq!(dest.requests().len(), before);
}

#[tokio::test]
async fn host_matching_ignores_case_and_port() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for proto in BOTH {
        for host in [
            "FHIR.Example.Org:8443",
            "fhir.example.org:443",
            "fhir.EXAMPLE.org",
        ] {
            let mut conn = client.connect(PUBLIC_HOST, proto).await;
            let request = get_from(host, "/dest-a/x", proto).body(empty()).unwrap();
            let response = conn.send(request).await.unwrap();
            assert_eq!(response.status(), 200, "{proto:?} {host}");
            assert_eq!(dest.last().target, "/fhir/x", "{proto:?} {host}");
        }
    }
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
    // The restricted route does not exist on the other listener.
    let public = Client::new(&pki.public_ca.pem, gw.addr_of("public"));
    let (status, target) =
        status_and_target(&public, PUBLIC_HOST, "/partners/Patient", &dest).await;
    assert_eq!((status, target), (404, None));
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
        "/dest-a/Patient/..",
        "/dest-a/Patient/.",
        "/dest-a/x/%2E%2e/y",
        "/dest-a/x/..?q=1",
        "/dest-a/%2e/Patient",
        "/../dest-a/Patient",
        "/dest-a/x/%2e.",
    ] {
        for proto in BOTH {
            let (status, target) =
                status_and_target_over(&client, PUBLIC_HOST, path, &dest, proto).await;
            assert_eq!((status, target), (400, None), "{proto:?} {path}");
        }
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

/// Sends `raw` over one HTTP/1.1 TLS connection with SNI `PUBLIC_HOST` and returns the
/// status line of the answer (bounded in time).
async fn raw_status(client: &Client, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = client.tls(Some(PUBLIC_HOST), &[b"http/1.1"]).await.unwrap();
    tls.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !out.windows(2).any(|w| w == b"\r\n") {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn absolute_form_targets_are_routed_by_their_own_authority() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    // RFC 9112 §3.2.2: the request-target's authority, not Host, names the resource; the
    // destination receives origin-form.
    let status = raw_status(
        &client,
        &format!(
            "GET https://{PUBLIC_HOST}/dest-a/Patient/1?x=1 HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(dest.last().target, "/fhir/Patient/1?x=1");

    // Host agrees with the SNI, the absolute target names another tenant: never routed
    // there (421 for the SNI mismatch, or 400 for the conflict).
    let before = dest.requests().len();
    let status = raw_status(
        &client,
        &format!(
            "GET https://other.example.org/Patient/1 HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(
        status.starts_with("HTTP/1.1 421") || status.starts_with("HTTP/1.1 400"),
        "{status}"
    );
    assert_eq!(dest.requests().len(), before, "routed to the other tenant");
}

#[tokio::test]
async fn an_http2_host_field_cannot_override_the_authority() {
    let (pki, dest, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http2).await;
    // :authority = fhir.example.org (agrees with the SNI), Host = the other tenant, and a
    // path only the other tenant's whole-host route matches.
    let request = Request::get(format!("https://{PUBLIC_HOST}/Patient/1"))
        .header("host", "other.example.org")
        .body(empty())
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_ne!(response.status(), 200);
    assert!(
        dest.requests()
            .iter()
            .all(|r| !r.target.starts_with("/other")),
        "an HTTP/2 Host field routed the request to another tenant"
    );
    // Where the gateway serves such a request by its :authority (or refuses it as
    // malformed, RFC 9113 §8.3.1), the conflicting Host never travels on.
    let request = Request::get(format!("https://{PUBLIC_HOST}/dest-a/x"))
        .header("host", "other.example.org")
        .body(empty())
        .unwrap();
    let response = conn.send(request).await.unwrap();
    if response.status() == 200 {
        let got = dest.last();
        assert_eq!(got.target, "/fhir/x");
        assert_eq!(
            got.authority.as_deref(),
            Some(format!("localhost:{}", dest.addr.port()).as_str())
        );
        assert!(
            got.all("host").iter().all(|h| !h.contains("other")),
            "{got:?}"
        );
    } else {
        assert_eq!(response.status(), 400);
    }
}
