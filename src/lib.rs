//! # fhirgate
//!
//! The **inbound gateway intermediary** of the HL7 FHIR *Hybrid / Intermediary Exchange*
//! implementation guide: a transparent, TLS-terminating, pass-through reverse proxy that
//! holds the certificate of a destination's public FHIR base URL and forwards every exchange
//! to the destination's private URL over a new, verified TLS connection.
//!
//! One request reads top to bottom through the modules:
//!
//! | stage | module |
//! |---|---|
//! | configuration file → validated, immutable [`config::Config`] | [`config`] |
//! | PEM loading, listener `ServerConfig` (SNI, versions, ALPN), upstream `ClientConfig` | [`tls`] |
//! | bind, accept, handshake deadline, HTTP/1.1 + HTTP/2, drain | [`server`] |
//! | one exchange: request id → route → rewrite → upstream → response | [`proxy`] |
//! | route table: host + segment-boundary longest prefix, dot-segments | [`route`] |
//! | hop-by-hop, `Host`, `Forwarded`/`Via`, request id | [`headers`] |
//! | pooled TLS clients per route, timeouts, failure classification | [`upstream`] |
//! | the audit trail: FHIR AuditEvents, HMAC-chained, never lost | [`audit`] |
//! | streaming bodies both ways, counted | [`body`] |
//! | the record of one exchange, reported when it ends | [`exchange`] |
//! | gateway-made errors as FHIR `OperationOutcome` | [`error`] |
//! | open-connection limits, overall and per client address | [`limits`] |
//! | when a client connection counts as idle | [`idle`] |
//! | closing a client connection without losing the end of a response | [`linger`] |
//! | `fhirgate check`: chains, expiry, coverage, upstream probes | [`check`] |
//! | the one time source: Unix time, RFC 3339 UTC | [`clock`] |
//! | human or JSON log lines | [`logging`] |
//! | Prometheus metrics | [`metrics`] |
//! | admin listener: /healthz, /readyz, /metrics | [`admin`] |
//! | `fhirgate dev`: throw-away PKI, sample destination, gateway | [`dev`], [`sample`] |
//!
//! The binary (`src/main.rs`) only parses the command line and calls into this library, so
//! tests start a whole gateway in-process on `127.0.0.1:0` with [`server::Gateway`].

// Start-up errors carry the file, key and line that explain them; they are made once, at
// start, never per request, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod audit;
pub mod body;
pub mod check;
pub mod clock;
pub mod config;
pub mod dev;
pub mod error;
pub mod exchange;
pub mod headers;
pub mod idle;
pub mod limits;
pub mod linger;
pub mod logging;
pub mod metrics;
pub mod multiplexed;
pub mod pooled;
pub mod proxy;
pub mod readahead;
pub mod route;
pub mod sample;
pub mod server;
pub mod tls;
pub mod upstream;
