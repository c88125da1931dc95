//! Header rules of a pass-through intermediary, as pure functions over `HeaderMap`:
//! hop-by-hop removal, `Forwarded` / `Via`, the request id, and the response head's rules.
//!
//! Everything not named here passes byte-for-byte in both directions; repeated lines of
//! one name stay separate and in order (RFC 9110 §5.3).

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::OnceLock;

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

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field it names, and
/// the fields that only ever describe one connection. Every other field is left untouched;
/// repeated lines stay separate and in order.
///
/// The gateway calls this before adding its own `Forwarded`, `Via`, `TE` and request id, so
/// a client cannot name those in `Connection` to strip what the gateway adds.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Almost no message carries one: a look at each name is cheaper than eight removals,
    // each of which hashes its name.
    if !headers
        .keys()
        .any(|name| *name == CONNECTION || HOP_BY_HOP.contains(name))
    {
        return;
    }
    // The named fields are removed from the map the `Connection` lines live in, so each line
    // is cloned first: a reference count on the received bytes, not a copy.
    let mut line = 0;
    while let Some(value) = headers.get_all(CONNECTION).iter().nth(line).cloned() {
        for name in connection_options(value.as_bytes()) {
            // By `&str`: compared case-insensitively, no allocation, no panic on a bad name.
            headers.remove(name);
        }
        line += 1;
    }
    headers.remove(CONNECTION);
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The field names a `Connection` line lists (RFC 9110 §7.6.1: `#connection-option`).
/// `connection` itself is skipped: it is removed last, after all its lines were read.
fn connection_options(value: &[u8]) -> impl Iterator<Item = &str> {
    list_elements(value)
        .filter_map(|option| std::str::from_utf8(option).ok())
        .filter(|option| !option.eq_ignore_ascii_case("connection"))
}

/// The non-empty elements of a comma-separated list field (RFC 9110 §5.6.1), trimmed.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// Whether the request's `TE` lists `trailers` (RFC 9110 §10.1.4). Checked before removal:
/// `TE` is hop-by-hop, so the gateway declares `TE: trailers` again on its own upstream hop,
/// which lets the destination's trailer fields reach a client that can take them.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .flat_map(|value| list_elements(value.as_bytes()))
        .any(|coding| {
            let name = coding.split(|b| *b == b';').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
}

/// The RFC 7239 element `for=<client>;proto=https;host=<host>` this gateway adds.
///
/// An IPv4-mapped IPv6 peer (a dual-stack listener) is written as the IPv4 address it is.
/// `host` is the `Host` / `:authority` as received (RFC 7239 §5.3), port included; it is a
/// quoted-string whenever it is not a plain token, so a `;`, `,` or `=` in it cannot add
/// parameters or elements. A host that not even a quoted-string can carry (control
/// characters) is left out rather than sent damaged.
fn forwarded_element(client: IpAddr, host: &str) -> Option<HeaderValue> {
    let mut value = String::with_capacity(64 + host.len());
    match client.to_canonical() {
        IpAddr::V4(ip) => {
            let _ = write!(value, "for={ip}");
        }
        // RFC 7239 §6: an IPv6 node is bracketed, and `[`, `:` make it a quoted-string.
        IpAddr::V6(ip) => {
            let _ = write!(value, "for=\"[{ip}]\"");
        }
    }
    value.push_str(";proto=https");
    if fits_quoted_string(host) {
        value.push_str(";host=");
        push_token_or_quoted(&mut value, host);
    }
    // Cannot fail: every character was checked above; a failure would only drop the line.
    HeaderValue::from_str(&value).ok()
}

/// One connection's `Forwarded` element, made on its first exchange and reused while the
/// host stays the same. The client address is the connection's, and clients keep to one
/// host per connection, so formatting the address again on every exchange (the costliest
/// of the gateway's own header rules) would only repeat the same bytes.
#[derive(Debug, Default)]
pub struct ForwardedMemo(OnceLock<(Box<str>, HeaderValue)>);

impl ForwardedMemo {
    /// Appends the element `for=<client>;proto=https;host=<host>` as a new `Forwarded`
    /// line, after any the client sent (RFC 7239 §4: each proxy appends its own element).
    /// `client` must be the same on every call: it is the connection's peer.
    pub fn append(&self, headers: &mut HeaderMap, client: IpAddr, host: &str) {
        let value = match self.0.get() {
            Some((known, value)) if **known == *host => Some(value.clone()),
            _ => {
                let value = forwarded_element(client, host);
                if let Some(value) = &value {
                    let _ = self.0.set((host.into(), value.clone()));
                }
                value
            }
        };
        if let Some(value) = value {
            headers.append(FORWARDED, value);
        }
    }
}

/// RFC 9110 §5.6.4: `qdtext` and `quoted-pair` allow HTAB, SP, visible ASCII and obs-text,
/// never other control characters.
fn fits_quoted_string(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// RFC 7239 §4: a value is a `token` or a `quoted-string` (with `"` and `\` escaped).
fn push_token_or_quoted(out: &mut String, value: &str) {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if value.bytes().all(is_tchar) {
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

/// Appends a `Via` entry for this hop (RFC 9110 §7.6.3): the protocol version the request
/// was received with (`1.0`, `1.1`, `2`; the protocol name is omitted for HTTP) and the
/// gateway's pseudonym, as a new line after any the client sent.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let entry = match version {
        Version::HTTP_09 => "0.9 fhirgate",
        Version::HTTP_10 => "1.0 fhirgate",
        Version::HTTP_11 => "1.1 fhirgate",
        Version::HTTP_2 => "2 fhirgate",
        Version::HTTP_3 => "3 fhirgate",
        // `Version` is open-ended; hyper serves nothing else.
        _ => "1.1 fhirgate",
    };
    headers.append(VIA, HeaderValue::from_static(entry));
}

/// The destination's response head on its way back: hop-by-hop fields removed, everything
/// else untouched, and the exchange's request id added unless the destination set its own
/// (it may have logged that one).
pub fn rewrite_response(headers: &mut HeaderMap, request_id: HeaderValue) {
    remove_hop_by_hop(headers);
    if !headers.contains_key(X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, request_id);
    }
}

/// The request id: the client's `X-Request-Id` when there is exactly one line and it is
/// sane ([`is_sane_request_id`]), so an originator can follow its own id through the logs;
/// otherwise a fresh UUID v4 (hyphenated, lower-case). Two lines are ambiguous, and an
/// insane value could forge log lines or break the OperationOutcome it is quoted in.
///
/// The value is marked sensitive, which HTTP/2 sends as a never-indexed literal (RFC 7541
/// §6.2.3): an id differs on every exchange, so entering it into the HPACK tables of both
/// connections would only push out fields that do repeat, and cost more than it saves.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(value), None) = (values.next(), values.next())
        && is_sane_request_id(value.as_bytes())
    {
        let mut value = value.clone();
        value.set_sensitive(true);
        return value;
    }
    generate_request_id()
}

/// 1–128 characters of `A-Z a-z 0-9 - _ . : @ / + =`: safe in logs, audit records, JSON and
/// XML bodies and header values without any escaping.
pub fn is_sane_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@/+=".contains(b))
}

fn generate_request_id() -> HeaderValue {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
    // Shared from the start: the exchange keeps the id, sends it upstream and returns it,
    // and the first clone of a value made from a copied slice would allocate once more.
    let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
        .expect("a hyphenated UUID is a valid header value");
    value.set_sensitive(true);
    value
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

    fn lines<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn connection_and_the_fields_it_names_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Foo"),
            ("x-foo", "1"),
            ("x-baz", "3"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-baz"]);
    }

    #[test]
    fn every_connection_line_counts() {
        let mut h = map(&[
            ("connection", "x-foo"),
            ("x-foo", "1"),
            ("connection", " , X-BAR ,,keep-alive"),
            ("x-bar", "2"),
            ("x-bar", "3"),
            ("connection", "connection, x-qux"),
            ("x-qux", "4"),
            ("x-kept", "5"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn connection_options_are_case_insensitive() {
        let mut h = map(&[("Connection", "X-Custom-Hop"), ("x-custom-hop", "1")]);
        h.append("x-other", HeaderValue::from_static("2"));
        remove_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-other"]);
    }

    #[test]
    fn odd_connection_values_remove_nothing_else() {
        let mut h = map(&[("connection", "x y, ;, @"), ("x-kept", "1")]);
        h.append(
            CONNECTION,
            HeaderValue::from_bytes(b"x-\xff, x-gone").unwrap(),
        );
        h.append("x-gone", HeaderValue::from_static("2"));
        remove_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn every_listed_hop_by_hop_field_is_removed() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
        ]);
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn end_to_end_fields_are_untouched_and_stay_in_order() {
        let pairs = [
            ("authorization", "Bearer tok"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("dpop", "eyJ"),
            ("prefer", "respond-async"),
            ("set-cookie", "a=1; Secure"),
            ("x-multi", "first"),
            ("set-cookie", "b=2, c=3"),
            ("x-multi", "second"),
            ("x-multi", "third"),
            ("trailer", "x-checksum"),
            ("www-authenticate", r#"Bearer realm="fhir""#),
        ];
        let mut h = map(&pairs);
        h.append("te", HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h, map(&pairs));
        assert_eq!(lines(&h, "set-cookie"), ["a=1; Secure", "b=2, c=3"]);
        assert_eq!(lines(&h, "x-multi"), ["first", "second", "third"]);
    }

    #[test]
    fn trailers_acceptance() {
        assert!(accepts_trailers(&map(&[("te", "gzip, Trailers")])));
        assert!(accepts_trailers(&map(&[("te", "trailers;q=1")])));
        assert!(accepts_trailers(&map(&[
            ("te", "gzip"),
            ("te", " trailers ")
        ])));
        assert!(!accepts_trailers(&map(&[("te", "gzip")])));
        assert!(!accepts_trailers(&map(&[("te", "x-trailers")])));
        assert!(!accepts_trailers(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_for_ipv4_and_ipv6_appended_after_the_clients() {
        let mut h = HeaderMap::new();
        h.append(FORWARDED, HeaderValue::from_static("for=192.0.2.1"));
        ForwardedMemo::default().append(
            &mut h,
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            "fhir.example.org:8443",
        );
        ForwardedMemo::default().append(
            &mut h,
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            "fhir.example.org",
        );
        ForwardedMemo::default().append(
            &mut h,
            "2001:db8::17".parse().unwrap(),
            "[2001:db8::1]:443",
        );
        assert_eq!(
            lines(&h, "forwarded"),
            [
                "for=192.0.2.1",
                r#"for=198.51.100.7;proto=https;host="fhir.example.org:8443""#,
                r#"for="[::1]";proto=https;host=fhir.example.org"#,
                r#"for="[2001:db8::17]";proto=https;host="[2001:db8::1]:443""#,
            ]
        );
    }

    #[test]
    fn forwarded_for_an_ipv4_mapped_peer_is_ipv4() {
        let mut h = HeaderMap::new();
        ForwardedMemo::default().append(&mut h, "::ffff:198.51.100.7".parse().unwrap(), "h");
        assert_eq!(h[FORWARDED], "for=198.51.100.7;proto=https;host=h");
    }

    #[test]
    fn forwarded_host_cannot_inject_parameters() {
        let cases = [
            ("a\"b", r#"for=127.0.0.1;proto=https;host="a\"b""#),
            ("a\\b", r#"for=127.0.0.1;proto=https;host="a\\b""#),
            (
                "h;for=evil",
                r#"for=127.0.0.1;proto=https;host="h;for=evil""#,
            ),
            (
                "h, for=evil",
                r#"for=127.0.0.1;proto=https;host="h, for=evil""#,
            ),
            ("bad\u{7f}", "for=127.0.0.1;proto=https"),
            ("", "for=127.0.0.1;proto=https"),
        ];
        for (host, expected) in cases {
            let mut h = HeaderMap::new();
            ForwardedMemo::default().append(&mut h, IpAddr::V4(Ipv4Addr::LOCALHOST), host);
            assert_eq!(h[FORWARDED], expected, "{host:?}");
        }
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
            assert_eq!(lines(&h, "via"), ["1.1 edge", expected]);
        }
    }

    #[test]
    fn request_id_kept_when_sane() {
        let h = map(&[("x-request-id", "abc-123_x.y:z@w/v+u=")]);
        assert_eq!(request_id(&h), "abc-123_x.y:z@w/v+u=");
        let longest = "a".repeat(128);
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_str(&longest).unwrap());
        assert_eq!(request_id(&h), longest.as_str());
    }

    #[test]
    fn request_ids_are_never_indexed_by_hpack() {
        let kept = map(&[("x-request-id", "abc-123")]);
        assert!(request_id(&kept).is_sensitive());
        assert!(request_id(&HeaderMap::new()).is_sensitive());
    }

    #[test]
    fn forwarded_memo_reuses_the_element_for_the_same_host_only() {
        let memo = ForwardedMemo::default();
        let client = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let mut h = HeaderMap::new();
        for host in ["fhir.example.org", "fhir.example.org", "other.example.org"] {
            memo.append(&mut h, client, host);
        }
        // A host no quoted-string can carry is left out.
        memo.append(&mut h, client, "bad\x01host");
        memo.append(&mut h, client, "fhir.example.org");
        assert_eq!(
            lines(&h, "forwarded"),
            [
                "for=198.51.100.7;proto=https;host=fhir.example.org",
                "for=198.51.100.7;proto=https;host=fhir.example.org",
                "for=198.51.100.7;proto=https;host=other.example.org",
                "for=198.51.100.7;proto=https",
                "for=198.51.100.7;proto=https;host=fhir.example.org",
            ]
        );
    }

    #[test]
    fn hop_by_hop_removal_leaves_a_clean_map_alone() {
        let mut h = map(&[
            ("accept", "application/fhir+json"),
            ("x-a", "1"),
            ("x-a", "2"),
        ]);
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
        let mut h = map(&[("x-a", "1"), ("keep-alive", "timeout=5"), ("x-b", "2")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h, map(&[("x-a", "1"), ("x-b", "2")]));
    }

    #[test]
    fn request_id_regenerated_when_not_sane() {
        let too_long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        let cases: Vec<HeaderMap> = vec![
            HeaderMap::new(),
            map(&[("x-request-id", "")]),
            map(&[("x-request-id", "has space")]),
            map(&[("x-request-id", "semi;colon")]),
            map(&[("x-request-id", "<script>")]),
            map(&[("x-request-id", "a"), ("x-request-id", "b")]),
            [(X_REQUEST_ID, too_long)].into_iter().collect(),
            [(
                X_REQUEST_ID,
                HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
            )]
            .into_iter()
            .collect(),
        ];
        for h in cases {
            let id = request_id(&h);
            let text = id.to_str().unwrap();
            assert_eq!(text.len(), 36, "{id:?}");
            assert!(uuid::Uuid::parse_str(text).is_ok_and(|u| u.get_version_num() == 4));
            assert!(h.get_all(X_REQUEST_ID).iter().all(|v| v != id));
        }
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
