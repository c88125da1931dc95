//! `fhirgate dev`: everything needed to see the gateway work, with no files to prepare.
//!
//! It makes two throw-away certificate authorities with rcgen — a *private* one for the
//! destination (as an organisation's internal CA would be) and a *public* one for the
//! gateway's listener (standing in for a public web CA) — starts the
//! [sample destination](crate::sample) on a private 127.0.0.1 port with a certificate for its
//! private name, writes a gateway configuration the way an operator would, and starts the
//! gateway from that file. Everything lives in one temporary folder that is removed when the
//! environment stops or is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::proxy::ErrorChain;
use crate::sample::{self, SampleDestination};
use crate::server::{Gateway, StartError};

/// The listener name in the written configuration.
const LISTENER: &str = "public";

/// A running development set-up: sample destination, gateway, and their files.
pub struct DevEnvironment {
    gateway: Gateway,
    /// Kept so the destination lives as long as the gateway that forwards to it.
    destination: SampleDestination,
    /// Removed on drop, so even an interrupted stop leaves no keys behind.
    dir: DevDir,
    port: u16,
}

impl DevEnvironment {
    /// Makes the certificates, starts the sample destination on a private port and the gateway
    /// on `127.0.0.1:port`, with public base `https://localhost:port/fhir`.
    pub async fn start(port: u16) -> anyhow::Result<DevEnvironment> {
        // The destination must know its public URL before the gateway binds (it writes it
        // into its answers), so the port cannot be left to the system.
        anyhow::ensure!(
            port != 0,
            "--port 0 is not supported: choose a port, such as 8443"
        );
        let dir = DevDir::create()?;

        let private_ca = DevCa::new("fhirgate dev private CA (throw-away)")?;
        let public_ca = DevCa::new("fhirgate dev public CA (throw-away)")?;
        dir.write("private-ca.pem", &private_ca.pem)?;
        dir.write("public-ca.pem", &public_ca.pem)?;
        let (public_cert, public_key) = public_ca.issue(&["localhost"])?;
        dir.write("public.pem", &public_cert)?;
        dir.write("public.key", &public_key)?;
        // The audit chain's secret: 32 random bytes (two v4 UUIDs, 244 random bits).
        let audit_key = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].map(|u| u.into_bytes());
        dir.write("audit.key", audit_key.concat())?;

        // The destination's certificate reflects its private name (IG security section); the
        // gateway verifies it against the private CA only.
        let (dest_cert, dest_key) = private_ca.issue(&["localhost", "127.0.0.1"])?;
        let public_base = format!("https://localhost:{port}{}", sample::BASE_PATH);
        let destination = sample::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            server_config(&dest_cert, &dest_key)?,
            public_base.clone(),
        )
        .await
        .context("cannot start the sample destination")?;

        let toml = format!(
            r#"# Written by `fhirgate dev`: a throw-away configuration, removed when it stops.
[[listeners]]
name = "{LISTENER}"
bind = "127.0.0.1:{port}"
  [[listeners.certificates]]
  cert = "public.pem"          # for localhost, issued by public-ca.pem
  key = "public.key"

[[routes]]
name = "sample"
public_base = "{public_base}"
upstream = "https://localhost:{dest_port}{sample_base}"
upstream_ca = "private-ca.pem"

[audit]
path = "audit.ndjson"          # one AuditEvent per exchange, chained with audit.key
key_file = "audit.key"
source = "fhirgate-dev"

[shutdown]
grace = "5s"                   # Ctrl-C should not wait long for an open download
"#,
            dest_port = destination.addr.port(),
            sample_base = sample::BASE_PATH,
        );
        let config_path = dir.write("fhirgate.toml", &toml)?;
        let config =
            Config::load(&config_path).map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))?;
        let gateway = Gateway::start(config).await.map_err(|error| match &error {
            StartError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
                anyhow::anyhow!(
                    "port {port} on 127.0.0.1 is already in use (another `fhirgate dev`?); \
                     choose another with `fhirgate dev --port N`"
                )
            }
            _ => anyhow::anyhow!("{}", ErrorChain(&error)),
        })?;
        Ok(DevEnvironment {
            gateway,
            destination,
            dir,
            port,
        })
    }

    /// The public CA file clients pass to `curl --cacert`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("public-ca.pem")
    }

    /// The gateway's public base URL, `https://localhost:PORT/fhir`.
    pub fn public_base(&self) -> String {
        format!("https://localhost:{}{}", self.port, sample::BASE_PATH)
    }

    /// The address the gateway listens on.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway.local_addr(LISTENER)
    }

    /// What to paste: a short banner and curl commands that work as printed.
    pub fn instructions(&self) -> String {
        let ca = self.ca_file();
        let curl = format!("curl --cacert {}", ca.display());
        let base = self.public_base();
        let private = format!(
            "https://localhost:{}{}",
            self.destination.addr.port(),
            sample::BASE_PATH
        );
        let config = self.dir.path().join("fhirgate.toml");
        let mut out = String::new();
        let mut line = |text: &str| {
            out.push_str(text);
            out.push('\n');
        };
        line("fhirgate dev is running (throw-away certificates and a sample destination).");
        line("");
        line(&format!("  gateway (public):     {base}"));
        line(&format!(
            "  sample destination:   {private}   (private; reached only through the gateway)"
        ));
        line(&format!("  public CA for curl:   {}", ca.display()));
        line(&format!("  configuration:        {}", config.display()));
        line(&format!(
            "  audit trail:          {}",
            self.dir.path().join("audit.ndjson").display()
        ));
        line("");
        line("Try, in another terminal:");
        line("");
        line("  # capabilities");
        line(&format!("  {curl} {base}/metadata"));
        line("  # a read, as JSON and as XML");
        line(&format!("  {curl} {base}/Patient/example"));
        line(&format!("  {curl} '{base}/Patient/example?_format=xml'"));
        line("  # a search: the Bundle's fullUrls use the public base");
        line(&format!("  {curl} '{base}/Patient?name=chalmers'"));
        line("  # SMART discovery; without a token the protected read is refused (401)");
        line(&format!("  {curl} {base}/.well-known/smart-configuration"));
        line(&format!("  {curl} -i {base}/Observation/protected"));
        line("  # a token from the destination, passed through untouched, then the protected read");
        line(&format!(
            "  TOKEN=$({curl} -s -d grant_type=client_credentials {base}/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')"
        ));
        line(&format!(
            "  {curl} -H \"Authorization: Bearer $TOKEN\" {base}/Observation/protected"
        ));
        line(
            "  # bulk export: kick-off (202 + Content-Location), poll, download (streamed, ~3.7 MB)",
        );
        line(&format!(
            "  {curl} -i -H 'Prefer: respond-async' '{base}/$export'"
        ));
        line(&format!("  {curl} {base}/bulkstatus/1"));
        line(&format!(
            "  {curl} -s {base}/bulkfiles/patients.ndjson | wc -l"
        ));
        line("");
        line("Press Ctrl-C to stop.");
        out
    }

    /// Drains the gateway, stops the destination and removes the temporary folder.
    pub async fn stop(self) {
        self.gateway.shutdown().await;
        // `destination` and `dir` are dropped here: connections closed, folder removed.
    }
}

/// The temporary folder: private to this user (it holds keys), unique per run, removed on
/// drop. A few lines here rather than promoting the `tempfile` dev-dependency to a
/// dependency of the product.
struct DevDir(PathBuf);

impl DevDir {
    fn create() -> anyhow::Result<DevDir> {
        let path = std::env::temp_dir().join(format!(
            "fhirgate-dev-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        // `create`, not `create_all`: never reuse a folder someone else prepared.
        builder
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(DevDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

    /// A server certificate for `names` (DNS names or IP addresses), as (PEM, key PEM).
    fn issue(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The sample destination's TLS set-up: its private certificate, TLS 1.2 and 1.3.
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
