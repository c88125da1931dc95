//! Closing: when the gateway ends a connection, the client still receives every byte the
//! gateway wrote before it, even if the client sent more meanwhile (a pipelined request, an
//! HTTP/2 WINDOW_UPDATE). Closing a socket with unread input makes the kernel send a TCP
//! reset and throw away what is still queued for sending, so the gateway closes its side
//! for writing first and reads until the client closes too ("lingering close").

mod support;

use std::time::Duration;

use sha2::Digest;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Larger than what the kernels' socket buffers hold between the two ends on loopback, so
/// the gateway's last writes are still queued when it closes.
const SIZE: u64 = 16 << 20;

/// Reads `stream` to its end a little at a time, as a slow client does, and returns what
/// it read and how it ended.
async fn read_slowly(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> (Vec<u8>, std::io::Result<()>) {
    let mut received = Vec::new();
    let mut buf = vec![0; 64 << 10];
    // Bounded, with room to spare: a read returns at least a part of a TLS record, and
    // the callers bound the time as well.
    for _ in 0..SIZE / 1024 {
        match stream.read(&mut buf).await {
            Ok(0) => return (received, Ok(())),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(error) => return (received, Err(error)),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (received, Err(std::io::ErrorKind::TimedOut.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_response_before_close_arrives_whole_though_the_client_sent_more() {
    let setup = Setup::new().await;
    let mut tls = setup
        .client()
        .tls(Some(PUBLIC_HOST), &[b"http/1.1"])
        .await
        .unwrap();
    // Client sent: a request that asks the gateway to close after its answer.
    let request = format!(
        "GET /dest-a/download?bytes={SIZE} HTTP/1.1\r\nhost: {PUBLIC_HOST}\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    // ... and, once the gateway is busy sending the answer, a pipelined upload that the
    // gateway will not read: more than hyper buffers, so most of it stays in the socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Written beside the reading: the gateway reads none of it, so the write may stall.
    const UPLOAD: usize = 1 << 20;
    let (mut reading, mut writing) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let upload = format!(
            "POST /dest-a/upload HTTP/1.1\r\nhost: {PUBLIC_HOST}\r\ncontent-length: {UPLOAD}\r\n\r\n"
        );
        writing.write_all(upload.as_bytes()).await?;
        writing.write_all(&vec![b'{'; UPLOAD]).await?;
        writing.flush().await
    });

    // Client saw: the whole answer, then the end of the connection, not a reset.
    let (received, ended) = bounded("reading the answer", read_slowly(&mut reading)).await;
    writer.abort();
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
    let body = &received[head_end..];
    assert_eq!(
        body.len() as u64,
        SIZE,
        "the answer was cut short; the connection ended with {ended:?}"
    );
    assert_eq!(hex(&sha2::Sha256::digest(body)), PatternBody::sha256(SIZE));
    // The gateway ended TLS properly (close_notify) and the TCP connection with a FIN.
    ended.expect("the connection ended cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_download_in_flight_at_shutdown_arrives_whole_at_a_slow_client() {
    use support::h2raw::{self, RawH2};
    let setup = Setup::new().await;
    // A client that takes frames off its socket slowly, with a small fixed receive buffer
    // (as a client far away or a busy one): what the gateway has sent but the client not
    // yet taken waits in the gateway's socket.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let tcp = bounded("connecting", socket.connect(setup.gateway.addr))
        .await
        .unwrap();
    let config = client_config(&setup.pki.public_ca.pem, &[b"h2"]);
    let tls = bounded(
        "TLS handshake with the gateway",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(
            rustls::pki_types::ServerName::try_from(PUBLIC_HOST).unwrap(),
            tcp,
        ),
    )
    .await
    .unwrap();
    let mut h2 = RawH2::over(tls).await;

    // Client sent: GET for a large download; it gives the stream and the connection back
    // their window for every 256 KiB it reads, as HTTP/2 clients do, so it keeps sending
    // WINDOW_UPDATE frames until the very end.
    let block = h2raw::request_block("GET", &format!("/dest-a/download?bytes={SIZE}"), &[]);
    assert!(h2.send(&h2raw::headers(1, true, true, &block)).await);
    let mut gateway = Some(setup.gateway);
    let mut stopping = None;
    let mut received = Vec::new();
    let mut unacknowledged = 0u32;
    let mut ended = false;
    bounded("reading the download", async {
        while let Some(frame) = h2.reader.next().await {
            // The gateway's graceful shutdown waits for the answer to its PING (flag 0x1:
            // ACK).
            if frame.kind == h2raw::PING && frame.flags & 0x1 == 0 {
                let _ = h2
                    .send(&h2raw::frame(h2raw::PING, 0x1, 0, &frame.payload))
                    .await;
            }
            if frame.stream != 1 {
                continue;
            }
            if frame.kind == h2raw::HEADERS
                && let Some(gateway) = gateway.take()
            {
                assert_eq!(frame.status(), Some(200));
                // The gateway is told to stop: GOAWAY, the stream finishes, then it closes.
                stopping = Some(tokio::spawn(gateway.stop()));
            }
            if frame.kind == h2raw::DATA {
                received.extend_from_slice(&frame.payload);
                unacknowledged += frame.payload.len() as u32;
                if unacknowledged >= 256 << 10 {
                    let mut update = h2raw::window_update(1, unacknowledged);
                    update.extend(h2raw::window_update(0, unacknowledged));
                    // Sent after the gateway's close, these are what make its kernel reset
                    // the connection; a failed write shows in the reading that follows.
                    let _ = h2.send(&update).await;
                    unacknowledged = 0;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if frame.end_stream() {
                ended = true;
                break;
            }
        }
    })
    .await;
    // Client saw: every byte and the end of the stream, not a reset connection.
    assert!(
        ended,
        "the connection ended after {} of {SIZE} bytes, before the stream did",
        received.len()
    );
    assert_eq!(received.len() as u64, SIZE);
    assert_eq!(
        hex(&sha2::Sha256::digest(&received)),
        PatternBody::sha256(SIZE)
    );
    drop(h2);
    bounded("the gateway stopping", stopping.unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stays_silent_after_the_close_is_let_go_after_a_quiet_while() {
    let setup = Setup::with_route_extra("[limits]\nmax_connections_per_ip = 1").await;
    let client = setup.client();
    // Client sent: one request asking the gateway to close; it reads the answer to its end
    // and then neither sends nor closes.
    let mut silent = client.tls(Some(PUBLIC_HOST), &[b"http/1.1"]).await.unwrap();
    let request = format!(
        "GET /dest-a/Patient/1 HTTP/1.1\r\nhost: {PUBLIC_HOST}\r\nconnection: close\r\n\r\n"
    );
    silent.write_all(request.as_bytes()).await.unwrap();
    silent.flush().await.unwrap();
    let (answer, ended) = bounded("reading the answer", read_slowly(&mut silent)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    ended.expect("the gateway closed cleanly");

    // While the gateway lingers on that socket it is still open and holds its place.
    assert!(
        client.tls(Some(PUBLIC_HOST), &[]).await.is_err(),
        "the lingering socket gave its place back before it was closed"
    );
    // The place comes back after a quiet while, though the client never closes (without
    // that bound it would be kept for the whole 30 s a lingering socket may last).
    let started = std::time::Instant::now();
    let mut admitted = false;
    for _ in 0..75 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if client.tls(Some(PUBLIC_HOST), &[]).await.is_ok() {
            admitted = true;
            break;
        }
    }
    assert!(
        admitted,
        "the silent client's socket was still held after {:?}",
        started.elapsed()
    );
    drop(silent);
    setup.gateway.stop().await;
}
