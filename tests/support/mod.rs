//! Shared harness for the integration tests, so that each test reads like the contract:
//! "client sent / destination received / client saw".
//!
//! | module | what it gives a test |
//! |---|---|
//! | [`pki`] | CAs and certificates made with rcgen at run time (never committed keys), PEM files in a temporary folder |
//! | [`destination`] | a real TLS (or plain) FHIR-ish destination on 127.0.0.1 that records every request as it received it |
//! | [`gateway`] | the gateway started in-process on `127.0.0.1:0`, or as a child process of the binary |
//! | [`client`] | a real HTTP/1.1 or HTTP/2 client whose TLS server name and TCP address are chosen separately |
//!
//! Everything is bounded: connecting, handshaking, sending and reading give up after
//! [`TIMEOUT`] with a message, so a hanging gateway fails a test instead of stalling it.

#![allow(dead_code)] // Each test binary uses a different part of the harness.
#![allow(unused_imports)]

pub mod admin;
pub mod client;
pub mod destination;
pub mod gateway;
pub mod h2raw;
pub mod pki;

pub use admin::*;
pub use client::*;
pub use destination::*;
pub use gateway::*;
pub use pki::*;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ClientBody = BoxBody<Bytes, BoxError>;

/// The public host name the gateway's listener certificate is for.
pub const PUBLIC_HOST: &str = "fhir.example.org";

/// How long any single network step of a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `future` for at most [`TIMEOUT`], failing the test with `what` otherwise.
pub async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {TIMEOUT:?}"))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Waits until `addr` accepts TCP, for a child-process gateway (bounded).
pub async fn wait_for_port(addr: SocketAddr) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr} after 20 s");
}

/// A port that was free a moment ago (for a gateway run as a child process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
