//! `fhirgate dev`: everything needed to see the gateway work, with no files to prepare.
//!
//! It makes two throw-away certificate authorities with rcgen — a *private* one for the
//! destination (as an organisation's internal CA would be) and a *public* one for the
//! gateway's listener — starts the [sample destination](crate::sample) on a private
//! 127.0.0.1 port, writes a gateway configuration like an operator would, and starts the
//! gateway from it. Everything lives in a temporary folder that is removed on exit.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::proxy::ErrorChain;
use crate::sample::{self, SampleDestination};
use crate::server::Gateway;

/// A running development set-up.
pub struct DevEnvironment {
    gateway: Gateway,
    destination: SampleDestination,
    /// The temporary folder with the CAs, certificates, keys and configuration.
    dir: PathBuf,
    port: u16,
}

/// A throw-away certificate authority.
struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl DevCa {
    fn new(name: &str) -> anyhow::Result<DevCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `names`, as (chain PEM, key PEM).
    fn issue(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

impl DevEnvironment {
    /// Makes the certificates, starts the sample destination and the gateway on
    /// `127.0.0.1:port`.
    pub async fn start(port: u16) -> anyhow::Result<DevEnvironment> {
        let dir = std::env::temp_dir().join(format!("fhirgate-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;

        let private_ca = DevCa::new("fhirgate dev private CA (throw-away)")?;
        let public_ca = DevCa::new("fhirgate dev public CA (throw-away)")?;
        write(&dir, "private-ca.pem", &private_ca.pem)?;
        write(&dir, "public-ca.pem", &public_ca.pem)?;
        let (public_cert, public_key) = public_ca.issue(&["localhost"])?;
        write(&dir, "public.pem", &public_cert)?;
        write(&dir, "public.key", &public_key)?;

        // The destination's certificate reflects its private name (IG security section).
        let (dest_cert, dest_key) = private_ca.issue(&["localhost", "127.0.0.1"])?;
        let public_base = format!("https://localhost:{port}/fhir");
        let destination = SampleDestination::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            server_config(&dest_cert, &dest_key)?,
            public_base.clone(),
        )
        .await
        .context("cannot start the sample destination")?;

        let toml = format!(
            r#"# Written by `fhirgate dev`: a throw-away configuration.
[[listeners]]
name = "public"
bind = "127.0.0.1:{port}"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"

[[routes]]
name = "sample"
public_base = "{public_base}"
upstream = "https://localhost:{dest_port}{sample_base}"
upstream_ca = "private-ca.pem"
"#,
            dest_port = destination.addr.port(),
            sample_base = sample::BASE_PATH,
        );
        let config_path = write(&dir, "fhirgate.toml", &toml)?;
        let config =
            Config::load(&config_path).map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?;
        let gateway = Gateway::start(config)
            .await
            .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?;
        Ok(DevEnvironment {
            gateway,
            destination,
            dir,
            port,
        })
    }

    /// The public CA file clients pass to `curl --cacert`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("public-ca.pem")
    }

    /// What to paste: curl commands that work as printed.
    pub fn instructions(&self) -> String {
        let ca = self.ca_file();
        let ca = ca.display();
        let base = format!("https://localhost:{}/fhir", self.port);
        let mut out = String::new();
        let _ = writeln!(out, "fhirgate dev is running.");
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  gateway (public):     {base}   ->   sample destination (private): https://localhost:{}{}",
            self.destination.addr.port(),
            sample::BASE_PATH
        );
        let _ = writeln!(out, "  public CA for curl:   {ca}");
        let _ = writeln!(
            out,
            "  configuration:        {}",
            self.dir.join("fhirgate.toml").display()
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "Try (in another terminal):");
        let _ = writeln!(out);
        let _ = writeln!(out, "  # capabilities");
        let _ = writeln!(out, "  curl --cacert {ca} {base}/metadata");
        let _ = writeln!(out, "  # a read, as JSON and as XML");
        let _ = writeln!(out, "  curl --cacert {ca} {base}/Patient/example");
        let _ = writeln!(
            out,
            "  curl --cacert {ca} '{base}/Patient/example?_format=xml'"
        );
        let _ = writeln!(
            out,
            "  # a search: the Bundle's fullUrls use the public base"
        );
        let _ = writeln!(out, "  curl --cacert {ca} '{base}/Patient?name=chalmers'");
        let _ = writeln!(
            out,
            "  # a token from the destination, passed back untouched, then a protected read"
        );
        let _ = writeln!(out, "  curl -i --cacert {ca} {base}/Observation/protected");
        let _ = writeln!(
            out,
            "  TOKEN=$(curl -s --cacert {ca} -d grant_type=client_credentials {base}/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')"
        );
        let _ = writeln!(
            out,
            "  curl --cacert {ca} -H \"Authorization: Bearer $TOKEN\" {base}/Observation/protected"
        );
        let _ = writeln!(out, "  # bulk export: kick-off, poll, download (streamed)");
        let _ = writeln!(
            out,
            "  curl -i --cacert {ca} -H 'Prefer: respond-async' '{base}/$export'"
        );
        let _ = writeln!(out, "  curl --cacert {ca} {base}/bulkstatus/1");
        let _ = writeln!(
            out,
            "  curl --cacert {ca} {base}/bulkfiles/patients.ndjson | wc -l"
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "Press Ctrl-C to stop.");
        out
    }

    /// Drains the gateway, stops the destination and removes the temporary folder.
    pub async fn stop(self) {
        self.gateway.shutdown().await;
        self.destination.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    let certs =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    Ok(rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?)
}
