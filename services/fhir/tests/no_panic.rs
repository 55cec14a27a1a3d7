//! Generated input against everything that reads data from producers and clients: date and
//! number parsers, criteria parsing, criteria matching (directly and through the index),
//! change-event parsing and FHIRPath over mutated resources. Nothing here may panic — a
//! panic reachable from data is an outage. Deterministic (a fixed-seed generator), so a
//! failure names its input and reproduces.

use hub_fhir::index::CriteriaIndex;
use hub_fhir::{ChangeEvent, Criteria};
use serde_json::{Value, json};

mod common;
use common::Gen;

impl Gen {
    /// A string built from pieces that parsers split on, digits, and multi-byte characters
    /// placed where byte offsets are computed.
    fn string(&mut self) -> String {
        const PIECES: &[&str] = &[
            "0",
            "1",
            "2",
            "9",
            "12",
            "2024",
            "-",
            ":",
            "T",
            "Z",
            "+",
            ".",
            "e",
            "E",
            "é",
            "€",
            "𝄞",
            " ",
            "|",
            "$",
            ",",
            "\\",
            "=",
            "?",
            "&",
            "/",
            "gt",
            "ap",
            "eb",
            "http://",
            "%",
            "00",
            "99999999999999999999",
            "-2147483648",
            "1e400",
            "NaN",
            "\u{0}",
            "'",
            "\"",
        ];
        let n = self.below(12);
        (0..n).map(|_| *self.pick(PIECES)).collect()
    }

    /// A date-like string: a valid prefix, then damage.
    fn date_like(&mut self) -> String {
        const BASES: &[&str] = &[
            "2024",
            "2024-01",
            "2024-01-01",
            "2024-01-01T10:00",
            "2024-01-01T10:00:00",
            "2024-01-01T10:00:00.12345",
            "2024-01-01T10:00:00+02:00",
            "2024-01-01T10:00:00Z",
        ];
        let mut s = (*self.pick(BASES)).to_owned();
        let cut = self.below(s.len() + 1);
        s.truncate(cut);
        s + &self.string()
    }

    fn number(&mut self) -> Value {
        let text = match self.below(6) {
            0 => "0".to_owned(),
            1 => "1.50".to_owned(),
            2 => "123456789012345678901234567890".to_owned(),
            3 => "-1e308".to_owned(),
            4 => "0.000000000000000000000000000001".to_owned(),
            _ => format!("{}", self.next() as i64),
        };
        serde_json::from_str(&text).unwrap_or(json!(0))
    }

    /// Replace leaves of `v` at random with strings, numbers, or other shapes.
    fn mutate(&mut self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (_, x) in m.iter_mut() {
                    self.mutate(x);
                }
            }
            Value::Array(a) => {
                for x in a.iter_mut() {
                    self.mutate(x);
                }
            }
            leaf => {
                *leaf = match self.below(8) {
                    0 => Value::String(self.string()),
                    1 => Value::String(self.date_like()),
                    2 => self.number(),
                    3 => json!([]),
                    4 => json!({}),
                    5 => Value::Null,
                    _ => leaf.clone(),
                }
            }
        }
    }
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation", "id": "o1", "meta": {"versionId": "3"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}], "text": "glucose"},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2024-01-01T10:00:00.12345Z",
        "issued": "2024-01-01T10:00:00Z",
        "valueQuantity": {"value": 7.2, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "identifier": [{"system": "urn:ids", "value": "a-1"}],
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                        "valueQuantity": {"value": 120, "unit": "mm[Hg]"}}],
        "note": [{"text": "fasting"}]
    })
}

const CRITERIA: &[&str] = &[
    "Observation?date=ge2020-01-01",
    "Observation?date=lt2024-01-01T10:00:00.5Z",
    "Observation?date=ap2024-01",
    "Observation?value-quantity=gt5.4|http://unitsofmeasure.org|mmol/L",
    "Observation?value-quantity=ap100",
    "Observation?code=http://loinc.org|2345-7",
    "Observation?code:text=glucose",
    "Observation?subject=Patient/p1",
    "Observation?patient=p1",
    "Observation?status:not=final",
    "Observation?identifier=urn:ids|a-1",
    "Observation?combo-code-value-quantity=http://loinc.org|8480-6$gt100",
    "Observation?component-value-quantity=lt200",
    "Observation?date:missing=true",
    "Observation?value-string:contains=abc",
    "Observation?category=laboratory&date=ge2023",
];

const FHIRPATH: &[&str] = &[
    "%current.status = 'final' and (%previous.empty() or %previous.status != 'final')",
    "Observation.value.ofType(Quantity).value > 5",
    "Observation.effective.ofType(dateTime) > @2023-01-01",
    "Observation.code.coding.where(system = 'http://loinc.org').code.first()",
    "descendants().count() > 3",
    "Observation.effective.ofType(dateTime).toString().substring(0, 4) = '2024'",
    "Observation.value.ofType(Quantity).value.round(2) < 100",
    "Observation.note.text.replace('a', 'bb').length() > 2",
];

#[test]
fn parsers_never_panic_on_generated_strings() {
    let mut g = Gen(0x5eed_1234_abcd_0001);
    for _ in 0..50_000 {
        let s = if g.below(2) == 0 {
            g.string()
        } else {
            g.date_like()
        };
        let _ = hub_fhir::datetime::parse(&s);
        let _ = hub_fhir::decimal::SearchNumber::parse(&s);
        let _ = hub_fhir::time_fmt::parse_instant(&s);
        let _ = hub_fhirpath::temporal::Temporal::parse_any(&s);
        let param = g.pick(&[
            "date",
            "value-quantity",
            "code",
            "subject",
            "status:not",
            "combo-code-value-quantity",
            "value-string:exact",
            "date:missing",
            "_lastUpdated",
            "identifier:of-type",
        ]);
        let _ = Criteria::parse(&format!("Observation?{param}={s}"));
        let _ = Criteria::parse(&s);
        let _ = hub_fhirpath::Expression::parse(&s);
    }
}

#[test]
fn matching_never_panics_on_generated_resources() {
    let criteria: Vec<Criteria> = CRITERIA
        .iter()
        .map(|c| Criteria::parse(c).unwrap_or_else(|e| panic!("{c}: {e}")))
        .collect();
    let mut index = CriteriaIndex::new();
    for (i, c) in criteria.iter().enumerate() {
        index.insert("t", c.clone(), i);
    }
    let exprs: Vec<hub_fhirpath::Expression> = FHIRPATH
        .iter()
        .map(|e| hub_fhirpath::Expression::parse(e).unwrap_or_else(|err| panic!("{e}: {err}")))
        .collect();
    let mut g = Gen(0x5eed_1234_abcd_0002);
    let now = hub_fhir::datetime::now_micros();
    for _ in 0..10_000 {
        let mut r = observation();
        g.mutate(&mut r);
        // keep it a resource often enough that matching goes deep
        if g.below(4) != 0 {
            r["resourceType"] = json!("Observation");
        }
        let linear: Vec<usize> = criteria
            .iter()
            .enumerate()
            .filter(|(_, c)| c.matches_at(&r, now))
            .map(|(i, _)| i)
            .collect();
        let mut indexed: Vec<usize> = index.matches("t", &r, now).into_iter().copied().collect();
        indexed.sort_unstable();
        assert_eq!(
            indexed,
            linear,
            "index and linear scan disagree on {r}: {:?}",
            linear
                .iter()
                .chain(&indexed)
                .map(|i| CRITERIA[*i])
                .collect::<Vec<_>>()
        );
        let env = hub_fhirpath::Env::new()
            .with_resource("current", Some(&r))
            .with_resource("previous", None);
        for e in &exprs {
            let _ = e.evaluate(Some(&r), &env);
        }
        let _ = ChangeEvent::from_resource(r.clone(), None, "t");
        let _ = ChangeEvent::from_envelope_value(json!({
            "id": g.string(), "tenant": g.string(), "action": g.pick(&["create", "update", "delete", "é"]),
            "resourceType": "Observation", "resourceId": g.string(),
            "occurredAt": g.date_like(), "resource": r,
        }));
    }
}

#[test]
fn ingest_and_resource_parsers_never_panic_on_mutated_documents() {
    // the shapes producers and clients send: Bundles, Subscriptions, topics, NDJSON lines
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": observation(),
         "request": {"method": "PUT", "url": "Observation/o1"}},
        {"request": {"method": "DELETE", "url": "Patient/p1"}},
        {"resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "POST", "url": "Patient"}}]});
    let subscription = json!({"resourceType": "Subscription", "status": "requested",
        "reason": "r", "criteria": "Observation?code=x",
        "channel": {"type": "rest-hook", "endpoint": "https://e.example/h",
                    "payload": "application/fhir+json", "header": ["A: b"],
                    "extension": [{"url": "x", "valueString": "y"}]}});
    let topic = json!({"resourceType": "SubscriptionTopic", "url": "http://t", "status": "active",
        "resourceTrigger": [{"resource": "Observation", "supportedInteraction": ["create"],
            "queryCriteria": {"current": "status=final", "resultForCreate": "test-passes"},
            "fhirPathCriteria": "%current.status = 'final'"}],
        "canFilterBy": [{"resource": "Observation", "filterParameter": "patient"}]});
    let mut g = Gen(0x5eed_1234_abcd_0003);
    for _ in 0..5_000 {
        for (doc, which) in [(&bundle, 0), (&subscription, 1), (&topic, 2)] {
            let mut d = doc.clone();
            g.mutate(&mut d);
            if g.below(3) != 0 {
                d["resourceType"] = doc["resourceType"].clone();
            }
            match which {
                0 => {
                    let _ = hub_fhir::bundle::events_from_bundle(&d, "t");
                }
                1 => {
                    let _ = hub_fhir::subscription::validate(&d);
                }
                _ => {
                    let _ = hub_fhir::topic::parse(&d);
                }
            }
            let line = d.to_string();
            let _ = ChangeEvent::from_ndjson_line_named(line.as_bytes(), None, "t");
            let cut = (g.next() as usize) % (line.len() + 1);
            let _ = ChangeEvent::from_ndjson_line_named(&line.as_bytes()[..cut], None, "t");
        }
    }
}

#[test]
fn decimals_keep_their_written_form() {
    // Subscribers receive the producer's resource exactly: significant figures are data.
    let text = r#"{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50},"x":123456789012345678901234567890,"y":0.1000}"#;
    let v: Value = serde_json::from_str(text).expect("valid JSON");
    assert_eq!(v.to_string(), text);
    let e = ChangeEvent::from_resource(v, None, "t").expect("a resource");
    let back = e.resource.expect("carries the resource").to_string();
    assert!(back.contains(r#""value":1.50"#), "{back}");
    assert!(back.contains("123456789012345678901234567890"), "{back}");
}
