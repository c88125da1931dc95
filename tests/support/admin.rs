//! The gateway's admin listener as a test reads it: plain HTTP/1.1 GETs and metric sums.

use std::net::SocketAddr;

use http_body_util::BodyExt;

use super::bounded;

/// GET `path` on the admin listener at `addr` (bounded); (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    bounded("a GET on the admin listener", async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get(path)
            .header("host", "admin")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
    .await
}

/// The sum of every sample of a metric family in a Prometheus text exposition, e.g.
/// `fhirgate_open_connections` over all listeners and protocols.
pub fn metric_sum(exposition: &str, family: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `fhirgate_open_connections`, summed over listeners and protocols.
pub async fn open_connections(admin: SocketAddr) -> u64 {
    metric_sum(
        &admin_get(admin, "/metrics").await.1,
        "fhirgate_open_connections",
    )
}
