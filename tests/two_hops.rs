//! The delegated-intermediary scenario of the IG: client → gateway A → gateway B →
//! destination, each hop its own verified TLS connection, with the same pass-through
//! guarantees end to end.

mod support;

use http::Request;
use http_body_util::BodyExt;
use support::*;

/// Client → A (`edge.example.org/org-x`) → B (`127.0.0.1/dest-a`) → destination (`/fhir`).
struct Chain {
    pki: Pki,
    destination: Destination,
    b: TestGateway,
    a: TestGateway,
}

impl Chain {
    async fn new() -> Chain {
        let pki = Pki::new();
        let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
        pki.write("private-ca.pem", &pki.private_ca.pem);
        // There is no name resolution for test names, so A reaches B by IP: B's certificate
        // also covers 127.0.0.1, and B's route is for host 127.0.0.1 (A sends no SNI for an
        // IP, so B routes by Host, which A sets to B's authority). B's certificate is issued
        // by the public CA, so that is A's upstream_ca.
        pki.write_leaf("b", &pki.public_ca.issue(&[PUBLIC_HOST, "127.0.0.1"]));
        pki.write_leaf("edge", &pki.public_ca.issue(&["edge.example.org"]));
        pki.write("b-ca.pem", &pki.public_ca.pem);
        let b = TestGateway::start_as(
            &pki,
            "b.toml",
            &format!(
                r#"
[[listeners]]
name = "b"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "b.pem"
  key = "b.key"
[[routes]]
name = "dest-a"
public_base = "https://127.0.0.1/dest-a"
upstream = "https://localhost:{}/fhir"
upstream_ca = "private-ca.pem"
"#,
                destination.addr.port()
            ),
        )
        .await;
        let a = TestGateway::start_as(
            &pki,
            "a.toml",
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
        Chain {
            pki,
            destination,
            b,
            a,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.pki.public_ca.pem, self.a.addr)
    }

    async fn connect(&self, proto: Proto) -> Conn {
        self.client().connect("edge.example.org", proto).await
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }
}

/// A request to the edge, addressed the way `proto` carries the host.
fn edge(path: &str, proto: Proto) -> http::request::Builder {
    get_from("edge.example.org", path, proto)
}

#[tokio::test]
async fn request_and_response_pass_through_two_gateways_unchanged() {
    let chain = Chain::new().await;
    for proto in BOTH {
        let mut conn = chain.connect(proto).await;
        let request = edge("/org-x/Patient/1?_id=1&name=J%C3%BCrgen", proto)
            .header("authorization", "Bearer TWO-HOP-TOKEN")
            .header("cookie", "sid=abc; theme=dark")
            .header("dpop", "eyJ0eXAiOiJkcG9wK2p3dCJ9.proof.sig")
            .header("prefer", "respond-async")
            .header("x-request-id", "two-hops-1")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .header("connection", "x-hop")
            .header("x-hop", "first hop only")
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        // Client saw: the destination's answer, as sent.
        assert_eq!(response.status(), 200, "{proto:?}");
        assert_eq!(
            header_lines(&response, "set-cookie"),
            ["session=abc; Path=/; Secure; HttpOnly", "pref=xyz; Path=/"],
            "{proto:?}"
        );
        let h = response.headers();
        assert_eq!(h["server"], "test-destination/1.0");
        assert_eq!(h["date"], "Tue, 01 Jan 2030 00:00:00 GMT");
        assert_eq!(
            h["www-authenticate"],
            r#"Bearer realm="fhir", error="invalid_token""#
        );
        assert_eq!(h["etag"], r#"W/"3""#);
        assert_eq!(
            h["content-location"],
            "https://fhir.example.org/dest-a/Patient/1/_history/3"
        );
        assert_eq!(h["x-request-id"], "two-hops-1");
        assert!(h.get("via").is_none() && h.get("forwarded").is_none());
        assert_eq!(text_of(response).await, PATIENT);

        // Destination received: what the client sent, through both rewrites.
        let got = chain.destination().last();
        assert_eq!(got.target, "/fhir/Patient/1?_id=1&name=J%C3%BCrgen");
        assert_eq!(got.one("authorization").unwrap(), "Bearer TWO-HOP-TOKEN");
        assert_eq!(got.all("cookie"), ["sid=abc; theme=dark"]);
        assert_eq!(
            got.one("dpop").unwrap(),
            "eyJ0eXAiOiJkcG9wK2p3dCJ9.proof.sig"
        );
        assert_eq!(got.one("prefer").unwrap(), "respond-async");
        assert_eq!(got.all("x-custom"), ["one", "two"]);
        assert_eq!(got.one("x-request-id").unwrap(), "two-hops-1");
        assert!(got.all("x-hop").is_empty(), "{proto:?}: x-hop passed");
        assert_eq!(
            got.authority.clone().unwrap(),
            format!("localhost:{}", chain.destination().addr.port())
        );
        // Each hop appended its own Forwarded element and Via entry, A's first.
        let forwarded = got.all("forwarded");
        assert_eq!(forwarded.len(), 2, "{forwarded:?}");
        assert!(
            forwarded[0].ends_with("host=edge.example.org"),
            "{forwarded:?}"
        );
        // B's element names the Host it received, A's upstream authority (RFC 7239 §5.3).
        assert!(
            forwarded[1].ends_with(&format!("host=\"127.0.0.1:{}\"", chain.b.addr.port())),
            "{forwarded:?}"
        );
        let via = got.all("via");
        assert_eq!(via.len(), 2, "{via:?}");
        let first = match proto {
            Proto::Http1 => "1.1 ",
            Proto::Http2 => "2 ",
        };
        assert!(via[0].starts_with(first), "{proto:?}: {via:?}");
    }
}

#[tokio::test]
async fn bodies_and_trailers_stream_through_two_gateways() {
    let chain = Chain::new().await;
    let n = 16 * 1024 * 1024 + 3;
    for proto in BOTH {
        // Upload.
        let mut conn = chain.connect(proto).await;
        let request = Request::post(match proto {
            Proto::Http1 => "/org-x/upload".to_owned(),
            Proto::Http2 => "https://edge.example.org/org-x/upload".to_owned(),
        })
        .header("host", "edge.example.org")
        .body(PatternBody::new(n).unsized_body().boxed())
        .unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 200, "{proto:?}");
        assert_eq!(
            text_of(response).await,
            format!("{n} {}", PatternBody::sha256(n))
        );
        assert_eq!(
            chain.destination().last().body,
            Some(PatternBody::summary(n))
        );

        // Download.
        let request = edge(&format!("/org-x/download?bytes={n}"), proto)
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            hash_body(response).await.expect("a complete download"),
            PatternBody::summary(n)
        );

        // Trailers.
        let request = edge("/org-x/trailers", proto)
            .header("te", "trailers")
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        let collected = bounded("reading the body", response.into_body().collect())
            .await
            .unwrap();
        assert_eq!(
            collected.trailers().expect("trailers through two hops")["x-checksum"],
            "abc123",
            "{proto:?}"
        );
    }
}

#[tokio::test]
async fn a_break_at_the_destination_reaches_the_client_as_a_break() {
    let chain = Chain::new().await;
    for proto in BOTH {
        let mut conn = chain.connect(proto).await;
        let response = conn
            .send(edge("/org-x/break", proto).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            hash_body(response).await.is_err(),
            "{proto:?}: a broken body looked complete after two hops"
        );
    }
}

#[tokio::test]
async fn errors_the_first_gateway_makes_and_errors_it_passes() {
    let chain = Chain::new().await;
    let mut conn = chain.connect(Proto::Http1).await;
    // A refuses what it must itself, and nothing travels on.
    let before = chain.destination().requests().len();
    let response = conn
        .send(edge("/org-x/../x", Proto::Http1).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    text_of(response).await;
    assert_eq!(chain.destination().requests().len(), before);
    // An error made by B (no route for the path A sends) passes through A unchanged, with
    // the request id the client chose.
    let response = conn
        .send(
            edge("/org-y/Patient/1", Proto::Http1)
                .header("x-request-id", "made-by-b")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body = text_of(response).await;
    assert!(
        body.contains("OperationOutcome") && body.contains("made-by-b"),
        "{body}"
    );
    // The destination's own errors pass both gateways unchanged.
    let response = conn
        .send(
            edge("/org-x/status/503", Proto::Http1)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(text_of(response).await, DESTINATION_OUTCOME);
    // B serves its own clients meanwhile (here one that, like A, sends no SNI).
    let direct = Client::new(&chain.pki.public_ca.pem, chain.b.addr);
    let tls = direct.tls(None, Proto::Http1.alpn()).await.unwrap();
    let mut conn = Conn::over(tls, Proto::Http1).await;
    let response = conn
        .send(
            get_from("127.0.0.1", "/dest-a/Patient/1", Proto::Http1)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(chain.destination().last().all("via").len(), 1);
}
