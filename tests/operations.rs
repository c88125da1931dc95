//! Operations: the admin listener (/healthz, /readyz, /metrics), `fhirgate health`, and a
//! graceful drain on SIGTERM with exchanges in flight.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use sha2::Digest;
use support::*;

/// Route `dest-a` to the destination and route `dead` to a port nothing listens on.
fn toml(destination_port: u16, bind: &str, admin: &str) -> String {
    let dead = destination_url(free_port());
    let extra = format!(
        r#"[[routes]]
name = "dead"
public_base = "https://{PUBLIC_HOST}/dead"
upstream = "{dead}"
upstream_ca = "private-ca.pem"
[shutdown]
grace = "20s"
[admin]
bind = "{admin}""#
    );
    one_route_toml(bind, &destination_url(destination_port), &extra)
}

/// An in-process gateway of [`toml`] with its admin listener, in front of a destination.
struct WithAdmin {
    _pki: Pki,
    destination: Destination,
    gw: TestGateway,
    admin: std::net::SocketAddr,
    client: Client,
}

impl WithAdmin {
    async fn start() -> WithAdmin {
        let pki = Pki::new();
        let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
        write_usual_files(&pki);
        let gw = TestGateway::start(
            &pki,
            &toml(destination.addr.port(), "127.0.0.1:0", "127.0.0.1:0"),
        )
        .await;
        let admin = gw
            .gateway
            .as_ref()
            .unwrap()
            .admin_addr()
            .expect("admin listener");
        let client = Client::new(&pki.public_ca.pem, gw.addr);
        WithAdmin {
            _pki: pki,
            destination,
            gw,
            admin,
            client,
        }
    }
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    // Every field bound: what `..` skipped would be dropped (stopped, deleted) at once.
    let WithAdmin {
        _pki,
        destination: _destination,
        gw,
        admin,
        client,
    } = WithAdmin::start().await;

    assert_eq!(admin_get(admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(admin, "/readyz").await, (200, "ready\n".into()));

    for _ in 0..3 {
        assert_eq!(
            client.get("/dest-a/Patient/1", Proto::Http1).await.status(),
            200
        );
    }
    assert_eq!(client.get("/nowhere", Proto::Http2).await.status(), 404);
    assert_eq!(client.get("/dead/x", Proto::Http1).await.status(), 502);
    assert!(client.tls(Some("intruder.example.org"), &[]).await.is_err());
    let held = client.connect(PUBLIC_HOST, Proto::Http2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, metrics) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"fhirgate_exchanges_total{route="dest-a",method="GET",status="200"} 3"#,
        r#"fhirgate_exchanges_total{route="-",method="GET",status="404"} 1"#,
        r#"fhirgate_exchanges_total{route="dead",method="GET",status="502"} 1"#,
        r#"fhirgate_exchange_duration_seconds_count{route="dest-a"} 3"#,
        r#"fhirgate_upstream_failures_total{route="dead",kind="refused"} 1"#,
        r#"fhirgate_tls_handshake_failures_total{listener="public",reason="unrecognized_name"} 1"#,
        r#"fhirgate_open_connections{listener="public",protocol="h2"} 1"#,
        r#"fhirgate_certificate_expiry_timestamp_seconds{listener="public",name="fhir.example.org"} 4070908800"#,
        r#"fhirgate_response_body_bytes_total{route="dest-a"} 105"#,
        // Three exchanges, one pooled connection (HTTP/2 to the destination); none to "dead".
        r#"fhirgate_upstream_connections{route="dest-a"} 1"#,
        r#"fhirgate_upstream_connections{route="dead"} 0"#,
        r#"fhirgate_upstream_certificate_expiry_timestamp_seconds{route="dest-a",host="localhost"} 4070908800"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}\n{metrics}"
        );
    }
    assert!(
        metrics.contains("fhirgate_tls_handshakes_total{listener=\"public\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fhirgate_config_info{hash=\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("fhirgate_config_reloads_total{result=\"failure\"} 0"),
        "{metrics}"
    );
    assert_eq!(admin_get(admin, "/other").await.0, 404);
    drop(held);
    gw.stop().await;
}

/// Clients may send any token as a method, and the gateway passes it on; its metrics keep
/// the standard methods by name and count every other under one `_OTHER` series, so a
/// client inventing methods cannot make the gateway keep series without bound.
#[tokio::test]
async fn invented_methods_share_one_metrics_series() {
    let WithAdmin {
        destination,
        gw,
        admin,
        client,
        _pki,
    } = WithAdmin::start().await;

    let invented = ["BREW", "FHIR-FOO", "X1", "X2"];
    for (i, method) in invented.iter().enumerate() {
        let proto = [Proto::Http1, Proto::Http2][i % 2];
        let mut conn = client.connect(PUBLIC_HOST, proto).await;
        let request = Request::builder()
            .method(*method)
            .uri("/dest-a/Patient/1")
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.expect("response");
        assert_eq!(response.status(), 200, "{method}");
    }
    // Passed on unchanged: the label is the metrics' business only.
    let received: Vec<String> = destination
        .requests()
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(received, invented);
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let patch = Request::patch("/dest-a/Patient/1").body(empty()).unwrap();
    assert_eq!(conn.send(patch).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (_, metrics) = admin_get(admin, "/metrics").await;
    for line in [
        r#"fhirgate_exchanges_total{route="dest-a",method="_OTHER",status="200"} 4"#,
        r#"fhirgate_exchanges_total{route="dest-a",method="PATCH",status="200"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}\n{metrics}"
        );
    }
    for method in invented {
        assert!(!metrics.contains(method), "{method} in\n{metrics}");
    }
    gw.stop().await;
}

fn spawn(pki: &Pki, toml: &str) -> Child {
    command(pki, toml, &[]).spawn().unwrap()
}

/// `fhirgate run` on `toml` (written as `child.toml`), its output discarded, run by
/// `wrapper` (a command that runs another, such as `taskset -c 0`) when there is one.
fn command(pki: &Pki, toml: &str, wrapper: &[&str]) -> Command {
    let config = pki.write("child.toml", toml);
    let binary = env!("CARGO_BIN_EXE_fhirgate");
    let mut command = match wrapper {
        [] => Command::new(binary),
        [program, args @ ..] => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
    };
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn health(admin: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["health", "--admin", admin])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exchanges_in_flight_and_exits_zero() {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let (port, admin_port) = (free_port(), free_port());
    let admin = format!("127.0.0.1:{admin_port}");
    let mut child = spawn(
        &pki,
        &toml(
            destination.addr.port(),
            &format!("127.0.0.1:{port}"),
            &admin,
        ),
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr).await;
    wait_for_port(admin.parse().unwrap()).await;
    assert!(
        tokio::task::spawn_blocking({
            let admin = admin.clone();
            move || health(&admin)
        })
        .await
        .unwrap()
    );
    let client = Client::new(&pki.public_ca.pem, addr);

    // In flight: a 64 MiB download read slowly, an HTTP/1.1 request waiting for its answer,
    // and an HTTP/2 connection.
    const SIZE: u64 = 64 << 20;
    let download = client
        .get(&format!("/dest-a/download?bytes={SIZE}"), Proto::Http2)
        .await;
    let mut h1 = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let slow = tokio::spawn(async move {
        let response = h1.send(get("/dest-a/slow?ms=1500")).await.unwrap();
        let close = response
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), close, text_of(response).await)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Readiness fails at once; new connections are not accepted.
    let (status, body) = admin_get(admin.parse().unwrap(), "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    assert!(
        !tokio::task::spawn_blocking(move || health(&admin))
            .await
            .unwrap()
    );
    assert!(
        client.tls(Some(PUBLIC_HOST), &[]).await.is_err(),
        "a new connection was accepted while draining"
    );

    // What was in flight finishes, byte-exact; HTTP/1.1 says the connection closes.
    let mut body = download.into_body();
    let mut hasher = sha2::Sha256::new();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the download completes during the drain");
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
            hasher.update(data);
        }
    }
    assert_eq!(received, SIZE);
    assert_eq!(hex(&hasher.finalize()), PatternBody::sha256(SIZE));
    let (status, connection, text) = slow.await.unwrap();
    assert_eq!((status, text.as_str()), (200, "slow"));
    assert_eq!(connection.as_deref(), Some("close"));

    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the gateway did not exit after draining")
    });
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let (port, admin_port) = (free_port(), free_port());
    let mut child = spawn(
        &pki,
        &toml(
            destination.addr.port(),
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{admin_port}"),
        ),
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr).await;
    let client = Client::new(&pki.public_ca.pem, addr);
    // An exchange that would hold the drain for its whole 20 s grace.
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let _pending = tokio::spawn(async move { conn.send(get("/dest-a/slow?ms=15000")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before the grace period without a second signal"
    );
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let mut exited = false;
    for _ in 0..40 {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !exited {
        let _ = child.kill();
    }
    assert!(exited, "a second signal did not end the drain at once");
}

/// Threads of process `pid` named as tokio names its workers.
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn the_runtime_has_one_worker_per_cpu_it_may_use_and_none_on_one_cpu() {
    // One CPU, by TOKIO_WORKER_THREADS or by the affinity mask (taskset): the current-thread
    // scheduler, so no worker threads at all; two: two workers.
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let cases: [(&[&str], Option<&str>, usize); 3] = [
        (&[], Some("1"), 0),
        (&[], Some("2"), 2),
        (&["taskset", "-c", "0"], None, 0),
    ];
    for (wrapper, workers, expected) in cases {
        let port = free_port();
        let toml = one_route_toml(
            &format!("127.0.0.1:{port}"),
            &destination_url(destination.addr.port()),
            "",
        );
        let mut command = command(&pki, &toml, wrapper);
        command.env_remove("TOKIO_WORKER_THREADS");
        if let Some(workers) = workers {
            command.env("TOKIO_WORKER_THREADS", workers);
        }
        let mut child = command.spawn().unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for_port(addr).await;
        // Counted before any exchange: tokio's blocking threads (name resolution) carry the
        // same name, and start only when needed.
        let found = runtime_workers(child.id());
        let response = Client::new(&pki.public_ca.pem, addr)
            .get("/dest-a/Patient/1", Proto::Http1)
            .await;
        assert_eq!(response.status(), 200);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            found, expected,
            "{wrapper:?} TOKIO_WORKER_THREADS={workers:?}"
        );
    }
}
