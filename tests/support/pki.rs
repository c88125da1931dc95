//! A test PKI made with rcgen at run time: a public CA for the gateway's listener
//! certificates, a private CA for the destination's certificate (the IG: "certificates of the
//! destination reflect their private URLs"), and the bad certificates upstream verification
//! must refuse (wrong name, expired, unknown CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority made at test time.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Parameters of a server certificate for `names` (DNS names or IP literals).
fn leaf_params(names: &[&str]) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let params = ca_params(name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA issued by this one, and its certificate as PEM.
    pub fn intermediate(&self, name: &str) -> (Ca, String) {
        let params = ca_params(name);
        let key = KeyPair::generate().unwrap();
        let pem = params.signed_by(&key, &self.issuer).unwrap().pem();
        (
            Ca {
                pem: pem.clone(),
                issuer: Issuer::new(params, key),
            },
            pem,
        )
    }

    /// A server certificate valid now for `names` (DNS names or IP literals).
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_between(
            names,
            rcgen::date_time_ymd(2020, 1, 1),
            rcgen::date_time_ymd(2099, 1, 1),
        )
    }

    /// A server certificate that expired in 2021.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        self.issue_between(
            names,
            rcgen::date_time_ymd(2020, 1, 1),
            rcgen::date_time_ymd(2021, 1, 1),
        )
    }

    /// A server certificate that expires `days` from now.
    pub fn issue_expiring_in(&self, names: &[&str], days: i64) -> Leaf {
        self.issue_between(
            names,
            rcgen::date_time_ymd(2020, 1, 1),
            time::OffsetDateTime::now_utc() + time::Duration::days(days),
        )
    }

    fn issue_between(
        &self,
        names: &[&str],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Leaf {
        let mut params = leaf_params(names);
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Everything a typical test needs: a public CA for the listener, a private CA for the
/// destination, and a temporary folder for the configuration and PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub public_ca: Ca,
    pub private_ca: Ca,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            public_ca: Ca::new("Test public CA"),
            private_ca: Ca::new("Test private CA"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes `leaf` as `NAME.pem` / `NAME.key`.
    pub fn write_leaf(&self, name: &str, leaf: &Leaf) {
        self.write(&format!("{name}.pem"), &leaf.cert_pem);
        self.write(&format!("{name}.key"), &leaf.key_pem);
    }
}

pub fn config_dir(pki: &Pki) -> &Path {
    pki.dir.path()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS server configuration presenting `leaf`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(leaf: &Leaf) -> rustls::ServerConfig {
    server_config_with_alpn(leaf, &[b"h2", b"http/1.1"])
}

/// A TLS server configuration presenting `leaf`, offering the `alpn` protocols.
pub fn server_config_with_alpn(leaf: &Leaf, alpn: &[&[u8]]) -> rustls::ServerConfig {
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Trust anchors from a PEM text.
pub fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A TLS client configuration trusting `ca_pem`, offering `alpn`, TLS 1.2 and 1.3.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    client_config_versions(ca_pem, alpn, rustls::DEFAULT_VERSIONS)
}

/// A TLS client configuration trusting `ca_pem`, offering `alpn` and only `versions`.
pub fn client_config_versions(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}
