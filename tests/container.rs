//! The container image and the systemd unit, as far as they can be checked without a
//! container engine: the Dockerfile's promises (multi-stage, non-root, config path, ports,
//! STOPSIGNAL, a health check without shell tools) are read from the file, and the exact
//! command lines of its ENTRYPOINT/CMD and HEALTHCHECK — and of the unit's ExecStart — are
//! run against the real binary with the environment the image sets.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn repository_file(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Instructions of the Dockerfile, continuation lines joined, comments dropped.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (word, rest) = l.split_once(' ').unwrap_or((&l, ""));
            (word.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect()
}

/// The arguments of an exec-form (`["a", "b"]`) instruction.
fn exec_form(value: &str) -> Vec<String> {
    serde_json::from_str(value).unwrap_or_else(|e| panic!("not exec form: {value}: {e}"))
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_stops_with_sigterm() {
    let all = instructions(&repository_file("Dockerfile"));
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (word, _))| word == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a run stage");
    assert!(
        all[stages[0]].1.contains(" AS build"),
        "{:?}",
        all[stages[0]]
    );
    assert!(
        all.iter()
            .any(|(w, v)| w == "RUN" && v.contains("cargo build --release --locked")),
        "built with cargo, locked"
    );
    // By default the image ships the profile-guided build, which benches/pgo.sh makes with
    // the same locked dependencies; `--build-arg PGO=false` takes the plain build above.
    assert!(
        all.iter().any(|(w, v)| w == "ARG" && v == "PGO=true"),
        "profile-guided by default"
    );
    assert!(
        all.iter()
            .any(|(w, v)| w == "RUN" && v.contains("bash benches/pgo.sh")),
        "the build stage runs the profile-guided build"
    );
    let pgo = repository_file("benches/pgo.sh");
    assert_eq!(
        pgo.matches("cargo build --release --locked").count(),
        2,
        "instrumented and optimised builds, both locked"
    );
    let run_stage = &all[stages[1]..];
    assert!(
        run_stage
            .iter()
            .any(|(w, v)| w == "COPY" && v.starts_with("--from=build")),
        "the run stage takes only the binary"
    );
    assert!(
        !run_stage
            .iter()
            .any(|(w, v)| w == "RUN" && v.contains("cargo")),
        "no toolchain in the run stage"
    );
    let value = |word: &str| -> Vec<String> {
        run_stage
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let user = value("USER");
    assert_eq!(user.len(), 1);
    assert!(!["root", "0"].contains(&user[0].as_str()), "{user:?}");
    assert_eq!(value("STOPSIGNAL"), ["SIGTERM"]);
    assert_eq!(
        value("ENV"),
        ["FHIRGATE_CONFIG=/etc/fhirgate/fhirgate.toml"]
    );
    let exposed: Vec<String> = value("EXPOSE")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert!(
        exposed.contains(&"8443".into()) && exposed.contains(&"9901".into()),
        "{exposed:?}"
    );
    let health = value("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    let check = exec_form(health[0].split_once("CMD").unwrap().1.trim());
    assert_eq!(
        check[0], "/usr/local/bin/fhirgate",
        "no shell: the binary itself"
    );
    assert_eq!(check[1], "health");
    let ignored = repository_file(".dockerignore");
    for path in ["target", "fuzz"] {
        assert!(
            ignored.lines().any(|l| l.trim() == path),
            ".dockerignore: {path}"
        );
    }
}

/// Starts the binary the way the image does: ENTRYPOINT + CMD, configuration found through
/// `FHIRGATE_CONFIG`; then runs the HEALTHCHECK command (its admin address pointed at this
/// test's port), which must pass while serving and fail once the gateway is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_commands_serve_and_report_health() {
    let all = instructions(&repository_file("Dockerfile"));
    let value = |word: &str| all.iter().rev().find(|(w, _)| w == word).unwrap().1.clone();
    let cmd = exec_form(&value("CMD"));
    let healthcheck = value("HEALTHCHECK");
    let check = exec_form(healthcheck.split_once("CMD").unwrap().1.trim());

    let pki = Pki::new();
    let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
    write_usual_files(&pki);
    let (port, admin_port) = (free_port(), free_port());
    let admin = format!("127.0.0.1:{admin_port}");
    let upstream = format!("https://localhost:{}/fhir", destination.addr.port());
    let config = pki.write(
        "fhirgate.toml",
        &format!(
            "{}\n[admin]\nbind = \"{admin}\"\n",
            one_route_toml(&format!("127.0.0.1:{port}"), &upstream, "")
        ),
    );
    let mut gateway = fhirgate_command()
        .args(&cmd)
        .env("FHIRGATE_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap()).await;
    wait_for_port(admin.parse().unwrap()).await;

    let health = |check: Vec<String>, admin: String| {
        let args: Vec<String> = check[1..]
            .iter()
            .map(|a| a.replace("127.0.0.1:9901", &admin))
            .collect();
        Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(&args)
            .output()
            .unwrap()
    };
    let ok = tokio::task::spawn_blocking({
        let (check, admin) = (check.clone(), admin.clone());
        move || health(check, admin)
    })
    .await
    .unwrap();
    assert!(ok.status.success(), "{ok:?}");

    let _ = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status();
    let status = bounded("the gateway exiting on SIGTERM", async {
        loop {
            if let Some(status) = gateway.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(status.success(), "STOPSIGNAL SIGTERM exits 0: {status:?}");
    let gone = tokio::task::spawn_blocking(move || health(check, admin))
        .await
        .unwrap();
    assert!(!gone.status.success(), "health passed with no gateway");
}

#[test]
fn systemd_unit_checks_runs_reloads_and_drains() {
    let unit = repository_file("deploy/fhirgate.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= missing"))
            .to_owned()
    };
    assert!(value("ExecStartPre").contains("fhirgate check --config"));
    assert!(value("ExecStart").contains("fhirgate run --config"));
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("KillSignal"), "SIGTERM");
    // Longer than the default [shutdown] grace (30 s), so a drain is never cut short.
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    assert!(stop > 30, "{stop}");
    assert!(unit.contains("DynamicUser=yes") || unit.contains("User="));

    // The unit's command lines are accepted by the binary as written (paths aside).
    let exec = value("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let pki = Pki::new();
    write_usual_files(&pki);
    let config = pki.write(
        "fhirgate.toml",
        &one_route_toml("127.0.0.1:0", "https://localhost:1/fhir", ""),
    );
    let check = value("ExecStartPre");
    let check_args: Vec<String> = check
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace("/etc/fhirgate/fhirgate.toml", config.to_str().unwrap()))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(&check_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(args[0], "run");
}
