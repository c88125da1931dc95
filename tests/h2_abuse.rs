//! HTTP/2 abuse against a real running gateway over real TLS (ALPN h2): rapid reset
//! (CVE-2023-44487) and its server-provoked variant, SETTINGS and PING floods, more streams
//! than SETTINGS_MAX_CONCURRENT_STREAMS, and CONTINUATION floods / oversized header lists
//! (CVE-2024-27316 family). Every loop is bounded; the assertions are about behaviour (the
//! connection is ended or refused, the destination sees a bounded number of requests, other
//! clients are served, memory stays bounded, no connection leaks), never about speed.
//!
//! Raw frames come from `support::h2raw`; the tests that need the gateway's own memory
//! figures run the real binary as a child process.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::h2raw::{self, RawH2};
use support::*;

const MIB: u64 = 1 << 20;

fn toml(bind: &str, destination_port: u16, admin: &str, limits: &str) -> String {
    let tables = format!("[admin]\nbind = \"{admin}\"\n[limits]\n{limits}");
    one_route_toml(bind, &destination_url(destination_port), &tables)
}

/// The gateway in-process, with an admin listener (for the open-connection gauge).
async fn in_process() -> (Pki, Destination, TestGateway, SocketAddr) {
    in_process_with("").await
}

/// [`in_process`] with `[limits]` lines.
async fn in_process_with(limits: &str) -> (Pki, Destination, TestGateway, SocketAddr) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let gw = TestGateway::start(
        &pki,
        &toml(
            "127.0.0.1:0",
            destination.addr.port(),
            "127.0.0.1:0",
            limits,
        ),
    )
    .await;
    let admin = gw.gateway.as_ref().unwrap().admin_addr().unwrap();
    (pki, destination, gw, admin)
}

/// The real binary as a child process (for its peak RSS), with an admin listener.
async fn child() -> (Pki, Destination, ChildGateway, SocketAddr) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = pki.write(
        "child.toml",
        &toml(
            &format!("127.0.0.1:{port}"),
            destination.addr.port(),
            &admin.to_string(),
            "",
        ),
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let gateway = ChildGateway::run(&config, addr, &[], "warn").await;
    wait_for_port(admin).await;
    (pki, destination, gateway, admin)
}

/// The open-connection gauge comes back to zero within 30 s.
async fn assert_no_connection_left(admin: SocketAddr, what: &str) {
    let mut open = u64::MAX;
    for _ in 0..300 {
        open = open_connections(admin).await;
        if open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {open} connection(s) still open 30 s after the attack");
}

/// A normal HTTP/2 client on its own connection gets a correct 200 through the gateway.
async fn assert_served(client: &Client, what: &str) {
    let response = client.get("/dest-a/Patient/1", Proto::Http2).await;
    assert_eq!(
        response.status(),
        200,
        "{what}: a normal client was not served"
    );
    assert_eq!(text_of(response).await, PATIENT, "{what}");
}

/// How many requests the destination received whose target contains `tag`.
fn received_with(destination: &Destination, tag: &str) -> usize {
    destination
        .requests()
        .iter()
        .filter(|r| r.target.contains(tag))
        .count()
}

// ---------------------------------------------------------------------------------------
// 1. Rapid reset
// ---------------------------------------------------------------------------------------

/// Streams opened and reset at once, on one connection (a few thousand, bounded).
const RAPID_STREAMS: u32 = 5000;
/// "Only a bounded number reached the destination": well under the number of streams.
const RAPID_BOUND: usize = 200;

/// A raw HTTP/2 connection whose incoming frames a task records until the gateway closes it
/// or falls quiet.
async fn open_recorded(
    client: &Client,
) -> (
    impl tokio::io::AsyncWrite + Unpin + use<>,
    tokio::task::JoinHandle<h2raw::Seen>,
) {
    let RawH2 {
        mut reader, writer, ..
    } = RawH2::open(client).await;
    let reading = tokio::spawn(async move {
        reader
            .collect_until_closed(Duration::from_secs(5), Duration::from_secs(90))
            .await
    });
    (writer, reading)
}

/// Writes streams `0..RAPID_STREAMS` (stream `i` made by `frames(i, buf)`) in batches of 100
/// without waiting for answers, until done or the gateway no longer takes the bytes.
/// Returns how many streams were written.
async fn write_streams(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    what: &str,
    frames: impl Fn(u32, &mut Vec<u8>),
) -> u32 {
    const BATCH: u32 = 100;
    let mut sent = 0u32;
    bounded(what, async {
        while sent < RAPID_STREAMS {
            let mut buf = Vec::new();
            for i in sent..sent + BATCH {
                frames(i, &mut buf);
            }
            if !h2raw::write_all(writer, &buf).await {
                break;
            }
            sent += BATCH;
        }
    })
    .await;
    sent
}

/// CVE-2023-44487: HEADERS then RST_STREAM(CANCEL), thousands of times, written in batches
/// without waiting. The gateway must end the connection early (GOAWAY, typically
/// ENHANCE_YOUR_CALM, or close) or at least forward only a bounded number of those requests;
/// other clients are served during and after; no connection is left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let (pki, destination, gw, admin) = in_process().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let (mut writer, reading) = open_recorded(&client).await;
    // A normal client during the attack.
    let during = tokio::spawn({
        let client = client.clone();
        async move {
            let response = client.get("/dest-a/Patient/1", Proto::Http2).await;
            (response.status(), text_of(response).await)
        }
    });

    let sent = write_streams(&mut writer, "writing the rapid-reset batches", |i, buf| {
        let id = 2 * i + 1;
        let block = h2raw::request_block("GET", &format!("/dest-a/rapid/{i}"), &[]);
        h2raw::push_frame(
            buf,
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            id,
            &block,
        );
        h2raw::push_frame(buf, h2raw::RST_STREAM, 0, id, &h2raw::CANCEL.to_be_bytes());
    })
    .await;
    let seen = bounded("the attacking connection's frames", reading)
        .await
        .unwrap();
    drop(writer);

    let (status, body) = bounded("the request made during the attack", during)
        .await
        .unwrap();
    assert_eq!(status, 200, "a client during the attack was not served");
    assert_eq!(body, PATIENT);
    assert_served(&client, "after the rapid reset").await;
    assert_no_connection_left(admin, "rapid reset").await;
    let forwarded = received_with(&destination, "/rapid/");
    let last_sent = 2 * sent.saturating_sub(1) + 1;
    eprintln!(
        "rapid reset: {sent} of {RAPID_STREAMS} streams written; {forwarded} reached the destination; {}",
        seen.describe()
    );
    let cut_off = seen.goaway.is_some_and(|(last, _)| last < last_sent)
        || (seen.closed && sent < RAPID_STREAMS);
    assert!(
        cut_off || forwarded <= RAPID_BOUND,
        "the gateway neither ended the connection early nor bounded the work: \
         {sent} streams written, {forwarded} forwarded to the destination; {}",
        seen.describe()
    );
    assert!(
        forwarded < RAPID_STREAMS as usize,
        "every reset stream was still forwarded ({forwarded})"
    );
    gw.stop().await;
}

/// The same attack with the `h2` client crate: `send_request` then
/// `send_reset(CANCEL)` on each stream, as fast as the crate allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_with_the_h2_client_crate_is_cut_off() {
    let (pki, destination, gw, admin) = in_process().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let tls = client.tls(Some(PUBLIC_HOST), &[b"h2"]).await.unwrap();
    let (send, connection) = bounded("h2 handshake", h2::client::handshake(tls))
        .await
        .expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let mut opened = 0u32;
    let mut stopped_by: Option<String> = None;
    bounded("opening and resetting streams", async {
        let mut send = send;
        while opened < RAPID_STREAMS {
            send = match send.ready().await {
                Ok(s) => s,
                Err(e) => {
                    stopped_by = Some(format!("not ready: {e}"));
                    break;
                }
            };
            let request =
                http::Request::get(format!("https://{PUBLIC_HOST}/dest-a/rapid-h2/{opened}"))
                    .body(())
                    .unwrap();
            match send.send_request(request, false) {
                Ok((response, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    drop(response);
                }
                Err(e) => {
                    stopped_by = Some(format!("send_request: {e}"));
                    break;
                }
            }
            opened += 1;
        }
    })
    .await;
    // The connection's end, as the h2 crate reports it (bounded: the gateway must close or
    // the crate must finish once every stream is gone).
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    let ended = match ended {
        Ok(Ok(Ok(()))) => "ended cleanly".to_owned(),
        Ok(Ok(Err(e))) => format!(
            "ended with {e} (go_away={}, reason={:?})",
            e.is_go_away(),
            e.reason()
        ),
        Ok(Err(e)) => format!("driver panicked: {e}"),
        Err(_) => "still open after 10 s".to_owned(),
    };
    assert_served(&client, "after the h2-crate rapid reset").await;
    assert_no_connection_left(admin, "h2-crate rapid reset").await;
    let forwarded = received_with(&destination, "/rapid-h2/");
    eprintln!(
        "h2-crate rapid reset: {opened} streams opened and reset; stopped by {stopped_by:?}; \
         connection {ended}; {forwarded} reached the destination"
    );
    assert!(
        opened < RAPID_STREAMS || forwarded <= RAPID_BOUND,
        "all {opened} streams were accepted and {forwarded} forwarded; connection {ended}"
    );
    gw.stop().await;
}

/// "MadeYouReset" (CVE-2025-8671): the client makes the *server* reset streams, thousands
/// of times, with requests that are malformed at the stream level (a connection-specific
/// `connection: keep-alive` field, RFC 9113 §8.2.2, which `h2` answers with
/// RST_STREAM(PROTOCOL_ERROR) and not with a GOAWAY). The gateway must end the connection
/// once too many streams were reset for errors (hyper's `max_local_error_reset_streams`),
/// and nothing malformed reaches the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_provoked_resets_are_cut_off() {
    let (pki, destination, gw, admin) = in_process().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let (mut writer, reading) = open_recorded(&client).await;
    let sent = write_streams(&mut writer, "writing malformed streams", |i, buf| {
        let block = h2raw::request_block(
            "GET",
            &format!("/dest-a/made-you-reset/{i}"),
            &[(b"connection", b"keep-alive")],
        );
        h2raw::push_frame(
            buf,
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            2 * i + 1,
            &block,
        );
    })
    .await;
    let seen = bounded("the attacking connection's frames", reading)
        .await
        .unwrap();
    drop(writer);
    assert_served(&client, "after server-provoked resets").await;
    assert_no_connection_left(admin, "server-provoked resets").await;
    let forwarded = received_with(&destination, "/made-you-reset/");
    eprintln!(
        "server-provoked resets: {sent} malformed streams written; {forwarded} forwarded; {}",
        seen.describe()
    );
    assert_eq!(
        forwarded, 0,
        "malformed requests (connection-specific field) reached the destination"
    );
    let last_sent = 2 * sent.saturating_sub(1) + 1;
    assert!(
        seen.goaway.is_some_and(|(last, _)| last < last_sent)
            || (seen.closed && sent < RAPID_STREAMS)
            || seen.resets.len() <= RAPID_BOUND,
        "the gateway reset {} streams for errors and kept the connection: {}",
        seen.resets.len(),
        seen.describe()
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. SETTINGS and PING floods
// ---------------------------------------------------------------------------------------

/// Makes the `i`-th frame of a flood.
type FrameMaker = Box<dyn Fn(usize) -> Vec<u8>>;

/// Small frames written per flood.
const FLOOD_FRAMES: usize = 100_000;

#[derive(Debug)]
#[allow(dead_code)] // The counts are shown through `Debug`.
enum Flood {
    /// Every frame was written.
    Completed,
    /// The gateway closed the connection after this many frames.
    Closed(usize),
    /// The gateway stopped reading (backpressure: its replies were not read) after this
    /// many frames were written.
    Stalled(usize),
}

/// Writes `FLOOD_FRAMES` frames made by `make` in batches, never reading; a batch that cannot
/// be written for 5 s means the gateway applies backpressure (which is fine). At most
/// 60 s plus one 5 s wait.
async fn flood(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    make: impl Fn(usize) -> Vec<u8>,
) -> Flood {
    const BATCH: usize = 1000;
    // Bounded in time too, without failing a slow machine: a flood still being written after
    // a minute is reported like backpressure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut written = 0;
    while written < FLOOD_FRAMES {
        if tokio::time::Instant::now() > deadline {
            return Flood::Stalled(written);
        }
        let mut buf = Vec::new();
        for i in written..written + BATCH {
            buf.extend(make(i));
        }
        match tokio::time::timeout(Duration::from_secs(5), h2raw::write_all(writer, &buf)).await {
            Ok(true) => written += BATCH,
            Ok(false) => return Flood::Closed(written),
            Err(_) => return Flood::Stalled(written),
        }
    }
    Flood::Completed
}

/// SETTINGS (with changing values) and PING floods on one connection each, against the real
/// binary: the gateway stays responsive to another client, its peak RSS stays under 64 MiB,
/// and the flooding connection is closed or held back by backpressure (bounded either way);
/// no connection is left open afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_stay_bounded() {
    let (pki, _destination, gateway, admin) = child().await;
    let client = Client::new(&pki.public_ca.pem, gateway.addr);
    assert_served(&client, "before the floods").await;
    let floods: [(&str, FrameMaker); 3] = [
        (
            "SETTINGS",
            Box::new(|i| {
                h2raw::settings(&[
                    (h2raw::SETTINGS_INITIAL_WINDOW_SIZE, 65535 + (i % 2) as u32),
                    (h2raw::SETTINGS_HEADER_TABLE_SIZE, 0),
                ])
            }),
        ),
        ("PING", Box::new(|i| h2raw::ping((i as u64).to_be_bytes()))),
        ("empty SETTINGS", Box::new(|_| h2raw::settings(&[]))),
    ];
    for (what, make) in floods {
        let RawH2 {
            mut reader,
            mut writer,
            ..
        } = RawH2::open(&client).await;
        let outcome = flood(&mut writer, make).await;
        // While the flooding connection is still open and unread: others are served.
        assert_served(&client, &format!("during the {what} flood")).await;
        // Now read what the flooding connection was sent (bounded both in time and amount).
        let seen = reader
            .collect_until_closed(Duration::from_secs(2), Duration::from_secs(20))
            .await;
        let peak = gateway.peak_rss();
        eprintln!(
            "{what} flood: {outcome:?}; then read {} frames (goaway={:?}, closed={}); gateway peak RSS {} MiB",
            seen.frames,
            seen.goaway.map(|(l, c)| (l, h2raw::reason_name(c))),
            seen.closed,
            peak >> 20
        );
        assert!(
            peak < 64 * MIB,
            "{what} flood: gateway peak RSS {} MiB is not under 64 MiB",
            peak >> 20
        );
        // Whatever the gateway answered is bounded by what it was sent: at most one reply per
        // frame, plus its own SETTINGS / WINDOW_UPDATE / GOAWAY.
        assert!(
            seen.frames <= FLOOD_FRAMES + 16,
            "{what} flood: {} frames came back for {FLOOD_FRAMES} sent",
            seen.frames
        );
        drop((reader, writer));
    }
    assert_served(&client, "after the floods").await;
    assert_no_connection_left(admin, "floods").await;
    let out = gateway.stop();
    assert!(
        out.status.success(),
        "the gateway did not stop cleanly: {:?}\n{}",
        out.status,
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 3. More streams than SETTINGS_MAX_CONCURRENT_STREAMS
// ---------------------------------------------------------------------------------------

/// `[limits] max_concurrent_streams` is what the gateway advertises (default 100).
#[tokio::test]
async fn the_advertised_stream_limit_is_the_configured_one() {
    for (limits, expected) in [("", 100), ("max_concurrent_streams = 7", 7)] {
        let (pki, _destination, gw, _admin) = in_process_with(limits).await;
        let conn = RawH2::open(&Client::new(&pki.public_ca.pem, gw.addr)).await;
        assert_eq!(
            conn.server_setting(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS),
            Some(expected),
            "{limits:?}"
        );
    }
}

/// The gateway advertises a finite SETTINGS_MAX_CONCURRENT_STREAMS. A raw client that
/// ignores it and opens `max + 50` slow requests at once gets the extra streams refused
/// (REFUSED_STREAM), and the destination never sees more than `max` of those requests; a
/// well-behaved client (hyper) opening `max + 20` queues per the setting and gets all of
/// them answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_advertised_maximum_are_refused() {
    let (pki, destination, gw, admin) = in_process().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let mut conn = RawH2::open(&client).await;
    let max = conn
        .server_setting(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS)
        .expect("the gateway does not advertise SETTINGS_MAX_CONCURRENT_STREAMS (unlimited)");
    eprintln!("advertised SETTINGS: {:?}", conn.server_settings);
    assert!(
        (1..=1000).contains(&max),
        "SETTINGS_MAX_CONCURRENT_STREAMS = {max} is not a sensible finite limit"
    );
    const EXTRA: u32 = 50;
    let total = max + EXTRA;
    // All HEADERS in one write, to a path the destination answers only after 5 s, so all
    // accepted streams are open together.
    let mut buf = Vec::new();
    for i in 0..total {
        let block = h2raw::request_block("GET", &format!("/dest-a/slow?ms=5000&conc={i}"), &[]);
        buf.extend(h2raw::headers(2 * i + 1, true, true, &block));
    }
    assert!(conn.send(&buf).await, "the gateway closed the connection");
    let mut done: HashMap<u32, String> = HashMap::new();
    let mut refused = 0u32;
    let mut answered = 0u32;
    let mut other = Vec::new();
    let mut goaway = None;
    bounded("every stream reset or answered", async {
        while (done.len() as u32) < total {
            let Some(frame) = conn.reader.next().await else {
                break;
            };
            if let Some(g) = frame.goaway() {
                goaway = Some(g);
            }
            if frame.stream == 0 || done.contains_key(&frame.stream) {
                continue;
            }
            if let Some(code) = frame.rst_code() {
                if code == h2raw::REFUSED_STREAM {
                    refused += 1;
                } else {
                    other.push(frame.describe());
                }
                done.insert(frame.stream, frame.describe());
            } else if frame.kind == h2raw::HEADERS {
                match frame.status() {
                    Some(200) => answered += 1,
                    _ => other.push(frame.describe()),
                }
                if frame.end_stream() {
                    done.insert(frame.stream, frame.describe());
                }
            } else if frame.end_stream() {
                done.insert(frame.stream, frame.describe());
            }
        }
    })
    .await;
    let forwarded = received_with(&destination, "conc=");
    eprintln!(
        "max {max}: {total} streams opened at once; {refused} refused, {answered} answered, \
         {forwarded} reached the destination; other: {other:?}; goaway: {goaway:?}"
    );
    assert!(
        forwarded <= max as usize,
        "the destination received {forwarded} requests from one connection advertising {max} concurrent streams"
    );
    assert_eq!(
        refused, EXTRA,
        "the streams over the limit were not refused with REFUSED_STREAM (other: {other:?})"
    );
    assert_eq!(answered, max, "other: {other:?}");
    assert!(other.is_empty(), "{other:?}");
    drop(conn);

    // A well-behaved client queues per the setting: all answered.
    let mut h2 = client.connect(PUBLIC_HOST, Proto::Http2).await;
    let Conn::H2(send) = &mut h2 else {
        unreachable!()
    };
    let mut pending = Vec::new();
    for i in 0..max + 20 {
        let mut send = send.clone();
        pending.push(tokio::spawn(async move {
            let request = http::Request::get(format!(
                "https://{PUBLIC_HOST}/dest-a/slow?ms=300&queued={i}"
            ))
            .body(empty())
            .unwrap();
            send.ready().await?;
            send.send_request(request).await.map(|r| r.status())
        }));
    }
    for task in pending {
        let status = bounded("a queued request", task).await.unwrap();
        assert_eq!(status.expect("a queued request failed"), 200);
    }
    assert_eq!(received_with(&destination, "queued="), (max + 20) as usize);
    drop(h2);
    assert_served(&client, "after the stream limit").await;
    assert_no_connection_left(admin, "too many streams").await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// 4. CONTINUATION flood and oversized header lists
// ---------------------------------------------------------------------------------------

/// One attack: the frames of stream 1, written in batches.
struct HeaderAttack {
    what: &'static str,
    batches: Vec<Vec<u8>>,
}

/// HEADERS without END_HEADERS, then CONTINUATION frames until `total` header bytes; the
/// HEADERS frame starts a literal field whose declared value length is the whole rest.
fn big_fragments(tag: &str, frame_bytes: usize, total: usize) -> Vec<Vec<u8>> {
    let mut first = h2raw::request_block("GET", &format!("/dest-a/{tag}"), &[]);
    first.push(0x00);
    h2raw::hpack_int(&mut first, 0x00, 7, 5);
    first.extend_from_slice(b"x-big");
    h2raw::hpack_int(&mut first, 0x00, 7, total);
    let mut batches = vec![h2raw::headers(1, true, false, &first)];
    let chunk = vec![b'a'; frame_bytes];
    let frames = total / frame_bytes;
    let mut batch = Vec::new();
    for i in 0..frames {
        batch.extend(h2raw::continuation(1, i + 1 == frames, &chunk));
        if batch.len() >= 256 * 1024 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    batches.push(batch);
    batches
}

/// HEADERS without END_HEADERS, then `count` CONTINUATION frames each carrying one small,
/// complete header field (the CVE-2024-27316 pattern).
fn tiny_fragments(tag: &str, count: usize) -> Vec<Vec<u8>> {
    let first = h2raw::request_block("GET", &format!("/dest-a/{tag}"), &[]);
    let mut batches = vec![h2raw::headers(1, true, false, &first)];
    let mut batch = Vec::new();
    for i in 0..count {
        let field = h2raw::literal(format!("x-c{}", i % 1000).as_bytes(), b"1");
        batch.extend(h2raw::continuation(1, i + 1 == count, &field));
        if batch.len() >= 256 * 1024 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    batches.push(batch);
    batches
}

/// A complete header block (END_HEADERS on its last frame, 16 KiB frames) whose fields add
/// up to a little over `bytes`: refused (431 or reset), never forwarded.
fn just_over(tag: &str, bytes: usize) -> Vec<Vec<u8>> {
    let mut block = h2raw::request_block("GET", &format!("/dest-a/{tag}"), &[]);
    let mut i = 0;
    while block.len() <= bytes {
        h2raw::push_literal(&mut block, format!("x-h{i}").as_bytes(), &[b'v'; 4000]);
        i += 1;
    }
    let chunks: Vec<&[u8]> = block.chunks(16384).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        if i == 0 {
            out.extend(h2raw::headers(1, true, last, chunk));
        } else {
            out.extend(h2raw::continuation(1, last, chunk));
        }
    }
    vec![out]
}

/// CONTINUATION floods (16 KiB fragments up to 16 MiB; 100 000 tiny fragments) and a
/// header list just over `max_header_bytes`, against the real binary: the stream or the
/// connection is refused, nothing reaches the destination, the gateway's peak RSS stays
/// under 64 MiB, another client is still served, and no connection is left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_and_oversized_header_lists_are_refused() {
    let (pki, destination, gateway, admin) = child().await;
    let client = Client::new(&pki.public_ca.pem, gateway.addr);
    let attacks = [
        HeaderAttack {
            what: "16 MiB in 16 KiB CONTINUATION frames",
            batches: big_fragments("cont-big", 16384, 16 << 20),
        },
        HeaderAttack {
            what: "100 000 tiny CONTINUATION frames",
            batches: tiny_fragments("cont-tiny", 100_000),
        },
        HeaderAttack {
            what: "a header list just over max_header_bytes (64 KiB)",
            batches: just_over("cont-over-limit", 65536),
        },
        HeaderAttack {
            what: "a header list just over twice max_header_bytes (hyper's backstop)",
            batches: just_over("cont-over-backstop", 2 * 65536),
        },
    ];
    for attack in attacks {
        let what = attack.what;
        let conn = RawH2::open(&client).await;
        // The advertised list size is finite and tied to max_header_bytes (the gateway
        // answers 431 itself between the limit and a backstop at twice it).
        let advertised = conn.server_setting(h2raw::SETTINGS_MAX_HEADER_LIST_SIZE);
        assert!(
            advertised.is_some_and(|v| (65536..=2 * 65536).contains(&v)),
            "{what}: SETTINGS_MAX_HEADER_LIST_SIZE {advertised:?} is not within max_header_bytes..=2×"
        );
        let RawH2 {
            mut reader,
            mut writer,
            ..
        } = conn;
        // Read while writing, so the gateway is never held up by its own replies.
        let reading = tokio::spawn(async move {
            let mut outcome = h2raw::Seen::default();
            while let Some(frame) = reader.next().await {
                outcome.record(&frame);
                if outcome.goaway.is_some() {
                    // Read on to the close (bounded).
                    let rest = reader
                        .collect_until_closed(Duration::from_secs(5), Duration::from_secs(10))
                        .await;
                    outcome.closed = rest.closed;
                    return outcome;
                }
                if outcome.resets.iter().any(|(s, _)| *s == 1)
                    || outcome.responses.iter().any(|(s, _)| *s == 1)
                {
                    return outcome;
                }
            }
            outcome.closed = true;
            outcome
        });
        let mut written = 0usize;
        let total: usize = attack.batches.iter().map(Vec::len).sum();
        for batch in &attack.batches {
            if reading.is_finished() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), h2raw::write_all(&mut writer, batch))
                .await
            {
                Ok(true) => written += batch.len(),
                _ => break,
            }
        }
        let seen = bounded("the gateway's answer to the header attack", reading)
            .await
            .unwrap();
        drop(writer);
        let peak = gateway.peak_rss();
        eprintln!(
            "{what}: {written} of {total} bytes written in whole batches; {}; peak RSS {} MiB",
            seen.describe(),
            peak >> 20
        );
        let refused = seen.goaway.is_some()
            || seen.closed
            || seen.resets.iter().any(|(s, _)| *s == 1)
            || seen
                .responses
                .iter()
                .any(|(s, status)| *s == 1 && status.is_none_or(|c| c >= 400));
        assert!(
            refused,
            "{what}: the stream was not refused: {}",
            seen.describe()
        );
        assert!(
            !seen
                .responses
                .iter()
                .any(|(s, status)| *s == 1 && status.is_some_and(|c| c < 400)),
            "{what}: the gateway answered the request: {}",
            seen.describe()
        );
        assert_eq!(
            received_with(&destination, "/cont-"),
            0,
            "{what}: the request reached the destination"
        );
        assert!(
            peak < 64 * MIB,
            "{what}: gateway peak RSS {} MiB is not under 64 MiB",
            peak >> 20
        );
        assert_served(&client, &format!("after {what}")).await;
    }
    assert_no_connection_left(admin, "header attacks").await;
    drop(gateway);
}
