//! `fhirgate check` catches the mistakes operators really make, says what is wrong and how
//! to fix it, and exits non-zero; `--probe` handshakes with every upstream; `--format json`.

mod support;

use std::process::Command;

use support::*;

fn config(pki: &Pki, cert: &str, public_host: &str, upstream: &str) -> String {
    format!(
        r#"[[listeners]]
name = "public"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "{cert}.pem"
  key = "{cert}.key"

[[routes]]
name = "dest-a"
public_base = "https://{public_host}/dest-a"
upstream = "{upstream}"
upstream_ca = "private-ca.pem"
"#
    )
    .replace("{dir}", &pki.dir.path().display().to_string())
}

/// Runs `check`; returns (success, stdout, stderr).
fn check(pki: &Pki, toml: &str, args: &[&str]) -> (bool, String, String) {
    let path = pki.write("fhirgate.toml", toml);
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pki_with_private_ca() -> Pki {
    let pki = Pki::new();
    pki.write("private-ca.pem", &pki.private_ca.pem);
    pki
}

const UPSTREAM: &str = "https://dest-a.internal:9443/fhir";

#[test]
fn chain_in_the_wrong_order_is_an_error() {
    let pki = pki_with_private_ca();
    let (intermediate, intermediate_pem) = pki.public_ca.intermediate("Test intermediate");
    let leaf = intermediate.issue(&[PUBLIC_HOST]);
    pki.write(
        "wrong-order.pem",
        &format!("{intermediate_pem}{}", leaf.cert_pem),
    );
    pki.write("wrong-order.key", &leaf.key_pem);
    let (ok, _, stderr) = check(
        &pki,
        &config(&pki, "wrong-order", PUBLIC_HOST, UPSTREAM),
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("out of order") && stderr.contains("put the leaf first"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("out of order").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        stderr.contains("listeners[0].certificates[0].cert"),
        "{stderr}"
    );
}

#[test]
fn chain_missing_its_intermediate_is_a_warning_and_a_complete_one_is_not() {
    let pki = pki_with_private_ca();
    let (intermediate, intermediate_pem) = pki.public_ca.intermediate("Test intermediate");
    let leaf = intermediate.issue(&[PUBLIC_HOST]);
    pki.write("leaf-only.pem", &leaf.cert_pem);
    pki.write("leaf-only.key", &leaf.key_pem);
    let (ok, stdout, _) = check(&pki, &config(&pki, "leaf-only", PUBLIC_HOST, UPSTREAM), &[]);
    assert!(ok, "a missing intermediate is a warning, not an error");
    assert!(
        stdout.contains("warning:") && stdout.contains("append its certificate"),
        "{stdout}"
    );
    assert!(
        stdout.contains("issued by CN=Test intermediate"),
        "{stdout}"
    );

    // With the intermediate appended, the chain ends at the intermediate, issued by the
    // root: only the note about a non-system root remains.
    pki.write("full.pem", &format!("{}{intermediate_pem}", leaf.cert_pem));
    pki.write("full.key", &leaf.key_pem);
    let (ok, stdout, stderr) = check(&pki, &config(&pki, "full", PUBLIC_HOST, UPSTREAM), &[]);
    assert!(ok, "{stderr}");
    assert!(
        !stdout.contains("issued by CN=Test intermediate"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ends with CN=Test intermediate, issued by CN=Test public CA"),
        "{stdout}"
    );
}

#[test]
fn key_that_does_not_match_is_an_error() {
    let pki = pki_with_private_ca();
    let leaf = pki.public_ca.issue(&[PUBLIC_HOST]);
    let other = pki.public_ca.issue(&[PUBLIC_HOST]);
    pki.write("mismatch.pem", &leaf.cert_pem);
    pki.write("mismatch.key", &other.key_pem);
    let (ok, _, stderr) = check(&pki, &config(&pki, "mismatch", PUBLIC_HOST, UPSTREAM), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("listeners[0].certificates[0].key") && stderr.contains("does not belong"),
        "{stderr}"
    );
}

#[test]
fn expired_is_an_error_and_expiring_soon_a_warning() {
    let pki = pki_with_private_ca();
    pki.write_leaf("expired", &pki.public_ca.issue_expired(&[PUBLIC_HOST]));
    let (ok, _, stderr) = check(&pki, &config(&pki, "expired", PUBLIC_HOST, UPSTREAM), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("expired on 2021-01-01") && stderr.contains("renew it"),
        "{stderr}"
    );

    pki.write_leaf("soon", &pki.public_ca.issue_expiring_in(&[PUBLIC_HOST], 10));
    let (ok, stdout, _) = check(&pki, &config(&pki, "soon", PUBLIC_HOST, UPSTREAM), &[]);
    assert!(ok);
    assert!(stdout.contains("in less than 30 days"), "{stdout}");
}

#[test]
fn public_host_covered_by_no_certificate_is_an_error() {
    let pki = pki_with_private_ca();
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    let (ok, _, stderr) = check(
        &pki,
        &config(&pki, "public", "other.example.org", UPSTREAM),
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("other.example.org is covered by no certificate on listener \"public\""),
        "{stderr}"
    );
}

#[test]
fn upstream_ca_without_certificates_is_an_error() {
    let pki = Pki::new();
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    pki.write("private-ca.pem", "this is not a certificate\n");
    let (ok, _, stderr) = check(&pki, &config(&pki, "public", PUBLIC_HOST, UPSTREAM), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("routes[0].upstream_ca") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_each_upstream_without_sending_a_request() {
    let pki = pki_with_private_ca();
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    let good = config(
        &pki,
        "public",
        PUBLIC_HOST,
        &format!("https://localhost:{}/fhir", destination.addr.port()),
    );
    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let good = good.clone();
        let pki_dir = pki.dir.path().to_owned();
        move || {
            let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
                .args(["check", "--probe", "--config"])
                .arg({
                    std::fs::write(pki_dir.join("fhirgate.toml"), &good).unwrap();
                    pki_dir.join("fhirgate.toml")
                })
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    let probe_line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("dest-a"))
        .unwrap();
    let cells: Vec<&str> = probe_line.split_whitespace().collect();
    assert_eq!(cells[1..3], ["yes", "yes"], "{stdout}");
    assert_eq!(cells.last(), Some(&"h2"), "{stdout}");
    assert!(
        destination.requests().is_empty(),
        "the probe sent a request"
    );

    // An upstream whose certificate is for another name fails the probe.
    let wrong = Destination::start(&pki.private_ca.issue(&["elsewhere.internal"])).await;
    let bad = config(
        &pki,
        "public",
        PUBLIC_HOST,
        &format!("https://localhost:{}/fhir", wrong.addr.port()),
    );
    let pki_dir = pki.dir.path().to_owned();
    let (ok, stderr) = tokio::task::spawn_blocking(move || {
        std::fs::write(pki_dir.join("fhirgate.toml"), &bad).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["check", "--probe", "--format", "json", "--config"])
            .arg(pki_dir.join("fhirgate.toml"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(!ok);
    let report: serde_json::Value = serde_json::from_str(&stderr).expect("JSON report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["probes"][0]["reachable"], true);
    assert_eq!(report["probes"][0]["certificate_valid"], false);
    assert!(
        report["probes"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("TLS handshake failed"),
        "{report}"
    );
}

#[test]
fn json_report_for_a_valid_config() {
    let pki = pki_with_private_ca();
    pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
    let (ok, stdout, stderr) = check(
        &pki,
        &config(&pki, "public", PUBLIC_HOST, UPSTREAM),
        &["--format", "json"],
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(
        report["routes"][0]["public_base"],
        "https://fhir.example.org/dest-a"
    );
    assert_eq!(
        report["listeners"][0]["certificates"][0]["names"][0],
        PUBLIC_HOST
    );
}
