//! The route table: which destination a request is for, from its host and path.
//!
//! Pure and allocation-free per lookup in the common case: routes are indexed by host, and
//! each host's prefixes are kept longest first, so the first segment-boundary match wins.
//! Matching is on raw bytes: percent-encoding is never decoded (`/dest%2Da` is not
//! `/dest-a`), so what is matched is exactly what is forwarded.

use std::collections::HashMap;

use crate::config::RouteConfig;

/// Routes indexed by public host.
#[derive(Debug)]
pub struct RouteTable {
    by_host: HashMap<String, Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// Public path without trailing slash; empty for a public path of `/`.
    prefix: String,
    listener: Option<String>,
    index: usize,
}

/// A matched route and the part of the request path after its public prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch<'p> {
    /// Position of the route in the configuration's `routes`.
    pub index: usize,
    /// The rest of the path: empty, or starting with `/`.
    pub remainder: &'p str,
}

impl RouteTable {
    /// Builds the table; `routes[i]` is reported back as `RouteMatch::index == i`.
    pub fn new(routes: &[RouteConfig]) -> RouteTable {
        let mut by_host: HashMap<String, Vec<Entry>> = HashMap::new();
        for (index, route) in routes.iter().enumerate() {
            let prefix = route.public_path.trim_end_matches('/').to_owned();
            by_host
                .entry(route.public_host.to_ascii_lowercase())
                .or_default()
                .push(Entry {
                    prefix,
                    listener: route.listener.clone(),
                    index,
                });
        }
        for entries in by_host.values_mut() {
            // Longest prefix first; among equals, listener-restricted routes before open ones.
            entries.sort_by(|a, b| {
                b.prefix
                    .len()
                    .cmp(&a.prefix.len())
                    .then(b.listener.is_some().cmp(&a.listener.is_some()))
            });
        }
        RouteTable { by_host }
    }

    /// The route for a request. `host` is the `Host` / `:authority` value as received (any
    /// case, port allowed); `path` is the raw path without the query.
    pub fn lookup<'p>(&self, host: &str, path: &'p str, listener: &str) -> Option<RouteMatch<'p>> {
        let host = host_without_port(host);
        let entries = match self.by_host.get(host) {
            Some(entries) => entries,
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.by_host.get(&host.to_ascii_lowercase())?
            }
            None => return None,
        };
        entries.iter().find_map(|entry| {
            if entry.listener.as_deref().is_some_and(|l| l != listener) {
                return None;
            }
            let remainder = path.strip_prefix(entry.prefix.as_str())?;
            // Segment boundary: `/dest-a` matches `/dest-a` and `/dest-a/…`, never `/dest-ab`.
            (remainder.is_empty() || remainder.starts_with('/')).then_some(RouteMatch {
                index: entry.index,
                remainder,
            })
        })
    }
}

/// The host of a `Host` / `:authority` value without its port. IPv6 literals lose their
/// brackets (`[::1]:8443` → `::1`), as the configuration stores them.
pub fn host_without_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(authority, |(host, _)| host);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// True when a segment of the raw path is `.` or `..`, plain or percent-encoded (`%2e`):
/// such a path could climb out of a route's prefix at the destination.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(is_dot_segment)
}

fn is_dot_segment(segment: &str) -> bool {
    let mut dots = 0;
    let mut rest = segment.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// The upstream path and query: upstream base path + the rest of the request path, with no
/// doubled or lost slash, then `?query` byte-for-byte.
pub fn upstream_path_and_query(
    upstream_base: &str,
    remainder: &str,
    query: Option<&str>,
) -> String {
    let base = upstream_base.trim_end_matches('/');
    let mut out =
        String::with_capacity(base.len() + remainder.len() + query.map_or(0, |q| q.len() + 1) + 1);
    out.push_str(base);
    if remainder.is_empty() {
        // `/dest-a` → `/fhir`; with an upstream base of `/`, the path cannot be empty.
        if base.is_empty() {
            out.push('/');
        }
    } else {
        out.push_str(remainder);
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

    #[test]
    fn segment_boundary_and_longest_prefix() {
        let t = table();
        assert_eq!(hit(&t, "fhir.example.org", "/dest-a"), Some((0, "")));
        assert_eq!(hit(&t, "fhir.example.org", "/dest-a/"), Some((0, "/")));
        assert_eq!(
            hit(&t, "fhir.example.org", "/dest-a/Patient/1"),
            Some((0, "/Patient/1"))
        );
        assert_eq!(
            hit(&t, "fhir.example.org", "/dest-a/r4/Patient"),
            Some((1, "/Patient"))
        );
        // `/dest-ab` is not under `/dest-a`: it falls to the host-wide route.
        assert_eq!(
            hit(&t, "fhir.example.org", "/dest-ab"),
            Some((2, "/dest-ab"))
        );
        assert_eq!(
            hit(&t, "fhir.example.org", "/dest%2Da"),
            Some((2, "/dest%2Da"))
        );
    }

    #[test]
    fn host_is_case_insensitive_and_port_ignored() {
        let t = table();
        assert_eq!(hit(&t, "FHIR.Example.ORG:8443", "/dest-a"), Some((0, "")));
        assert_eq!(hit(&t, "[::1]:8443", "/v6/x"), Some((4, "/x")));
        assert_eq!(hit(&t, "unknown.example.org", "/dest-a"), None);
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
    }

    #[test]
    fn no_match_without_slash_boundary() {
        let t = RouteTable::new(&[route("h", "/dest-a", None)]);
        assert_eq!(hit(&t, "h", "/dest-ab"), None);
        assert_eq!(hit(&t, "h", "/"), None);
    }

    #[test]
    fn rewrite_examples() {
        assert_eq!(upstream_path_and_query("/fhir", "", None), "/fhir");
        assert_eq!(upstream_path_and_query("/fhir", "/", None), "/fhir/");
        assert_eq!(
            upstream_path_and_query("/fhir", "/Patient/1", None),
            "/fhir/Patient/1"
        );
        assert_eq!(
            upstream_path_and_query("/other", "/Patient/1", None),
            "/other/Patient/1"
        );
        assert_eq!(upstream_path_and_query("/other", "/", None), "/other/");
        assert_eq!(upstream_path_and_query("/", "/Patient", None), "/Patient");
        assert_eq!(upstream_path_and_query("/", "", None), "/");
        assert_eq!(
            upstream_path_and_query("/fhir", "/Patient", Some("name=%C3%A9&_count=2")),
            "/fhir/Patient?name=%C3%A9&_count=2"
        );
    }

    #[test]
    fn dot_segments() {
        for p in [
            "/a/./b",
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/.%2E/b",
            "/..",
            "/a/.",
            "/a/%2E",
            "/a/%2e./",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/a/.well-known/x",
            "/a/..b",
            "/a/b.",
            "/a/...",
            "/",
            "/a//b",
            "/a/%2f",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn ports_and_brackets() {
        assert_eq!(host_without_port("Example.org:443"), "Example.org");
        assert_eq!(host_without_port("example.org"), "example.org");
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
    }
}
