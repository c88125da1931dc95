//! The command line: `check` validates everything and prints the route table, or says
//! exactly what is wrong (file, key, line) and exits non-zero; `run` logs one line per
//! exchange, as JSON on request, and never a token or cookie.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Request;
use support::*;

fn fhirgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fhirgate"))
}

/// A complete, valid configuration with its files, for `check`.
fn valid(pki: &Pki) -> String {
    write_usual_files(pki);
    format!(
        r#"[[listeners]]
name = "public"
bind = "127.0.0.1:0"

  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"

[[routes]]
name = "dest-a"
public_base = "https://{PUBLIC_HOST}/dest-a"
upstream = "https://dest-a.internal:9443/fhir"
upstream_ca = "private-ca.pem"
listener = "public"
connect_timeout = "5s"
"#
    )
}

fn check(pki: &Pki, toml: &str) -> (bool, String, String) {
    let path = pki.write("fhirgate.toml", toml);
    let out = fhirgate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_route_table_for_a_valid_config() {
    let pki = Pki::new();
    let (ok, stdout, stderr) = check(&pki, &valid(&pki));
    assert!(ok, "{stderr}");
    // One line of the table carries the route's name, public base and upstream.
    assert!(
        stdout.lines().any(|l| l.contains("dest-a")
            && l.contains("https://fhir.example.org/dest-a")
            && l.contains("https://dest-a.internal:9443/fhir")),
        "{stdout}"
    );
    assert!(stdout.contains("dest-a"), "{stdout}");
    assert!(
        stdout.contains("https://fhir.example.org/dest-a"),
        "{stdout}"
    );
    assert!(
        stdout.contains("https://dest-a.internal:9443/fhir"),
        "{stdout}"
    );
    assert!(stdout.contains(PUBLIC_HOST), "{stdout}");
}

#[test]
fn check_names_file_key_and_line_of_each_mistake() {
    let pki = Pki::new();
    let good = valid(&pki);
    // A key that belongs to another certificate.
    pki.write_leaf("other", &pki.public_ca.issue(&["other.example.org"]));
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        (
            good.replace(
                "connect_timeout = \"5s\"",
                "connect_timeout = \"5s\"\nretries = 3",
            ),
            "retries",
            Some(":16"),
        ),
        (
            good.replace("https://dest-a.internal:9443/fhir", "dest-a.internal/fhir"),
            "routes[0].upstream",
            Some(":12"),
        ),
        (
            good.replace("\"5s\"", "\"5 seconds\""),
            "routes[0].connect_timeout",
            Some(":15"),
        ),
        (
            good.replace("cert = \"public.pem\"", "cert = \"missing.pem\""),
            "listeners[0].certificates[0].cert",
            Some(":6"),
        ),
        (
            good.replace("key = \"public.key\"", "key = \"other.key\""),
            "listeners[0].certificates[0].key",
            Some(":7"),
        ),
        (
            format!(
                "{good}\n[[routes]]\nname = \"dest-a\"\npublic_base = \"https://x.example.org/\"\nupstream = \"https://x.internal/\"\n"
            ),
            "routes[1].name",
            Some(":18"),
        ),
        (
            good.replace("listener = \"public\"", "listener = \"edge\""),
            "routes[0].listener",
            Some(":14"),
        ),
        (
            good.replace(
                "upstream_ca = \"private-ca.pem\"",
                "upstream_ca = \"nowhere.pem\"",
            ),
            "routes[0].upstream_ca",
            Some(":13"),
        ),
        (
            format!(
                "{good}\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n  [[listeners.certificates]]\n  cert = \"public.pem\"\n  key = \"public.key\"\n"
            ),
            "listeners[1].name",
            Some(":18"),
        ),
        (
            good.replace(
                "bind = \"127.0.0.1:0\"",
                "bind = \"127.0.0.1:0\"\nmin_tls_version = \"1.1\"",
            ),
            "listeners[0].min_tls_version",
            Some(":4"),
        ),
        (
            good.replace(
                "key = \"public.key\"",
                "key = \"public.key\"\n  chain = \"chain.pem\"",
            ),
            "chain",
            Some(":8"),
        ),
        (
            good.replace("bind = \"127.0.0.1:0\"", "bind = \"127.0.0.1:http\""),
            "listeners[0].bind",
            Some(":3"),
        ),
        (
            good.replace("\"5s\"", "\"-5s\""),
            "routes[0].connect_timeout",
            Some(":15"),
        ),
    ];
    for (toml, key, line) in cases {
        let (ok, _, stderr) = check(&pki, &toml);
        assert!(!ok, "{key}: check passed a broken config");
        assert!(stderr.contains("fhirgate.toml"), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        if let Some(line) = line {
            assert!(stderr.contains(line), "{key} line {line}: {stderr}");
        }
    }
}

#[test]
fn check_reports_an_unreadable_config_file() {
    let out = fhirgate()
        .args(["check", "--config", "/nonexistent/fhirgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/fhirgate.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

/// The secrets a client sends and a destination returns: none may appear in any output.
const SECRETS: [&str; 6] = [
    "SECRET-TOKEN",
    "SECRET-COOKIE",
    "SECRET-DPOP",
    "SECRET-QUERY",
    "SECRET-BODY",
    "session=abc",
];

/// Runs the usual gateway process with `global_args`, makes one exchange carrying every
/// secret (id `log-test-1`) and one that has no route, stops it with SIGTERM and returns
/// what it wrote.
async fn exchanges_through_a_process(global_args: &[&str], rust_log: &str) -> ChildOutput {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    let gateway = ChildGateway::usual(&pki, &destination, global_args, rust_log).await;
    let client = Client::new(&pki.public_ca.pem, gateway.addr);

    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let request = Request::post("/dest-a/Patient?name=SECRET-QUERY")
        .header("authorization", "Bearer SECRET-TOKEN")
        .header("cookie", "sid=SECRET-COOKIE")
        .header("dpop", "SECRET-DPOP")
        .header("x-request-id", "log-test-1")
        .body(full(r#"{"resourceType":"Patient","note":"SECRET-BODY"}"#))
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header_lines(&response, "set-cookie").len(), 2);
    text_of(response).await;
    // The destination did receive the secrets: they passed, they just were not logged.
    assert_eq!(
        destination.last().one("authorization").unwrap(),
        "Bearer SECRET-TOKEN"
    );
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http2).await;
    let request = Request::get("/nowhere")
        .header("authorization", "Bearer SECRET-TOKEN")
        .header("x-request-id", "log-test-2")
        .body(empty())
        .unwrap();
    assert_eq!(conn.send(request).await.unwrap().status(), 404);
    drop(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIGTERM: the gateway drains and exits 0, so its output is complete.
    let output = gateway.stop();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let everything = format!("{}\n{}", output.stdout, output.stderr);
    for secret in SECRETS {
        assert!(
            !everything.contains(secret),
            "the output contains {secret}:\n{everything}"
        );
    }
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_each_exchange_as_json_without_secrets() {
    // `debug`, so that nothing hides a secret that only a verbose level would print.
    let output = exchanges_through_a_process(&["--log-format", "json"], "debug").await;
    let everything = format!("{}\n{}", output.stdout, output.stderr);
    let exchange: serde_json::Value = everything
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l.to_string().contains("\"request_id\":\"log-test-1\""))
        .unwrap_or_else(|| panic!("no JSON exchange line for log-test-1:\n{everything}"));
    let line = exchange.to_string();
    for field in [
        "\"route\":\"dest-a\"",
        "\"method\":\"POST\"",
        "\"status\":200",
        "\"bytes_in\":47",
        "\"outcome\":\"complete\"",
        "\"duration_ms\":",
        "\"bytes_out\":",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    // A UTC RFC 3339 timestamp (the contract's single time source).
    let timestamp = exchange["timestamp"].as_str().expect("a timestamp");
    assert!(
        timestamp.ends_with('Z') && timestamp.contains('T'),
        "{timestamp}"
    );
    assert!(
        everything.lines().any(|l| l.contains("log-test-2")
            && l.contains("\"status\":404")
            && l.contains("\"upstream\":\"no-route\"")),
        "{everything}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_each_exchange_in_human_format_without_secrets() {
    let output = exchanges_through_a_process(&["--log-format", "human"], "debug").await;
    let everything = format!("{}\n{}", output.stdout, output.stderr);
    let line = everything
        .lines()
        .find(|l| l.contains("log-test-1") && l.contains("200"))
        .unwrap_or_else(|| panic!("no exchange line for log-test-1:\n{everything}"));
    assert!(
        !line.trim_start().starts_with('{'),
        "not human format: {line}"
    );
    for field in ["dest-a", "POST", "request_id"] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(
        everything
            .lines()
            .any(|l| l.contains("log-test-2") && l.contains("404")),
        "{everything}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_upstream_opt_in_is_logged_as_a_warning_at_start() {
    let pki = Pki::new();
    write_usual_files(&pki);
    let destination = Destination::start_plain().await;
    let port = free_port();
    let toml = one_route_toml(
        &format!("127.0.0.1:{port}"),
        &format!("http://127.0.0.1:{}/fhir", destination.addr.port()),
        "allow_plaintext_upstream = true",
    );
    let config = pki.write("fhirgate.toml", &toml);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let gateway = ChildGateway::run(&config, addr, &["--log-format", "json"], "info").await;
    let client = Client::new(&pki.public_ca.pem, addr);
    assert_eq!(
        client.get("/dest-a/Patient/1", Proto::Http1).await.status(),
        200
    );
    let output = gateway.stop();
    let everything = format!("{}\n{}", output.stdout, output.stderr);
    assert!(
        everything.lines().any(|l| l.contains("\"level\":\"WARN\"")
            && l.contains("dest-a")
            && l.to_ascii_lowercase().contains("plain")),
        "no start-up warning naming the plaintext route:\n{everything}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_and_level_come_from_the_config() {
    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let port = free_port();
    let config = pki.write(
        "fhirgate.toml",
        &format!(
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
upstream = "https://localhost:{}/fhir"
upstream_ca = "private-ca.pem"
[log]
level = "warn"
format = "json"
"#,
            destination.addr.port()
        ),
    );
    let mut child = fhirgate()
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr).await;
    let client = Client::new(&pki.public_ca.pem, addr);
    assert_eq!(client.get("/dest-a/x", Proto::Http1).await.status(), 200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let lines: Vec<String> = stderr.lines().map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    assert!(!lines.is_empty(), "warnings are still logged");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with('{') && l.contains("\"level\":\"WARN\"")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("\"message\":\"exchange\"")),
        "info lines at level warn: {lines:#?}"
    );
}
