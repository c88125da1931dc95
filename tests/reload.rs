//! Hot reload: a new configuration (or a renewed certificate) replaces the running one
//! without dropping a connection; a broken one is refused and the old one keeps serving.

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use sha2::Digest;
use support::*;

fn toml(destination_port: u16, upstream_path: &str, extra_listener: bool) -> String {
    let second = if extra_listener {
        r#"
[[listeners]]
name = "second"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"
"#
    } else {
        ""
    };
    format!(
        r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"
{second}
[[routes]]
name = "dest-a"
public_base = "https://{PUBLIC_HOST}/dest-a"
upstream = "https://localhost:{destination_port}{upstream_path}"
upstream_ca = "private-ca.pem"
[admin]
bind = "127.0.0.1:0"
"#
    )
}

async fn setup() -> (Pki, Destination, TestGateway) {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let gw = TestGateway::start(&pki, &toml(destination.addr.port(), "/fhir", false)).await;
    (pki, destination, gw)
}

async fn metrics(gw: &TestGateway) -> String {
    admin_get(
        gw.gateway.as_ref().unwrap().admin_addr().unwrap(),
        "/metrics",
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_used_for_new_handshakes_while_a_download_completes() {
    let (pki, _destination, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    const SIZE: u64 = 32 << 20;
    let download = client
        .get(&format!("/dest-a/download?bytes={SIZE}"), Proto::Http2)
        .await;
    let mut body = download.into_body();
    let first = body.frame().await.unwrap().unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut received = first.data_ref().map_or(0, |d| d.len() as u64);
    hasher.update(first.data_ref().unwrap());

    // Renew: the same name plus a new one, written over the files the config names.
    pki.write_leaf(
        "public",
        &pki.public_ca.issue(&[PUBLIC_HOST, "renewed.example.org"]),
    );
    gw.gateway.as_ref().unwrap().reload().await.expect("reload");

    let tls = client.tls(Some(PUBLIC_HOST), &[]).await.unwrap();
    assert_eq!(presented_names(&tls), [PUBLIC_HOST, "renewed.example.org"]);

    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the download in flight completes");
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
            hasher.update(data);
        }
    }
    assert_eq!(received, SIZE);
    assert_eq!(hex(&hasher.finalize()), PatternBody::sha256(SIZE));
    assert!(
        metrics(&gw)
            .await
            .contains(r#"fhirgate_config_reloads_total{result="success"} 1"#)
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_changed_route_applies_to_the_next_exchange() {
    let (pki, destination, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let mut kept = client.connect(PUBLIC_HOST, Proto::Http1).await;
    kept.send(get("/dest-a/Patient/1")).await.unwrap();
    assert_eq!(destination.last().target, "/fhir/Patient/1");

    pki.write("fhirgate.toml", &toml(destination.addr.port(), "/r4", true));
    gw.gateway.as_ref().unwrap().reload().await.expect("reload");

    // The connection opened before the reload stays open and uses the new routes.
    let response = kept
        .send(get("/dest-a/Patient/2"))
        .await
        .expect("the connection survived the reload");
    assert_eq!(response.status(), 200);
    assert_eq!(destination.last().target, "/r4/Patient/2");
    // The listener the new file adds is serving.
    let second = gw
        .gateway
        .as_ref()
        .unwrap()
        .local_addr("second")
        .expect("a new listener");
    let response = Client::new(&pki.public_ca.pem, second)
        .get("/dest-a/x", Proto::Http1)
        .await;
    assert_eq!(response.status(), 200);
    // And a listener the file drops stops accepting.
    pki.write(
        "fhirgate.toml",
        &toml(destination.addr.port(), "/r4", false),
    );
    gw.gateway.as_ref().unwrap().reload().await.expect("reload");
    assert!(gw.gateway.as_ref().unwrap().local_addr("second").is_none());
    let mut refused = false;
    for _ in 0..50 {
        if Client::new(&pki.public_ca.pem, second)
            .tls(Some(PUBLIC_HOST), &[])
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the removed listener still accepts");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_configuration_is_refused_and_the_old_one_keeps_serving() {
    let (pki, destination, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    let broken = [
        toml(destination.addr.port(), "/fhir", false).replace("upstream_ca", "upstream_kaa"),
        toml(destination.addr.port(), "/fhir", false).replace("public.key", "missing.key"),
    ];
    for text in &broken {
        pki.write("fhirgate.toml", text);
        assert!(gw.gateway.as_ref().unwrap().reload().await.is_err());
        let response = client.get("/dest-a/still", Proto::Http1).await;
        assert_eq!(response.status(), 200);
        assert_eq!(destination.last().target, "/fhir/still");
    }
    let m = metrics(&gw).await;
    assert!(
        m.contains(r#"fhirgate_config_reloads_total{result="failure"} 2"#),
        "{m}"
    );
    let admin = gw.gateway.as_ref().unwrap().admin_addr().unwrap();
    let ready = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["health", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(
        ready.status.success(),
        "readiness must survive a failed reload"
    );
    gw.stop().await;
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_signal() {
    let (pki, _destination, gw) = setup().await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    // mtime granularity: make sure the rewrite is seen as a change.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pki.write_leaf(
        "public",
        &pki.public_ca.issue(&[PUBLIC_HOST, "watched.example.org"]),
    );
    let mut seen = false;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tls = client.tls(Some(PUBLIC_HOST), &[]).await.unwrap();
        if presented_names(&tls)
            .iter()
            .any(|n| n == "watched.example.org")
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "the renewed certificate was not picked up within 8 s");
    gw.stop().await;
}
