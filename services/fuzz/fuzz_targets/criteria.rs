//! Criteria strings: parse, then match the parsed criteria against a resource that has
//! every kind of value, and against the input itself read as JSON: as a `Value`, as a
//! whole `Node` and as the `Node` the criteria's projection keeps, which must all agree.
#![no_main]

use hub_fhir::Criteria;
use hub_fhir::json::Node;
use hub_fhir::projection::Projection;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn sample() -> Value {
    json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}], "text": "Glucose"},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-05-01T10:00:00Z",
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "identifier": [{"system": "urn:x", "value": "a|b"}], "meta": {"lastUpdated": "2024-05-01T10:00:00Z"}})
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let resource = sample();
    for text in [s.to_owned(), format!("Observation?{s}")] {
        if let Ok(c) = Criteria::parse(&text) {
            let _ = c.matches(&resource);
        }
    }
    if let Some((criteria, json)) = s.split_once('\n')
        && let Ok(c) = Criteria::parse(criteria)
    {
        let mut p = Projection::default();
        p.add(&c);
        let value = serde_json::from_str::<Value>(json);
        let node = Node::parse(json.as_bytes());
        assert_eq!(value.is_ok(), node.is_ok(), "the two parsers agree on {json}");
        if let (Ok(v), Ok(n)) = (value, node) {
            let now = 1_700_000_000_000_000;
            let expected = c.matches_at(&v, now);
            assert_eq!(c.matches_at(&n, now), expected);
            if let Ok(projected) = p.parse(json.as_bytes()) {
                assert_eq!(c.matches_at(&projected, now), expected);
            }
        }
    }
});
