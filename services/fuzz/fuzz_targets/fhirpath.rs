//! FHIRPath: parse any expression, then evaluate it (with its budget) against a resource,
//! with `%current`/`%previous` bound as the topic engine binds them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = hub_fhirpath::Expression::parse(s) else {
        return;
    };
    let r = json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-05-01T10:00:00Z",
        "valueQuantity": {"value": 5.4, "unit": "mg"}, "note": [{"text": "abc"}],
        "component": [{"valueString": "x"}, {"valueInteger": 3}]});
    let env = hub_fhirpath::Env::new()
        .with_resource("current", Some(&r))
        .with_resource("previous", None);
    let _ = expr.evaluate(Some(&r), &env);
});
