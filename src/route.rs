//! The route table: which destination a request is for, from its host and path.
//!
//! Pure and allocation-free per lookup. Routes are indexed by host; a host's public prefixes
//! are grouped by length, longest group first, and each group is sorted, so a lookup asks
//! each length once ("is the path's first `n` bytes, ending at a segment boundary, one of
//! the prefixes?") with a binary search, instead of comparing the path with every prefix of
//! the host: a host with a thousand tenants costs a handful of comparisons. The first length
//! that matches is the longest match. Matching is on raw bytes: percent-encoding is never
//! decoded (`/dest%2Da` is not `/dest-a`), so what is matched is exactly what is forwarded
//! (DESIGN "Routing").

use std::collections::HashMap;

use crate::config::RouteConfig;

/// Routes indexed by public host (lower-case, IPv6 without brackets, as the config stores it).
#[derive(Debug)]
pub struct RouteTable {
    by_host: HashMap<String, Vec<PrefixGroup>>,
}

/// The public prefixes of one host that have the same length, sorted, with their routes.
/// A host's groups are kept longest first.
#[derive(Debug)]
struct PrefixGroup {
    len: usize,
    prefixes: Vec<Prefix>,
}

#[derive(Debug)]
struct Prefix {
    /// Public path without trailing slash; empty for a public path of `/`, so that the
    /// segment-boundary rule below needs no special case for a host-wide route.
    path: String,
    /// The routes with this public path: listener-restricted ones first (the more specific
    /// rule wins), otherwise in the configuration's order.
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Only requests that arrived on this listener match (the IG's "routing by the address
    /// the request arrived on").
    listener: Option<String>,
    /// Position in the configuration's `routes`.
    index: usize,
}

/// A matched route and the part of the request path after its public prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch<'p> {
    /// Position of the route in the configuration's `routes`.
    pub index: usize,
    /// The rest of the path after the public prefix: empty, or starting with `/`.
    pub remainder: &'p str,
}

/// DNS names are at most 253 octets (RFC 1035 §2.3.4); a longer host matches no route, so a
/// buffer this size lower-cases every host that could match without allocating.
const MAX_HOST: usize = 256;

impl RouteTable {
    /// Builds the table; `routes[i]` is reported back as `RouteMatch::index == i`.
    pub fn new(routes: &[RouteConfig]) -> RouteTable {
        let mut paths_by_host: HashMap<String, HashMap<String, Vec<Entry>>> = HashMap::new();
        for (index, route) in routes.iter().enumerate() {
            paths_by_host
                .entry(route.public_host.to_ascii_lowercase())
                .or_default()
                .entry(route.public_path.trim_end_matches('/').to_owned())
                .or_default()
                .push(Entry {
                    listener: route.listener.clone(),
                    index,
                });
        }
        let by_host = paths_by_host
            .into_iter()
            .map(|(host, paths)| (host, PrefixGroup::of_host(paths)))
            .collect();
        RouteTable { by_host }
    }

    /// The route for a request, or `None` (404).
    ///
    /// `host` is the `Host` / `:authority` value as received: any case (host names are
    /// case-insensitive, RFC 3986 §3.2.2), with or without a port (ignored), an IPv6 literal
    /// with or without brackets. `path` is the raw path without the query; `listener` the
    /// name of the listener the request arrived on. The longest matching public path wins.
    pub fn lookup<'p>(&self, host: &str, path: &'p str, listener: &str) -> Option<RouteMatch<'p>> {
        // Only origin-form targets route (RFC 9112 §3.2.1): not `*` nor an authority-form.
        if !path.starts_with('/') {
            return None;
        }
        let groups = self.groups_for(host_without_port(host))?;
        groups.iter().find_map(|group| {
            // Segment boundary: `/dest-a` matches `/dest-a` and `/dest-a/…`, never `/dest-ab`.
            // A `/` (or the end) after the first `len` bytes also makes `len` a character
            // boundary, so the split below cannot panic.
            if path.len() != group.len && path.as_bytes().get(group.len) != Some(&b'/') {
                return None;
            }
            let (candidate, remainder) = path.split_at(group.len);
            let found = group
                .prefixes
                .binary_search_by(|prefix| prefix.path.as_str().cmp(candidate))
                .ok()?;
            group.prefixes[found]
                .entries
                .iter()
                .find(|entry| entry.listener.as_deref().is_none_or(|l| l == listener))
                .map(|entry| RouteMatch {
                    index: entry.index,
                    remainder,
                })
        })
    }

    /// The routes of one host, compared case-insensitively without allocating.
    fn groups_for(&self, host: &str) -> Option<&Vec<PrefixGroup>> {
        // Whatever its case: no DNS name is this long (the configuration refuses such hosts).
        if host.len() > MAX_HOST {
            return None;
        }
        if !host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_host.get(host);
        }
        let mut buffer = [0u8; MAX_HOST];
        let lower = buffer.get_mut(..host.len())?;
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        // ASCII lower-casing keeps UTF-8 valid, so this never fails.
        self.by_host.get(std::str::from_utf8(lower).ok()?)
    }
}

impl PrefixGroup {
    /// One host's prefixes, grouped by length, longest group first.
    fn of_host(paths: HashMap<String, Vec<Entry>>) -> Vec<PrefixGroup> {
        let mut prefixes: Vec<Prefix> = paths
            .into_iter()
            .map(|(path, mut entries)| {
                // Listener-restricted routes first; `sort_by_key` is stable, so among the
                // rest the configuration's order is kept.
                entries.sort_by_key(|entry| entry.listener.is_none());
                Prefix { path, entries }
            })
            .collect();
        prefixes.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then_with(|| a.path.cmp(&b.path))
        });
        let mut groups: Vec<PrefixGroup> = Vec::new();
        for prefix in prefixes {
            match groups.last_mut() {
                Some(group) if group.len == prefix.path.len() => group.prefixes.push(prefix),
                _ => groups.push(PrefixGroup {
                    len: prefix.path.len(),
                    prefixes: vec![prefix],
                }),
            }
        }
        groups
    }
}

/// The host of a `Host` / `:authority` value (RFC 9110 §7.2), without its port.
///
/// IPv6 literals lose their brackets (`[::1]:8443` → `::1`), because that is how the
/// configuration stores `public_host` and how TLS server names compare. Idempotent: an
/// unbracketed IPv6 address is returned unchanged, never cut at its last colon. A value
/// that is not `host[:port]` is returned unchanged, and so matches no route.
pub fn host_without_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            // Only an IPv6 address loses its brackets: `[a:]` or `[fhir.example.org:]` is not
            // one, and unwrapping it would make a second call strip the colon too.
            Some((host, after))
                if (after.is_empty() || is_port_suffix(after))
                    && host.parse::<std::net::Ipv6Addr>().is_ok() =>
            {
                host
            }
            _ => authority,
        };
    }
    match authority.split_once(':') {
        Some((host, _)) if is_port_suffix(&authority[host.len()..]) => host,
        _ => authority,
    }
}

/// `:` followed by digits only; RFC 3986 §3.2.3 allows an empty port.
fn is_port_suffix(suffix: &str) -> bool {
    suffix
        .strip_prefix(':')
        .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()))
}

/// True when a segment of the raw path is `.` or `..`, plain or percent-encoded (`%2e`).
///
/// Such a path could climb out of a route's prefix at the destination, which resolves dot
/// segments (RFC 3986 §5.2.4) after the gateway has matched the prefix. Because some servers
/// also treat `\`, `%2f` and `%5c` as separators and drop `;` path parameters (Tomcat, which
/// hosts many FHIR servers, reads `/..;/` as `/../`), those are read the same way here:
/// no FHIR path needs them next to a dot segment.
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // A dot segment needs a `.` or a `%2e`; most FHIR paths have neither.
    if !bytes.iter().any(|b| *b == b'.' || *b == b'%') {
        return false;
    }
    let mut i = 0;
    let mut segment = DotCounter::default();
    loop {
        let separator = separator_len(&bytes[i..]);
        if i == bytes.len() || separator > 0 {
            if segment.is_dot_segment() {
                return true;
            }
            if i == bytes.len() {
                return false;
            }
            i += separator;
            segment = DotCounter::default();
            continue;
        }
        i += segment.push(&bytes[i..]);
    }
}

/// The state of one path segment while it is read.
#[derive(Default)]
struct DotCounter {
    dots: usize,
    other: bool,
    /// After a `;`: path parameters, ignored.
    params: bool,
}

impl DotCounter {
    /// Reads the next character of `rest` (non-empty); returns how many bytes it took.
    fn push(&mut self, rest: &[u8]) -> usize {
        if self.params {
            return 1;
        }
        match rest {
            [b'.', ..] => {
                self.dots += 1;
                1
            }
            [b'%', b'2', e, ..] if e.eq_ignore_ascii_case(&b'e') => {
                self.dots += 1;
                3
            }
            [b';', ..] => {
                self.params = true;
                1
            }
            _ => {
                self.other = true;
                1
            }
        }
    }

    fn is_dot_segment(&self) -> bool {
        !self.other && (self.dots == 1 || self.dots == 2)
    }
}

/// Length of the separator at the start of `rest`: `/`, `\`, `%2f` or `%5c`; 0 if none.
fn separator_len(rest: &[u8]) -> usize {
    match rest {
        [b'/' | b'\\', ..] => 1,
        [b'%', b'2', f, ..] if f.eq_ignore_ascii_case(&b'f') => 3,
        [b'%', b'5', c, ..] if c.eq_ignore_ascii_case(&b'c') => 3,
        _ => 0,
    }
}

/// The upstream path and query: upstream base path + the rest of the request path, with no
/// doubled or lost slash, then `?query` byte-for-byte when the request had one (DESIGN
/// "Routing": percent-encoding is never decoded or re-encoded).
pub fn upstream_path_and_query(
    upstream_base: &str,
    remainder: &str,
    query: Option<&str>,
) -> String {
    // The base's trailing slash, if any, is supplied by the remainder (which starts with
    // one or is empty), so `/fhir/` + `/Patient` cannot become `/fhir//Patient`.
    let base = upstream_base.trim_end_matches('/');
    let query_len = query.map_or(0, |q| q.len() + 1);
    let mut out = String::with_capacity(base.len() + remainder.len().max(1) + query_len);
    out.push_str(base);
    out.push_str(remainder);
    if out.is_empty() {
        // Upstream base `/` and the bare public prefix: an origin-form path is never empty.
        out.push('/');
    }
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamUrl;
    use std::time::Duration;

    fn route(host: &str, path: &str, listener: Option<&str>) -> RouteConfig {
        RouteConfig {
            name: format!("{host}{path}"),
            public_base_text: format!("https://{host}{path}"),
            public_host: host.to_owned(),
            public_path: path.to_owned(),
            upstream: UpstreamUrl {
                text: "https://dest/fhir".into(),
                tls: true,
                host: "dest".into(),
                port: 443,
                authority: "dest".into(),
                path: "/fhir".into(),
            },
            upstream_ca: None,
            listener: listener.map(str::to_owned),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            forwarded: true,
            max_request_body_bytes: None,
            upstream_http2: true,
            upstream_idle_timeout: Duration::from_secs(60),
            upstream_max_idle: crate::config::DEFAULT_UPSTREAM_MAX_IDLE,
            max_concurrent_exchanges: None,
            max_exchange_duration: None,
            line: None,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(&[
            route("fhir.example.org", "/dest-a", None),         // 0
            route("fhir.example.org", "/dest-a/r4", None),      // 1
            route("fhir.example.org", "/", None),               // 2
            route("other.example.org", "/x", Some("internal")), // 3
            route("::1", "/v6", None),                          // 4
        ])
    }

    fn hit<'p>(t: &RouteTable, host: &str, path: &'p str) -> Option<(usize, &'p str)> {
        t.lookup(host, path, "public")
            .map(|m| (m.index, m.remainder))
    }

    /// Lookup then rewrite, as the proxy does: the request path the upstream receives.
    fn forwarded(public: &str, upstream: &str, path: &str, query: Option<&str>) -> Option<String> {
        let t = RouteTable::new(&[route("h", public, None)]);
        let m = t.lookup("h", path, "public")?;
        Some(upstream_path_and_query(upstream, m.remainder, query))
    }

    #[test]
    fn segment_boundary() {
        let t = table();
        assert_eq!(hit(&t, "fhir.example.org", "/dest-a"), Some((0, "")));
        assert_eq!(hit(&t, "fhir.example.org", "/dest-a/"), Some((0, "/")));
        assert_eq!(
            hit(&t, "fhir.example.org", "/dest-a/Patient/1"),
            Some((0, "/Patient/1"))
        );
        let only = RouteTable::new(&[route("h", "/dest-a", None)]);
        assert_eq!(hit(&only, "h", "/dest-ab"), None);
        assert_eq!(hit(&only, "h", "/dest"), None);
        assert_eq!(hit(&only, "h", "/"), None);
    }

    #[test]
    fn the_remainder_is_the_end_of_the_request_path_itself() {
        let t = table();
        for path in ["/dest-a", "/dest-a/", "/dest-a/r4/Patient", "/other"] {
            let found = t.lookup("fhir.example.org", path, "public").unwrap();
            let end = path.as_ptr() as usize + path.len();
            assert_eq!(
                found.remainder.as_ptr() as usize + found.remainder.len(),
                end
            );
        }
    }

    #[test]
    fn longest_prefix_wins_and_host_wide_route_catches_the_rest() {
        let t = table();
        assert_eq!(
            hit(&t, "fhir.example.org", "/dest-a/r4/Patient"),
            Some((1, "/Patient"))
        );
        assert_eq!(hit(&t, "fhir.example.org", "/dest-a/r4"), Some((1, "")));
        assert_eq!(
            hit(&t, "fhir.example.org", "/dest-a/r4b"),
            Some((0, "/r4b"))
        );
        // `/dest-ab` is not under `/dest-a`: it falls to the host-wide route.
        assert_eq!(
            hit(&t, "fhir.example.org", "/dest-ab"),
            Some((2, "/dest-ab"))
        );
        assert_eq!(hit(&t, "fhir.example.org", "/"), Some((2, "/")));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_configuration_order() {
        let t = RouteTable::new(&[
            route("h", "/", None),
            route("h", "/a", None),
            route("h", "/a/b/c", None),
            route("h", "/a/b", None),
        ]);
        assert_eq!(hit(&t, "h", "/a/b/c/d"), Some((2, "/d")));
        assert_eq!(hit(&t, "h", "/a/b/x"), Some((3, "/x")));
        assert_eq!(hit(&t, "h", "/a/x"), Some((1, "/x")));
        assert_eq!(hit(&t, "h", "/x"), Some((0, "/x")));
    }

    #[test]
    fn matching_is_on_raw_bytes() {
        let only = RouteTable::new(&[route("h", "/dest-a", None)]);
        assert_eq!(hit(&only, "h", "/dest%2Da"), None);
        assert_eq!(hit(&only, "h", "/Dest-A"), None);
        assert_eq!(
            hit(&table(), "fhir.example.org", "/dest%2Da"),
            Some((2, "/dest%2Da"))
        );
    }

    #[test]
    fn only_origin_form_paths_route() {
        let t = table();
        assert_eq!(hit(&t, "fhir.example.org", "*"), None);
        assert_eq!(hit(&t, "fhir.example.org", ""), None);
    }

    #[test]
    fn host_is_case_insensitive_and_port_ignored() {
        let t = table();
        assert_eq!(hit(&t, "FHIR.Example.ORG:8443", "/dest-a"), Some((0, "")));
        assert_eq!(hit(&t, "fhir.example.org:443", "/dest-a"), Some((0, "")));
        assert_eq!(hit(&t, "fhir.example.org:", "/dest-a"), Some((0, "")));
        assert_eq!(hit(&t, "Fhir.Example.Org", "/dest-a"), Some((0, "")));
        assert_eq!(hit(&t, "unknown.example.org", "/dest-a"), None);
        assert_eq!(hit(&t, "fhir.example.org:x", "/dest-a"), None);
        assert_eq!(hit(&t, &"A".repeat(300), "/dest-a"), None);
    }

    #[test]
    fn ipv6_host_with_or_without_brackets() {
        let t = table();
        assert_eq!(hit(&t, "[::1]:8443", "/v6/x"), Some((4, "/x")));
        assert_eq!(hit(&t, "[::1]", "/v6"), Some((4, "")));
        // The proxy strips the port first and may pass the result in again.
        assert_eq!(hit(&t, "::1", "/v6"), Some((4, "")));
        assert_eq!(hit(&t, "[::1]junk", "/v6"), None);
        // Brackets hold IPv6 literals only; a name in brackets matches nothing, however often
        // the port is stripped.
        assert_eq!(hit(&t, "[fhir.example.org:]", "/dest-a"), None);
        assert_eq!(
            host_without_port("[fhir.example.org:]:443"),
            "[fhir.example.org:]:443"
        );
        assert_eq!(host_without_port("[a:]"), "[a:]");
    }

    #[test]
    fn listener_restriction() {
        let t = table();
        assert_eq!(hit(&t, "other.example.org", "/x"), None);
        assert_eq!(
            t.lookup("other.example.org", "/x/y", "internal")
                .map(|m| m.index),
            Some(3)
        );
        // A restricted route beats an open one with the same prefix on its own listener only.
        let t = RouteTable::new(&[route("h", "/a", None), route("h", "/a", Some("internal"))]);
        assert_eq!(t.lookup("h", "/a", "internal").map(|m| m.index), Some(1));
        assert_eq!(t.lookup("h", "/a", "public").map(|m| m.index), Some(0));
    }

    #[test]
    fn rewrite_examples_of_the_contract() {
        let cases = [
            ("/dest-a", "/fhir", "/dest-a", "/fhir"),
            ("/dest-a", "/fhir", "/dest-a/", "/fhir/"),
            ("/dest-a", "/fhir", "/dest-a/Patient/1", "/fhir/Patient/1"),
            ("/", "/other", "/Patient/1", "/other/Patient/1"),
            ("/", "/other", "/", "/other/"),
            ("/dest-a", "/", "/dest-a/Patient", "/Patient"),
            ("/dest-a", "/", "/dest-a", "/"),
            ("/dest-a", "/", "/dest-a/", "/"),
            ("/", "/", "/", "/"),
            ("/", "/", "/metadata", "/metadata"),
        ];
        for (public, upstream, path, expected) in cases {
            assert_eq!(
                forwarded(public, upstream, path, None).as_deref(),
                Some(expected),
                "{public} → {upstream}: {path}"
            );
        }
    }

    #[test]
    fn query_is_forwarded_byte_for_byte() {
        assert_eq!(
            upstream_path_and_query("/fhir", "/Patient", Some("name=%C3%A9&_count=2+x")),
            "/fhir/Patient?name=%C3%A9&_count=2+x"
        );
        assert_eq!(upstream_path_and_query("/fhir", "", Some("")), "/fhir?");
        assert_eq!(upstream_path_and_query("/", "", Some("a=1")), "/?a=1");
        assert_eq!(
            upstream_path_and_query("/fhir", "/Patient/%2F1", None),
            "/fhir/Patient/%2F1"
        );
    }

    #[test]
    fn dot_segments_are_found() {
        for p in [
            "/a/./b",
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/.%2E/b",
            "/a/%2E%2e/b",
            "/..",
            "/.",
            "/a/.",
            "/a/..",
            "/a/%2E",
            "/a/%2e./",
            "/a/..;/b",
            "/a/.;x=1/b",
            "/a/..\\b",
            "/a\\..\\b",
            "/a/..%2fb",
            "/a%2F..%2Fb",
            "/a/..%5cb",
            "..",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn dot_like_segments_are_not_dot_segments() {
        for p in [
            "/a/.well-known/x",
            "/a/..b",
            "/a/b.",
            "/a/b..",
            "/a/...",
            "/a/%2e%2e%2e",
            "/a/%2",
            "/a/%2e%2",
            "/a/%",
            "/",
            "",
            "/a//b",
            "/a/%2f",
            "/Patient/example.json",
            "/Patient/a.b-c",
            "/a/;/b",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn ports_and_brackets() {
        assert_eq!(host_without_port("Example.org:443"), "Example.org");
        assert_eq!(host_without_port("example.org"), "example.org");
        assert_eq!(host_without_port("example.org:"), "example.org");
        assert_eq!(host_without_port("example.org:44x"), "example.org:44x");
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
        assert_eq!(host_without_port("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("[::1"), "[::1");
        assert_eq!(host_without_port("[::1]x"), "[::1]x");
        for a in ["Example.org:443", "[::1]:8443", "2001:db8::1", "h"] {
            let once = host_without_port(a);
            assert_eq!(host_without_port(once), once, "{a}");
        }
    }
}
