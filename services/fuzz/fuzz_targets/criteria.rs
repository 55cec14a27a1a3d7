//! Criteria strings: parse, then match the parsed criteria against a resource that has
//! every kind of value, and against the input itself read as JSON.
#![no_main]

use hub_fhir::Criteria;
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
        && let Ok(v) = serde_json::from_str::<Value>(json)
    {
        let _ = c.matches(&v);
    }
});
