//! Route lookup against the brute-force model, and the path rewrite.
//!
//! Input: fields separated by 0xff: the request host, path, query and listener, then
//! (host, path, listener) per route; a listener field starting with `-` means none.
#![no_main]

use fhirgate::route::{RouteTable, host_without_port, upstream_path_and_query};
use fhirgate_fuzz::{ModelRoute, fields, model_lookup, route_configs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fields(data);
    if f.len() < 4 {
        return;
    }
    let (host, path, query, listener) = (&f[0], &f[1], &f[2], &f[3]);
    let routes: Vec<ModelRoute> = f[4..]
        .chunks(3)
        .take(16)
        .map(|r| ModelRoute {
            host: r[0].clone(),
            path: r.get(1).cloned().unwrap_or_default(),
            listener: r.get(2).filter(|l| !l.starts_with('-')).cloned(),
        })
        .collect();
    let table = RouteTable::new(&route_configs(&routes));

    let bare = host_without_port(host);
    assert_eq!(host_without_port(bare), bare, "idempotent: {host:?}");
    assert!(host.contains(bare));

    let got = table.lookup(host, path, listener);
    // DNS names are at most 253 octets; the table documents that longer hosts match nothing.
    if bare.len() <= 253 {
        let expected = model_lookup(&routes, bare, path, listener);
        assert_eq!(
            got.map(|m| (m.index, m.remainder)),
            expected,
            "{host:?} {path:?}"
        );
        // Case and port never matter.
        let upper = table.lookup(&host.to_ascii_uppercase(), path, listener);
        assert_eq!(upper.map(|m| m.index), got.map(|m| m.index));
    }
    if let Some(m) = got {
        let prefix = routes[m.index].path.trim_end_matches('/');
        assert!(m.remainder.is_empty() || m.remainder.starts_with('/'));
        assert_eq!(format!("{prefix}{}", m.remainder), *path);
        let query = (!query.is_empty()).then_some(query.as_str());
        for base in ["/", "/fhir", "/fhir/", ""] {
            // Base without trailing slash + remainder (never empty), then `?query` verbatim.
            let mut expected = format!("{}{}", base.trim_end_matches('/'), m.remainder);
            if expected.is_empty() {
                expected.push('/');
            }
            if let Some(q) = query {
                expected = format!("{expected}?{q}");
            }
            assert_eq!(upstream_path_and_query(base, m.remainder, query), expected);
        }
    }
});
