//! Hop-by-hop removal keeps every end-to-end line byte-exact and in order and removes the
//! rest; the appended `Forwarded` element carries the host exactly and nothing more.
//!
//! Input: `name:value` lines (invalid ones skipped); the first line's bytes after the first
//! 0xff, if any, are the `Host` for `Forwarded`.
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use fhirgate::headers::{
    ForwardedMemo, append_via, is_sane_request_id, remove_hop_by_hop, request_id,
};
use fhirgate_fuzz::{header_lines, header_map, model_is_hop_by_hop, parse_forwarded_element};
use http::Version;
use http::header::{FORWARDED, VIA};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (headers, host) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let lines = header_lines(headers);
    let mut h = header_map(&lines);
    let id = request_id(&h);
    assert!(is_sane_request_id(id.as_bytes()));

    remove_hop_by_hop(&mut h);
    let mut kept = 0;
    let names: HashSet<_> = lines.iter().map(|(n, _)| n.clone()).collect();
    for name in &names {
        if model_is_hop_by_hop(&lines, name) {
            assert!(!h.contains_key(name), "{name} kept");
        } else {
            let expected: Vec<&[u8]> = lines
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_bytes())
                .collect();
            let got: Vec<&[u8]> = h.get_all(name).iter().map(|v| v.as_bytes()).collect();
            assert_eq!(got, expected, "{name}");
            kept += expected.len();
        }
    }
    assert_eq!(h.len(), kept);

    let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) else {
        return;
    };
    let before = h.get_all(FORWARDED).iter().count();
    ForwardedMemo::default().append(&mut h, IpAddr::V4(Ipv4Addr::LOCALHOST), host);
    append_via(&mut h, Version::HTTP_11);
    let forwarded: Vec<_> = h.get_all(FORWARDED).iter().collect();
    assert_eq!(forwarded.len(), before + 1);
    let pairs = parse_forwarded_element(forwarded[before].as_bytes()).expect("one element");
    let mut expected = vec![
        ("for".to_owned(), b"127.0.0.1".to_vec()),
        ("proto".to_owned(), b"https".to_vec()),
    ];
    if !host.is_empty() && host.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)) {
        expected.push(("host".to_owned(), host.as_bytes().to_vec()));
    }
    assert_eq!(pairs, expected);
    assert_eq!(h.get_all(VIA).iter().next_back().unwrap(), "1.1 fhirgate");
});
