//! What producers send: an NDJSON line (envelope or bare resource) and a FHIR Bundle.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let tree = hub_fhir::ChangeEvent::from_ndjson_line_named(line, None, "t");
        let text = hub_fhir::raw_event::RawEvent::from_ndjson_line_named(line, None, "t");
        // the text reader accepts and refuses what the tree reader does
        match (tree, text) {
            (Ok(_), Ok((e, _))) => assert!(e.into_event().is_ok()),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("readers disagree: {:?} / {:?}", a.err(), b.err()),
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = hub_fhir::bundle::events_from_bundle(&v, "t");
        let _ = hub_fhir::subscription::validate(&v);
        let _ = hub_fhir::topic::parse(&v);
    }
});
