//! Pass-through: what the client sent is what the destination received, and what the
//! destination answered is what the client saw — but for the hop-by-hop rules.

mod support;

use http::{HeaderValue, Request};
use support::*;

const PATIENT_PUT: &str = r#"{"resourceType":"Patient","id":"1","name":[{"family":"Müller"}]}"#;

#[tokio::test]
async fn end_to_end_request_fields_reach_the_destination_byte_exact() {
    let setup = Setup::new().await;
    for proto in [Proto::Http1, Proto::Http2] {
        let mut conn = setup.client().connect(PUBLIC_HOST, proto).await;
        let request = Request::put("/dest-a/Patient/1?name=%C3%A9&_count=2")
            .header("authorization", "Bearer eyJhbGciOi.SECRET-TOKEN.sig")
            .header("cookie", "sid=SECRET-COOKIE; other=1")
            .header("dpop", "eyJ0eXAiOiJkcG9wK2p3dCJ9.proof.sig")
            .header("prefer", "respond-async")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .header("accept", "application/fhir+json")
            .header("content-type", "application/fhir+json; fhirVersion=4.0")
            .header("if-match", r#"W/"2""#)
            .body(full(PATIENT_PUT))
            .unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 200, "{proto:?}");

        let got = setup.destination.last();
        assert_eq!(got.method, "PUT");
        assert_eq!(got.target, "/fhir/Patient/1?name=%C3%A9&_count=2");
        assert_eq!(got.body, Some(BodySummary::of(PATIENT_PUT.as_bytes())));
        assert_eq!(
            got.one("content-type").unwrap(),
            "application/fhir+json; fhirVersion=4.0"
        );
        assert_eq!(got.one("if-match").unwrap(), r#"W/"2""#);
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
    assert_eq!(token.headers()["content-type"], "application/json");
    assert_eq!(text_of(token).await, TOKEN);
    for proto in BOTH {
        for code in [
            400u16, 401, 403, 404, 410, 412, 421, 422, 429, 500, 502, 503, 504,
        ] {
            let response = client.get(&format!("/dest-a/status/{code}"), proto).await;
            assert_eq!(response.status().as_u16(), code, "{proto:?}");
            assert_eq!(response.headers()["content-type"], "application/fhir+json");
            assert_eq!(
                text_of(response).await,
                DESTINATION_OUTCOME,
                "{proto:?}: the destination's {code} was replaced"
            );
        }
    }
}

#[tokio::test]
async fn hop_by_hop_request_fields_are_dropped_and_host_is_the_upstream_authority() {
    // Towards an HTTP/2 destination and towards an HTTP/1.1-only one (where nothing in the
    // HTTP/2 machinery would strip connection-specific fields for the gateway).
    for http1_only in [false, true] {
        let setup = Setup::towards(http1_only).await;
        let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
        let request = Request::get("/dest-a/Patient/1")
            .header("connection", "keep-alive, X-Hop")
            .header("connection", "x-hop-2")
            .header("x-hop", "must not pass")
            .header("x-hop-2", "must not pass either")
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
        let context = format!("HTTP/1.1-only destination: {http1_only}");
        assert_eq!(
            got.version,
            if http1_only {
                http::Version::HTTP_11
            } else {
                http::Version::HTTP_2
            },
            "{context}"
        );
        for name in [
            "connection",
            "x-hop",
            "x-hop-2",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
            "transfer-encoding",
        ] {
            assert!(
                got.all(name).is_empty(),
                "{context}: {name} was forwarded: {:?}",
                got.all(name)
            );
        }
        // TE is hop-by-hop; only `trailers` may be declared for the gateway's own hop.
        assert!(
            got.all("te").iter().all(|te| te == "trailers"),
            "{context}: {:?}",
            got.all("te")
        );
        assert_eq!(got.one("x-end-to-end").unwrap(), "passes", "{context}");
        assert_eq!(
            got.authority.clone().unwrap(),
            format!("localhost:{}", setup.destination.addr.port()),
            "{context}"
        );
        assert!(got.all("host").len() <= 1, "{context}: one Host at most");
    }
}

#[tokio::test]
async fn hop_by_hop_response_fields_are_dropped() {
    // Only an HTTP/1.1 destination can send connection-specific fields at all.
    let pki = Pki::new();
    let destination = Destination::start_http1(&pki.private_ca.issue(&["localhost"])).await;
    let setup = Setup::in_front_of(pki, destination, "").await;
    for proto in BOTH {
        let response = setup.client().get("/dest-a/hop-by-hop", proto).await;
        assert_eq!(response.status(), 200, "{proto:?}");
        for name in [
            "x-resp-hop",
            "x-resp-hop-2",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
        ] {
            assert!(
                response.headers().get(name).is_none(),
                "{proto:?}: {name} reached the client: {:?}",
                header_lines(&response, name)
            );
        }
        // The client's own hop may carry `Connection: keep-alive/close`, never the
        // destination's options.
        for line in header_lines(&response, "connection") {
            assert!(
                !line.to_ascii_lowercase().contains("x-resp-hop"),
                "{proto:?}: Connection: {line}"
            );
        }
        assert_eq!(response.headers()["x-end-to-end"], "kept", "{proto:?}");
        assert_eq!(text_of(response).await, "hop");
    }
}

#[tokio::test]
async fn field_values_pass_as_raw_bytes_both_ways() {
    // obs-text (RFC 9110 §5.5): bytes that are not ASCII, passed on untouched, never decoded
    // or re-encoded; odd spacing and quoting kept.
    let setup = Setup::new().await;
    for proto in BOTH {
        let mut conn = setup.client().connect(PUBLIC_HOST, proto).await;
        let mut request = Request::get("/dest-a/Patient/1").body(empty()).unwrap();
        let h = request.headers_mut();
        h.append(
            "x-latin1",
            HeaderValue::from_bytes(b"Z\xfcrich caf\xe9").unwrap(),
        );
        h.append("x-spacing", HeaderValue::from_static("a  ,  b;q=\"x, y\""));
        h.append(
            "x-reply-header",
            HeaderValue::from_bytes(b"x-reply-latin1: M\xfcller").unwrap(),
        );
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-reply-latin1"].as_bytes(),
            b"M\xfcller",
            "{proto:?}"
        );
        let got = setup.destination.last();
        assert_eq!(
            got.all_raw("x-latin1"),
            [b"Z\xfcrich caf\xe9".to_vec()],
            "{proto:?}"
        );
        assert_eq!(got.all("x-spacing"), ["a  ,  b;q=\"x, y\""], "{proto:?}");
    }
}

#[tokio::test]
async fn repeated_response_fields_keep_their_order_and_urls_are_not_rewritten() {
    let setup = Setup::new().await;
    let private = format!("https://localhost:{}/fhir", setup.destination.addr.port());
    for proto in BOTH {
        let mut conn = setup.client().connect(PUBLIC_HOST, proto).await;
        let mut request = Request::post("/dest-a/status/201")
            .body(full(PATIENT_PUT))
            .unwrap();
        for reply in [
            "set-cookie: c=3; Path=/",
            "link: <https://fhir.example.org/dest-a/Patient?page=2>; rel=\"next\"",
            "set-cookie: a=1; Secure",
            "set-cookie: b=2; HttpOnly",
            &format!("location: {private}/Patient/2/_history/1"),
            "link: <https://fhir.example.org/dest-a/Patient?page=1>; rel=\"self\"",
        ] {
            request
                .headers_mut()
                .append("x-reply-header", reply.parse().unwrap());
        }
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 201, "{proto:?}");
        assert_eq!(
            header_lines(&response, "set-cookie"),
            ["c=3; Path=/", "a=1; Secure", "b=2; HttpOnly"],
            "{proto:?}"
        );
        assert_eq!(
            header_lines(&response, "link"),
            [
                "<https://fhir.example.org/dest-a/Patient?page=2>; rel=\"next\"",
                "<https://fhir.example.org/dest-a/Patient?page=1>; rel=\"self\""
            ],
            "{proto:?}"
        );
        // The IG: intermediaries SHALL NOT rewrite URLs, not even the destination's own.
        assert_eq!(
            header_lines(&response, "location"),
            [format!("{private}/Patient/2/_history/1")],
            "{proto:?}"
        );
    }
}

#[tokio::test]
async fn async_request_pattern_passes() {
    // The IG's async scenario: `Prefer: respond-async` goes to the destination, its 202 and
    // Content-Location (the status URL) come back as sent.
    let setup = Setup::new().await;
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http2).await;
    let request = Request::get("/dest-a/status/202?_type=Patient")
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .header(
            "x-reply-header",
            "content-location: https://fhir.example.org/dest-a/$export-poll-status?job=42",
        )
        .body(empty())
        .unwrap();
    let response = conn.send(request).await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.headers()["content-location"],
        "https://fhir.example.org/dest-a/$export-poll-status?job=42"
    );
    let got = setup.destination.last();
    assert_eq!(got.target, "/fhir/status/202?_type=Patient");
    assert_eq!(got.one("prefer").unwrap(), "respond-async");
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

#[tokio::test]
async fn every_method_passes_with_its_body() {
    let setup = Setup::new().await;
    for proto in BOTH {
        let mut conn = setup.client().connect(PUBLIC_HOST, proto).await;
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let request = Request::builder()
                .method(method)
                .uri("/dest-a/Patient/1")
                .header("content-type", "application/json-patch+json")
                .body(full("[]"))
                .unwrap();
            let response = conn.send(request).await.unwrap();
            assert_eq!(response.status(), 200, "{proto:?} {method}");
            text_of(response).await;
            let got = setup.destination.last();
            assert_eq!(got.method, method, "{proto:?}");
            assert_eq!(got.body, Some(BodySummary::of(b"[]")), "{proto:?} {method}");
        }
    }
}

#[tokio::test]
async fn head_gets_the_head_and_no_body() {
    let setup = Setup::new().await;
    for proto in BOTH {
        let mut conn = setup.client().connect(PUBLIC_HOST, proto).await;
        // The destination's length passes, and no body follows (nor is awaited).
        let request = Request::head("/dest-a/download?bytes=100000")
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "100000", "{proto:?}");
        assert_eq!(text_of(response).await, "", "{proto:?}");
        assert_eq!(setup.destination.last().method, "HEAD");
        let response = conn
            .send(Request::head("/dest-a/Patient/1").body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.headers()["etag"], r#"W/"3""#, "{proto:?}");
        assert_eq!(response.headers()["content-length"], "35", "{proto:?}");
        assert_eq!(text_of(response).await, "", "{proto:?}");
        // The connection is still usable after the HEAD.
        let response = conn.send(get("/dest-a/Patient/1")).await.unwrap();
        assert_eq!(text_of(response).await, PATIENT, "{proto:?}");
    }
}

#[tokio::test]
async fn request_id_sanity_boundaries() {
    let setup = Setup::new().await;
    let mut conn = setup.client().connect(PUBLIC_HOST, Proto::Http1).await;
    let longest = "a".repeat(128);
    let too_long = "a".repeat(129);
    let cases: [(&str, bool); 6] = [
        (&longest, true),
        ("AZaz09-_.:@/+=", true),
        ("x", true),
        (&too_long, false),
        ("has space", false),
        ("semi;colon", false),
    ];
    for (id, kept) in cases {
        let request = Request::get("/dest-a/x")
            .header("x-request-id", id)
            .body(empty())
            .unwrap();
        let response = conn.send(request).await.unwrap();
        let returned = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        text_of(response).await;
        let sent_on = setup.destination.last().one("x-request-id").unwrap();
        assert_eq!(
            returned, sent_on,
            "{id}: client and destination saw different ids"
        );
        if kept {
            assert_eq!(returned, id);
        } else {
            assert_ne!(returned, id);
            assert!(!returned.is_empty() && returned.len() <= 128);
        }
    }
    // No id at all: one is generated, a fresh one per exchange.
    let mut generated = Vec::new();
    for _ in 0..2 {
        let response = conn.send(get("/dest-a/x")).await.unwrap();
        generated.push(response.headers()["x-request-id"].clone());
        text_of(response).await;
        assert_eq!(
            setup.destination.last().one("x-request-id").unwrap(),
            generated.last().unwrap().to_str().unwrap()
        );
    }
    assert_ne!(generated[0], generated[1]);
}
