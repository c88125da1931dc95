//! Micro-benchmarks of the per-request work fhirgate owns (not the network):
//! route lookup in a 1,000-route table, the request header rewrite (with the
//! request-id check), and passing a response back. Run with
//! `cargo bench --bench hot_path`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate::body::ResponseBody;
use fhirgate::config::Config;
use fhirgate::exchange::ExchangeRecord;
use fhirgate::headers;
use fhirgate::metrics::{Metrics, Name, RouteSeries};
use fhirgate::route::{self, RouteTable};
use http::{HeaderMap, HeaderValue, Version};
use http_body::Body;

/// A configuration with `n` routes spread over `hosts` hosts, parsed the way the gateway does.
fn config_with_routes(n: usize, hosts: usize) -> Config {
    let mut toml = String::from(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    );
    for i in 0..n {
        toml.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npublic_base = \"https://host{}.example.org/tenant-{i}/fhir\"\n\
             upstream = \"https://dest{i}.internal:9443/fhir\"\n",
            i % hosts
        ));
    }
    Config::parse(&toml, Path::new("/bench/fhirgate.toml")).expect("bench config is valid")
}

fn route_lookup(c: &mut Criterion) {
    let config = config_with_routes(1000, 10);
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
    // A multi-tenant host: every route under one name.
    let config = config_with_routes(1000, 1);
    let one_host = RouteTable::new(&config.routes);
    c.bench_function("route lookup, 1000 routes on one host", |b| {
        b.iter(|| {
            let m = one_host.lookup(
                std::hint::black_box("host0.example.org"),
                std::hint::black_box("/tenant-512/fhir/Observation/1"),
                "public",
            );
            assert_eq!(m.map(|m| m.index), Some(512));
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

/// What the gateway does with a destination's response: the response head's rules, the body
/// passed frame by frame through [`ResponseBody`] (counted, its end noticed), and the
/// exchange record reported when the body is done (log line filtered out, metrics counted).
/// The body here is a single 2 KB frame held in memory; from a destination, the frame comes
/// from hyper or h2, whose work is not fhirgate's and is not measured.
fn response_passing(c: &mut Criterion) {
    // The head nginx sends with a 2 KB static resource over HTTP/1.1.
    let mut template = HeaderMap::new();
    for (name, value) in [
        ("server", "nginx/1.22.1"),
        ("date", "Wed, 02 Dec 2026 18:00:00 GMT"),
        ("content-type", "application/fhir+json"),
        ("content-length", "2048"),
        ("last-modified", "Wed, 02 Dec 2026 17:34:00 GMT"),
        ("connection", "keep-alive"),
        ("etag", "\"6925d4a8-800\""),
        ("accept-ranges", "bytes"),
    ] {
        template.insert(name, HeaderValue::from_static(value));
    }
    let payload = Bytes::from(vec![b'x'; 2048]);
    let metrics = Arc::new(Metrics::new());
    let route = Arc::<str>::from("bench");
    let series = Arc::new(RouteSeries::new(&metrics, &Name(route.clone())));
    let listener = Arc::<str>::from("public");
    let (request, ()) = http::Request::get("/fhir/Patient/example")
        .body(())
        .expect("a valid request")
        .into_parts();
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 40000));
    let request_id = HeaderValue::from_static("3f1c2a9e-5b7d-4c1e-9a2f-0d6b8e4c7a13");
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function("response passing (head, 2 KB body, exchange record)", |b| {
        b.iter(|| {
            let mut head = template.clone();
            headers::rewrite_response(&mut head, request_id.clone());
            let mut record = ExchangeRecord::new(
                request_id.clone(),
                listener.clone(),
                peer,
                &request,
                metrics.clone(),
                None,
            );
            record.route = Some(route.clone());
            record.series = Some(series.clone());
            record.status = 200;
            let mut body = ResponseBody::full(payload.clone(), record);
            let mut sent = 0;
            while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
                sent += frame
                    .expect("in-memory body")
                    .into_data()
                    .map_or(0, |d| d.len());
            }
            assert_eq!(sent, 2048);
            drop(body);
            head
        })
    });
}

criterion_group!(benches, route_lookup, header_rewrite, response_passing);
criterion_main!(benches);
