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
