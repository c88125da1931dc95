//! Connection limits: over `max_connections_per_ip` / `max_connections`, new connections
//! are closed at once; connections already open keep working.

mod support;

use support::*;

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_open_ones_keep_working() {
    for (limits, what) in [
        ("max_connections_per_ip = 2", "per client address"),
        ("max_connections = 2", "overall"),
    ] {
        let pki = Pki::new();
        let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
        write_usual_files(&pki);
        let toml = one_route_toml(
            "127.0.0.1:0",
            &destination_url(destination.addr.port()),
            &format!("[limits]\n{limits}"),
        );
        let gw = TestGateway::start(&pki, &toml).await;
        let client = Client::new(&pki.public_ca.pem, gw.addr);
        let mut first = client.connect(PUBLIC_HOST, Proto::Http1).await;
        let mut second = client.connect(PUBLIC_HOST, Proto::Http2).await;
        assert!(
            client.tls(Some(PUBLIC_HOST), &[]).await.is_err(),
            "{what}: a third connection was served"
        );
        assert_eq!(
            first.send(get("/dest-a/a")).await.unwrap().status(),
            200,
            "{what}"
        );
        assert_eq!(
            second.send(get("/dest-a/b")).await.unwrap().status(),
            200,
            "{what}"
        );
        // A place is given back when a connection closes.
        drop(first);
        let mut admitted = false;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if client.tls(Some(PUBLIC_HOST), &[]).await.is_ok() {
                admitted = true;
                break;
            }
        }
        assert!(
            admitted,
            "{what}: the closed connection's place was not given back"
        );
        gw.stop().await;
    }
}

fn limited_toml(destination_port: u16, limits: &str, route_extra: &str) -> String {
    let extra = format!("{route_extra}\n[limits]\n{limits}");
    one_route_toml("127.0.0.1:0", &destination_url(destination_port), &extra)
}

async fn limited(limits: &str, route_extra: &str) -> (Pki, Destination, TestGateway) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let gw = TestGateway::start(
        &pki,
        &limited_toml(destination.addr.port(), limits, route_extra),
    )
    .await;
    (pki, destination, gw)
}

#[tokio::test]
async fn long_request_targets_are_414() {
    let (pki, destination, gw) = limited("max_uri_bytes = 100", "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let response = client
        .get(
            &format!("/dest-a/Patient?name={}", "x".repeat(100)),
            Proto::Http1,
        )
        .await;
    assert_eq!(response.status(), 414);
    assert!(text_of(response).await.contains(r#""code":"too-long""#));
    assert!(destination.requests().is_empty());
    assert_eq!(
        client
            .get("/dest-a/Patient?name=x", Proto::Http1)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn bodies_over_a_routes_limit_are_413_and_never_forwarded_whole() {
    let (pki, destination, gw) = limited("", "max_request_body_bytes = 1000").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    // Declared too large: refused before anything is sent upstream.
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let response = conn
        .send(
            http::Request::post("/dest-a/upload")
                .body(full(vec![b'x'; 1001]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(text_of(response).await.contains(r#""code":"too-costly""#));
    assert!(destination.requests().is_empty());
    // Streamed without a length (HTTP/2): cut off when it goes over.
    let mut h2 = client.connect(PUBLIC_HOST, Proto::Http2).await;
    let response = h2
        .send(
            http::Request::post("/dest-a/upload")
                .body(PatternBody::new(1 << 20).boxed_unsized())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // Within the limit: passes.
    let response = h2
        .send(
            http::Request::post("/dest-a/upload")
                .body(full(vec![b'x'; 1000]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(text_of(response).await.starts_with("1000 "));
}

trait BoxedUnsized {
    fn boxed_unsized(self) -> ClientBody;
}

impl BoxedUnsized for PatternBody {
    /// The pattern without a declared length, as a chunked upload would be.
    fn boxed_unsized(self) -> ClientBody {
        let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, BoxError>::new(2);
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            let mut me = self;
            while let Some(Ok(frame)) = me.frame().await {
                if let Ok(data) = frame.into_data()
                    && tx.send_data(data).await.is_err()
                {
                    return;
                }
            }
        });
        http_body_util::BodyExt::boxed(body)
    }
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_408() {
    let (pki, _destination, gw) = limited(r#"body_idle_timeout = "300ms""#, "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http2).await;
    let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, BoxError>::new(2);
    let sender = tokio::spawn(async move {
        tx.send_data(bytes::Bytes::from_static(b"{\"resourceType\":"))
            .await
            .unwrap();
        // ... and nothing more, for longer than the idle timeout.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        drop(tx);
    });
    let response = conn
        .send(
            http::Request::post("/dest-a/upload")
                .body(http_body_util::BodyExt::boxed(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 408);
    sender.abort();
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let (pki, _destination, gw) =
        limited("rate_limit_per_ip = 0.5\nrate_limit_burst = 3", "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    for _ in 0..3 {
        let response = conn.send(get("/dest-a/x")).await.unwrap();
        assert_eq!(response.status(), 200);
        text_of(response).await;
    }
    let response = conn.send(get("/dest-a/x")).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    assert!(text_of(response).await.contains(r#""code":"throttled""#));
}

#[tokio::test]
async fn too_many_or_too_large_header_fields_are_431_outcomes() {
    let (pki, destination, gw) = limited("max_headers = 20\nmax_header_bytes = 4096", "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for proto in BOTH {
        let mut many = get("/dest-a/x");
        for i in 0..30 {
            many.headers_mut().insert(
                http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                http::HeaderValue::from_static("1"),
            );
        }
        let mut large = get("/dest-a/x");
        large.headers_mut().insert(
            "x-large",
            http::HeaderValue::from_str(&"a".repeat(5000)).unwrap(),
        );
        for (what, request) in [("30 header fields", many), ("a 5000-byte field", large)] {
            let mut conn = client.connect(PUBLIC_HOST, proto).await;
            let response = conn.send(request).await.unwrap();
            assert_eq!(response.status(), 431, "{proto:?}: {what}");
            assert_eq!(
                response.headers()["content-type"],
                "application/fhir+json; charset=utf-8"
            );
            let body = text_of(response).await;
            assert!(
                body.contains(r#""code":"too-long""#),
                "{proto:?}: {what}: {body}"
            );
        }
        // Just under both limits passes.
        let mut fine = get("/dest-a/x");
        fine.headers_mut().insert(
            "x-large",
            http::HeaderValue::from_str(&"a".repeat(3000)).unwrap(),
        );
        let mut conn = client.connect(PUBLIC_HOST, proto).await;
        assert_eq!(conn.send(fine).await.unwrap().status(), 200, "{proto:?}");
    }
    assert_eq!(
        destination.requests().len(),
        2,
        "only the fine requests passed"
    );
}
