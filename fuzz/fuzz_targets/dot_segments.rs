//! Dot-segment detection against the decode-then-split model; anything it lets through
//! cannot climb above where it starts once a lenient destination resolves it.
#![no_main]

use fhirgate::route::has_dot_segment;
use fhirgate_fuzz::{lenient_segments, model_has_dot_segment, resolve};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let flagged = has_dot_segment(path);
    assert_eq!(flagged, model_has_dot_segment(path), "{path:?}");
    if !flagged {
        let segments = lenient_segments(path);
        assert_eq!(resolve(&segments), segments, "{path:?}");
        // Under a route prefix, it stays under the prefix.
        let under = format!("/fhir/r4/{path}");
        if !has_dot_segment(&under) {
            let resolved = resolve(&lenient_segments(&under));
            assert!(resolved.starts_with(&[b"".to_vec(), b"fhir".to_vec(), b"r4".to_vec()]));
        }
    }
});
