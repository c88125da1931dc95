//! `fhirgate check`: everything `run` would load, plus the mistakes operators really make,
//! reported in one go with what is wrong and how to fix it.
//!
//! Beyond parsing and loading (see [`crate::config`] and [`crate::tls`]), it looks at:
//! certificate chains (order, missing intermediate), expiry (expired: error; within 30
//! days: warning), whether every route's public host is covered by a certificate on each
//! listener it can arrive on, and — with `--probe` — each upstream's TLS handshake.

use std::collections::HashSet;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::clock::{self, rfc3339};
use crate::config::Config;
use crate::proxy::ErrorChain;
use crate::server::{self, Prepared};
use crate::tls::{self, ALPN_H2, ALPN_HTTP11};

/// Certificates expiring sooner than this get a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What `check` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub config: String,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub listeners: Vec<ListenerSummary>,
    pub routes: Vec<RouteSummary>,
    /// Present with `--probe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<Vec<Probe>>,
}

#[derive(Debug, Serialize)]
pub struct ListenerSummary {
    pub name: String,
    pub bind: String,
    pub min_tls_version: &'static str,
    pub certificates: Vec<CertificateSummary>,
}

#[derive(Debug, Serialize)]
pub struct CertificateSummary {
    pub file: String,
    pub names: Vec<String>,
    /// RFC 3339, UTC.
    pub not_after: String,
}

#[derive(Debug, Serialize)]
pub struct RouteSummary {
    pub name: String,
    pub public_base: String,
    pub upstream: String,
    pub listener: Option<String>,
    pub connect_timeout_ms: u128,
    pub response_timeout_ms: u128,
    pub forwarded: bool,
}

/// The result of connecting to one route's upstream.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub route: String,
    pub upstream: String,
    pub reachable: bool,
    /// The private certificate verified against the upstream host with the route's anchors.
    pub certificate_valid: bool,
    pub not_after: Option<String>,
    /// ALPN result: `h2` or `http/1.1`.
    pub protocol: Option<String>,
    pub problem: Option<String>,
}

/// Runs every check on the file at `path`; `probe` also connects to each upstream.
pub async fn check(path: &std::path::Path, probe: bool) -> Report {
    let mut report = Report {
        config: path.display().to_string(),
        ..Report::default()
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            report.errors.push(ErrorChain(&error).to_string());
            return report;
        }
    };
    report.routes = config.routes.iter().map(route_summary).collect();
    let prepared = match server::prepare(&config, &Default::default()) {
        Ok(prepared) => prepared,
        Err(error) => {
            report.errors.push(ErrorChain(&error).to_string());
            return report;
        }
    };
    let now = clock::unix_now();
    inspect_listeners(&config, &prepared, now, &mut report);
    check_coverage(&config, &prepared, &mut report);
    if probe {
        let mut probes = Vec::new();
        for route in &config.routes {
            probes.push(probe_upstream(&config, route).await);
        }
        for p in probes
            .iter()
            .filter(|p| !(p.reachable && p.certificate_valid))
        {
            report.errors.push(format!(
                "route {:?}: upstream {} failed the probe: {}",
                p.route,
                p.upstream,
                p.problem.as_deref().unwrap_or("unknown problem")
            ));
        }
        report.probes = Some(probes);
    }
    report.ok = report.errors.is_empty();
    report
}

fn route_summary(r: &crate::config::RouteConfig) -> RouteSummary {
    RouteSummary {
        name: r.name.clone(),
        public_base: r.public_base_text.clone(),
        upstream: r.upstream.text.clone(),
        listener: r.listener.clone(),
        connect_timeout_ms: r.connect_timeout.as_millis(),
        response_timeout_ms: r.response_timeout.as_millis(),
        forwarded: r.forwarded,
    }
}

/// Chains, names and expiry of every listener certificate.
fn inspect_listeners(config: &Config, prepared: &Prepared, now: i64, report: &mut Report) {
    let system_root_subjects = system_root_subjects();
    for (listener, tls) in config.listeners.iter().zip(&prepared.listeners) {
        let mut certificates = Vec::new();
        for (cfg, cert) in listener
            .certificates
            .iter()
            .zip(tls.resolver.certificates())
        {
            let file = cfg.cert.path.display().to_string();
            let where_ = format!("{} ({})", cfg.cert.key, file);
            if cert.not_after <= now {
                report.errors.push(format!(
                    "{where_}: the certificate for {} expired on {}; renew it",
                    cert.names.join(", "),
                    rfc3339(cert.not_after)
                ));
            } else if cert.not_after - now < EXPIRY_WARNING.as_secs() as i64 {
                report.warnings.push(format!(
                    "{where_}: the certificate for {} expires on {}, in less than 30 days; renew it soon",
                    cert.names.join(", "),
                    rfc3339(cert.not_after)
                ));
            }
            // The order of the chain was checked when it was loaded.
            if let Some(text) = missing_intermediate(&cert.key.cert, &system_root_subjects) {
                report.warnings.push(format!("{where_}: {text}"));
            }
            certificates.push(CertificateSummary {
                file,
                names: cert.names.clone(),
                not_after: rfc3339(cert.not_after),
            });
        }
        report.listeners.push(ListenerSummary {
            name: listener.name.clone(),
            bind: listener.bind.to_string(),
            min_tls_version: match listener.min_tls_version {
                crate::config::TlsVersion::V1_2 => "1.2",
                crate::config::TlsVersion::V1_3 => "1.3",
            },
            certificates,
        });
    }
}

/// Subjects (raw DER) of the system's trusted roots, to tell a complete chain from one
/// missing its intermediate.
fn system_root_subjects() -> HashSet<Vec<u8>> {
    rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
        .map(|(_, cert)| cert.subject().as_raw().to_vec())
        .collect()
}

/// A chain should end with a certificate whose issuer the client knows (a root it trusts);
/// otherwise an intermediate is probably missing.
fn missing_intermediate(chain: &[CertificateDer<'_>], roots: &HashSet<Vec<u8>>) -> Option<String> {
    let last = chain.last()?;
    let (_, last) = x509_parser::parse_x509_certificate(last.as_ref()).ok()?;
    let self_signed = last.issuer().as_raw() == last.subject().as_raw();
    (!self_signed && !roots.contains(last.issuer().as_raw())).then(|| {
        format!(
            "the chain ends with {}, issued by {}, which is neither in the file nor a system root: if it is an intermediate CA, append its certificate to the file (clients that do not have it cannot verify the chain); if it is your private root, ignore this",
            last.subject(),
            last.issuer()
        )
    })
}

/// Every route's public host must be covered by a certificate on each listener the route
/// can arrive on; otherwise clients get `unrecognized_name` for it.
fn check_coverage(config: &Config, prepared: &Prepared, report: &mut Report) {
    for route in &config.routes {
        for (listener, tls) in config.listeners.iter().zip(&prepared.listeners) {
            if route.listener.as_ref().is_some_and(|l| *l != listener.name) {
                continue;
            }
            if !tls.resolver.covers(&route.public_host) {
                report.errors.push(format!(
                    "route {:?}: its public host {} is covered by no certificate on listener {:?}; add a certificate whose subjectAltName lists {} to that listener{}",
                    route.name,
                    route.public_host,
                    listener.name,
                    route.public_host,
                    if route.listener.is_none() {
                        ", or restrict the route to another listener with `listener = \"…\"`"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
}

/// Connects to a route's upstream and completes the TLS handshake, sending no request.
async fn probe_upstream(config: &Config, route: &crate::config::RouteConfig) -> Probe {
    let mut probe = Probe {
        route: route.name.clone(),
        upstream: route.upstream.text.clone(),
        reachable: false,
        certificate_valid: false,
        not_after: None,
        protocol: None,
        problem: None,
    };
    let address = (route.upstream.host.as_str(), route.upstream.port);
    let tcp = match tokio::time::timeout(route.connect_timeout, TcpStream::connect(address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => {
            probe.problem = Some(format!("cannot connect: {error}"));
            return probe;
        }
        Err(_) => {
            probe.problem = Some(format!(
                "no TCP connection within connect_timeout ({:?})",
                route.connect_timeout
            ));
            return probe;
        }
    };
    probe.reachable = true;
    if !route.upstream.tls {
        probe.problem = Some("plain http:// upstream: nothing to verify".into());
        return probe;
    }
    let mut client = match tls::upstream_client_config(&config.file, route) {
        Ok(client) => client,
        Err(error) => {
            probe.problem = Some(ErrorChain(&error).to_string());
            return probe;
        }
    };
    client.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    let Ok(name) = ServerName::try_from(route.upstream.host.clone()) else {
        probe.problem = Some("the upstream host is not a valid TLS server name".into());
        return probe;
    };
    let handshake = TlsConnector::from(std::sync::Arc::new(client)).connect(name, tcp);
    match tokio::time::timeout(route.connect_timeout, handshake).await {
        Ok(Ok(stream)) => {
            let (_, connection) = stream.get_ref();
            probe.certificate_valid = true;
            probe.protocol = connection
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .or(Some("http/1.1".into()));
            probe.not_after = connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| x509_parser::parse_x509_certificate(leaf.as_ref()).ok())
                .map(|(_, cert)| rfc3339(cert.validity().not_after.timestamp()));
        }
        Ok(Err(error)) => {
            let text = match error
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
            {
                Some(tls_error) => format!("TLS handshake failed: {tls_error}"),
                None => format!("TLS handshake failed: {error}"),
            };
            probe.problem = Some(text);
        }
        Err(_) => {
            probe.problem = Some(format!(
                "no TLS handshake within connect_timeout ({:?})",
                route.connect_timeout
            ));
        }
    }
    probe
}

impl Report {
    /// The human-readable form: problems first, then listeners, routes and probes as tables.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        if !self.errors.is_empty() || !self.warnings.is_empty() {
            out.push('\n');
        }
        if self.ok {
            out.push_str(&format!("configuration {} is valid\n\n", self.config));
        }
        if !self.listeners.is_empty() {
            let rows: Vec<[String; 4]> = self
                .listeners
                .iter()
                .flat_map(|l| {
                    l.certificates.iter().map(move |c| {
                        [
                            l.name.clone(),
                            format!("{} (TLS {}+)", l.bind, l.min_tls_version),
                            c.names.join(", "),
                            c.not_after.clone(),
                        ]
                    })
                })
                .collect();
            out.push_str(&table(
                ["LISTENER", "BIND", "CERTIFICATE NAMES", "EXPIRES"],
                &rows,
            ));
            out.push('\n');
        }
        if !self.routes.is_empty() {
            let rows: Vec<[String; 4]> = self
                .routes
                .iter()
                .map(|r| {
                    [
                        r.name.clone(),
                        r.public_base.clone(),
                        r.upstream.clone(),
                        r.listener.clone().unwrap_or_else(|| "(any)".into()),
                    ]
                })
                .collect();
            out.push_str(&table(
                ["ROUTE", "PUBLIC BASE", "UPSTREAM", "LISTENER"],
                &rows,
            ));
        }
        if let Some(probes) = &self.probes {
            out.push('\n');
            let rows: Vec<[String; 5]> = probes
                .iter()
                .map(|p| {
                    [
                        p.route.clone(),
                        yes_no(p.reachable),
                        yes_no(p.certificate_valid),
                        p.not_after.clone().unwrap_or_else(|| "-".into()),
                        p.protocol.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            out.push_str(&table(
                [
                    "ROUTE",
                    "REACHABLE",
                    "CERTIFICATE VALID",
                    "EXPIRES",
                    "PROTOCOL",
                ],
                &rows,
            ));
        }
        out
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes".into() } else { "no".into() }
}

/// A plain text table with columns as wide as their widest cell.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align() {
        let t = table(["A", "BB"], &[["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
