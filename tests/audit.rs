//! The audit trail: one AuditEvent per exchange (and per refused handshake), never a token,
//! an HMAC chain that catches edits, deletions, insertions and reorderings, a restart that
//! continues the chain, a flush on shutdown, refusal when the sink fails, SIGHUP reopen.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use serde_json::Value;
use support::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-audit-key";

/// A gateway with `[audit]` (plus `extra` lines in it) in front of a recording destination.
async fn audited(pki: &Pki, audit_extra: &str) -> (Destination, TestGateway) {
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(pki);
    std::fs::write(pki.path("audit.key"), KEY).unwrap();
    let toml = audited_toml(destination.addr.port(), "127.0.0.1:0", audit_extra);
    let gateway = TestGateway::start(pki, &toml).await;
    (destination, gateway)
}

fn audited_toml(destination_port: u16, bind: &str, audit_extra: &str) -> String {
    let extra = format!(
        r#"response_timeout = "300ms"
[audit]
path = "audit.ndjson"
key_file = "audit.key"
source = "gw-test-1"
{audit_extra}"#
    );
    one_route_toml(bind, &destination_url(destination_port), &extra)
}

fn records(pki: &Pki) -> Vec<Value> {
    std::fs::read_to_string(pki.path("audit.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn detail<'a>(record: &'a Value, kind: &str) -> Option<&'a str> {
    record["entity"][0]["detail"]
        .as_array()?
        .iter()
        .find(|d| d["type"] == kind)
        .and_then(|d| d["valueString"].as_str())
}

fn by_request_id<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| detail(r, "request-id") == Some(id))
        .collect()
}

fn verify(pki: &Pki, file: &str, previous: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    cmd.args(["audit", "verify"])
        .arg(pki.path(file))
        .arg("--key-file")
        .arg(pki.path("audit.key"));
    if let Some(previous) = previous {
        cmd.args(["--previous", previous]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn send(client: &Client, request: Request<ClientBody>) -> u16 {
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let response = conn.send(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

fn with_id(path: &str, id: &str) -> Request<ClientBody> {
    Request::get(path)
        .header("x-request-id", id)
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn every_exchange_gets_exactly_one_audit_event() {
    let pki = Pki::new();
    let (_destination, gw) = audited(&pki, "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    assert_eq!(
        send(
            &client,
            with_id("/dest-a/Patient/1?name=SECRET-QUERY", "read-1")
        )
        .await,
        200
    );
    assert_eq!(send(&client, with_id("/nowhere", "no-route-1")).await, 404);
    assert_eq!(send(&client, with_id("/dest-a/../x", "dot-1")).await, 400);
    assert_eq!(
        send(&client, with_id("/dest-a/slow?ms=2000", "timeout-1")).await,
        504
    );
    assert_eq!(
        send(&client, with_id("/dest-a/status/500", "dest-500")).await,
        500
    );
    let create = Request::post("/dest-a/Patient")
        .header("x-request-id", "create-1")
        .header("authorization", "Bearer SECRET-TOKEN-A")
        .body(full("{\"resourceType\":\"Patient\"}"))
        .unwrap();
    assert_eq!(send(&client, create).await, 200);
    // The client goes away in the middle of a download.
    {
        let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
        let response = conn
            .send(with_id("/dest-a/download?bytes=104857600", "aborted-1"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let _ = body.frame().await;
    }
    // The upstream breaks off mid-body.
    {
        let mut conn = client.connect(PUBLIC_HOST, Proto::Http2).await;
        let response = conn
            .send(with_id("/dest-a/break", "broke-1"))
            .await
            .unwrap();
        let _ = response.into_body().collect().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.stop().await;

    let all = records(&pki);
    for id in [
        "read-1",
        "no-route-1",
        "dot-1",
        "timeout-1",
        "dest-500",
        "create-1",
        "aborted-1",
        "broke-1",
    ] {
        assert_eq!(by_request_id(&all, id).len(), 1, "{id}: {all:#?}");
    }
    let read = by_request_id(&all, "read-1")[0];
    assert_eq!(read["resourceType"], "AuditEvent");
    assert_eq!(read["type"]["code"], "rest");
    assert_eq!(read["subtype"][0]["code"], "read");
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    let recorded = read["recorded"].as_str().unwrap();
    assert!(
        recorded.len() == 24 && recorded.ends_with('Z') && recorded.as_bytes()[19] == b'.',
        "{recorded}"
    );
    assert_eq!(read["agent"][0]["network"]["address"], "127.0.0.1");
    assert_eq!(read["agent"][0]["requestor"], true);
    assert_eq!(read["source"]["observer"]["display"], "gw-test-1");
    assert_eq!(read["entity"][0]["what"]["display"], "/dest-a/Patient/1");
    assert_eq!(read["entity"][1]["what"]["display"], "/fhir/Patient/1");
    assert_eq!(read["entity"][2]["what"]["display"], "dest-a");
    assert_eq!(detail(read, "status"), Some("200"));
    assert!(
        read["entity"][0].get("query").is_none(),
        "query recorded without record_query"
    );

    let create = by_request_id(&all, "create-1")[0];
    assert_eq!(
        (
            create["subtype"][0]["code"].as_str(),
            create["action"].as_str()
        ),
        (Some("create"), Some("C"))
    );
    assert_eq!(detail(create, "bytes-in"), Some("26"));
    assert_eq!(by_request_id(&all, "no-route-1")[0]["outcome"], "4");
    assert_eq!(
        detail(by_request_id(&all, "no-route-1")[0], "upstream"),
        Some("no-route")
    );
    assert_eq!(
        detail(by_request_id(&all, "timeout-1")[0], "status"),
        Some("504")
    );
    assert_eq!(by_request_id(&all, "dest-500")[0]["outcome"], "8");
    assert_eq!(
        detail(by_request_id(&all, "aborted-1")[0], "end"),
        Some("client-aborted")
    );
    assert_eq!(
        detail(by_request_id(&all, "broke-1")[0], "end"),
        Some("upstream-broke")
    );
    assert_eq!(by_request_id(&all, "broke-1")[0]["outcome"], "12");

    let text = std::fs::read_to_string(pki.path("audit.ndjson")).unwrap();
    assert!(
        !text.contains("SECRET-QUERY") && !text.contains("SECRET-TOKEN"),
        "{text}"
    );
    let (ok, out) = verify(&pki, "audit.ndjson", None);
    assert!(
        ok && out.trim() == format!("OK {} records", all.len()),
        "{out}"
    );
}

#[tokio::test]
async fn tokens_appear_only_as_keyed_fingerprints() {
    let pki = Pki::new();
    let (_destination, gw) = audited(&pki, "record_query = true").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for (id, auth) in [
        ("t1", "Bearer SECRET-TOKEN-A"),
        ("t2", "Bearer SECRET-TOKEN-A"),
        ("t3", "DPoP SECRET-TOKEN-B"),
    ] {
        let request = Request::get("/dest-a/Patient?name=Smith")
            .header("x-request-id", id)
            .header("authorization", auth)
            .header("cookie", "sid=SECRET-COOKIE")
            .body(empty())
            .unwrap();
        assert_eq!(send(&client, request).await, 200);
    }
    gw.stop().await;
    let all = records(&pki);
    let fp = |id| {
        detail(by_request_id(&all, id)[0], "token-fingerprint")
            .unwrap()
            .to_owned()
    };
    assert_eq!(fp("t1"), fp("t2"), "the same token, the same fingerprint");
    assert_ne!(fp("t1"), fp("t3"));
    let text = std::fs::read_to_string(pki.path("audit.ndjson")).unwrap();
    for secret in ["SECRET-TOKEN", "SECRET-COOKIE"] {
        assert!(!text.contains(secret), "{secret} in the audit file");
    }
    // An unkeyed hash of the token is not what is written either.
    use sha2::Digest;
    let unkeyed = hex(&sha2::Sha256::digest(b"SECRET-TOKEN-A"));
    assert!(!text.contains(&unkeyed[..24]));
    // With record_query, the query is kept as FHIR does: base64 in entity.query.
    assert_eq!(
        by_request_id(&all, "t1")[0]["entity"][0]["query"],
        "bmFtZT1TbWl0aA=="
    );
}

#[tokio::test]
async fn refused_handshakes_are_security_records() {
    let pki = Pki::new();
    let (_destination, gw) = audited(&pki, "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    assert!(client.tls(Some("intruder.example.org"), &[]).await.is_err());
    // Not TLS at all.
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.stop().await;
    let all = records(&pki);
    let security: Vec<&Value> = all
        .iter()
        .filter(|r| r["type"]["code"] == "110113")
        .collect();
    assert_eq!(security.len(), 2, "{all:#?}");
    let sni = security
        .iter()
        .find(|r| r["entity"][0]["detail"][0]["valueString"] == "intruder.example.org");
    let sni = sni.expect("a record naming the SNI");
    assert!(
        sni["outcomeDesc"]
            .as_str()
            .unwrap()
            .contains("unrecognized_name")
    );
    assert_eq!(sni["agent"][0]["network"]["address"], "127.0.0.1");
}

#[tokio::test]
async fn the_chain_catches_edits_deletions_insertions_and_swaps() {
    let pki = Pki::new();
    let (_destination, gw) = audited(&pki, "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    for i in 0..5 {
        send(
            &client,
            with_id(&format!("/dest-a/Patient/{i}"), &format!("c{i}")),
        )
        .await;
    }
    gw.stop().await;
    let original = std::fs::read_to_string(pki.path("audit.ndjson")).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(
        verify(&pki, "audit.ndjson", None),
        (true, "OK 5 records\n".into())
    );

    let tampered = |name: &str, lines: Vec<String>| {
        pki.write(name, &(lines.join("\n") + "\n"));
        verify(&pki, name, None)
    };
    let owned = || lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let mut edited = owned();
    edited[2] = edited[2].replace("/dest-a/Patient/2", "/dest-a/Patient/9");
    let (ok, out) = tampered("edited.ndjson", edited);
    assert!(!ok && out.contains("edited.ndjson:3:"), "{out}");

    let mut deleted = owned();
    deleted.remove(1);
    let (ok, out) = tampered("deleted.ndjson", deleted);
    assert!(!ok && out.contains("deleted.ndjson:2:"), "{out}");

    let mut swapped = owned();
    swapped.swap(3, 4);
    let (ok, out) = tampered("swapped.ndjson", swapped);
    assert!(!ok && out.contains("swapped.ndjson:4:"), "{out}");

    let mut inserted = owned();
    inserted.insert(2, lines[0].to_string());
    let (ok, out) = tampered("inserted.ndjson", inserted);
    assert!(!ok && out.contains("inserted.ndjson:3:"), "{out}");
}

#[tokio::test]
async fn a_restart_continues_the_chain() {
    let pki = Pki::new();
    let (destination, gw) = audited(&pki, "").await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    send(&client, get("/dest-a/a")).await;
    gw.stop().await;
    let again = TestGateway::start(
        &pki,
        &audited_toml(destination.addr.port(), "127.0.0.1:0", ""),
    )
    .await;
    let client = Client::new(&pki.public_ca.pem, again.addr);
    send(&client, get("/dest-a/b")).await;
    again.stop().await;
    assert_eq!(records(&pki).len(), 2);
    assert_eq!(
        verify(&pki, "audit.ndjson", None),
        (true, "OK 2 records\n".into())
    );
}

#[tokio::test]
async fn an_unwritable_sink_refuses_exchanges_by_default_and_not_with_log_and_continue() {
    for (policy, expected_second) in [("", 503), ("on_failure = \"log-and-continue\"", 200)] {
        let pki = Pki::new();
        let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
        write_usual_files(&pki);
        std::fs::write(pki.path("audit.key"), KEY).unwrap();
        // /dev/full accepts the open and fails every write with ENOSPC: a full disk.
        let toml = audited_toml(destination.addr.port(), "127.0.0.1:0", policy)
            .replace("path = \"audit.ndjson\"", "path = \"/dev/full\"");
        let gw = TestGateway::start(&pki, &toml).await;
        let client = Client::new(&pki.public_ca.pem, gw.addr);
        assert_eq!(send(&client, get("/dest-a/first")).await, 200);
        let mut last = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            last = send(&client, get("/dest-a/next")).await;
            if last == expected_second {
                break;
            }
        }
        assert_eq!(last, expected_second, "policy {policy:?}");
        if expected_second == 503 {
            let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
            let response = conn.send(get("/dest-a/refused")).await.unwrap();
            assert_eq!(response.status(), 503);
            assert!(text_of(response).await.contains("audit trail"));
        }
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_sink_that_recovers_gets_the_held_records_and_exchanges_resume() {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    std::fs::write(pki.path("audit.key"), KEY).unwrap();
    // The audit path starts out as a full disk ...
    let path = pki.path("audit.ndjson");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let toml = audited_toml(destination.addr.port(), "127.0.0.1:0", "");
    let gw = TestGateway::start(&pki, &toml).await;
    let client = Client::new(&pki.public_ca.pem, gw.addr);
    assert_eq!(send(&client, get("/dest-a/before-the-failure")).await, 200);
    let mut last = 0;
    for _ in 0..100 {
        last = send(&client, get("/dest-a/while-failing")).await;
        if last == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, 503, "the failing sink did not refuse exchanges");

    // ... then space is freed: the writer's retry reopens the path and writes what it held.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"").unwrap();
    let resumed = bounded("exchanges accepted again", async {
        loop {
            let status = send(&client, get("/dest-a/after-recovery")).await;
            if status == 200 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(resumed, 200);
    gw.stop().await;

    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.contains("before-the-failure"),
        "the record held during the failure was lost"
    );
    assert!(written.contains("after-recovery"));
    let (ok, report) = verify(&pki, "audit.ndjson", None);
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_sighup_reopens_the_file() {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    std::fs::write(pki.path("audit.key"), KEY).unwrap();
    let port = free_port();
    let config = pki.write(
        "child.toml",
        &audited_toml(destination.addr.port(), &format!("127.0.0.1:{port}"), ""),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr).await;
    let client = Client::new(&pki.public_ca.pem, addr);
    for i in 0..3 {
        send(&client, get(&format!("/dest-a/before/{i}"))).await;
    }
    // logrotate: move the file away, then SIGHUP.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(pki.path("audit.ndjson"), pki.path("audit.ndjson.1")).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..2 {
        send(&client, get(&format!("/dest-a/after/{i}"))).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success());

    let rotated = std::fs::read_to_string(pki.path("audit.ndjson.1")).unwrap();
    let current = std::fs::read_to_string(pki.path("audit.ndjson")).unwrap();
    assert_eq!(rotated.lines().count(), 3, "{rotated}");
    assert_eq!(
        current.lines().count(),
        2,
        "every record was flushed at exit: {current}"
    );
    assert_eq!(
        verify(&pki, "audit.ndjson.1", None),
        (true, "OK 3 records\n".into())
    );
    // The new file continues the chain from the rotated one's last record.
    let last: Value = serde_json::from_str(rotated.lines().last().unwrap()).unwrap();
    let previous = last["chain"].as_str().unwrap().to_owned();
    assert_eq!(
        verify(&pki, "audit.ndjson", Some(&previous)),
        (true, "OK 2 records\n".into())
    );
    assert!(!verify(&pki, "audit.ndjson", None).0);
}
