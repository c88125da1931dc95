//! Streaming: bodies flow both ways without being collected, trailers pass, and a body the
//! upstream breaks off never looks complete to the client.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;

/// The gateway as a child process, so its own peak memory can be read from /proc.
struct ChildGateway {
    child: Child,
    addr: std::net::SocketAddr,
}

impl ChildGateway {
    async fn start(setup_pki: &Pki, destination_port: u16) -> ChildGateway {
        let port = free_port();
        let toml = format!(
            r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:{port}"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"
[[routes]]
name = "dest-a"
public_base = "https://{PUBLIC_HOST}/dest-a"
upstream = "https://localhost:{destination_port}/fhir"
upstream_ca = "private-ca.pem"
"#
        );
        let config = setup_pki.write("child.toml", &toml);
        let child = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gateway binary");
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for_port(addr).await;
        ChildGateway { child, addr }
    }

    /// Peak resident memory (VmHWM) in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn child_setup() -> (Pki, Destination, ChildGateway) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    pki.write("private-ca.pem", &pki.private_ca.pem);
    let gateway = ChildGateway::start(&pki, destination.addr.port()).await;
    (pki, destination, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_and_upload_pass_byte_exact_in_constant_memory() {
    let (pki, _destination, gateway) = child_setup().await;
    let client = Client::new(&pki.public_ca.pem, gateway.addr);
    let started = Instant::now();

    // Download: the destination streams 1 GiB; the client hashes it as it arrives.
    let response = client
        .get(&format!("/dest-a/download?bytes={GIB}"), Proto::Http1)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        GIB.to_string().as_str()
    );
    let mut body = response.into_body();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("download body");
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
            hasher.update(data);
        }
    }
    assert_eq!(received, GIB);
    assert_eq!(hex(&hasher.finalize()), PatternBody::sha256(GIB));

    // Upload: the client streams 1 GiB; the destination answers with what it hashed.
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

    let peak = gateway.peak_rss();
    eprintln!(
        "2 GiB through the gateway in {:?}; gateway peak RSS {} MiB",
        started.elapsed(),
        peak >> 20
    );
    assert!(
        peak < 64 << 20,
        "gateway peak RSS {} MiB is not under 64 MiB",
        peak >> 20
    );
}

#[tokio::test]
async fn trailers_pass_end_to_end() {
    let setup = Setup::new().await;
    // HTTP/2 client: trailers are always allowed.
    let mut h2 = setup.client().connect(PUBLIC_HOST, Proto::Http2).await;
    let response = h2.send(get("/dest-a/trailers")).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reached the HTTP/2 client");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "hello world");

    // HTTP/1.1 client that declares TE: trailers gets them in the chunked body.
    let mut h1 = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let request = Request::get("/dest-a/trailers")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let response = h1.send(request).await.unwrap();
    assert_eq!(response.headers()["trailer"], "x-checksum");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(
        collected
            .trailers()
            .expect("trailers reached the HTTP/1.1 client")["x-checksum"],
        "abc123"
    );
}

#[tokio::test]
async fn request_with_trailers_passes() {
    let setup = Setup::new().await;
    let mut h2 = setup.client().connect(PUBLIC_HOST, Proto::Http2).await;
    let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, BoxError>::new(2);
    let request = Request::post("/dest-a/upload").body(body.boxed()).unwrap();
    let sending = tokio::spawn(async move {
        tx.send_data(bytes::Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-upload-checksum", "zzz".parse().unwrap());
        tx.send_trailers(trailers).await.unwrap();
    });
    let response = h2.send(request).await.unwrap();
    sending.await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(text_of(response).await.starts_with("3 "));
}

#[tokio::test]
async fn upstream_breaking_off_mid_body_aborts_the_client_response() {
    let setup = Setup::new().await;
    for proto in [Proto::Http1, Proto::Http2] {
        let response = setup.client().get("/dest-a/break", proto).await;
        assert_eq!(
            response.status(),
            200,
            "{proto:?}: the head had already passed"
        );
        let mut body = response.into_body();
        let mut received = 0usize;
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => received += f.data_ref().map_or(0, |d| d.len()),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
        .expect("the client was left hanging");
        assert!(
            outcome.is_err(),
            "{proto:?}: a broken body ended like a complete one after {received} bytes"
        );
        assert!(received < 4 * 65536 + 1, "{proto:?}");
    }
}
