//! Timeouts and caps on a running gateway: idle keep-alive connections are closed, the
//! optional cap on a whole exchange (504 before the response head, an aborted body after),
//! and the per-route cap on exchanges in flight (503).

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::*;

/// Routes `dest-a` (with `route_extra`) and `dest-b` to the same destination.
fn toml(destination_port: u16, limits: &str, route_extra: &str) -> String {
    let upstream = destination_url(destination_port);
    let extra = format!(
        r#"{route_extra}
[[routes]]
name = "dest-b"
public_base = "https://{PUBLIC_HOST}/dest-b"
upstream = "{upstream}"
upstream_ca = "private-ca.pem"
[limits]
{limits}"#
    );
    one_route_toml("127.0.0.1:0", &upstream, &extra)
}

async fn gateway(limits: &str, route_extra: &str) -> (Pki, Destination, TestGateway) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let toml = toml(destination.addr.port(), limits, route_extra);
    let gw = TestGateway::start(&pki, &toml).await;
    (pki, destination, gw)
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_busy_ones_are_not() {
    // The header read timeout is long, so only the idle timeout can close the connections.
    let (pki, _destination, gw) = gateway(
        r#"idle_timeout = "2s"
header_read_timeout = "60s""#,
        "",
    )
    .await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for proto in BOTH {
        let mut conn = client.connect(PUBLIC_HOST, proto).await;
        let response = conn.send(get("/dest-a/Patient/1")).await.unwrap();
        assert_eq!(response.status(), 200, "{proto:?}");
        text_of(response).await;
        let idle_from = Instant::now();
        conn.closed().await;
        assert!(
            idle_from.elapsed() >= Duration::from_millis(1900),
            "{proto:?}: closed after {:?}, before the idle timeout",
            idle_from.elapsed()
        );

        // An exchange in flight for longer than the idle timeout keeps its connection.
        let mut conn = client.connect(PUBLIC_HOST, proto).await;
        let response = conn.send(get("/dest-a/slow?ms=4500")).await.unwrap();
        assert_eq!(response.status(), 200, "{proto:?}");
        text_of(response).await;
        assert!(!conn.is_closed(), "{proto:?}: a busy connection was closed");
        let response = conn.send(get("/dest-a/Patient/1")).await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "{proto:?}: the connection was not reusable"
        );
    }
}

#[tokio::test]
async fn exchange_duration_cap_is_off_by_default() {
    let (pki, _destination, gw) = gateway(r#"idle_timeout = "1s""#, "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let response = client.get("/dest-a/slow?ms=1500", Proto::Http2).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn exchange_over_its_cap_is_504_before_the_head_and_aborted_after() {
    let (pki, destination, gw) = gateway(
        r#"max_exchange_duration = "1s""#,
        // dest-a lifts the cap for itself: a per-route override.
        r#"max_exchange_duration = "1h""#,
    )
    .await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for proto in BOTH {
        // No response head within the cap: the gateway answers 504 itself.
        let response = client.get("/dest-b/slow?ms=3000", proto).await;
        assert_eq!(response.status(), 504, "{proto:?}");
        let body = text_of(response).await;
        assert!(body.contains(r#""code":"timeout""#), "{proto:?}: {body}");
        assert!(!body.contains("localhost"), "{proto:?}: {body}");

        // A response still streaming at the cap is aborted, never cut short silently. No
        // machine moves 16 GiB through two TLS hops within the 1 s cap.
        const SIZE: u64 = 16 << 30;
        let response = client
            .get(&format!("/dest-b/download?bytes={SIZE}"), proto)
            .await;
        assert_eq!(response.status(), 200, "{proto:?}");
        let mut body = response.into_body();
        let mut received = 0u64;
        let ended = bounded("the aborted download", async {
            loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        received += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    Some(Err(_)) => return "aborted",
                    None => return "complete",
                }
            }
        })
        .await;
        assert_eq!(ended, "aborted", "{proto:?}: {received} of {SIZE} bytes");
        assert!(received < SIZE, "{proto:?}");

        // The route with its own, longer cap is not affected.
        let response = client.get("/dest-a/slow?ms=1500", proto).await;
        assert_eq!(response.status(), 200, "{proto:?}");
    }
    assert!(destination.requests().len() >= 6);
}

/// An upload still arriving when the exchange's cap answers 504 is reset upstream at once,
/// not passed on behind the client's back: the destination sees it broken off after the
/// bytes sent before the 504, though the client goes on to send the rest.
#[tokio::test]
async fn an_upload_cut_off_by_the_cap_is_reset_upstream() {
    let (pki, destination, gw) = gateway(r#"max_exchange_duration = "1s""#, "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for proto in BOTH {
        let before = destination.requests().len();
        let mut conn = client.connect(PUBLIC_HOST, proto).await;
        let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, BoxError>::new(2);
        tx.send_data(bytes::Bytes::from_static(b"{\"resourceType\":"))
            .await
            .unwrap();
        let request = http::Request::post("/dest-b/upload")
            .body(body.boxed())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 504, "{proto:?}");
        // The client finishes its body after all (it may find the stream gone).
        let _ = tx
            .send_data(bytes::Bytes::from_static(b"\"Patient\"}"))
            .await;
        drop(tx);
        let received = bounded("the destination to see the upload end", async {
            loop {
                let requests = destination.requests();
                if let Some(upload) = requests.get(before).filter(|r| r.ended) {
                    return upload.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(received.target, "/fhir/upload", "{proto:?}");
        assert!(received.body.is_none(), "{proto:?}: {:?}", received.body);
        assert_eq!(received.body_bytes, 16, "{proto:?}");
    }
}

#[tokio::test]
async fn route_at_its_concurrency_cap_answers_503_and_other_routes_are_unaffected() {
    let (pki, destination, gw) = gateway("", "max_concurrent_exchanges = 1").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let response = client.get("/dest-a/slow?ms=1500", Proto::Http2).await;
            (response.status(), text_of(response).await)
        }
    });
    bounded("the slow request reaching the destination", async {
        while destination.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    for proto in BOTH {
        let response = client.get("/dest-a/Patient/1", proto).await;
        assert_eq!(response.status(), 503, "{proto:?}");
        assert_eq!(response.headers()["retry-after"], "1", "{proto:?}");
        let body = text_of(response).await;
        assert!(body.contains(r#""code":"transient""#), "{proto:?}: {body}");
        // Another route to the same destination has its own (here: no) cap.
        let response = client.get("/dest-b/Patient/1", proto).await;
        assert_eq!(response.status(), 200, "{proto:?}");
    }
    assert_eq!(
        destination
            .requests()
            .iter()
            .filter(|r| r.target.contains("/Patient/1"))
            .count(),
        2,
        "only dest-b's requests reached the destination"
    );

    let (status, _) = slow.await.unwrap();
    assert_eq!(status, 200);
    // The slot is given back when the exchange ends.
    let response = client.get("/dest-a/Patient/1", Proto::Http1).await;
    assert_eq!(response.status(), 200);
}
