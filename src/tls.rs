//! TLS material: PEM loading, the listener's `ServerConfig` (certificate by SNI, minimum
//! version, ALPN) and the per-route upstream `ClientConfig` (private trust anchors).
//!
//! PEM files are read with `rustls::pki_types::pem::PemObject` (rustls-pemfile is
//! unmaintained). Certificate names come from the leaf's subjectAltName, parsed once with
//! `x509-parser`, so that the per-handshake choice is a plain lookup.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{CertificateConfig, FileRef, ListenerConfig, RouteConfig, TlsVersion};

/// ALPN identifiers offered on listeners and towards upstreams, preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A problem with a file the configuration names, located by the config key that names it.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {}: {}: {problem}", config_file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key, path.display())]
pub struct TlsFileError {
    /// The configuration file that names the file.
    pub config_file: PathBuf,
    /// The config key naming the file, e.g. `listeners[0].certificates[0].key`.
    pub key: String,
    pub line: Option<usize>,
    /// The PEM file itself.
    pub path: PathBuf,
    /// Displayed as part of this error (with its own cause), so not chained again as a source.
    pub problem: TlsFileProblem,
}

/// What is wrong with a PEM file. Each text includes its cause, so one line says it all.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileProblem {
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    #[error("not a valid PEM file: {0}")]
    Pem(rustls::pki_types::pem::Error),
    #[error("contains no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("contains no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("the leaf certificate cannot be parsed")]
    BadCertificate,
    #[error("the leaf certificate has no DNS names in its subjectAltName; SNI needs them")]
    NoNames,
    #[error("the chain is out of order: certificate #{position} was not issued by certificate #{next}; put the leaf first, then its issuer, then that one's issuer", next = position + 1)]
    ChainOrder { position: usize },
    #[error("the private key is not supported: {0}")]
    UnsupportedKey(rustls::Error),
    #[error("the private key does not belong to the first (leaf) certificate of the chain: {0}")]
    KeyMismatch(rustls::Error),
    #[error("TLS configuration rejected: {0}")]
    Rustls(rustls::Error),
}

impl TlsFileError {
    fn new(config_file: &Path, file: &FileRef, problem: TlsFileProblem) -> Self {
        TlsFileError {
            config_file: config_file.to_path_buf(),
            key: file.key.clone(),
            line: file.line,
            path: file.path.clone(),
            problem,
        }
    }
}

/// The crypto provider used on both sides: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads every certificate of a PEM file, in file order (leaf first for a chain).
pub fn load_certificates(
    config_file: &Path,
    file: &FileRef,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let err = |p| TlsFileError::new(config_file, file, p);
    let pem = std::fs::read(&file.path).map_err(|e| err(TlsFileProblem::Read(e)))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(TlsFileProblem::Pem(e)))?;
    if certs.is_empty() {
        return Err(err(TlsFileProblem::NoCertificate));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
fn load_private_key(
    config_file: &Path,
    file: &FileRef,
) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let err = |p| TlsFileError::new(config_file, file, p);
    let pem = std::fs::read(&file.path).map_err(|e| err(TlsFileProblem::Read(e)))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => err(TlsFileProblem::NoKey),
        other => err(TlsFileProblem::Pem(other)),
    })
}

/// One listener certificate with the names it may be presented for.
#[derive(Debug)]
pub struct ListenerCertificate {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the leaf's subjectAltName; `*.example.org` wildcards kept as such.
    pub names: Vec<String>,
    /// The leaf's notAfter, as seconds since the Unix epoch.
    pub not_after: i64,
}

impl ListenerCertificate {
    /// Loads a chain and its key, checks they belong together and reads the leaf's names.
    pub fn load(
        config_file: &Path,
        provider: &CryptoProvider,
        cfg: &CertificateConfig,
    ) -> Result<Self, TlsFileError> {
        let chain = load_certificates(config_file, &cfg.cert)?;
        let key_der = load_private_key(config_file, &cfg.key)?;
        if let Some(position) = chain_out_of_order(&chain) {
            return Err(TlsFileError::new(
                config_file,
                &cfg.cert,
                TlsFileProblem::ChainOrder { position },
            ));
        }
        let (names, not_after) = leaf_names(&chain[0]).ok_or_else(|| {
            TlsFileError::new(config_file, &cfg.cert, TlsFileProblem::BadCertificate)
        })?;
        if names.is_empty() {
            return Err(TlsFileError::new(
                config_file,
                &cfg.cert,
                TlsFileProblem::NoNames,
            ));
        }
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| {
                TlsFileError::new(config_file, &cfg.key, TlsFileProblem::UnsupportedKey(e))
            })?;
        let key = CertifiedKey::new(chain, signing_key);
        match key.keys_match() {
            // Unknown: this key type cannot be compared; the handshake will be the judge.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(TlsFileError::new(
                    config_file,
                    &cfg.key,
                    TlsFileProblem::KeyMismatch(e),
                ));
            }
        }
        Ok(ListenerCertificate {
            key: Arc::new(key),
            names,
            not_after,
        })
    }

    /// Whether this certificate is valid for `server_name` (lower-case), per RFC 6125 §6.4:
    /// exact match, or a `*.` wildcard standing for exactly one left-most label.
    pub fn covers(&self, server_name: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, server_name))
    }
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// The 1-based position of the first certificate not issued by the one after it, if any:
/// a chain goes leaf first, then each issuer (RFC 8446 §4.4.2).
fn chain_out_of_order(chain: &[CertificateDer<'_>]) -> Option<usize> {
    let parsed: Vec<_> = chain
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .ok()
                .map(|(_, c)| c)
        })
        .collect::<Option<_>>()?;
    parsed
        .windows(2)
        .position(|pair| pair[0].issuer().as_raw() != pair[1].subject().as_raw())
        .map(|i| i + 1)
}

/// notAfter of a certificate, Unix seconds (for the upstream certificate expiry metric).
pub fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// DNS subjectAltNames (lower-cased) and notAfter of a leaf certificate.
fn leaf_names(der: &CertificateDer<'_>) -> Option<(Vec<String>, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general_name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = general_name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    Some((names, cert.validity().not_after.timestamp()))
}

/// Chooses a listener certificate by SNI. Clients without SNI get the first one; an SNI
/// name no certificate covers is refused earlier, by the server, with `unrecognized_name`.
#[derive(Debug)]
pub struct SniResolver {
    certificates: Vec<ListenerCertificate>,
}

impl SniResolver {
    /// Whether some certificate covers `server_name` (lower-case).
    pub fn covers(&self, server_name: &str) -> bool {
        self.certificates.iter().any(|c| c.covers(server_name))
    }

    pub fn certificates(&self) -> &[ListenerCertificate] {
        &self.certificates
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = match hello.server_name() {
            // rustls hands over SNI already lower-cased and validated as a DNS name.
            Some(name) => self.certificates.iter().find(|c| c.covers(name))?,
            None => self.certificates.first()?,
        };
        Some(chosen.key.clone())
    }
}

/// A listener's TLS state: the server configuration plus the resolver, kept so the server
/// can check SNI names before the handshake goes on.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub server_config: Arc<ServerConfig>,
    pub resolver: Arc<SniResolver>,
}

/// Builds a listener's TLS configuration: its certificates, minimum version and ALPN.
pub fn listener_tls(
    config_file: &Path,
    listener: &ListenerConfig,
) -> Result<ListenerTls, TlsFileError> {
    let provider = provider();
    let certificates = listener
        .certificates
        .iter()
        .map(|c| ListenerCertificate::load(config_file, &provider, c))
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = Arc::new(SniResolver { certificates });
    let versions: &[&rustls::SupportedProtocolVersion] = match listener.min_tls_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let first = &listener.certificates[0].cert;
    let mut server_config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsFileError::new(config_file, first, TlsFileProblem::Rustls(e)))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    server_config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    // Stateless resumption saves a full handshake for returning clients (RFC 8446 §2.2).
    if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        server_config.ticketer = ticketer;
    }
    Ok(ListenerTls {
        server_config: Arc::new(server_config),
        resolver,
    })
}

/// The TLS client configuration for a route's upstream: trust anchors from `upstream_ca`
/// (a private CA), or the system roots when unset. ALPN is set by the connector.
pub fn upstream_client_config(
    config_file: &Path,
    route: &RouteConfig,
) -> Result<ClientConfig, UpstreamTrustError> {
    let mut roots = RootCertStore::empty();
    match &route.upstream_ca {
        Some(file) => {
            for cert in load_certificates(config_file, file)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsFileError::new(config_file, file, TlsFileProblem::Rustls(e)))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(UpstreamTrustError::NoSystemRoots {
                    route: route.name.clone(),
                });
            }
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(UpstreamTrustError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Why a route's trust anchors could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTrustError {
    #[error(transparent)]
    File(#[from] TlsFileError),
    #[error(
        "route {route:?}: no upstream_ca is set and the system has no trusted root certificates; set upstream_ca to the private CA's PEM file"
    )]
    NoSystemRoots { route: String },
    #[error("TLS client configuration rejected")]
    Rustls(#[source] rustls::Error),
    #[error("route {route:?}: the upstream authority cannot be used in a request URI")]
    BadAuthority { route: String },
}

/// The TLS `unrecognized_name` alert (RFC 6066 §3) as a plaintext record: what a server
/// sends when no certificate matches the client's SNI. Written before any handshake keys
/// exist, so it needs no TLS state.
pub const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcard_stands_for_one_label() {
        assert!(name_matches("*.example.org", "a.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", "a.b.example.org"));
        assert!(name_matches("fhir.example.org", "fhir.example.org"));
        assert!(!name_matches("fhir.example.org", "other.example.org"));
    }
}
