//! Pass-through: what the client sent is what the destination received, and what the
//! destination answered is what the client saw — but for the hop-by-hop rules.

mod common;

use common::*;
use http::Request;

#[tokio::test]
async fn end_to_end_request_fields_reach_the_destination_byte_exact() {
    let setup = Setup::new().await;
    for proto in [Proto::Http1, Proto::Http2] {
        let mut conn = setup.client().connect(PUBLIC_HOST, proto).await;
        let request = Request::get("/dest-a/Patient/1?name=%C3%A9&_count=2")
            .header("authorization", "Bearer eyJhbGciOi.SECRET-TOKEN.sig")
            .header("cookie", "sid=SECRET-COOKIE; other=1")
            .header("dpop", "eyJ0eXAiOiJkcG9wK2p3dCJ9.proof.sig")
            .header("prefer", "respond-async")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .header("accept", "application/fhir+json")
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 200, "{proto:?}");

        let got = setup.destination.last();
        assert_eq!(got.target, "/fhir/Patient/1?name=%C3%A9&_count=2");
        assert_eq!(
            got.one("authorization").unwrap(),
            "Bearer eyJhbGciOi.SECRET-TOKEN.sig"
        );
        assert_eq!(got.all("cookie"), ["sid=SECRET-COOKIE; other=1"]);
        assert_eq!(
            got.one("dpop").unwrap(),
            "eyJ0eXAiOiJkcG9wK2p3dCJ9.proof.sig"
        );
        assert_eq!(got.one("prefer").unwrap(), "respond-async");
        assert_eq!(got.all("x-custom"), ["one", "two"]);
        assert_eq!(got.one("accept").unwrap(), "application/fhir+json");
    }
}

#[tokio::test]
async fn destination_response_fields_reach_the_client_unchanged() {
    let setup = Setup::new().await;
    for proto in [Proto::Http1, Proto::Http2] {
        let response = setup.client().get("/dest-a/Patient/1", proto).await;
        assert_eq!(response.status(), 200);
        let h = response.headers();
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(
            cookies,
            ["session=abc; Path=/; Secure; HttpOnly", "pref=xyz; Path=/"]
        );
        assert_eq!(
            h["www-authenticate"],
            r#"Bearer realm="fhir", error="invalid_token""#
        );
        assert_eq!(h["etag"], r#"W/"3""#);
        assert_eq!(
            h["content-location"],
            "https://fhir.example.org/dest-a/Patient/1/_history/3"
        );
        assert_eq!(h["server"], "test-destination/1.0");
        assert_eq!(h["date"], "Tue, 01 Jan 2030 00:00:00 GMT");
        assert_eq!(h["x-destination"], "yes");
        assert!(h.get("via").is_none() && h.get("forwarded").is_none());
        assert_eq!(
            text_of(response).await,
            r#"{"resourceType":"Patient","id":"1"}"#
        );
    }
}

#[tokio::test]
async fn token_response_and_destination_errors_pass_unchanged() {
    let setup = Setup::new().await;
    let client = setup.client();
    let mut conn = client.connect(PUBLIC_HOST, Proto::Http1).await;
    let token = conn
        .send(
            Request::post("/dest-a/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(full("grant_type=client_credentials"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(token.headers()["cache-control"], "no-store");
    assert_eq!(
        text_of(token).await,
        r#"{"access_token":"eyJhbGciOiJFUzI1NiJ9.tok.sig","token_type":"Bearer","expires_in":300}"#
    );
    for code in [400u16, 401, 404, 410, 422, 500, 502, 503, 504] {
        let response = client
            .get(&format!("/dest-a/status/{code}"), Proto::Http2)
            .await;
        assert_eq!(response.status().as_u16(), code);
        assert!(
            text_of(response).await.contains("destination's own"),
            "{code} was replaced"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_fields_are_dropped_and_host_is_the_upstream_authority() {
    let setup = Setup::new().await;
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let request = Request::get("/dest-a/Patient/1")
        .header("connection", "keep-alive, X-Hop")
        .header("x-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .header("x-end-to-end", "passes")
        .body(empty())
        .unwrap();
    assert_eq!(conn.send(request).await.unwrap().status(), 200);
    let got = setup.destination.last();
    for name in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            got.all(name).is_empty(),
            "{name} was forwarded: {:?}",
            got.all(name)
        );
    }
    // TE is hop-by-hop; the gateway declares `trailers` for its own hop since the client did.
    assert_eq!(got.all("te"), ["trailers"]);
    assert_eq!(got.one("x-end-to-end").unwrap(), "passes");
    assert_eq!(
        got.authority.clone().unwrap(),
        format!("localhost:{}", setup.destination.addr.port())
    );
    assert!(got.all("host").len() <= 1, "one Host at most");
}

#[tokio::test]
async fn forwarded_and_via_are_appended() {
    let setup = Setup::new().await;
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let request = Request::get("/dest-a/metadata")
        .header("forwarded", "for=192.0.2.43")
        .header("via", "1.1 edge")
        .body(empty())
        .unwrap();
    conn.send(request).await.unwrap();
    let got = setup.destination.last();
    assert_eq!(
        got.all("forwarded"),
        [
            "for=192.0.2.43",
            &format!("for=127.0.0.1;proto=https;host={PUBLIC_HOST}")
        ]
    );
    assert_eq!(got.all("via"), ["1.1 edge", "1.1 fhirgate"]);

    setup.client().get("/dest-a/metadata", Proto::Http2).await;
    assert_eq!(setup.destination.last().all("via"), ["2 fhirgate"]);
}

#[tokio::test]
async fn forwarded_false_adds_nothing() {
    let setup = Setup::with_route_extra("forwarded = false").await;
    setup.client().get("/dest-a/metadata", Proto::Http1).await;
    let got = setup.destination.last();
    assert!(got.all("forwarded").is_empty());
    assert!(got.all("via").is_empty());
}

#[tokio::test]
async fn request_id_is_kept_when_sane_and_generated_otherwise() {
    let setup = Setup::new().await;
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let sane = Request::get("/dest-a/x")
        .header("x-request-id", "client-id-42")
        .body(empty())
        .unwrap();
    let response = conn.send(sane).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-id-42");
    assert_eq!(
        setup.destination.last().one("x-request-id").unwrap(),
        "client-id-42"
    );

    let insane = Request::get("/dest-a/x")
        .header("x-request-id", "bad id;<script>")
        .body(empty())
        .unwrap();
    let response = conn.send(insane).await.unwrap();
    let returned = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(returned, "bad id;<script>");
    assert_eq!(returned.len(), 36);
    assert_eq!(
        setup.destination.last().one("x-request-id").unwrap(),
        returned
    );
}

#[tokio::test]
async fn no_content_response_passes() {
    let setup = Setup::new().await;
    let response = setup.client().get("/dest-a/empty", Proto::Http1).await;
    assert_eq!(response.status(), 204);
    assert_eq!(text_of(response).await, "");
}
