//! Prometheus metrics, kept with the `prometheus-client` crate (the Prometheus project's own
//! Rust client: atomic counters, text exposition format) rather than hand-formatted.
//!
//! Names and labels are part of the contract (DESIGN.md); every gateway has its own
//! [`Metrics`], shared by its listeners and exchanges and surviving configuration reloads.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label value shared with the route table, so labelling costs no string copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// A request method as a label value: the methods of RFC 9110 and `PATCH` by name, any other
/// as `_OTHER`. Clients may send any token as a method and the gateway passes it on, but a
/// series is kept forever, so a client inventing methods must not be able to add series
/// without bound (the same rule as OpenTelemetry's `http.request.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodLabel(&'static str);

impl MethodLabel {
    pub fn of(method: &http::Method) -> MethodLabel {
        use http::Method;
        MethodLabel(match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::OPTIONS => "OPTIONS",
            Method::CONNECT => "CONNECT",
            Method::TRACE => "TRACE",
            _ => "_OTHER",
        })
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ExchangeLabels {
    pub route: Name,
    pub method: MethodLabel,
    pub status: u16,
}

/// A route's own series, looked up once per configuration instead of once per exchange.
#[derive(Debug)]
pub struct RouteSeries {
    pub duration: Histogram,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub exchanges: ExchangeCounters,
}

impl RouteSeries {
    pub fn new(metrics: &Metrics, route: &Name) -> RouteSeries {
        let labels = RouteLabels {
            route: route.clone(),
        };
        RouteSeries {
            duration: metrics.exchange_duration.get_or_create(&labels).clone(),
            bytes_received: metrics.bytes_received.get_or_create(&labels).clone(),
            bytes_sent: metrics.bytes_sent.get_or_create(&labels).clone(),
            exchanges: ExchangeCounters {
                route: route.clone(),
                seen: RwLock::default(),
            },
        }
    }
}

/// A route's `fhirgate_exchanges_total` counters, by method and status, as its exchanges
/// meet them. The family finds a counter by hashing the whole label set (SipHash) under its
/// lock; a route sees a handful of method and status pairs, found here by a short scan.
#[derive(Debug)]
pub struct ExchangeCounters {
    route: Name,
    seen: RwLock<Vec<(MethodLabel, u16, Counter)>>,
}

/// Pairs kept per route; a destination answering with more kinds of status than this is
/// counted through the family for the rest, so the scan stays short.
const KEPT_PAIRS: usize = 32;

impl ExchangeCounters {
    /// Counts one exchange of this route in `family` (the gateway's `exchanges`).
    pub fn count(
        &self,
        family: &Family<ExchangeLabels, Counter>,
        method: MethodLabel,
        status: u16,
    ) {
        let is_pair = |(m, s, _): &&(MethodLabel, u16, Counter)| *s == status && *m == method;
        if let Some((_, _, counter)) = self
            .seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(is_pair)
        {
            counter.inc();
            return;
        }
        let counter = family
            .get_or_create(&ExchangeLabels {
                route: self.route.clone(),
                method,
                status,
            })
            .clone();
        counter.inc();
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if seen.len() < KEPT_PAIRS && !seen.iter().any(|pair| is_pair(&pair)) {
            seen.push((method, status, counter));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    pub route: Name,
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandshakeFailureLabels {
    pub listener: Name,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub listener: Name,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CertificateLabels {
    pub listener: Name,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamCertificateLabels {
    pub route: Name,
    /// The private host name the certificate was verified for.
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConfigLabels {
    pub hash: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~33 s: FHIR reads to slow searches; bulk downloads land in +Inf.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of one gateway.
pub struct Metrics {
    registry: Registry,
    pub exchanges: Family<ExchangeLabels, Counter>,
    pub exchange_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub bytes_received: Family<RouteLabels, Counter>,
    pub bytes_sent: Family<RouteLabels, Counter>,
    pub upstream_failures: Family<FailureLabels, Counter>,
    pub tls_handshakes: Family<ListenerLabels, Counter>,
    pub tls_handshake_failures: Family<HandshakeFailureLabels, Counter>,
    pub open_connections: Family<ConnectionLabels, Gauge>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub config_info: Family<ConfigLabels, Gauge>,
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    pub upstream_connections: Family<RouteLabels, Gauge>,
    pub upstream_certificate_expiry: Family<UpstreamCertificateLabels, Gauge>,
    pub audit_queue_depth: Gauge,
    /// The series of exchanges that matched no route (`route="-"`), made at the first one.
    unrouted: OnceLock<RouteSeries>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            exchanges: Family::default(),
            exchange_duration: Family::new_with_constructor(duration_histogram),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            upstream_failures: Family::default(),
            tls_handshakes: Family::default(),
            tls_handshake_failures: Family::default(),
            open_connections: Family::default(),
            config_reloads: Family::default(),
            config_info: Family::default(),
            certificate_expiry: Family::default(),
            upstream_connections: Family::default(),
            upstream_certificate_expiry: Family::default(),
            audit_queue_depth: Gauge::default(),
            unrouted: OnceLock::new(),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "fhirgate_exchanges",
            "Exchanges by route, method and status",
            m.exchanges.clone(),
        );
        registry.register(
            "fhirgate_exchange_duration_seconds",
            "Exchange duration, from request head to the end of the response body",
            m.exchange_duration.clone(),
        );
        registry.register(
            "fhirgate_request_body_bytes",
            "Request body bytes received from clients",
            m.bytes_received.clone(),
        );
        registry.register(
            "fhirgate_response_body_bytes",
            "Response body bytes sent to clients",
            m.bytes_sent.clone(),
        );
        registry.register(
            "fhirgate_upstream_failures",
            "Failures reaching the upstream, by kind (refused, timeout, tls, broken)",
            m.upstream_failures.clone(),
        );
        registry.register(
            "fhirgate_tls_handshakes",
            "Completed client TLS handshakes",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "fhirgate_tls_handshake_failures",
            "Refused or failed client TLS handshakes, by reason",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "fhirgate_open_connections",
            "Open client connections",
            m.open_connections.clone(),
        );
        registry.register(
            "fhirgate_config_reloads",
            "Configuration reloads by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "fhirgate_config_info",
            "The loaded configuration's hash (value 1)",
            m.config_info.clone(),
        );
        registry.register(
            "fhirgate_certificate_expiry_timestamp_seconds",
            "notAfter of each listener certificate, Unix seconds",
            m.certificate_expiry.clone(),
        );
        registry.register(
            "fhirgate_upstream_connections",
            "Open upstream connections (pooled, idle or in use), by route",
            m.upstream_connections.clone(),
        );
        registry.register(
            "fhirgate_upstream_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate each upstream last presented, Unix seconds",
            m.upstream_certificate_expiry.clone(),
        );
        registry.register(
            "fhirgate_audit_queue_depth",
            "Audit records waiting to be written",
            m.audit_queue_depth.clone(),
        );
        // Both results exist from the start, so a dashboard shows 0 rather than nothing.
        for result in ["success", "failure"] {
            m.config_reloads
                .get_or_create(&ReloadLabels { result })
                .inc_by(0);
        }
        Metrics { registry, ..m }
    }

    /// The series of exchanges that matched no route, counted as route `-`.
    pub fn unrouted(&self) -> &RouteSeries {
        self.unrouted
            .get_or_init(|| RouteSeries::new(self, &Name(Arc::from("-"))))
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the pairs a route keeps, exchanges are still counted, through the family.
    #[test]
    fn a_route_counts_every_status_even_past_the_pairs_it_keeps() {
        let metrics = Metrics::new();
        let series = RouteSeries::new(&metrics, &Name(Arc::from("r")));
        let statuses = 200..200 + KEPT_PAIRS as u16 + 8;
        for _ in 0..3 {
            for status in statuses.clone() {
                series.exchanges.count(
                    &metrics.exchanges,
                    MethodLabel::of(&http::Method::GET),
                    status,
                );
            }
        }
        let exposition = metrics.encode();
        for status in statuses {
            let line = format!(
                r#"fhirgate_exchanges_total{{route="r",method="GET",status="{status}"}} 3"#
            );
            assert!(exposition.lines().any(|l| l == line), "missing {line}");
        }
    }
}
