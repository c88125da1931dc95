//! Micro-benchmarks of the per-request work fhirgate owns (not the network):
//! route lookup in a 1,000-route table, the request header rewrite, and the
//! request-id check. Run with `cargo bench --bench hot_path`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate::config::Config;
use fhirgate::headers;
use fhirgate::route::{self, RouteTable};
use http::{HeaderMap, HeaderValue, Version};

/// A configuration with `n` routes spread over ten hosts, parsed the way the gateway does.
fn config_with_routes(n: usize) -> Config {
    let mut toml = String::from(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    );
    for i in 0..n {
        toml.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npublic_base = \"https://host{}.example.org/tenant-{i}/fhir\"\n\
             upstream = \"https://dest{i}.internal:9443/fhir\"\n",
            i % 10
        ));
    }
    Config::parse(&toml, Path::new("/bench/fhirgate.toml")).expect("bench config is valid")
}

fn route_lookup(c: &mut Criterion) {
    let config = config_with_routes(1000);
    let table = RouteTable::new(&config.routes);
    c.bench_function("route lookup, 1000 routes", |b| {
        b.iter(|| {
            let m = table.lookup(
                std::hint::black_box("host7.example.org:8443"),
                std::hint::black_box("/tenant-997/fhir/Patient/123"),
                "public",
            );
            assert!(m.is_some());
            m.map(|m| m.index)
        })
    });
    c.bench_function("upstream path rewrite", |b| {
        b.iter(|| {
            route::upstream_path_and_query(
                std::hint::black_box("/fhir"),
                std::hint::black_box("/Patient/123"),
                Some("_elements=name,birthDate"),
            )
        })
    });
}

fn header_rewrite(c: &mut Criterion) {
    let mut template = HeaderMap::new();
    template.insert("accept", HeaderValue::from_static("application/fhir+json"));
    template.insert(
        "authorization",
        HeaderValue::from_static("Bearer abcdefghijklmnop"),
    );
    template.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    template.insert("connection", HeaderValue::from_static("keep-alive"));
    template.insert("x-request-id", HeaderValue::from_static("3f1c2a9e-bench"));
    // One connection's memo, as the gateway keeps it: its exchanges reuse the element.
    let forwarded = headers::ForwardedMemo::default();
    c.bench_function("request header rewrite", |b| {
        b.iter(|| {
            let mut h = template.clone();
            let id = headers::request_id(&h);
            headers::remove_hop_by_hop(&mut h);
            forwarded.append(&mut h, IpAddr::V4(Ipv4Addr::LOCALHOST), "fhir.example.org");
            headers::append_via(&mut h, Version::HTTP_11);
            h.insert(headers::X_REQUEST_ID, id);
            h
        })
    });
}

criterion_group!(benches, route_lookup, header_rewrite);
criterion_main!(benches);
