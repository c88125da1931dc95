//! Property tests (proptest) of the pure functions the security of the gateway rests on:
//! routing and the request-path rewrite, dot-segment detection, hop-by-hop header removal and
//! the headers the gateway adds, and configuration parsing.
//!
//! Each property compares the gateway against a small reference model written here from the
//! documented contract (not from the implementation), or checks an invariant that a wrong
//! implementation would break. `PROPTEST_CASES=N` raises (or lowers) every case count.
//! The `fuzz/` crate drives the same functions with libFuzzer.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fhirgate::config::{
    AuditSink, Config, FsyncPolicy, Limits, OnAuditFailure, RouteConfig, TlsVersion, parse_duration,
};
use fhirgate::headers::{
    ForwardedMemo, X_REQUEST_ID, append_via, is_sane_request_id, remove_hop_by_hop, request_id,
};
use fhirgate::route::{RouteTable, has_dot_segment, host_without_port, upstream_path_and_query};
use http::header::{FORWARDED, HeaderName, HeaderValue, VIA};
use http::{HeaderMap, Version};
use proptest::prelude::*;
use proptest::sample::select;

/// The reference models, shared with the fuzz targets: written from the documented
/// contract, not from the code.
#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod models;

use models::{
    ModelRoute, header_map, lenient_segments, model_has_dot_segment, model_is_hop_by_hop,
    parse_forwarded_element, resolve,
};

/// The models' view of generated routes.
fn model_routes(routes: &[GenRoute]) -> Vec<ModelRoute> {
    routes
        .iter()
        .map(|r| ModelRoute {
            host: r.host.clone(),
            path: r.path.clone(),
            listener: r.listener.map(str::to_owned),
        })
        .collect()
}

fn route_configs(routes: &[GenRoute]) -> Vec<RouteConfig> {
    models::route_configs(&model_routes(routes))
}

/// The routing contract by brute force ([`models::model_lookup`]); no host, no route.
fn model_lookup<'p>(
    routes: &[GenRoute],
    host: Option<&str>,
    path: &'p str,
    listener: &str,
) -> Option<(usize, &'p str)> {
    models::model_lookup(&model_routes(routes), host?, path, listener)
}

/// `cases` unless `PROPTEST_CASES` says otherwise; failures are not persisted to files.
fn cases(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// =======================================================================================
// Routing and the path rewrite
// =======================================================================================

/// Few hosts and segments, so that generated routes and requests collide often.
const HOSTS: &[&str] = &[
    "fhir.example.org",
    "other.example.org",
    "::1",
    "2001:db8::1",
    "a",
];
/// Requests may also name a host no route has.
const REQUEST_HOSTS: &[&str] = &[
    "fhir.example.org",
    "other.example.org",
    "::1",
    "2001:db8::1",
    "a",
    "unknown.example.org",
];
const SEGMENTS: &[&str] = &["a", "b", "ab", "dest-a", "r4", "%2F", "A", ""];
const LISTENERS: &[&str] = &["public", "internal", "partners"];

/// A route as the model sees it: the host as written (any case), the public path (maybe
/// with trailing slashes), the listener restriction.
#[derive(Debug, Clone)]
struct GenRoute {
    host: String,
    path: String,
    listener: Option<&'static str>,
}

fn recase(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if (mask >> (i % 64)) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn segment_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(select(SEGMENTS), 0..4),
        0usize..3,
        prop::option::of("[a-z0-9%-]{1,3}"),
    )
        .prop_map(|(segments, trailing_slashes, tail)| {
            let mut p = String::new();
            for s in segments {
                p.push('/');
                p.push_str(s);
            }
            // `/dest-a` + `b` = `/dest-ab`: must not match `/dest-a`.
            if let Some(tail) = tail {
                p.push_str(&tail);
            }
            if p.is_empty() {
                p.push('/');
            }
            p.push_str(&"/".repeat(trailing_slashes));
            p
        })
}

fn gen_route() -> impl Strategy<Value = GenRoute> {
    (
        select(HOSTS),
        any::<u64>(),
        segment_path(),
        prop::option::of(select(LISTENERS)),
    )
        .prop_map(|(host, mask, path, listener)| GenRoute {
            host: recase(host, mask),
            path,
            listener,
        })
}

/// How the request's `Host` / `:authority` decorates the host name.
#[derive(Debug, Clone)]
enum Decoration {
    Bare,
    /// IPv6 only: `[::1]` rather than `::1`.
    Bracketed,
    Port(u16),
    EmptyPort,
    /// Not `host[:port]`: matches no route.
    Junk,
}

#[derive(Debug, Clone)]
struct GenRequest {
    host: &'static str,
    mask: u64,
    decoration: Decoration,
    path: String,
    query: Option<String>,
    listener: &'static str,
}

impl GenRequest {
    /// The authority as sent, and the host the model routes on (`None`: no route).
    fn authority(&self) -> (String, Option<&'static str>) {
        let host = recase(self.host, self.mask);
        let v6 = host.contains(':');
        match (&self.decoration, v6) {
            (Decoration::Bare, _) => (host, Some(self.host)),
            (Decoration::Bracketed, true) => (format!("[{host}]"), Some(self.host)),
            (Decoration::Bracketed, false) => (host, Some(self.host)),
            (Decoration::Port(p), true) => (format!("[{host}]:{p}"), Some(self.host)),
            (Decoration::Port(p), false) => (format!("{host}:{p}"), Some(self.host)),
            (Decoration::EmptyPort, true) => (format!("[{host}]:"), Some(self.host)),
            (Decoration::EmptyPort, false) => (format!("{host}:"), Some(self.host)),
            (Decoration::Junk, true) => (format!("[{host}]x"), None),
            (Decoration::Junk, false) => (format!("{host}:4x3"), None),
        }
    }
}

fn gen_request() -> impl Strategy<Value = GenRequest> {
    let decoration = prop_oneof![
        Just(Decoration::Bare),
        Just(Decoration::Bracketed),
        any::<u16>().prop_map(Decoration::Port),
        Just(Decoration::EmptyPort),
        Just(Decoration::Junk),
    ];
    let path = prop_oneof![
        4 => segment_path(),
        1 => "[/a-z%*.-]{0,12}",
    ];
    (
        select(REQUEST_HOSTS),
        any::<u64>(),
        decoration,
        path,
        prop::option::of("[ -~]{0,10}"),
        select(LISTENERS),
    )
        .prop_map(
            |(host, mask, decoration, path, query, listener)| GenRequest {
                host,
                mask,
                decoration,
                path,
                query,
                listener,
            },
        )
}

/// What `upstream_path_and_query` must produce, from its documentation.
fn model_rewrite(base: &str, remainder: &str, query: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    let mut path = format!("{base}{remainder}");
    if path.is_empty() {
        path = "/".into();
    }
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

proptest! {
    #![proptest_config(cases(1024))]

    /// The table answers exactly what the brute-force model answers, and a match splits the
    /// request path into the route's prefix and a remainder on a segment boundary.
    #[test]
    fn lookup_agrees_with_the_brute_force_model(
        routes in prop::collection::vec(gen_route(), 0..8),
        requests in prop::collection::vec(gen_request(), 1..8),
    ) {
        let table = RouteTable::new(&route_configs(&routes));
        for req in &requests {
            let (authority, host) = req.authority();
            let got = table
                .lookup(&authority, &req.path, req.listener)
                .map(|m| (m.index, m.remainder));
            let expected = model_lookup(&routes, host, &req.path, req.listener);
            prop_assert_eq!(got, expected, "{} {} on {}", authority, req.path, req.listener);
            if let Some((index, remainder)) = got {
                let prefix = routes[index].path.trim_end_matches('/');
                prop_assert!(remainder.is_empty() || remainder.starts_with('/'));
                prop_assert_eq!(format!("{prefix}{remainder}"), req.path.as_str());
                // The remainder is the request's own bytes (a suffix slice, not a copy).
                let end = req.path.as_ptr() as usize + req.path.len();
                prop_assert_eq!(remainder.as_ptr() as usize + remainder.len(), end);
            }
        }
    }

    /// Case of the host and any (even empty) port never change the answer.
    #[test]
    fn host_case_and_port_do_not_matter(
        routes in prop::collection::vec(gen_route(), 1..8),
        req in gen_request(),
        mask in any::<u64>(),
        port in any::<u16>(),
    ) {
        let table = RouteTable::new(&route_configs(&routes));
        let answer = |authority: &str| {
            table.lookup(authority, &req.path, req.listener).map(|m| (m.index, m.remainder))
        };
        let host = req.host;
        let bracketed = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        let reference = answer(host);
        prop_assert_eq!(answer(&recase(host, mask)), reference);
        prop_assert_eq!(answer(&host.to_ascii_uppercase()), reference);
        prop_assert_eq!(answer(&bracketed), reference);
        prop_assert_eq!(answer(&format!("{bracketed}:{port}")), reference);
        prop_assert_eq!(answer(&format!("{}:", recase(&bracketed, mask))), reference);
    }

    /// With routes a valid configuration allows (no two with the same host, path and
    /// listener), the order of the configuration never changes which route matches.
    #[test]
    fn configuration_order_does_not_matter(
        routes in prop::collection::vec(gen_route(), 1..8),
        keys in prop::collection::vec(any::<u32>(), 8),
        requests in prop::collection::vec(gen_request(), 1..8),
    ) {
        let mut seen = HashSet::new();
        let routes: Vec<GenRoute> = routes
            .into_iter()
            .filter(|r| {
                let path = r.path.trim_end_matches('/').to_owned();
                seen.insert((r.host.to_ascii_lowercase(), path, r.listener))
            })
            .collect();
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| (keys[i], i));
        let shuffled: Vec<GenRoute> = order.iter().map(|&i| routes[i].clone()).collect();
        let table = RouteTable::new(&route_configs(&routes));
        let shuffled_table = RouteTable::new(&route_configs(&shuffled));
        for req in &requests {
            let (authority, _) = req.authority();
            let a = table.lookup(&authority, &req.path, req.listener).map(|m| (m.index, m.remainder));
            let b = shuffled_table
                .lookup(&authority, &req.path, req.listener)
                .map(|m| (order[m.index], m.remainder));
            prop_assert_eq!(a, b);
        }
    }

    /// The upstream request target: upstream base + remainder, no doubled or lost slash,
    /// query byte-for-byte; end to end, the remainder of the request path is forwarded
    /// unchanged.
    #[test]
    fn rewrite_forwards_remainder_and_query_byte_for_byte(
        routes in prop::collection::vec(gen_route(), 1..6),
        req in gen_request(),
        base in prop_oneof![Just("/".to_owned()), "(/[a-z0-9%-]{1,4}){1,3}/?"],
    ) {
        let table = RouteTable::new(&route_configs(&routes));
        let (authority, _) = req.authority();
        if let Some(m) = table.lookup(&authority, &req.path, req.listener) {
            let query = req.query.as_deref();
            let target = upstream_path_and_query(&base, m.remainder, query);
            prop_assert_eq!(&target, &model_rewrite(&base, m.remainder, query));
            prop_assert!(target.starts_with('/'));
            let (path, q) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target.as_str(), None),
            };
            prop_assert_eq!(q, query);
            prop_assert!(path.ends_with(m.remainder));
            let trimmed_base = base.trim_end_matches('/');
            prop_assert!(path.starts_with(trimmed_base));
            // Neither the base (`/x/`) nor the remainder (`/y`) has `//`; the join adds none.
            if !m.remainder.contains("//") {
                prop_assert!(!path.contains("//"), "{}", path);
            }
        }
    }

    /// `host_without_port` drops exactly a port (digits or empty) and IPv6 brackets, returns
    /// a part of its input, and is idempotent.
    #[test]
    fn host_without_port_strips_only_a_port(
        host in prop_oneof![
            select(HOSTS).prop_map(str::to_owned),
            any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
            "[a-zA-Z0-9.:\\[\\]-]{0,12}",
            any::<String>(),
        ],
        port in prop::option::of("[0-9]{0,6}"),
    ) {
        let once = host_without_port(&host);
        prop_assert_eq!(host_without_port(once), once);
        // Brackets are for IPv6 literals only (RFC 3986 §3.2.2): anything else in brackets
        // is returned whole, and so matches no route.
        if bracketed_non_ipv6(&host) {
            prop_assert_eq!(once, host.as_str());
        }
        prop_assert!(host.contains(once));
        if !host.contains([':', '[', ']']) && !host.is_empty() {
            let authority = match &port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            prop_assert_eq!(host_without_port(&authority), host.as_str());
        }
        // An unbracketed IPv6 address (two colons or more) is never cut at a colon, and in
        // brackets it loses them (anything else in brackets is kept whole, see above).
        if host.matches(':').count() >= 2 && !host.contains(['[', ']']) {
            prop_assert_eq!(host_without_port(&host), host.as_str());
            let authority = format!("[{host}]{}", port.as_ref().map(|p| format!(":{p}")).unwrap_or_default());
            if host.parse::<Ipv6Addr>().is_ok() {
                prop_assert_eq!(host_without_port(&authority), host.as_str());
            } else {
                prop_assert_eq!(host_without_port(&authority), authority.as_str());
            }
        }
    }
}

/// `[x]` or `[x]:port` where `x` is not an IPv6 address.
fn bracketed_non_ipv6(authority: &str) -> bool {
    authority
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(inside, _)| inside.parse::<Ipv6Addr>().is_err())
}

/// Found by the `route_lookup` fuzz target: `[a:]` became `a:` and then `a`, and because
/// the proxy applies `host_without_port` twice, a `Host` of `[fhir.example.org:]` routed to
/// `fhir.example.org` when no SNI was sent.
#[test]
fn host_without_port_is_idempotent_on_bracketed_names() {
    for authority in [
        "[a:]",
        "[:]",
        "[fhir.example.org:]",
        "[fhir.example.org:]:443",
    ] {
        let once = host_without_port(authority);
        assert_eq!(host_without_port(once), once, "{authority:?}");
    }
}

// =======================================================================================
// Dot segments
// =======================================================================================

const SEPARATORS: &[&str] = &["/", "\\", "%2f", "%2F", "%5c", "%5C"];

/// A segment that is not `.` or `..` in any encoding, though it may look close.
fn clean_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_~-]{1,6}",
        "[.]{0,2}[A-Za-z0-9-]{1,3}[.]{0,2}",
        "[.]{3,5}",
        "(%2[eE]|\\.){3,4}",
        Just(String::new()),
        "[A-Za-z0-9]{1,3};[a-z=.]{0,4}",
        ";[a-z=.]{0,4}",
        "%2[eE][A-Za-z0-9]{1,2}",
        "[A-Za-z0-9](%2[eE]|\\.){1,2}",
        "%(2|25|2[eE]%2)?",
        "\\PC{1,3}".prop_filter("no dots, separators or escapes", |s| !s
            .contains(['.', '/', '\\', '%', ';'])),
    ]
}

/// `.` or `..`, plain or `%2e` / `%2E`, with or without `;parameters`.
fn dot_segment() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(select(&[".", "%2e", "%2E"][..]), 1..=2),
        prop::option::of("[a-z0-9=.,]{0,4}"),
    )
        .prop_map(|(dots, params)| {
            let mut s = dots.concat();
            if let Some(p) = params {
                s.push(';');
                s.push_str(&p);
            }
            s
        })
}

fn join(parts: &[(&str, String)]) -> String {
    parts
        .iter()
        .map(|(sep, seg)| format!("{sep}{seg}"))
        .collect()
}

proptest! {
    #![proptest_config(cases(4096))]

    /// On any path made of the characters that matter, the gateway agrees with the
    /// decode-then-split model.
    #[test]
    fn dot_segment_detection_agrees_with_the_model(
        path in prop_oneof![
            3 => "(/|\\\\|%2[fFeE]|%5[cC]|\\.|;|a|%|2|e|%2|=){0,16}",
            1 => any::<String>(),
        ],
    ) {
        prop_assert_eq!(has_dot_segment(&path), model_has_dot_segment(&path), "{:?}", path);
    }

    /// Paths without a dot segment are never flagged; putting one anywhere (any encoding,
    /// any separator around it) always is.
    #[test]
    fn inserting_a_dot_segment_flips_the_answer(
        parts in prop::collection::vec((select(SEPARATORS), clean_segment()), 0..8),
        dot in dot_segment(),
        sep in select(SEPARATORS),
        at in any::<prop::sample::Index>(),
    ) {
        let clean = join(&parts);
        prop_assert!(!has_dot_segment(&clean), "{:?}", clean);
        let mut dirty = parts.clone();
        dirty.insert(at.index(parts.len() + 1), (sep, dot));
        let dirty = join(&dirty);
        prop_assert!(has_dot_segment(&dirty), "{:?}", dirty);
    }

    /// The point of the check: whatever passes it cannot climb out of the route's prefix
    /// at a destination that resolves dot segments after lenient decoding.
    #[test]
    fn unflagged_paths_stay_under_the_route_prefix(
        prefix in prop::collection::vec("[a-z]{1,4}", 1..4),
        rest in "(/|\\\\|%2[fFeE]|%5[cC]|\\.|;|a|%){0,16}",
    ) {
        let path = format!("/{}/{rest}", prefix.join("/"));
        if !has_dot_segment(&path) {
            let resolved = resolve(&lenient_segments(&path));
            let expected: Vec<Vec<u8>> = std::iter::once(Vec::new())
                .chain(prefix.iter().map(|s| s.as_bytes().to_vec()))
                .collect();
            prop_assert!(resolved.starts_with(&expected), "{:?} resolves to {:?}", path, resolved);
        }
    }
}

// =======================================================================================
// Headers
// =======================================================================================

// Hop-by-hop fields that are always removed (`Connection` included): the fuzz models' list.
use models::HOP_BY_HOP;
const END_TO_END: &[&str] = &[
    "authorization",
    "cookie",
    "set-cookie",
    "forwarded",
    "via",
    "x-request-id",
    "x-a",
    "x-b",
    "x-custom-hop",
    "trailer",
    "content-type",
    "prefer",
    "dpop",
    "host",
];

/// Any bytes a `HeaderValue` can hold: HTAB, SP, visible ASCII, obs-text.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..16)
        .prop_map(|v| HeaderValue::from_bytes(&v).expect("valid header bytes"))
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        2 => select(HOP_BY_HOP).prop_map(str::to_owned),
        3 => select(END_TO_END).prop_map(str::to_owned),
        1 => "x-[a-z0-9-]{1,6}",
    ]
    .prop_map(|n| HeaderName::from_bytes(n.as_bytes()).expect("valid name"))
}

/// A `Connection` value: names in any case, junk, empty elements, whitespace.
fn connection_value() -> impl Strategy<Value = HeaderValue> {
    let element = prop_oneof![
        (
            prop_oneof![select(HOP_BY_HOP), select(END_TO_END)],
            any::<u64>()
        )
            .prop_map(|(n, mask)| recase(n, mask).into_bytes()),
        "x-[a-z0-9-]{1,6}".prop_map(String::into_bytes),
        select(&["close", "", "x y", ";", "@", "é", "x-a;q=1"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        Just(b"x-\xff".to_vec()),
    ];
    prop::collection::vec(
        (
            element,
            select(&["", " ", "\t", "  "][..]),
            select(&["", " ", "\t"][..]),
        ),
        0..5,
    )
    .prop_map(|elements| {
        let mut v = Vec::new();
        for (i, (e, left, right)) in elements.iter().enumerate() {
            if i > 0 {
                v.push(b',');
            }
            v.extend_from_slice(left.as_bytes());
            v.extend_from_slice(e);
            v.extend_from_slice(right.as_bytes());
        }
        HeaderValue::from_bytes(&v).expect("valid header bytes")
    })
}

fn header_lines() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    prop::collection::vec(
        prop_oneof![
            4 => (header_name(), header_value()),
            1 => connection_value().prop_map(|v| (http::header::CONNECTION, v)),
        ],
        0..16,
    )
}

/// The lines of `name` in `lines`, in order.
fn values_of<'a>(lines: &'a [(HeaderName, HeaderValue)], name: &HeaderName) -> Vec<&'a [u8]> {
    lines
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_bytes())
        .collect()
}

fn values_in<'a>(h: &'a HeaderMap, name: &HeaderName) -> Vec<&'a [u8]> {
    h.get_all(name).iter().map(HeaderValue::as_bytes).collect()
}

fn model_is_sane_request_id(value: &[u8]) -> bool {
    let allowed = |b: &u8| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'/' | b'+' | b'=')
    };
    !value.is_empty() && value.len() <= 128 && value.iter().all(allowed)
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Hop-by-hop fields and those named in `Connection` are gone; every other line is
    /// still there, byte-exact, in its order among the lines of its name. Idempotent.
    #[test]
    fn hop_by_hop_removal_keeps_end_to_end_lines_exactly(lines in header_lines()) {
        let mut h = header_map(&lines);
        remove_hop_by_hop(&mut h);
        let mut kept_lines = 0;
        let names: HashSet<&HeaderName> = lines.iter().map(|(n, _)| n).collect();
        for name in names {
            if model_is_hop_by_hop(&lines, name) {
                prop_assert!(!h.contains_key(name), "{} kept", name);
            } else {
                let expected = values_of(&lines, name);
                kept_lines += expected.len();
                prop_assert_eq!(values_in(&h, name), expected, "{}", name);
            }
        }
        prop_assert_eq!(h.len(), kept_lines, "{:?}", h);
        let once = h.clone();
        remove_hop_by_hop(&mut h);
        prop_assert_eq!(h, once);
    }

    /// The whole request rewrite: after removal, the gateway's `Forwarded` and `Via` come
    /// last, after the client's own end-to-end lines, whatever `Connection` named.
    #[test]
    fn forwarded_and_via_are_appended_after_the_clients_lines(
        lines in header_lines(),
        client in any::<IpAddr>(),
        version in select(&[Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][..]),
    ) {
        let mut h = header_map(&lines);
        remove_hop_by_hop(&mut h);
        let before = h.clone();
        ForwardedMemo::default().append(&mut h, client, "fhir.example.org");
        append_via(&mut h, version);
        for (name, appended) in [(FORWARDED, 1), (VIA, 1)] {
            let old = values_in(&before, &name);
            let new = values_in(&h, &name);
            prop_assert_eq!(new.len(), old.len() + appended);
            prop_assert_eq!(&new[..old.len()], &old[..]);
        }
        let via = h.get_all(VIA).iter().next_back().unwrap();
        prop_assert!(via.as_bytes().ends_with(b" fhirgate"));
        for name in before.keys().filter(|n| **n != FORWARDED && **n != VIA) {
            prop_assert_eq!(values_in(&h, name), values_in(&before, name));
        }
        prop_assert_eq!(h.len(), before.len() + 2);
    }

    /// The appended `Forwarded` line is one RFC 7239 element, `for`, `proto`, `host`, whose
    /// host is exactly the one received, whatever it contains: no parameter or element can
    /// be injected. A host no quoted-string can carry (empty, control characters) is left
    /// out.
    #[test]
    fn forwarded_element_cannot_be_injected(
        client in prop_oneof![
            any::<IpAddr>(),
            any::<Ipv4Addr>().prop_map(|ip| IpAddr::V6(ip.to_ipv6_mapped())),
        ],
        host in prop_oneof![
            "[a-z0-9.:\\[\\]-]{1,20}",
            "[ -~]{0,16}",
            "[;,=\"\\\\a \t\\x00\\x7f]{0,8}",
            any::<String>(),
        ],
    ) {
        let mut h = HeaderMap::new();
        ForwardedMemo::default().append(&mut h, client, &host);
        let lines = values_in(&h, &FORWARDED);
        prop_assert_eq!(lines.len(), 1);
        let pairs = parse_forwarded_element(lines[0]);
        prop_assert!(pairs.is_some(), "not one element: {:?}", lines[0]);
        let pairs = pairs.unwrap();
        let node = match client.to_canonical() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut expected = vec![
            ("for".to_owned(), node.into_bytes()),
            ("proto".to_owned(), b"https".to_vec()),
        ];
        let carried = !host.is_empty()
            && host.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if carried {
            expected.push(("host".to_owned(), host.clone().into_bytes()));
        }
        prop_assert_eq!(pairs, expected);
    }

    /// `is_sane_request_id` is exactly its documented alphabet and length; `request_id`
    /// keeps one sane line and otherwise makes a fresh UUID v4, which is itself sane.
    #[test]
    fn request_ids(
        values in prop::collection::vec(
            prop_oneof![
                "[A-Za-z0-9._:@/+=-]{0,130}".prop_map(|s| HeaderValue::from_str(&s).unwrap()),
                "[A-Za-z0-9._:@/+= ;<>\"-]{1,10}".prop_map(|s| HeaderValue::from_str(&s).unwrap()),
                header_value(),
            ],
            0..3,
        ),
    ) {
        for v in &values {
            prop_assert_eq!(is_sane_request_id(v.as_bytes()), model_is_sane_request_id(v.as_bytes()));
        }
        let mut h = HeaderMap::new();
        for v in &values {
            h.append(X_REQUEST_ID, v.clone());
        }
        let id = request_id(&h);
        prop_assert!(is_sane_request_id(id.as_bytes()));
        if values.len() == 1 && model_is_sane_request_id(values[0].as_bytes()) {
            prop_assert_eq!(&id, &values[0]);
        } else {
            let text = id.to_str().unwrap();
            let uuid = uuid_v4(text);
            prop_assert!(uuid, "{}", text);
            prop_assert!(values.iter().all(|v| *v != id));
        }
    }
}

/// A hyphenated, lower-case UUID of version 4 and the RFC 4122 variant.
fn uuid_v4(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

// =======================================================================================
// Configuration
// =======================================================================================

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text of a configuration, line by line, remembering where values were written.
#[derive(Default)]
struct Doc {
    lines: Vec<String>,
}

impl Doc {
    /// Adds a line; returns its 1-based number.
    fn line(&mut self, text: impl Into<String>) -> usize {
        self.lines.push(text.into());
        self.lines.len()
    }
    fn text(&self) -> String {
        self.lines.join("\n") + "\n"
    }
}

const UNITS: &[&str] = &["ms", "s", "m", "h"];

fn expected_duration(n: u64, unit: &str) -> Option<Duration> {
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

fn duration() -> impl Strategy<Value = (u64, &'static str)> {
    (1u64..100_000, select(UNITS))
}

#[derive(Debug, Clone)]
struct GenHost {
    /// As written in the URL: any case, IPv6 in brackets.
    text: String,
    /// As the configuration stores it: lower case, no brackets.
    stored: String,
}

fn gen_host() -> impl Strategy<Value = GenHost> {
    prop_oneof![
        3 => "[a-zA-Z][a-zA-Z0-9-]{0,6}(\\.[a-zA-Z][a-zA-Z0-9-]{0,6}){0,2}".prop_map(|h| GenHost {
            stored: h.to_ascii_lowercase(),
            text: h,
        }),
        1 => any::<Ipv4Addr>().prop_map(|ip| GenHost {
            text: ip.to_string(),
            stored: ip.to_string(),
        }),
        1 => (any::<Ipv6Addr>(), any::<bool>()).prop_map(|(ip, upper)| {
            let s = ip.to_string();
            GenHost {
                text: format!("[{}]", if upper { s.to_ascii_uppercase() } else { s.clone() }),
                stored: s,
            }
        }),
    ]
}

#[derive(Debug, Clone)]
struct GenUrl {
    https: bool,
    host: GenHost,
    port: Option<u16>,
    /// Empty, or starting with `/`.
    path: String,
}

impl GenUrl {
    fn text(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{scheme}://{}{port}{}", self.host.text, self.path)
    }
    fn stored_path(&self) -> String {
        let trimmed = self.path.trim_end_matches('/');
        if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        }
    }
    fn default_port(&self) -> u16 {
        if self.https { 443 } else { 80 }
    }
    fn stored_port(&self) -> u16 {
        self.port.unwrap_or(self.default_port())
    }
    fn stored_authority(&self) -> String {
        let host = if self.host.stored.contains(':') {
            format!("[{}]", self.host.stored)
        } else {
            self.host.stored.clone()
        };
        if self.stored_port() == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.stored_port())
        }
    }
}

fn url_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/".to_owned()),
        (
            prop::collection::vec(
                prop_oneof![
                    "[A-Za-z0-9_~-]{1,6}",
                    "[a-z]{1,3}\\.[a-z0-9]{1,3}",
                    Just(".well-known".to_owned()),
                    Just("...".to_owned()),
                ],
                1..4,
            ),
            0usize..3,
        )
            .prop_map(|(segments, slashes)| format!(
                "/{}{}",
                segments.join("/"),
                "/".repeat(slashes)
            )),
    ]
}

fn gen_url(https: impl Strategy<Value = bool>) -> impl Strategy<Value = GenUrl> {
    (https, gen_host(), prop::option::of(1u16..), url_path()).prop_map(
        |(https, host, port, path)| GenUrl {
            https,
            host,
            port,
            path,
        },
    )
}

fn file_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,6}(/[a-z0-9_-]{1,6}){0,2}\\.(pem|key)",
        "(/[a-z]{1,6}){1,3}\\.(pem|key)",
    ]
}

#[derive(Debug, Clone)]
struct GenListener {
    name: String,
    padded: bool,
    bind: SocketAddr,
    min_tls: Option<&'static str>,
    certificates: Vec<(String, String)>,
}

fn gen_listener() -> impl Strategy<Value = GenListener> {
    (
        "[a-z][a-z0-9-]{0,6}",
        any::<bool>(),
        any::<IpAddr>(),
        any::<u16>(),
        prop::option::of(select(&["1.2", "1.3"][..])),
        prop::collection::vec((file_path(), file_path()), 1..3),
    )
        .prop_map(
            |(name, padded, ip, port, min_tls, certificates)| GenListener {
                name,
                padded,
                bind: SocketAddr::new(ip, port),
                min_tls,
                certificates,
            },
        )
}

#[derive(Debug, Clone)]
struct GenRouteConfig {
    name: String,
    padded: bool,
    public: GenUrl,
    upstream: GenUrl,
    /// `allow_plaintext_upstream`: written as `true` whenever the upstream is `http://`.
    allow_plaintext: Option<bool>,
    upstream_ca: Option<String>,
    /// Index into the listeners.
    listener: Option<prop::sample::Index>,
    connect_timeout: Option<(u64, &'static str)>,
    response_timeout: Option<(u64, &'static str)>,
    forwarded: Option<bool>,
    max_request_body_bytes: Option<i64>,
}

fn gen_route_config() -> impl Strategy<Value = GenRouteConfig> {
    (
        ("[a-z][a-z0-9-]{0,6}", any::<bool>()),
        gen_url(Just(true)),
        gen_url(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(file_path()),
        prop::option::of(any::<prop::sample::Index>()),
        prop::option::of(duration()),
        prop::option::of(duration()),
        prop::option::of(any::<bool>()),
        prop::option::of(1i64..),
    )
        .prop_map(
            |(
                (name, padded),
                public,
                upstream,
                allow_plaintext,
                upstream_ca,
                listener,
                connect_timeout,
                response_timeout,
                forwarded,
                max_request_body_bytes,
            )| GenRouteConfig {
                allow_plaintext: if upstream.https {
                    allow_plaintext
                } else {
                    Some(true)
                },
                name,
                padded,
                public,
                upstream,
                upstream_ca,
                listener,
                connect_timeout,
                response_timeout,
                forwarded,
                max_request_body_bytes,
            },
        )
}

#[derive(Debug, Clone)]
struct GenLimits {
    /// tls_handshake_timeout, header_read_timeout, idle_timeout, body_idle_timeout.
    durations: [Option<(u64, &'static str)>; 4],
    /// max_header_bytes, max_connections, max_connections_per_ip, max_uri_bytes, max_headers.
    counts: [Option<i64>; 5],
    rate: Option<(f64, Option<f64>)>,
}

const LIMIT_DURATIONS: [&str; 4] = [
    "tls_handshake_timeout",
    "header_read_timeout",
    "idle_timeout",
    "body_idle_timeout",
];
const LIMIT_COUNTS: [&str; 5] = [
    "max_header_bytes",
    "max_connections",
    "max_connections_per_ip",
    "max_uri_bytes",
    "max_headers",
];

fn gen_limits() -> impl Strategy<Value = GenLimits> {
    (
        prop::array::uniform4(prop::option::of(duration())),
        prop::array::uniform5(prop::option::of(1i64..)),
        prop::option::of((0.001f64..1e6, prop::option::of(1.0f64..1e6))),
    )
        .prop_map(|(durations, counts, rate)| GenLimits {
            durations,
            counts,
            rate,
        })
}

#[derive(Debug, Clone)]
struct GenAudit {
    path: Option<String>,
    key_file: String,
    source: Option<String>,
    record_query: Option<bool>,
    fsync: Option<&'static str>,
    on_failure: Option<&'static str>,
}

fn gen_audit() -> impl Strategy<Value = GenAudit> {
    (
        prop::option::of(prop_oneof![Just("-".to_owned()), file_path()]),
        file_path(),
        prop::option::of("[a-z][a-z0-9-]{0,8}"),
        prop::option::of(any::<bool>()),
        prop::option::of(select(&["always", "interval"][..])),
        prop::option::of(select(&["refuse", "log-and-continue"][..])),
    )
        .prop_map(
            |(path, key_file, source, record_query, fsync, on_failure)| GenAudit {
                path,
                key_file,
                source,
                record_query,
                fsync,
                on_failure,
            },
        )
}

#[derive(Debug, Clone)]
struct GenConfig {
    file: String,
    listeners: Vec<GenListener>,
    routes: Vec<GenRouteConfig>,
    limits: Option<GenLimits>,
    grace: Option<(u64, &'static str)>,
    audit: Option<GenAudit>,
    /// `[admin]`; `bind` = IP and port, `None` port: the first listener's (refused).
    admin: Option<Option<(IpAddr, Option<u16>)>>,
    log: Option<(Option<&'static str>, Option<&'static str>)>,
}

fn gen_config() -> impl Strategy<Value = GenConfig> {
    (
        prop_oneof![
            "[a-z]{1,8}\\.toml",
            "(/[a-z]{1,5}){1,3}/[a-z-]{1,8}\\.toml",
            "[a-z]{1,5}/[a-z]{1,8}\\.toml"
        ],
        prop::collection::vec(gen_listener(), 1..4),
        prop::collection::vec(gen_route_config(), 1..5),
        prop::option::of(gen_limits()),
        prop::option::of(duration()),
        prop::option::of(gen_audit()),
        prop::option::of(prop::option::of((
            any::<IpAddr>(),
            prop_oneof![3 => any::<u16>().prop_map(Some), 1 => Just(None)],
        ))),
        prop::option::of((
            prop::option::of(select(
                &[
                    "error",
                    "warn",
                    "info",
                    "debug",
                    "trace",
                    "info,fhirgate::exchange=warn",
                ][..],
            )),
            prop::option::of(select(&["human", "json"][..])),
        )),
    )
        .prop_map(
            |(file, listeners, routes, limits, grace, audit, admin, log)| GenConfig {
                file,
                listeners,
                routes,
                limits,
                grace,
                audit,
                admin,
                log,
            },
        )
}

/// Where the interesting values were written.
#[derive(Default)]
struct Lines {
    /// Per listener, per certificate: (cert line, key line).
    certificates: Vec<Vec<(usize, usize)>>,
    /// Per route: (name line, public_base line).
    routes: Vec<(usize, usize)>,
    admin_bind: Option<usize>,
}

impl GenConfig {
    /// Listener names as written (made unique) and as stored (trimmed).
    fn listener_name(&self, i: usize) -> String {
        format!("{}-{i}", self.listeners[i].name)
    }
    fn route_name(&self, i: usize) -> String {
        format!("{}-{i}", self.routes[i].name)
    }
    fn route_listener(&self, r: &GenRouteConfig) -> Option<String> {
        r.listener
            .as_ref()
            .map(|ix| self.listener_name(ix.index(self.listeners.len())))
    }
    fn admin_bind(&self) -> Option<SocketAddr> {
        let (ip, port) = self.admin??;
        Some(SocketAddr::new(
            ip,
            port.unwrap_or(self.listeners[0].bind.port()),
        ))
    }

    fn render(&self) -> (String, Lines) {
        let mut d = Doc::default();
        let mut lines = Lines::default();
        let pad = |padded: bool, s: String| if padded { format!("  {s} ") } else { s };
        d.line("# generated");
        for (i, l) in self.listeners.iter().enumerate() {
            d.line("[[listeners]]");
            d.line(format!(
                "name = {}",
                toml_string(&pad(l.padded, self.listener_name(i)))
            ));
            d.line(format!("bind = {}", toml_string(&l.bind.to_string())));
            if let Some(v) = l.min_tls {
                d.line(format!("min_tls_version = {}", toml_string(v)));
            }
            let mut certs = Vec::new();
            for (cert, key) in &l.certificates {
                d.line("  [[listeners.certificates]]");
                let c = d.line(format!("  cert = {}", toml_string(cert)));
                let k = d.line(format!("  key  = {}", toml_string(key)));
                certs.push((c, k));
            }
            lines.certificates.push(certs);
        }
        for (i, r) in self.routes.iter().enumerate() {
            d.line("");
            d.line("[[routes]]");
            let name = d.line(format!(
                "name = {}",
                toml_string(&pad(r.padded, self.route_name(i)))
            ));
            let public = d.line(format!("public_base = {}", toml_string(&r.public.text())));
            lines.routes.push((name, public));
            d.line(format!("upstream = {}", toml_string(&r.upstream.text())));
            if let Some(v) = r.allow_plaintext {
                d.line(format!("allow_plaintext_upstream = {v}"));
            }
            if let Some(v) = &r.upstream_ca {
                d.line(format!("upstream_ca = {}", toml_string(v)));
            }
            if let Some(v) = self.route_listener(r) {
                d.line(format!("listener = {}", toml_string(&v)));
            }
            if let Some((n, u)) = r.connect_timeout {
                d.line(format!("connect_timeout = \"{n}{u}\""));
            }
            if let Some((n, u)) = r.response_timeout {
                d.line(format!("response_timeout = \"{n}{u}\""));
            }
            if let Some(v) = r.forwarded {
                d.line(format!("forwarded = {v}"));
            }
            if let Some(v) = r.max_request_body_bytes {
                d.line(format!("max_request_body_bytes = {v}"));
            }
        }
        if let Some(l) = &self.limits {
            d.line("[limits]");
            for (key, value) in LIMIT_DURATIONS.iter().zip(&l.durations) {
                if let Some((n, u)) = value {
                    d.line(format!("{key} = \"{n}{u}\""));
                }
            }
            for (key, value) in LIMIT_COUNTS.iter().zip(&l.counts) {
                if let Some(n) = value {
                    d.line(format!("{key} = {n}"));
                }
            }
            if let Some((rate, burst)) = l.rate {
                d.line(format!("rate_limit_per_ip = {rate:?}"));
                if let Some(b) = burst {
                    d.line(format!("rate_limit_burst = {b:?}"));
                }
            }
        }
        if let Some((n, u)) = self.grace {
            d.line("[shutdown]");
            d.line(format!("grace = \"{n}{u}\""));
        }
        if let Some(a) = &self.audit {
            d.line("[audit]");
            if let Some(p) = &a.path {
                d.line(format!("path = {}", toml_string(p)));
            }
            d.line(format!("key_file = {}", toml_string(&a.key_file)));
            if let Some(s) = &a.source {
                d.line(format!("source = {}", toml_string(s)));
            }
            if let Some(v) = a.record_query {
                d.line(format!("record_query = {v}"));
            }
            if let Some(v) = a.fsync {
                d.line(format!("fsync = {}", toml_string(v)));
            }
            if let Some(v) = a.on_failure {
                d.line(format!("on_failure = {}", toml_string(v)));
            }
        }
        if let Some(admin) = &self.admin {
            d.line("[admin]");
            if admin.is_some() {
                let bind = self.admin_bind().unwrap();
                lines.admin_bind =
                    Some(d.line(format!("bind = {}", toml_string(&bind.to_string()))));
            }
        }
        if let Some((level, format)) = &self.log {
            d.line("[log]");
            if let Some(v) = level {
                d.line(format!("level = {}", toml_string(v)));
            }
            if let Some(v) = format {
                d.line(format!("format = {}", toml_string(v)));
            }
        }
        (d.text(), lines)
    }

    /// The first problem the validator must report, as (key, line); `None`: valid.
    fn expected_error(&self, lines: &Lines) -> Option<(String, usize)> {
        let mut seen = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let id = (
                r.public.host.stored.clone(),
                r.public.stored_path(),
                self.route_listener(r),
            );
            if seen.contains(&id) {
                return Some((format!("routes[{i}].public_base"), lines.routes[i].1));
            }
            seen.push(id);
        }
        let admin = self.admin_bind()?;
        if admin.port() != 0 && self.listeners.iter().any(|l| l.bind.port() == admin.port()) {
            return Some(("admin.bind".into(), lines.admin_bind.unwrap()));
        }
        None
    }
}

/// Every value of a valid generated configuration comes back as written (or as its
/// documented default), with paths resolved from the file's folder and lines pointing at
/// the values.
fn check_round_trip(g: &GenConfig, c: &Config, lines: &Lines) -> Result<(), TestCaseError> {
    let file = Path::new(&g.file);
    let dir = file.parent().unwrap_or(Path::new(""));
    prop_assert_eq!(&c.file, file);
    prop_assert!(c.hash.len() == 16 && c.hash.bytes().all(|b| b.is_ascii_hexdigit()));

    prop_assert_eq!(c.listeners.len(), g.listeners.len());
    for (i, (l, gl)) in c.listeners.iter().zip(&g.listeners).enumerate() {
        prop_assert_eq!(&l.name, &g.listener_name(i));
        prop_assert_eq!(l.bind, gl.bind);
        let tls = match gl.min_tls {
            Some("1.3") => TlsVersion::V1_3,
            _ => TlsVersion::V1_2,
        };
        prop_assert_eq!(l.min_tls_version, tls);
        prop_assert_eq!(l.certificates.len(), gl.certificates.len());
        for (c_i, (cert, (cert_path, key_path))) in
            l.certificates.iter().zip(&gl.certificates).enumerate()
        {
            let (cert_line, key_line) = lines.certificates[i][c_i];
            prop_assert_eq!(&cert.cert.path, &dir.join(cert_path));
            prop_assert_eq!(&cert.key.path, &dir.join(key_path));
            prop_assert_eq!(
                &cert.cert.key,
                &format!("listeners[{i}].certificates[{c_i}].cert")
            );
            prop_assert_eq!(
                &cert.key.key,
                &format!("listeners[{i}].certificates[{c_i}].key")
            );
            prop_assert_eq!(cert.cert.line, Some(cert_line));
            prop_assert_eq!(cert.key.line, Some(key_line));
        }
    }

    prop_assert_eq!(c.routes.len(), g.routes.len());
    for (i, (r, gr)) in c.routes.iter().zip(&g.routes).enumerate() {
        prop_assert_eq!(&r.name, &g.route_name(i));
        prop_assert_eq!(r.line, Some(lines.routes[i].0));
        prop_assert_eq!(&r.public_base_text, &gr.public.text());
        prop_assert_eq!(&r.public_host, &gr.public.host.stored);
        prop_assert_eq!(&r.public_path, &gr.public.stored_path());
        let u = &r.upstream;
        prop_assert_eq!(&u.text, &gr.upstream.text());
        prop_assert_eq!(u.tls, gr.upstream.https);
        prop_assert_eq!(&u.host, &gr.upstream.host.stored);
        prop_assert_eq!(u.port, gr.upstream.stored_port());
        prop_assert_eq!(&u.authority, &gr.upstream.stored_authority());
        prop_assert_eq!(&u.path, &gr.upstream.stored_path());
        prop_assert_eq!(
            r.upstream_ca.as_ref().map(|f| f.path.clone()),
            gr.upstream_ca.as_ref().map(|p| dir.join(p))
        );
        prop_assert_eq!(&r.listener, &g.route_listener(gr));
        let timeout = |t: Option<(u64, &str)>, default: u64| {
            t.map_or(Some(Duration::from_secs(default)), |(n, u)| {
                expected_duration(n, u)
            })
        };
        prop_assert_eq!(Some(r.connect_timeout), timeout(gr.connect_timeout, 5));
        prop_assert_eq!(Some(r.response_timeout), timeout(gr.response_timeout, 60));
        prop_assert_eq!(r.forwarded, gr.forwarded.unwrap_or(true));
        prop_assert_eq!(
            r.max_request_body_bytes,
            gr.max_request_body_bytes.map(|n| n as u64)
        );
    }

    let defaults = Limits::default();
    let gl = g.limits.clone().unwrap_or(GenLimits {
        durations: [None; 4],
        counts: [None; 5],
        rate: None,
    });
    let duration = |i: usize, default: Duration| {
        gl.durations[i].map_or(Some(default), |(n, u)| expected_duration(n, u))
    };
    let count = |i: usize, default: usize| gl.counts[i].map_or(default, |n| n as usize);
    let l = &c.limits;
    prop_assert_eq!(
        Some(l.tls_handshake_timeout),
        duration(0, defaults.tls_handshake_timeout)
    );
    prop_assert_eq!(
        Some(l.header_read_timeout),
        duration(1, defaults.header_read_timeout)
    );
    prop_assert_eq!(Some(l.idle_timeout), duration(2, defaults.idle_timeout));
    prop_assert_eq!(
        Some(l.body_idle_timeout),
        duration(3, defaults.body_idle_timeout)
    );
    prop_assert_eq!(l.max_header_bytes, count(0, defaults.max_header_bytes));
    prop_assert_eq!(l.max_connections, count(1, defaults.max_connections));
    prop_assert_eq!(
        l.max_connections_per_ip,
        count(2, defaults.max_connections_per_ip)
    );
    prop_assert_eq!(l.max_uri_bytes, count(3, defaults.max_uri_bytes));
    prop_assert_eq!(l.max_headers, count(4, defaults.max_headers));
    match (l.rate_limit, gl.rate) {
        (None, None) => {}
        (Some(r), Some((per_second, burst))) => {
            prop_assert_eq!(r.per_second, per_second);
            prop_assert_eq!(r.burst, burst.unwrap_or((per_second * 2.0).max(1.0)));
        }
        (got, expected) => {
            return Err(TestCaseError::fail(format!(
                "rate limit {got:?}, expected {expected:?}"
            )));
        }
    }

    prop_assert_eq!(
        Some(c.shutdown.grace),
        g.grace
            .map_or(Some(Duration::from_secs(30)), |(n, u)| expected_duration(
                n, u
            ))
    );

    match (&c.audit, &g.audit) {
        (None, None) => {}
        (Some(a), Some(ga)) => {
            let sink = match ga.path.as_deref() {
                None => AuditSink::File(dir.join("audit.ndjson")),
                Some("-") => AuditSink::Stdout,
                Some(p) => AuditSink::File(dir.join(p)),
            };
            prop_assert_eq!(&a.sink, &sink);
            prop_assert_eq!(&a.key_file.path, &dir.join(&ga.key_file));
            prop_assert_eq!(&a.source, ga.source.as_deref().unwrap_or("fhirgate"));
            prop_assert_eq!(a.record_query, ga.record_query.unwrap_or(false));
            let fsync = match ga.fsync {
                Some("always") => FsyncPolicy::Always,
                _ => FsyncPolicy::Interval,
            };
            prop_assert_eq!(a.fsync, fsync);
            let on_failure = match ga.on_failure {
                Some("log-and-continue") => OnAuditFailure::LogAndContinue,
                _ => OnAuditFailure::Refuse,
            };
            prop_assert_eq!(a.on_failure, on_failure);
        }
        (got, expected) => {
            return Err(TestCaseError::fail(format!(
                "audit {got:?}, expected {expected:?}"
            )));
        }
    }

    let admin = g.admin.as_ref().map(|bind| {
        bind.as_ref()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 9901)), |_| {
                g.admin_bind().unwrap()
            })
    });
    prop_assert_eq!(c.admin.as_ref().map(|a| a.bind), admin);

    let (level, format) = g.log.unwrap_or((None, None));
    prop_assert_eq!(&c.log.level, level.unwrap_or("info"));
    prop_assert_eq!(c.log.json, format == Some("json"));
    Ok(())
}

/// Every error is displayed `FILE[:LINE]: …`, with a line inside the file.
fn check_error_display(
    text: &str,
    file: &Path,
    result: &Result<Config, fhirgate::config::ConfigError>,
) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let shown = e.to_string();
        let name = file.display().to_string();
        prop_assert!(
            shown.starts_with(&name),
            "{:?} does not start with {:?}",
            shown,
            name
        );
        prop_assert_eq!(&e.file, file);
        if let Some(line) = e.line {
            prop_assert!(
                line >= 1 && line <= text.lines().count() + 1,
                "line {} of {:?}",
                line,
                text
            );
            prop_assert!(
                shown[name.len()..].starts_with(&format!(":{line}")),
                "{}",
                shown
            );
        }
    }
    Ok(())
}

/// Lines that look like a configuration: known sections and keys, values of every type
/// (good, bad, hostile), and junk.
fn tomlish() -> impl Strategy<Value = String> {
    let section = select(
        &[
            "[[listeners]]",
            "[[listeners.certificates]]",
            "[[routes]]",
            "[limits]",
            "[shutdown]",
            "[audit]",
            "[admin]",
            "[log]",
            "[bogus]",
            "[listeners]",
        ][..],
    )
    .prop_map(str::to_owned);
    let key = select(
        &[
            "name",
            "bind",
            "min_tls_version",
            "cert",
            "key",
            "public_base",
            "upstream",
            "upstream_ca",
            "listener",
            "connect_timeout",
            "response_timeout",
            "forwarded",
            "allow_plaintext_upstream",
            "max_request_body_bytes",
            "tls_handshake_timeout",
            "header_read_timeout",
            "idle_timeout",
            "max_header_bytes",
            "max_connections",
            "max_connections_per_ip",
            "max_uri_bytes",
            "max_headers",
            "body_idle_timeout",
            "rate_limit_per_ip",
            "rate_limit_burst",
            "grace",
            "path",
            "key_file",
            "source",
            "record_query",
            "fsync",
            "on_failure",
            "level",
            "format",
            "bogus",
        ][..],
    );
    let string = prop_oneof![
        select(
            &[
                "0.0.0.0:8443",
                "[::]:0",
                "127.0.0.1:9901",
                "localhost",
                "https://h/p",
                "https://H:8443/a/",
                "http://h",
                "https://[::1]:1/x",
                "https://u@h/",
                "https://h/a/../b",
                "https://h/%2e",
                "https://h/?q",
                "https://h#f",
                "ftp://h",
                "https://",
                "5s",
                "0s",
                "250ms",
                "99999999999999999999h",
                "1.3",
                "1.2",
                "-",
                "",
                " ",
                "json",
                "human",
                "always",
                "interval",
                "refuse",
                "log-and-continue",
                "info",
                "nope[",
                "c.pem",
                "public",
                "internal",
            ][..],
        )
        .prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
    .prop_map(|s| toml_string(&s));
    let value = prop_oneof![
        3 => string,
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => select(&["0", "-1", "1", "nan", "inf", "-inf", "0.0", "-0.5", "1e308", "0.5", "true", "false"][..]).prop_map(str::to_owned),
        1 => select(&["[]", "[1, \"a\"]", "{ a = 1 }", "\"\"\"x\"\"\"", "'lit'", "1979-05-27"][..]).prop_map(str::to_owned),
    ];
    let line = prop_oneof![
        1 => section,
        5 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,10}",
    ];
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index),
    Insert(prop::sample::Index, char),
    Replace(prop::sample::Index, char),
    DuplicateLine(prop::sample::Index),
    DeleteLine(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let c = prop_oneof![
        select(
            &[
                '"', '\'', '[', ']', '=', '\n', '#', '\\', ',', '.', '{', '}', '0', ':', '/', '%',
                ' '
            ][..]
        ),
        any::<char>(),
    ];
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Edit::Delete),
        (any::<prop::sample::Index>(), c.clone()).prop_map(|(i, c)| Edit::Insert(i, c)),
        (any::<prop::sample::Index>(), c).prop_map(|(i, c)| Edit::Replace(i, c)),
        any::<prop::sample::Index>().prop_map(Edit::DuplicateLine),
        any::<prop::sample::Index>().prop_map(Edit::DeleteLine),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        match e {
            Edit::Delete(i) if !chars.is_empty() => {
                chars.remove(i.index(chars.len()));
            }
            Edit::Insert(i, c) => chars.insert(i.index(chars.len() + 1), *c),
            Edit::Replace(i, c) if !chars.is_empty() => {
                let i = i.index(chars.len());
                chars[i] = *c;
            }
            Edit::DuplicateLine(i) | Edit::DeleteLine(i) => {
                let s: String = chars.iter().collect();
                let mut lines: Vec<&str> = s.split('\n').collect();
                let at = i.index(lines.len());
                if matches!(e, Edit::DuplicateLine(_)) {
                    lines.insert(at, lines[at]);
                } else {
                    lines.remove(at);
                }
                chars = lines.join("\n").chars().collect();
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(cases(512))]

    /// Generated valid configurations parse and every value round-trips; the two
    /// cross-checks a generator can trip (same host+path+listener twice, admin on a
    /// listener's port) are refused with the right key and line.
    #[test]
    fn generated_configs_round_trip(g in gen_config()) {
        let (text, lines) = g.render();
        let file = PathBuf::from(&g.file);
        let result = Config::parse(&text, &file);
        check_error_display(&text, &file, &result)?;
        match (result, g.expected_error(&lines)) {
            (Ok(c), None) => {
                check_round_trip(&g, &c, &lines)?;
                // Deterministic, down to the hash.
                let again = Config::parse(&text, &file).unwrap();
                prop_assert_eq!(again.hash, c.hash);
            }
            (Err(e), Some((key, line))) => {
                prop_assert_eq!(e.key.as_deref(), Some(key.as_str()), "{}", e);
                prop_assert_eq!(e.line, Some(line), "{}", e);
            }
            (Ok(_), Some(expected)) => {
                return Err(TestCaseError::fail(format!("accepted; expected {expected:?}\n{text}")));
            }
            (Err(e), None) => return Err(TestCaseError::fail(format!("refused: {e}\n{text}"))),
        }
    }

    /// A public or upstream base URL with a `.` / `..` segment (any case of `%2e`) is refused,
    /// naming the key.
    #[test]
    fn dot_segments_in_base_urls_are_refused(
        g in gen_config(),
        dots in prop::collection::vec(select(&[".", "%2e", "%2E"][..]), 1..=2),
        public in any::<bool>(),
        at in any::<prop::sample::Index>(),
    ) {
        // A duplicate route would be reported first; that case is covered above.
        let (_, lines) = g.render();
        prop_assume!(g.expected_error(&lines).is_none_or(|(key, _)| !key.starts_with("routes")));
        let mut g = g;
        let r = at.index(g.routes.len());
        let url = if public { &mut g.routes[r].public } else { &mut g.routes[r].upstream };
        url.path = format!("/a/{}{}", dots.concat(), url.path);
        let (text, _) = g.render();
        let file = PathBuf::from(&g.file);
        let result = Config::parse(&text, &file);
        check_error_display(&text, &file, &result)?;
        // An earlier route may fail first only on the duplicate check, which needs equal paths.
        let e = result.expect_err("a dot segment must be refused");
        let key = format!("routes[{r}].{}", if public { "public_base" } else { "upstream" });
        prop_assert_eq!(e.key.as_deref(), Some(key.as_str()), "{}", e);
    }

    /// Arbitrary text never panics the parser, and every error names the file first.
    #[test]
    fn arbitrary_text_is_refused_cleanly(
        text in prop_oneof![any::<String>(), "[\\[\\]=\"a-z \n.#0-9{},]{0,60}"],
        file in "[a-z]{1,8}(/[a-z]{1,5})?\\.toml",
    ) {
        let file = PathBuf::from(file);
        let result = Config::parse(&text, &file);
        check_error_display(&text, &file, &result)?;
    }

    /// Configuration-shaped text (right sections and keys, values of any type) never
    /// panics the validator, and every error names the file first.
    #[test]
    fn tomlish_text_is_refused_cleanly(text in tomlish()) {
        let file = PathBuf::from("/etc/fhirgate/fhirgate.toml");
        let result = Config::parse(&text, &file);
        check_error_display(&text, &file, &result)?;
    }

    /// Random edits of a valid configuration never panic; errors name the file first.
    #[test]
    fn edited_configs_are_refused_cleanly(
        g in gen_config(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let (text, _) = g.render();
        let text = apply(&text, &edits);
        let file = PathBuf::from(&g.file);
        let result = Config::parse(&text, &file);
        check_error_display(&text, &file, &result)?;
    }

    /// `parse_duration` accepts exactly "digits + ms|s|m|h" (surrounding white space
    /// aside), with the value it says, and refuses the rest without panicking.
    #[test]
    fn durations_parse_exactly_their_format(
        n in prop_oneof![0u64..1000, any::<u64>()],
        unit in select(UNITS),
        zeros in 0usize..3,
        ws in select(&["", " ", "\t", "\n "][..]),
        junk in prop_oneof!["\\PC{0,8}", "[0-9 .+-]{0,4}(ms|s|m|h|sec|H|MS|)[0-9 ]{0,2}"],
    ) {
        let text = format!("{ws}{}{n}{unit}{ws}", "0".repeat(zeros));
        prop_assert_eq!(parse_duration(&text).ok(), expected_duration(n, unit), "{:?}", text);
        // Anything else: accepted only when it has that shape, and then with that value.
        let trimmed = junk.trim();
        let shaped = UNITS.iter().find_map(|u| {
            let digits = trimmed.strip_suffix(u)?;
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some((digits, *u))
        });
        let expected = shaped.and_then(|(digits, u)| expected_duration(digits.parse().ok()?, u));
        prop_assert_eq!(parse_duration(&junk).ok(), expected, "{:?}", junk);
    }
}
