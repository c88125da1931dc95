//! Hostile clients leave the gateway healthy: garbage instead of a ClientHello, truncated
//! handshakes, clients that vanish mid-download, and slowloris connections trickling
//! header bytes. The open-connection gauge returns to zero (no task or connection leak).

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::*;
use tokio::io::AsyncWriteExt;

fn toml(destination_port: u16, limits: &str) -> String {
    let tables = format!("[admin]\nbind = \"127.0.0.1:0\"\n[limits]\n{limits}");
    one_route_toml("127.0.0.1:0", &destination_url(destination_port), &tables)
}

async fn open_connections_of(gw: &TestGateway) -> u64 {
    open_connections(gw.gateway.as_ref().unwrap().admin_addr().unwrap()).await
}

async fn gateway(limits: &str) -> (Pki, Destination, TestGateway) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let gw = TestGateway::start(&pki, &toml(destination.addr.port(), limits)).await;
    (pki, destination, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_handshakes_and_vanishing_clients_leak_nothing() {
    let (pki, _destination, gw) = gateway(r#"tls_handshake_timeout = "500ms""#).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for _ in 0..20 {
        // Garbage instead of a ClientHello.
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let _ = tcp
            .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5])
            .await;
        drop(tcp);
        // A ClientHello cut short, then silence.
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let _ = tcp
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
            .await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(tcp);
        });
    }
    // Clients that vanish in the middle of a download, on both protocols.
    for proto in [Proto::Http1, Proto::Http2, Proto::Http1, Proto::Http2] {
        let response = client.get("/dest-a/download?bytes=104857600", proto).await;
        let mut body = response.into_body();
        let _ = body.frame().await;
        drop(body);
    }
    // Still healthy for everyone else.
    assert_eq!(
        client.get("/dest-a/Patient/1", Proto::Http1).await.status(),
        200
    );
    let mut open = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = open_connections_of(&gw).await;
        if open == 0 {
            break;
        }
    }
    assert_eq!(open, 0, "connections leaked");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_delay_others_and_are_closed() {
    let (pki, _destination, gw) = gateway(r#"header_read_timeout = "1s""#).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    // 200 TLS connections each trickling one header byte at a time.
    let mut trickling = Vec::new();
    for _ in 0..200 {
        let mut tls = client.tls(Some(PUBLIC_HOST), &[b"http/1.1"]).await.unwrap();
        trickling.push(tokio::spawn(async move {
            let started = Instant::now();
            let line = format!("GET /dest-a/x HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nX-Slow: ");
            if tls.write_all(line.as_bytes()).await.is_err() {
                return started.elapsed();
            }
            for _ in 0..100 {
                if tls.write_all(b"a").await.is_err() || tls.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            started.elapsed()
        }));
    }
    // A normal client is not held up by them.
    let started = Instant::now();
    assert_eq!(
        client.get("/dest-a/Patient/1", Proto::Http1).await.status(),
        200
    );
    let normal = started.elapsed();
    eprintln!("normal request under slowloris: {normal:?}");
    assert!(
        normal < Duration::from_millis(900),
        "a normal request took {normal:?} under slowloris"
    );
    // And the trickling connections are closed after the header timeout, not kept for the
    // ten seconds they would trickle.
    for task in trickling {
        let lasted = task.await.unwrap();
        assert!(
            lasted < Duration::from_secs(6),
            "a slowloris connection lasted {lasted:?}"
        );
    }
    gw.stop().await;
}
