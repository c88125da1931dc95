//! HTTP/1.1 request smuggling: ambiguous framing is refused (or normalised), and the
//! destination never receives a second, hidden request. The test checks what the
//! destination actually received.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` over one TLS connection and returns what came back (bounded in time).
async fn raw_exchange(client: &Client, raw: &str) -> String {
    let mut tls = client.tls(Some(PUBLIC_HOST), &[b"http/1.1"]).await.unwrap();
    tls.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 8192];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn ambiguous_framing_never_smuggles_a_second_request() {
    let setup = Setup::new().await;
    let client = setup.client();
    let host = format!("Host: {PUBLIC_HOST}\r\n");
    let smuggled = format!("GET /dest-a/SMUGGLED HTTP/1.1\r\n{host}\r\n");
    let cases = [
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /dest-a/upload HTTP/1.1\r\n{host}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "differing duplicate Content-Length",
            format!(
                "POST /dest-a/upload HTTP/1.1\r\n{host}Content-Length: 0\r\nContent-Length: 44\r\n\r\n{smuggled}"
            ),
        ),
        (
            "obfuscated Transfer-Encoding",
            format!(
                "POST /dest-a/upload HTTP/1.1\r\n{host}Transfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding with a trailing value",
            format!(
                "POST /dest-a/upload HTTP/1.1\r\n{host}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "invalid chunk size",
            format!(
                "POST /dest-a/upload HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "control character in a header value",
            format!("GET /dest-a/x HTTP/1.1\r\n{host}X-Evil: a\x01b\r\n\r\n{smuggled}"),
        ),
        (
            "space before the colon",
            format!(
                "GET /dest-a/x HTTP/1.1\r\n{host}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
    ];
    for (what, raw) in cases {
        let before = setup.destination.requests().len();
        let answer = raw_exchange(&client, &raw).await;
        let received: Vec<String> = setup.destination.requests()[before..]
            .iter()
            .map(|r| r.target.clone())
            .collect();
        assert!(
            !received.iter().any(|t| t.contains("SMUGGLED")),
            "{what}: the destination received a smuggled request: {received:?}\n{answer}"
        );
        assert!(received.len() <= 1, "{what}: {received:?}");
        let status = answer.split_whitespace().nth(1).unwrap_or("(closed)");
        assert!(
            status.starts_with('4')
                || status == "(closed)"
                || (status == "200" && received.len() == 1),
            "{what}: answered {status}\n{answer}"
        );
    }
}

#[tokio::test]
async fn bare_lf_line_endings_are_normalised_into_one_request() {
    let setup = Setup::new().await;
    let answer = raw_exchange(
        &setup.client(),
        &format!("GET /dest-a/Patient/1 HTTP/1.1\nHost: {PUBLIC_HOST}\nConnection: close\n\n"),
    )
    .await;
    let received = setup.destination.requests();
    assert!(
        answer.starts_with("HTTP/1.1 400")
            || (answer.starts_with("HTTP/1.1 200") && received.len() == 1),
        "{answer}"
    );
    for r in &received {
        assert_eq!(r.target, "/fhir/Patient/1");
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2 → HTTP/1.1 downgrade: the gateway speaks HTTP/2 to the client and HTTP/1.1 to an
// HTTP/1.1-only destination, where framing is text again. Raw frames (support::h2raw) send
// what the h2 and http crates refuse to: content-length that disagrees with the DATA
// frames, and field values with CR, LF or NUL.
// ---------------------------------------------------------------------------------------

/// A complete HTTP/1.1 request hidden in the bytes, that would appear as a second request if
/// the gateway wrote them to the HTTP/1.1 destination outside a well-framed body.
const HIDDEN: &str = "GET /fhir/SMUGGLED HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// DATA frames: bytes and END_STREAM.
type DataFrames = Vec<(Vec<u8>, bool)>;

/// Header fields in order, raw bytes (pseudo-header fields included).
type Fields = Vec<(&'static [u8], Vec<u8>)>;

/// The usual gateway in front of an HTTP/1.1-only destination.
async fn http1_destination_setup() -> Setup {
    let pki = Pki::new();
    let destination = Destination::start_http1(&pki.private_ca.issue(&["localhost"])).await;
    Setup::in_front_of(pki, destination, "").await
}

/// Sends stream 1 as `frames` on a new raw HTTP/2 connection and waits for its end.
async fn h2_exchange(client: &Client, frames: &[u8]) -> support::h2raw::StreamOutcome {
    let mut conn = support::h2raw::RawH2::open(client).await;
    if !conn.send(frames).await {
        return support::h2raw::StreamOutcome {
            closed: true,
            ..Default::default()
        };
    }
    conn.until_stream_ends(1).await
}

/// A well-formed request through the same gateway afterwards arrives intact and alone: an
/// upstream connection left mid-body by a broken request was not reused for it.
async fn assert_next_request_intact(setup: &Setup, what: &str, n: usize) {
    let before = setup.destination.requests().len();
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http2).await;
    let body = format!("after {n}");
    let response = conn
        .send(
            http::Request::post(format!("/dest-a/upload?after={n}"))
                .body(full(body.clone()))
                .unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: the next request failed: {e}"));
    assert_eq!(response.status(), 200, "{what}: the next request");
    let received = setup.destination.requests()[before..].to_vec();
    assert_eq!(received.len(), 1, "{what}: {received:?}");
    assert_eq!(
        received[0].target,
        format!("/fhir/upload?after={n}"),
        "{what}"
    );
    assert_eq!(
        received[0].body,
        Some(BodySummary::of(body.as_bytes())),
        "{what}: the next request's body was not received intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_content_length_disagreeing_with_data_never_reaches_an_http1_destination_misframed() {
    use support::h2raw::{data, headers, request_block};
    let setup = http1_destination_setup().await;
    let client = setup.client();
    // (what, content-length, DATA frames as (bytes, end_stream), may the destination have
    // received a well-framed prefix and the client a 2xx before the excess arrived?)
    let excess = format!("0123456789{HIDDEN}");
    let cases: Vec<(&str, usize, DataFrames, bool)> = vec![
        (
            "more DATA than content-length, one frame",
            10,
            vec![(excess.clone().into_bytes(), true)],
            false,
        ),
        (
            "fewer DATA bytes than content-length",
            10 + HIDDEN.len() + 100,
            vec![(excess.clone().into_bytes(), true)],
            false,
        ),
        (
            "content-length bytes, then more in a second frame",
            10,
            vec![
                (b"0123456789".to_vec(), false),
                (HIDDEN.as_bytes().to_vec(), true),
            ],
            true,
        ),
        (
            "content-length 0 with DATA",
            0,
            vec![(HIDDEN.as_bytes().to_vec(), true)],
            false,
        ),
    ];
    for (n, (what, length, frames, may_succeed)) in cases.into_iter().enumerate() {
        let before = setup.destination.requests().len();
        let tag = format!("case={n}");
        let block = request_block(
            "POST",
            &format!("/dest-a/upload?{tag}"),
            &[(b"content-length", length.to_string().as_bytes())],
        );
        let mut raw = headers(1, false, true, &block);
        for (bytes, end) in &frames {
            raw.extend(data(1, *end, bytes));
        }
        let outcome = h2_exchange(&client, &raw).await;
        // Give an upstream exchange that was started time to land before looking.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let received = setup.destination.requests()[before..].to_vec();
        eprintln!(
            "{what}: client saw {:?}; destination received {:?}",
            outcome.frames,
            received
                .iter()
                .map(|r| (r.target.clone(), r.one("content-length"), r.body.clone()))
                .collect::<Vec<_>>()
        );
        assert!(
            !received.iter().any(|r| r.target.contains("SMUGGLED")),
            "{what}: the destination received a smuggled request: {received:?}"
        );
        assert!(received.len() <= 1, "{what}: {received:?}");
        for r in &received {
            assert!(r.target.contains(&tag), "{what}: {r:?}");
            // Well-framed or broken off: a body that ended is exactly what its own
            // content-length announced, and never more than the client declared.
            if let Some(body) = &r.body {
                let announced: Option<u64> = r.one("content-length").and_then(|v| v.parse().ok());
                assert_eq!(
                    Some(body.len),
                    announced,
                    "{what}: the destination received a mis-framed body: {r:?}"
                );
                assert!(body.len <= length as u64, "{what}: {r:?}");
                assert_eq!(
                    body,
                    &BodySummary::of(&excess.as_bytes()[..body.len as usize]),
                    "{what}: not the client's first bytes"
                );
            }
        }
        let well_framed_prefix = received.iter().all(|r| r.body.is_some());
        assert!(
            outcome.refused() || (may_succeed && well_framed_prefix && !received.is_empty()),
            "{what}: the client saw neither a stream error nor a 4xx: {:?}",
            outcome.frames
        );
        assert!(
            outcome.status.is_none_or(|s| s >= 400 || may_succeed),
            "{what}: answered {:?}",
            outcome.status
        );
        assert_next_request_intact(&setup, what, n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_fields_with_cr_lf_nul_or_connection_framing_never_reach_an_http1_destination() {
    use support::h2raw::{data, headers, push_literal};
    let setup = http1_destination_setup().await;
    let client = setup.client();
    // Each case: (what, raw pseudo-headers and fields in order, body or none).
    let evil_value = |v: &'static [u8]| -> Fields {
        vec![
            (b":method", b"GET".to_vec()),
            (b":scheme", b"https".to_vec()),
            (b":authority", PUBLIC_HOST.as_bytes().to_vec()),
            (b":path", b"/dest-a/Patient/evil".to_vec()),
            (b"x-evil", v.to_vec()),
        ]
    };
    let with_path = |p: String| -> Fields {
        vec![
            (b":method", b"GET".to_vec()),
            (b":scheme", b"https".to_vec()),
            (b":authority", PUBLIC_HOST.as_bytes().to_vec()),
            (b":path", p.into_bytes()),
        ]
    };
    let te_chunked: Fields = vec![
        (b":method", b"POST".to_vec()),
        (b":scheme", b"https".to_vec()),
        (b":authority", PUBLIC_HOST.as_bytes().to_vec()),
        (b":path", b"/dest-a/upload".to_vec()),
        (b"transfer-encoding", b"chunked".to_vec()),
    ];
    let cases: Vec<(&str, Fields, Option<String>)> = vec![
        (
            "CR LF in a value",
            evil_value(b"a\r\nx-injected: 1\r\n\r\nGET /fhir/SMUGGLED HTTP/1.1"),
            None,
        ),
        ("bare LF in a value", evil_value(b"a\nx-injected: 1"), None),
        ("bare CR in a value", evil_value(b"a\rx-injected: 1"), None),
        ("NUL in a value", evil_value(b"a\0b"), None),
        (
            "CR LF in a field name",
            vec![
                (b":method", b"GET".to_vec()),
                (b":scheme", b"https".to_vec()),
                (b":authority", PUBLIC_HOST.as_bytes().to_vec()),
                (b":path", b"/dest-a/Patient/evil".to_vec()),
                (b"x-evil\r\nx-injected", b"1".to_vec()),
            ],
            None,
        ),
        (
            "CR LF and a request in :path",
            with_path(format!(
                "/dest-a/Patient/evil HTTP/1.1\r\nHost: localhost\r\n\r\n{HIDDEN}"
            )),
            None,
        ),
        (
            "CR LF in :authority",
            vec![
                (b":method", b"GET".to_vec()),
                (b":scheme", b"https".to_vec()),
                (
                    b":authority",
                    format!("{PUBLIC_HOST}\r\nx-injected: 1").into_bytes(),
                ),
                (b":path", b"/dest-a/Patient/evil".to_vec()),
            ],
            None,
        ),
        (
            "transfer-encoding: chunked in HTTP/2 (H2.TE)",
            te_chunked,
            Some(format!("0\r\n\r\n{HIDDEN}")),
        ),
    ];
    for (what, fields, body) in cases {
        let before = setup.destination.requests().len();
        let mut block = Vec::new();
        for (name, value) in &fields {
            push_literal(&mut block, name, value);
        }
        let mut raw = headers(1, body.is_none(), true, &block);
        if let Some(body) = &body {
            raw.extend(data(1, true, body.as_bytes()));
        }
        let outcome = h2_exchange(&client, &raw).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let received = setup.destination.requests()[before..].to_vec();
        eprintln!("{what}: client saw {:?}", outcome.frames);
        assert!(
            received.is_empty(),
            "{what}: the destination received {received:?}"
        );
        assert!(
            outcome.refused(),
            "{what}: the client saw neither a stream error nor a 4xx: {:?}",
            outcome.frames
        );
    }
    // Still serving well-formed requests.
    assert_next_request_intact(&setup, "after the injection attempts", 99).await;
}
