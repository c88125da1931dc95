//! Configuration parsing never panics; errors are displayed file first, with a line inside
//! the text; a configuration that parses builds a route table that routes its own bases.
#![no_main]

use std::path::Path;

use fhirgate::config::{Config, parse_duration};
use fhirgate::route::RouteTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(text);
    let file = Path::new("/etc/fhirgate/fhirgate.toml");
    match Config::parse(text, file) {
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("/etc/fhirgate/fhirgate.toml"), "{shown}");
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.lines().count() + 1, "{shown}");
            }
        }
        Ok(config) => {
            let table = RouteTable::new(&config.routes);
            for route in &config.routes {
                let listener = route.listener.as_deref().unwrap_or("any");
                let m = table.lookup(&route.public_host, &route.public_path, listener);
                // Its own public base reaches a route with exactly that prefix.
                let m = m.expect("a route's own base is routed");
                let chosen = &config.routes[m.index];
                assert_eq!(
                    chosen.public_path.trim_end_matches('/'),
                    route.public_path.trim_end_matches('/')
                );
            }
        }
    }
});
