//! Upstream: pooled TLS connections verified against the private name with the route's
//! trust anchors; timeouts → 504; refused or unverifiable → 502 with nothing sent.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

/// A gateway whose only route goes to `upstream` (written into the TOML as is).
async fn gateway_to(pki: &Pki, upstream: &str, extra: &str) -> TestGateway {
    write_usual_files(pki);
    let listener = listener_toml("127.0.0.1:0");
    let toml = format!(
        r#"{listener}
[[routes]]
name = "dest"
public_base = "https://{PUBLIC_HOST}/dest"
upstream = "{upstream}"
upstream_ca = "private-ca.pem"
{extra}
"#
    );
    TestGateway::start(pki, &toml).await
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let setup = Setup::new().await;
    let client = setup.client();
    for i in 0..5 {
        let response = client
            .get(&format!("/dest-a/Patient/{i}"), Proto::Http1)
            .await;
        assert_eq!(response.status(), 200);
        text_of(response).await;
    }
    assert_eq!(setup.destination.requests().len(), 5);
    assert_eq!(
        setup.destination.connections.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
}

#[tokio::test]
async fn private_certificate_problems_are_502_and_nothing_is_sent() {
    let pki = Pki::new();
    let stranger = Ca::new("Unknown CA");
    let bad_certificates = [
        (
            "wrong name",
            pki.private_ca.issue(&["not-localhost.internal"]),
        ),
        ("expired", pki.private_ca.issue_expired(&["localhost"])),
        ("unknown CA", stranger.issue(&["localhost"])),
    ];
    for (what, leaf) in bad_certificates {
        let destination = Destination::start(&leaf).await;
        let gw = gateway_to(
            &pki,
            &format!("https://localhost:{}/fhir", destination.addr.port()),
            "",
        )
        .await;
        let client = Client::new(&pki.public_ca.pem, gw.addr);
        let response = client.get("/dest/Patient/1", Proto::Http1).await;
        assert_eq!(response.status(), 502, "{what}");
        let body = text_of(response).await;
        assert!(body.contains(r#""code":"security""#), "{what}: {body}");
        assert!(
            destination.requests().is_empty(),
            "{what}: the destination received the request"
        );
        // The gateway did reach the destination: it was the certificate that stopped it.
        assert!(
            destination.connection_count() >= 1,
            "{what}: never connected"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn refused_connection_is_502() {
    let pki = Pki::new();
    let gw = gateway_to(&pki, &format!("https://localhost:{}/fhir", free_port()), "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let response = client.get("/dest/x", Proto::Http2).await;
    assert_eq!(response.status(), 502);
    assert!(text_of(response).await.contains(r#""code":"transient""#));
}

/// An upstream that accepts TCP but never answers the TLS handshake, counting what it
/// accepts; it stops when dropped.
struct SilentUpstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentUpstream {
    async fn start() -> SilentUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        SilentUpstream {
            port,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/fhir", self.port)
    }
}

impl Drop for SilentUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn connect_timeout_is_504() {
    let silent = SilentUpstream::start().await;
    let pki = Pki::new();
    let gw = gateway_to(&pki, &silent.url(), r#"connect_timeout = "300ms""#).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let response = client.get("/dest/x", Proto::Http1).await;
    assert_eq!(response.status(), 504);
    assert!(text_of(response).await.contains(r#""code":"timeout""#));
}

#[tokio::test]
async fn a_burst_waiting_for_a_connection_that_times_out_makes_one_attempt() {
    let silent = SilentUpstream::start().await;
    let pki = Pki::new();
    let gw = gateway_to(&pki, &silent.url(), r#"connect_timeout = "1s""#).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..4 {
        let client = client.clone();
        burst.spawn(async move {
            client
                .get(&format!("/dest/{i}"), Proto::Http2)
                .await
                .status()
        });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 504);
    }
    // The exchanges that waited for the first attempt failed with it, not one by one.
    assert_eq!(silent.accepted.load(Ordering::SeqCst), 1);
    // The next exchange tries again.
    assert_eq!(client.get("/dest/again", Proto::Http1).await.status(), 504);
    assert_eq!(silent.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn response_timeout_is_504_and_counts_from_the_end_of_the_body() {
    let setup = Setup::with_route_extra(r#"response_timeout = "300ms""#).await;
    let client = setup.client();
    let slow = client.get("/dest-a/slow?ms=3000", Proto::Http1).await;
    assert_eq!(slow.status(), 504);
    // An answer within the timeout passes.
    let quick = client.get("/dest-a/slow?ms=10", Proto::Http1).await;
    assert_eq!(quick.status(), 200);
    // An upload that takes longer than the response timeout is not cut short: the clock
    // starts when the body has been sent.
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, BoxError>::new(4);
    let request = http::Request::post("/dest-a/upload")
        .body(http_body_util::BodyExt::boxed(body))
        .unwrap();
    let sending = tokio::spawn(async move {
        for _ in 0..4 {
            tx.send_data(bytes::Bytes::from_static(b"0123456789"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let response = conn.send(request).await.unwrap();
    sending.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(text_of(response).await.starts_with("40 "));
}

#[tokio::test]
async fn plaintext_upstream_needs_the_opt_in() {
    let destination = Destination::start_plain().await;
    let pki = Pki::new();
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    let listener = listener_toml("127.0.0.1:0");
    let toml = |extra: &str| {
        format!(
            r#"{listener}
[[routes]]
name = "plain"
public_base = "https://{PUBLIC_HOST}/plain"
upstream = "http://127.0.0.1:{}/fhir"
{extra}
"#,
            destination.addr.port()
        )
    };
    let refused = fhirgate::config::Config::parse(&toml(""), &pki.path("fhirgate.toml"));
    let message = refused
        .expect_err("http:// without opt-in must be refused")
        .to_string();
    assert!(
        message.contains("routes[0].upstream") && message.contains("allow_plaintext_upstream"),
        "{message}"
    );

    let gw = TestGateway::start(&pki, &toml("allow_plaintext_upstream = true")).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let response = client.get("/plain/Patient/1", Proto::Http1).await;
    assert_eq!(response.status(), 200);
    assert_eq!(destination.last().target, "/fhir/Patient/1");
}

#[tokio::test]
async fn without_upstream_ca_the_system_roots_decide() {
    // No `upstream_ca`: the private CA is not among the system roots, so the destination's
    // certificate is refused like any unknown CA's.
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    let listener = listener_toml("127.0.0.1:0");
    let upstream = destination_url(destination.addr.port());
    let toml = format!(
        r#"{listener}
[[routes]]
name = "dest"
public_base = "https://{PUBLIC_HOST}/dest"
upstream = "{upstream}"
"#
    );
    let gw = TestGateway::start(&pki, &toml).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let response = client.get("/dest/Patient/1", Proto::Http1).await;
    assert_eq!(response.status(), 502);
    assert!(destination.requests().is_empty());
}

#[tokio::test]
async fn upstream_protocol_is_chosen_by_alpn() {
    // A destination offering h2 and http/1.1 is spoken to in HTTP/2 ...
    let setup = Setup::new().await;
    for proto in BOTH {
        let response = setup.client().get("/dest-a/Patient/1", proto).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            setup.destination.last().version,
            http::Version::HTTP_2,
            "{proto:?}"
        );
    }
    // ... and one offering only http/1.1 in HTTP/1.1, whatever the client spoke.
    let pki = Pki::new();
    let destination = Destination::start_http1(&pki.private_ca.issue(&["localhost"])).await;
    let setup = Setup::in_front_of(pki, destination, "").await;
    // Pooled there too.
    assert_http1_over_one_connection(&setup).await;
}

#[tokio::test]
async fn a_burst_on_a_cold_route_opens_one_http2_connection() {
    let setup = Setup::new().await;
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..8 {
        let client = setup.client();
        burst.spawn(async move {
            let response = client
                .get(&format!("/dest-a/Patient/{i}"), Proto::Http2)
                .await;
            response.status()
        });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(setup.destination.requests().len(), 8);
    assert_eq!(setup.destination.connection_count(), 1);
}

#[tokio::test]
async fn a_closed_http2_upstream_connection_is_replaced() {
    // The destination ends each connection after one exchange (GOAWAY, then close): every
    // next exchange goes on a new connection and none of them fails.
    let pki = Pki::new();
    let destination =
        Destination::start_closing_after_one(&pki.private_ca.issue(&["localhost"])).await;
    let setup = Setup::in_front_of(pki, destination, "").await;
    for i in 0..4 {
        let response = setup
            .client()
            .get(&format!("/dest-a/Patient/{i}"), Proto::Http1)
            .await;
        assert_eq!(response.status(), 200, "exchange {i}");
        assert_eq!(text_of(response).await, PATIENT);
        assert_eq!(setup.destination.last().version, http::Version::HTTP_2);
        bounded("the destination closing its connection", async {
            while setup.destination.closed.load(Ordering::SeqCst) <= i {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    assert_eq!(setup.destination.connection_count(), 4);
}

#[tokio::test]
async fn an_exchange_refused_by_a_closing_upstream_connection_goes_on_a_new_one() {
    // The destination says GOAWAY as soon as its first response head is out, but that
    // response is a download still streaming: the connection stays open for it, and every
    // new exchange it refuses must be sent again on a new connection.
    use http_body_util::BodyExt;
    let pki = Pki::new();
    let destination =
        Destination::start_closing_after_one(&pki.private_ca.issue(&["localhost"])).await;
    let setup = Setup::in_front_of(pki, destination, "").await;
    let download = setup
        .client()
        .get("/dest-a/download?bytes=67108864", Proto::Http1)
        .await;
    assert_eq!(download.status(), 200);
    // More than the stream's 2 MiB window: the destination wrote these bytes after its
    // GOAWAY, so the gateway has read the GOAWAY by the time they arrive.
    let mut body = download.into_body();
    let mut read = 0usize;
    bounded("reading the first 4 MiB of the download", async {
        while read < 4 << 20 {
            let frame = body.frame().await.expect("more body").expect("a frame");
            read += frame.data_ref().map_or(0, |d| d.len());
        }
    })
    .await;
    let response = setup.client().get("/dest-a/Patient/1", Proto::Http1).await;
    assert_eq!(response.status(), 200);
    assert_eq!(text_of(response).await, PATIENT);
    assert_eq!(setup.destination.connection_count(), 2);
    drop(body);
}

/// A gateway in front of a destination that allows `streams` HTTP/2 streams per
/// connection, with `count` downloads held open through it (their bodies unread, so their
/// streams stay open). One exchange goes first, so the gateway has the destination's
/// SETTINGS.
async fn downloads_held_open(streams: u32, count: usize) -> (Setup, Vec<hyper::body::Incoming>) {
    let pki = Pki::new();
    let destination =
        Destination::start_with_max_streams(&pki.private_ca.issue(&["localhost"]), streams).await;
    let setup = Setup::in_front_of(pki, destination, "").await;
    let response = setup.client().get("/dest-a/Patient/1", Proto::Http1).await;
    assert_eq!(text_of(response).await, PATIENT);
    let mut downloads = Vec::new();
    for _ in 0..count {
        let response = setup
            .client()
            .get("/dest-a/download?bytes=67108864", Proto::Http1)
            .await;
        assert_eq!(response.status(), 200);
        downloads.push(response.into_body());
    }
    (setup, downloads)
}

#[tokio::test]
async fn a_route_opens_another_http2_connection_when_the_upstream_allows_no_more_streams() {
    // The destination allows two streams per connection. Three downloads held open at once
    // need a second connection: the third must not wait in a queue for one of the first two
    // to finish.
    use http_body_util::BodyExt;
    let (setup, mut downloads) = downloads_held_open(2, 3).await;
    assert_eq!(setup.destination.connection_count(), 2);
    // Each of them streams.
    for body in &mut downloads {
        let frame = bounded("a frame of each download", body.frame()).await;
        assert!(frame.expect("more body").expect("a frame").is_data());
    }
}

#[tokio::test]
async fn upstream_http2_false_keeps_to_pooled_http1() {
    // The destination offers h2, but the route asks for HTTP/1.1 only.
    let setup = Setup::with_route_extra("upstream_http2 = false").await;
    assert_http1_over_one_connection(&setup).await;
}

/// Over either client protocol, sequential exchanges reach the destination in HTTP/1.1 on
/// one pooled keep-alive connection, whether the response announced its length or came
/// chunked.
async fn assert_http1_over_one_connection(setup: &Setup) {
    for proto in BOTH {
        let response = setup.client().get("/dest-a/Patient/1", proto).await;
        assert_eq!(response.status(), 200, "{proto:?}");
        assert_eq!(text_of(response).await, PATIENT);
        assert_eq!(
            setup.destination.last().version,
            http::Version::HTTP_11,
            "{proto:?}"
        );
        for query in ["bytes=100000", "bytes=100000&chunked=1"] {
            let response = setup
                .client()
                .get(&format!("/dest-a/download?{query}"), proto)
                .await;
            assert_eq!(response.status(), 200, "{proto:?} {query}");
            let body = hash_body(response).await.expect("the whole body");
            assert_eq!(body, PatternBody::summary(100_000), "{proto:?} {query}");
        }
    }
    assert_eq!(setup.destination.connection_count(), 1);
}

#[tokio::test]
async fn a_failed_upstream_does_not_poison_the_route() {
    // 502 while the destination is down; once it is back on the same port, exchanges pass.
    let pki = Pki::new();
    let port = free_port();
    let gw = gateway_to(&pki, &format!("https://localhost:{port}/fhir"), "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    assert_eq!(client.get("/dest/x", Proto::Http1).await.status(), 502);

    let leaf = pki.private_ca.issue(&["localhost"]);
    let listener = std::net::TcpListener::bind(("127.0.0.1", port));
    let Ok(listener) = listener else {
        eprintln!("port {port} was taken meanwhile; skipping the recovery half");
        return;
    };
    drop(listener);
    let destination = Destination::start_on(&leaf, port).await;
    let response = client.get("/dest/Patient/1", Proto::Http1).await;
    assert_eq!(response.status(), 200);
    assert_eq!(destination.last().target, "/fhir/Patient/1");
}

#[tokio::test]
async fn a_route_opens_no_more_than_max_connections_http2_connections_and_queues_beyond() {
    // The destination allows one stream per connection. With every allowed connection
    // carrying a download held open, one more exchange waits for a stream instead of
    // opening yet another connection, and passes once a download ends.
    use fhirgate::multiplexed::MAX_CONNECTIONS;
    let (setup, mut downloads) = downloads_held_open(1, MAX_CONNECTIONS).await;
    assert_eq!(setup.destination.connection_count(), MAX_CONNECTIONS);
    let client = setup.client();
    let waiting = tokio::spawn(async move {
        let response = client.get("/dest-a/Patient/2", Proto::Http1).await;
        (response.status(), text_of(response).await)
    });
    // Nothing tells from outside when the exchange is waiting inside the gateway; without
    // the cap it would open one more connection within milliseconds, so watch for a second.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(setup.destination.connection_count(), MAX_CONNECTIONS);
    }
    assert!(!waiting.is_finished(), "the exchange waits for a stream");
    // The client leaves one download: its stream is reset and comes free.
    drop(downloads.pop());
    let (status, text) = bounded("the queued exchange", waiting).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(text, PATIENT);
    assert_eq!(setup.destination.connection_count(), MAX_CONNECTIONS);
}

#[tokio::test]
async fn an_upload_the_upstream_answers_early_is_let_go_at_once() {
    // The destination answers 413 before reading the body; once its answer has ended (a
    // moment after the head), it resets the rest of the upload. The gateway lets the
    // client's body go then rather than at the client's next frame, which never comes:
    // hyper closes the client's HTTP/1.1 connection, whose request body is left unread,
    // well before body_idle_timeout (30 s) would. Over an HTTP/1.1 upstream the
    // destination closes its connection instead, with the same result.
    for extra in ["", "upstream_http2 = false"] {
        upload_answered_early_is_let_go(Setup::with_route_extra(extra).await).await;
    }
}

async fn upload_answered_early_is_let_go(setup: Setup) {
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, BoxError>::new(2);
    tx.send_data(bytes::Bytes::from_static(b"{\"resourceType\":"))
        .await
        .unwrap();
    let request = http::Request::post("/dest-a/early?ms=300")
        .body(http_body_util::BodyExt::boxed(body))
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(text_of(response).await, "refused before the body");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while !conn.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the client's connection is still held open");
    drop(tx);
}

#[tokio::test]
async fn an_upstream_connection_is_closed_after_upstream_idle_timeout_and_kept_while_used() {
    for (extra, what) in [
        (r#"upstream_idle_timeout = "2s""#, "HTTP/2"),
        (
            "upstream_idle_timeout = \"2s\"\nupstream_http2 = false",
            "HTTP/1.1",
        ),
    ] {
        let setup = Setup::with_route_extra(extra).await;
        // An exchange every 200 ms or so for 3 s: the connection never idles for 2 s.
        for i in 0..15 {
            let response = setup
                .client()
                .get(&format!("/dest-a/Patient/{i}"), Proto::Http1)
                .await;
            assert_eq!(text_of(response).await, PATIENT, "{what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(setup.destination.connection_count(), 1, "{what}");
        assert_eq!(setup.destination.closed.load(Ordering::SeqCst), 0, "{what}");
        // Then none: the gateway closes it, and the next exchange opens another.
        closed_reaches(&setup, 1).await;
        let response = setup
            .client()
            .get("/dest-a/Patient/last", Proto::Http1)
            .await;
        assert_eq!(text_of(response).await, PATIENT, "{what}");
        assert_eq!(setup.destination.connection_count(), 2, "{what}");
    }
}

/// `count` downloads of 8 MiB through the gateway at once, their bodies unread until all
/// have their response heads: each holds a pooled connection of its own while the next is
/// sent (the gateway cannot pass 8 MiB on to a client that does not read). Then every body
/// is read to its end, and each connection goes back to the pool.
async fn downloads_at_once(setup: &Setup, count: usize) {
    let mut held = Vec::new();
    for _ in 0..count {
        let response = setup
            .client()
            .get("/dest-a/download?bytes=8388608", Proto::Http1)
            .await;
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    for response in held {
        let body = hash_body(response).await.expect("the whole body");
        assert_eq!(body, PatternBody::summary(8_388_608));
    }
}

/// Waits until the destination has seen `count` of its connections end.
async fn closed_reaches(setup: &Setup, count: usize) {
    bounded(
        &format!("{count} upstream connections to be closed"),
        async {
            while setup.destination.closed.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
}

#[tokio::test]
async fn pooled_http1_connections_past_upstream_max_idle_are_closed() {
    let setup = Setup::with_route_extra("upstream_http2 = false\nupstream_max_idle = 2").await;
    // Four exchanges at once need four connections; when they are done the pool keeps two
    // and closes the other two.
    downloads_at_once(&setup, 4).await;
    assert_eq!(setup.destination.connection_count(), 4);
    closed_reaches(&setup, 2).await;
    // The next four at once find the two kept ones and open two more.
    downloads_at_once(&setup, 4).await;
    assert_eq!(setup.destination.connection_count(), 6);
    closed_reaches(&setup, 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        setup.destination.closed.load(Ordering::SeqCst),
        4,
        "two stay open"
    );
    // The ones kept are used again.
    let response = setup.client().get("/dest-a/Patient/1", Proto::Http1).await;
    assert_eq!(text_of(response).await, PATIENT);
    assert_eq!(setup.destination.connection_count(), 6);
}

#[tokio::test]
async fn upstream_max_idle_zero_closes_each_pooled_connection_after_its_exchange() {
    let setup = Setup::with_route_extra("upstream_http2 = false\nupstream_max_idle = 0").await;
    for i in 0..3 {
        let response = setup
            .client()
            .get(&format!("/dest-a/Patient/{i}"), Proto::Http1)
            .await;
        assert_eq!(text_of(response).await, PATIENT, "exchange {i}");
        closed_reaches(&setup, i + 1).await;
    }
    assert_eq!(setup.destination.connection_count(), 3);
    assert_eq!(setup.destination.requests().len(), 3);
}

#[tokio::test]
async fn a_pooled_http1_connection_the_upstream_closed_while_idle_is_not_used_again() {
    // The destination closes a keep-alive connection idle for 100 ms (nginx does so after
    // its keepalive_timeout). The gateway's connection sits in its pool, not driven by
    // anything, when that happens; the next exchange must go on a new connection, not fail
    // on the closed one.
    let pki = Pki::new();
    let destination = Destination::start_http1_closing_idle_after(
        &pki.private_ca.issue(&["localhost"]),
        Duration::from_millis(100),
    )
    .await;
    let setup = Setup::in_front_of(pki, destination, "upstream_http2 = false").await;
    for i in 0..3 {
        let response = setup
            .client()
            .get(&format!("/dest-a/Patient/{i}"), Proto::Http1)
            .await;
        assert_eq!(response.status(), 200, "exchange {i}");
        assert_eq!(text_of(response).await, PATIENT, "exchange {i}");
        closed_reaches(&setup, i + 1).await;
    }
    assert_eq!(setup.destination.connection_count(), 3);
    // Each request reached the destination once.
    assert_eq!(setup.destination.requests().len(), 3);
}

#[tokio::test]
async fn response_heads_up_to_16_kib_pass_whole_and_larger_ones_are_502() {
    // The same bound towards an HTTP/2 destination and towards an HTTP/1.1-only one.
    for http1_only in [false, true] {
        let setup = Setup::towards(http1_only).await;
        let client = setup.client();
        let context = format!("HTTP/1.1-only destination: {http1_only}");

        // 12,000 bytes of fields: passed on whole.
        let response = client
            .get("/dest-a/big-head?bytes=12000", Proto::Http1)
            .await;
        assert_eq!(response.status(), 200, "{context}");
        let big = header_lines(&response, "x-big");
        assert_eq!(big.len(), 3, "{context}");
        for (i, value) in big.iter().enumerate() {
            assert_eq!(*value, format!("{i:04}").repeat(1000), "{context}");
        }
        assert_eq!(response.headers()["x-last"], "end", "{context}");
        assert_eq!(text_of(response).await, "big head", "{context}");

        // 20,000 bytes: refused as the upstream's failure, and the gateway stays usable.
        let response = client
            .get("/dest-a/big-head?bytes=20000", Proto::Http1)
            .await;
        assert_eq!(response.status(), 502, "{context}");
        let body = text_of(response).await;
        assert!(
            body.contains(r#""resourceType":"OperationOutcome""#),
            "{context}: {body}"
        );
        assert!(body.contains(r#""code":"transient""#), "{context}: {body}");
        assert!(!body.contains("localhost"), "{context}: {body}");
        let response = client.get("/dest-a/Patient/1", Proto::Http1).await;
        assert_eq!(response.status(), 200, "{context}");
    }
}
