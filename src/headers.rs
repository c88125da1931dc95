//! Header rules of a pass-through intermediary, as pure functions over `HeaderMap`:
//! hop-by-hop removal, `Forwarded` / `Via`, and the request id.
//!
//! Everything not named here passes byte-for-byte in both directions; repeated lines of
//! one name stay separate and in order (RFC 9110 §5.3).

use std::fmt::Write;
use std::net::IpAddr;

use http::header::{
    CONNECTION, FORWARDED, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::{HeaderMap, Version};

/// `X-Request-Id`: kept when sane, generated otherwise; sent upstream and returned.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Fields that describe one connection, never the message (RFC 9110 §7.6.1, RFC 9112 §9.6).
const HOP_BY_HOP: [HeaderName; 7] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes hop-by-hop fields: `Connection` and every field it names, plus the fixed list.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether the request's `TE` lists `trailers` (RFC 9110 §10.1.4). Checked before removal,
/// so the gateway can declare it again on its own upstream hop.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Appends an RFC 7239 element `for=…;proto=https;host=…` as a new `Forwarded` line.
pub fn append_forwarded(headers: &mut HeaderMap, client: IpAddr, host: &str) {
    let mut value = String::with_capacity(48 + host.len());
    match client {
        IpAddr::V4(ip) => {
            let _ = write!(value, "for={ip}");
        }
        // RFC 7239 §6: an IPv6 node name is bracketed and therefore quoted.
        IpAddr::V6(ip) => {
            let _ = write!(value, "for=\"[{ip}]\"");
        }
    }
    value.push_str(";proto=https;host=");
    push_token_or_quoted(&mut value, host);
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.append(FORWARDED, value);
    }
}

/// RFC 7239 §4: a value is a `token` or a `quoted-string` (with `"` and `\` escaped).
fn push_token_or_quoted(out: &mut String, value: &str) {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !value.is_empty() && value.chars().all(is_tchar) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Appends a `Via` entry naming the protocol version the request arrived with
/// (RFC 9110 §7.6.3).
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let entry = match version {
        Version::HTTP_09 => "0.9 fhirgate",
        Version::HTTP_10 => "1.0 fhirgate",
        Version::HTTP_2 => "2 fhirgate",
        Version::HTTP_3 => "3 fhirgate",
        _ => "1.1 fhirgate",
    };
    headers.append(VIA, HeaderValue::from_static(entry));
}

/// The client's `X-Request-Id` when there is exactly one and it is sane, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(value), None) = (values.next(), values.next())
        && is_sane_request_id(value.as_bytes())
    {
        return value.clone();
    }
    generate_request_id()
}

/// 1–128 characters of `A-Z a-z 0-9 - _ . : @ / + =`: safe in logs, audit and bodies.
pub fn is_sane_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@/+=".contains(b))
}

fn generate_request_id() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn connection_and_the_fields_it_names_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Foo"),
            ("connection", "x-bar"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-baz", "3"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-baz"], "3");
    }

    #[test]
    fn fixed_hop_by_hop_fields_are_removed_end_to_end_fields_kept() {
        let mut h = map(&[
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer tok"),
            ("cookie", "a=1"),
            ("dpop", "eyJ"),
            ("prefer", "respond-async"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        remove_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["authorization", "cookie", "dpop", "prefer", "set-cookie"]
        );
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn trailers_acceptance() {
        assert!(accepts_trailers(&map(&[("te", "gzip, Trailers")])));
        assert!(accepts_trailers(&map(&[("te", "trailers;q=1")])));
        assert!(!accepts_trailers(&map(&[("te", "gzip")])));
        assert!(!accepts_trailers(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_elements() {
        let mut h = HeaderMap::new();
        h.append(FORWARDED, HeaderValue::from_static("for=192.0.2.1"));
        append_forwarded(
            &mut h,
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            "fhir.example.org:8443",
        );
        append_forwarded(&mut h, IpAddr::V6(Ipv6Addr::LOCALHOST), "fhir.example.org");
        let lines: Vec<_> = h.get_all(FORWARDED).iter().collect();
        assert_eq!(
            lines,
            [
                "for=192.0.2.1",
                "for=198.51.100.7;proto=https;host=\"fhir.example.org:8443\"",
                "for=\"[::1]\";proto=https;host=fhir.example.org",
            ]
        );
        let mut h = HeaderMap::new();
        append_forwarded(&mut h, IpAddr::V4(Ipv4Addr::LOCALHOST), "a\"b");
        assert_eq!(h[FORWARDED], "for=127.0.0.1;proto=https;host=\"a\\\"b\"");
    }

    #[test]
    fn via_names_the_incoming_version() {
        for (version, expected) in [
            (Version::HTTP_10, "1.0 fhirgate"),
            (Version::HTTP_11, "1.1 fhirgate"),
            (Version::HTTP_2, "2 fhirgate"),
        ] {
            let mut h = map(&[("via", "1.1 edge")]);
            append_via(&mut h, version);
            let lines: Vec<_> = h.get_all(VIA).iter().collect();
            assert_eq!(lines, ["1.1 edge", expected]);
        }
    }

    #[test]
    fn request_id_kept_when_sane() {
        let h = map(&[("x-request-id", "abc-123_x.y:z@w/v+u=")]);
        assert_eq!(request_id(&h), "abc-123_x.y:z@w/v+u=");
    }

    #[test]
    fn request_id_regenerated_when_not_sane() {
        let long = "a".repeat(129);
        let cases: Vec<HeaderMap> = vec![
            HeaderMap::new(),
            map(&[("x-request-id", "")]),
            map(&[("x-request-id", "has space")]),
            map(&[("x-request-id", "semi;colon")]),
            map(&[("x-request-id", "a"), ("x-request-id", "b")]),
            {
                let mut h = HeaderMap::new();
                h.insert(X_REQUEST_ID, HeaderValue::from_str(&long).unwrap());
                h
            },
        ];
        for h in cases {
            let id = request_id(&h);
            assert_eq!(id.len(), 36, "{id:?}");
            assert!(is_sane_request_id(id.as_bytes()));
            assert!(h.get_all(X_REQUEST_ID).iter().all(|v| v != id));
        }
        assert!(is_sane_request_id(&[b'a'; 128]));
    }
}
