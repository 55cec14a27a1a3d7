//! What producers send: an NDJSON line (envelope or bare resource) and a FHIR Bundle.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let _ = hub_fhir::ChangeEvent::from_ndjson_line_named(line, None, "t");
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = hub_fhir::bundle::events_from_bundle(&v, "t");
        let _ = hub_fhir::subscription::validate(&v);
        let _ = hub_fhir::topic::parse(&v);
    }
});
