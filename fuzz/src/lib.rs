//! Reference models and input decoding shared by the fuzz targets. The models are the same
//! as in `tests/properties.rs`: written from the documented contract, not from the code.

use std::path::Path;

use fhirgate::config::{Config, RouteConfig};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Splits fuzzer bytes into fields at `0xff` (never part of UTF-8), lossily decoded.
pub fn fields(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xff)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// A route as the model sees it.
#[derive(Debug, Clone)]
pub struct ModelRoute {
    pub host: String,
    pub path: String,
    pub listener: Option<String>,
}

/// `RouteConfig`s made by the configuration parser from a template (so new fields need no
/// change here), given the model's host, path and listener.
pub fn route_configs(routes: &[ModelRoute]) -> Vec<RouteConfig> {
    let template = Config::parse(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
         [[routes]]\nname = \"t\"\npublic_base = \"https://h/\"\nupstream = \"https://d/\"\n",
        Path::new("template.toml"),
    )
    .expect("the template configuration is valid")
    .routes
    .remove(0);
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut c = template.clone();
            c.name = format!("r{i}");
            c.public_host = r.host.clone();
            c.public_path = r.path.clone();
            c.listener = r.listener.clone();
            c
        })
        .collect()
}

/// The routing contract by brute force: host equal ignoring ASCII case, listener allowed,
/// public path (trailing `/` ignored) a prefix of the path on a segment boundary; longest
/// prefix wins, then a listener-restricted route, then the first in configuration order.
/// `host` is already without port.
pub fn model_lookup<'p>(
    routes: &[ModelRoute],
    host: &str,
    path: &'p str,
    listener: &str,
) -> Option<(usize, &'p str)> {
    if !path.starts_with('/') {
        return None;
    }
    let mut best: Option<(usize, (usize, bool))> = None;
    for (i, r) in routes.iter().enumerate() {
        if !r.host.eq_ignore_ascii_case(host)
            || r.listener.as_deref().is_some_and(|l| l != listener)
        {
            continue;
        }
        let prefix = r.path.trim_end_matches('/');
        if !(path == prefix || path.starts_with(&format!("{prefix}/"))) {
            continue;
        }
        let rank = (prefix.len(), r.listener.is_some());
        if best.is_none_or(|(_, b)| rank > b) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, (len, _))| (i, &path[len..]))
}

/// What a lenient destination sees: `/`, `\`, `%2f`, `%5c` separate, `%2e` is `.`, and `;`
/// parameters are dropped. Decode, then split.
pub fn lenient_segments(path: &str) -> Vec<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i..i + 3)
            .filter(|e| e[0] == b'%')
            .map(|e| e[1..].to_ascii_lowercase());
        match escape.as_deref() {
            Some(b"2f") | Some(b"5c") => {
                decoded.push(b'/');
                i += 3;
            }
            Some(b"2e") => {
                decoded.push(b'.');
                i += 3;
            }
            _ => {
                decoded.push(if bytes[i] == b'\\' { b'/' } else { bytes[i] });
                i += 1;
            }
        }
    }
    decoded
        .split(|b| *b == b'/')
        .map(|s| s[..s.iter().position(|b| *b == b';').unwrap_or(s.len())].to_vec())
        .collect()
}

pub fn model_has_dot_segment(path: &str) -> bool {
    lenient_segments(path)
        .iter()
        .any(|s| s == b"." || s == b"..")
}

/// RFC 3986 §5.2.4 over segments.
pub fn resolve(segments: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for s in segments {
        match s.as_slice() {
            b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(s.clone()),
        }
    }
    out
}

/// Fixed hop-by-hop fields, `Connection` included.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// RFC 9110 §7.6.1: fixed hop-by-hop fields and every field a `Connection` line names.
pub fn model_is_hop_by_hop(lines: &[(HeaderName, HeaderValue)], name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
        || lines
            .iter()
            .filter(|(n, _)| *n == http::header::CONNECTION)
            .flat_map(|(_, v)| v.as_bytes().split(|b| *b == b','))
            .any(|e| {
                e.trim_ascii()
                    .eq_ignore_ascii_case(name.as_str().as_bytes())
            })
}

/// Header lines from `name:value` lines; lines that are not a valid field are skipped.
pub fn header_lines(text: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = HeaderValue::from_bytes(&line[colon + 1..]).ok()?;
            Some((name, value))
        })
        .collect()
}

pub fn header_map(lines: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in lines {
        h.append(n.clone(), v.clone());
    }
    h
}

/// One RFC 7239 forwarded-element as `(name, value)` pairs, or `None` if it is not one.
pub fn parse_forwarded_element(line: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        while line.get(i).is_some_and(|b| tchar(*b)) {
            i += 1;
        }
        if i == start || line.get(i) != Some(&b'=') {
            return None;
        }
        let name = String::from_utf8(line[start..i].to_ascii_lowercase()).ok()?;
        i += 1;
        let mut value = Vec::new();
        if line.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match *line.get(i)? {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        value.push(*line.get(i + 1)?);
                        i += 2;
                    }
                    b => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
        } else {
            let start = i;
            while line.get(i).is_some_and(|b| tchar(*b)) {
                i += 1;
            }
            if i == start {
                return None;
            }
            value.extend_from_slice(&line[start..i]);
        }
        pairs.push((name, value));
        match line.get(i) {
            None => return Some(pairs),
            Some(b';') => i += 1,
            Some(_) => return None,
        }
    }
}
