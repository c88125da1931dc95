//! Every example in config/ passes `fhirgate check`, with the certificates it names made by
//! the test (no key is committed).

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// Copies `config/NAME` into a fresh folder whose `certs/` holds what the examples name.
fn check_example(name: &str) -> (bool, String) {
    let pki = Pki::new();
    let config_dir = pki.path("config");
    let certs_dir = pki.path("certs");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&certs_dir).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    std::fs::copy(&source, config_dir.join(name)).unwrap();
    let leaves: [(&str, &[&str]); 4] = [
        ("public", &["fhir.example.org"]),
        ("dest-a-public", &["fhir.dest-a.org"]),
        ("dest-b-public", &["fhir.dest-b.org"]),
        ("wildcard", &["*.fhir.example.org"]),
    ];
    for (file, names) in leaves {
        let leaf = pki.public_ca.issue(names);
        std::fs::write(certs_dir.join(format!("{file}.pem")), &leaf.cert_pem).unwrap();
        std::fs::write(certs_dir.join(format!("{file}.key")), &leaf.key_pem).unwrap();
    }
    std::fs::write(certs_dir.join("private-ca.pem"), &pki.private_ca.pem).unwrap();
    std::fs::write(certs_dir.join("audit.key"), [7u8; 32]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["check", "--config"])
        .arg(config_dir.join(name))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_example_configuration_passes_check() {
    for (name, routes) in [
        ("fhirgate.toml", &["dest-a"][..]),
        ("path-segment.toml", &["dest-a", "dest-b"][..]),
        ("own-host.toml", &["dest-a", "dest-b"][..]),
        ("sub-domain.toml", &["dest-a", "dest-b"][..]),
    ] {
        let (ok, text) = check_example(name);
        assert!(ok, "{name}:\n{text}");
        assert!(!text.contains("error:"), "{name}:\n{text}");
        for route in routes {
            assert!(
                text.lines().any(|l| l.starts_with(route)),
                "{name}: route {route} missing:\n{text}"
            );
        }
    }
}

#[test]
fn examples_cover_the_three_public_url_styles() {
    let read = |name: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name),
        )
        .unwrap()
    };
    assert!(
        read("path-segment.toml").contains("public_base = \"https://fhir.example.org/dest-a\"")
    );
    assert!(read("own-host.toml").contains("public_base = \"https://fhir.dest-a.org/\""));
    assert!(
        read("sub-domain.toml").contains("public_base = \"https://dest-a.fhir.example.org/r4\"")
    );
}
