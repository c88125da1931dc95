//! Connection limits: over `max_connections_per_ip` / `max_connections`, new connections
//! are closed at once; connections already open keep working.

mod common;

use common::*;

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_open_ones_keep_working() {
    for (limits, what) in [
        ("max_connections_per_ip = 2", "per client address"),
        ("max_connections = 2", "overall"),
    ] {
        let pki = Pki::new();
        let destination = Destination::start(&pki.private_ca.issue(&["localhost"])).await;
        pki.write_leaf("public", &pki.public_ca.issue(&[PUBLIC_HOST]));
        pki.write("private-ca.pem", &pki.private_ca.pem);
        let toml = format!(
            r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
  [[listeners.certificates]]
  cert = "public.pem"
  key = "public.key"
[[routes]]
name = "dest-a"
public_base = "https://{PUBLIC_HOST}/dest-a"
upstream = "https://localhost:{}/fhir"
upstream_ca = "private-ca.pem"
[limits]
{limits}
"#,
            destination.addr.port()
        );
        let gw = TestGateway::start(&pki, &toml).await;
        let client = Client::new(&pki.public_ca.pem, gw.addr);
        let mut first = client.connect(PUBLIC_HOST, Proto::Http1).await;
        let mut second = client.connect(PUBLIC_HOST, Proto::Http2).await;
        assert!(
            client.tls(Some(PUBLIC_HOST), &[]).await.is_err(),
            "{what}: a third connection was served"
        );
        assert_eq!(
            first.send(get("/dest-a/a")).await.unwrap().status(),
            200,
            "{what}"
        );
        assert_eq!(
            second.send(get("/dest-a/b")).await.unwrap().status(),
            200,
            "{what}"
        );
        // A place is given back when a connection closes.
        drop(first);
        let mut admitted = false;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if client.tls(Some(PUBLIC_HOST), &[]).await.is_ok() {
                admitted = true;
                break;
            }
        }
        assert!(
            admitted,
            "{what}: the closed connection's place was not given back"
        );
        gw.stop().await;
    }
}
