//! Streaming: bodies flow both ways with backpressure and are never collected whole, with or
//! without a declared length, over HTTP/1.1 and HTTP/2; trailers pass; and a body the
//! upstream breaks off never looks complete to the client.

mod support;

use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use support::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The gateway as a child process, so its own peak memory (VmHWM) can be read.
async fn child_setup() -> (Pki, Destination, ChildGateway) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    let gateway = ChildGateway::usual(&pki, &destination, &[], "warn").await;
    (pki, destination, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_and_upload_pass_byte_exact_in_constant_memory() {
    let (pki, destination, gateway) = child_setup().await;
    let client = Client::new(&pki.public_ca.pem, gateway.addr);

    // Client sent: GET for 1 GiB. Destination answered: 1 GiB of the pattern, with a length.
    let started = Instant::now();
    let response = client
        .get(&format!("/dest-a/download?bytes={GIB}"), Proto::Http1)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        GIB.to_string().as_str()
    );
    // Client saw: exactly those bytes.
    let got = hash_body(response).await.expect("a complete download");
    assert_eq!(got, PatternBody::summary(GIB));
    let download = started.elapsed();

    // Client sent: 1 GiB upload over HTTP/2. Destination received: exactly those bytes.
    let started = Instant::now();
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http2).await;
    let request = Request::post("/dest-a/upload")
        .header("content-type", "application/fhir+ndjson")
        .body(PatternBody::new(GIB).boxed())
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        text_of(response).await,
        format!("{GIB} {}", PatternBody::sha256(GIB))
    );
    let upload = started.elapsed();
    let received = destination.last();
    assert_eq!(received.body, Some(PatternBody::summary(GIB)));
    assert_eq!(
        received.one("content-type").unwrap(),
        "application/fhir+ndjson"
    );

    let peak = gateway.peak_rss();
    eprintln!(
        "1 GiB down in {download:?}, 1 GiB up in {upload:?}; gateway peak RSS {} MiB",
        peak >> 20
    );
    assert!(
        peak < 64 * MIB,
        "gateway peak RSS {} MiB is not under 64 MiB",
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_the_destination_back() {
    let (pki, _destination, gateway) = child_setup().await;
    let client = Client::new(&pki.public_ca.pem, gateway.addr);
    // Client asked for 512 MiB and then read nothing for a while: without backpressure the
    // gateway would pull the whole body from the (fast, local) destination into memory.
    let response = client
        .get(
            &format!("/dest-a/download?bytes={}", 512 * MIB),
            Proto::Http2,
        )
        .await;
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peak = gateway.peak_rss();
    assert!(
        peak < 64 * MIB,
        "a stalled reader made the gateway hold {} MiB",
        peak >> 20
    );
    // And the body is all there once the client reads on.
    assert_eq!(
        hash_body(response).await.expect("a complete download"),
        PatternBody::summary(512 * MIB)
    );
}

#[tokio::test]
async fn downloads_pass_byte_exact_with_and_without_a_length() {
    let setup = Setup::new().await;
    let n = 24 * MIB;
    for proto in BOTH {
        for chunked in [false, true] {
            let path = format!("/dest-a/download?bytes={n}&chunked={}", u8::from(chunked));
            let response = setup.client().get(&path, proto).await;
            assert_eq!(response.status(), 200, "{proto:?} chunked={chunked}");
            let length = response.headers().get("content-length").cloned();
            if chunked {
                // Nothing invents a length the destination did not send (that would need
                // the whole body first).
                assert_eq!(length, None, "{proto:?}: a length appeared");
                if proto == Proto::Http1 {
                    assert_eq!(response.headers()["transfer-encoding"], "chunked");
                }
            } else {
                assert_eq!(
                    length.expect("the destination's Content-Length"),
                    n.to_string().as_str(),
                    "{proto:?}"
                );
            }
            assert_eq!(
                hash_body(response).await.expect("a complete download"),
                PatternBody::summary(n),
                "{proto:?} chunked={chunked}"
            );
        }
    }
}

#[tokio::test]
async fn uploads_pass_byte_exact_with_and_without_a_length() {
    let setup = Setup::new().await;
    let n = 24 * MIB + 7;
    for proto in BOTH {
        for sized in [true, false] {
            let body = if sized {
                PatternBody::new(n).boxed()
            } else {
                PatternBody::new(n).unsized_body().boxed()
            };
            let mut conn = setup.client().connect(PUBLIC_HOST, proto).await;
            let request = Request::post("/dest-a/upload").body(body).unwrap();
            let response = conn.send(request).await.unwrap();
            assert_eq!(response.status(), 200, "{proto:?} sized={sized}");
            assert_eq!(
                text_of(response).await,
                format!("{n} {}", PatternBody::sha256(n)),
                "{proto:?} sized={sized}"
            );
            let received = setup.destination.last();
            assert_eq!(received.body, Some(PatternBody::summary(n)));
            if sized {
                assert_eq!(
                    received.all("content-length"),
                    [n.to_string()],
                    "{proto:?}: the client's Content-Length"
                );
            }
        }
    }
}

#[tokio::test]
async fn response_trailers_pass_end_to_end() {
    let setup = Setup::new().await;
    // HTTP/2 client: trailers are always allowed.
    let mut h2 = setup.client().connect(PUBLIC_HOST, Proto::Http2).await;
    let response = h2.send(get("/dest-a/trailers")).await.unwrap();
    assert_eq!(response.headers()["trailer"], "x-checksum");
    let collected = bounded("reading the body", response.into_body().collect())
        .await
        .unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reached the HTTP/2 client");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "hello world");

    // HTTP/1.1 client that declares `TE: trailers` gets them after the last chunk.
    let mut h1 = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let request = Request::get("/dest-a/trailers")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let response = h1.send(request).await.unwrap();
    assert_eq!(response.headers()["trailer"], "x-checksum");
    let collected = bounded("reading the body", response.into_body().collect())
        .await
        .unwrap();
    assert_eq!(
        collected
            .trailers()
            .expect("trailers reached the HTTP/1.1 client")["x-checksum"],
        "abc123"
    );
    assert_eq!(collected.to_bytes(), "hello world");
}

#[tokio::test]
async fn request_trailers_reach_the_destination() {
    let setup = Setup::new().await;
    for proto in BOTH {
        let mut conn = setup.client().connect(PUBLIC_HOST, proto).await;
        let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, BoxError>::new(2);
        let request = Request::post("/dest-a/upload")
            .header("trailer", "x-upload-checksum")
            .body(body.boxed())
            .unwrap();
        let sending = tokio::spawn(async move {
            tx.send_data(bytes::Bytes::from_static(b"abc"))
                .await
                .unwrap();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-upload-checksum", "zzz".parse().unwrap());
            tx.send_trailers(trailers).await.unwrap();
        });
        let response = conn.send(request).await.unwrap();
        bounded("sending the body", sending).await.unwrap();
        assert_eq!(response.status(), 200, "{proto:?}");
        assert!(text_of(response).await.starts_with("3 "), "{proto:?}");
        let received = setup.destination.last();
        assert_eq!(received.body, Some(BodySummary::of(b"abc")), "{proto:?}");
        assert_eq!(
            received.trailers,
            [("x-upload-checksum".to_owned(), b"zzz".to_vec())],
            "{proto:?}: the request trailer did not reach the destination"
        );
    }
}

#[tokio::test]
async fn upstream_breaking_off_mid_body_aborts_the_client_response() {
    let setup = Setup::new().await;
    for proto in BOTH {
        let response = setup.client().get("/dest-a/break", proto).await;
        // The head had already passed before the destination broke off.
        assert_eq!(response.status(), 200, "{proto:?}");
        match hash_body(response).await {
            Ok(body) => panic!(
                "{proto:?}: a broken body ended like a complete one after {} bytes",
                body.len
            ),
            // HTTP/1.1: the connection closed before the final chunk; HTTP/2: stream reset.
            Err((received, _)) => assert!(received <= 4 * 65536, "{proto:?}: {received}"),
        }
    }
}

#[tokio::test]
async fn upstream_breaking_off_over_http1_aborts_the_client_response() {
    // Towards an HTTP/1.1-only destination there is no stream reset: the destination just
    // closes the connection, before the final chunk or short of its Content-Length. The
    // client must still see a failure, never a shorter "complete" body.
    let pki = Pki::new();
    let destination = Destination::start_http1(&pki.private_ca.issue(&["localhost"])).await;
    let setup = Setup::in_front_of(pki, destination, "").await;
    for proto in BOTH {
        for path in ["/dest-a/break", "/dest-a/break?length=1048576"] {
            let response = setup.client().get(path, proto).await;
            assert_eq!(response.status(), 200, "{proto:?} {path}");
            assert!(
                hash_body(response).await.is_err(),
                "{proto:?} {path}: a broken body looked complete"
            );
        }
    }
    assert_eq!(setup.destination.last().version, http::Version::HTTP_11);
}
