//! Table-driven criteria cases per parameter type, modifier and prefix.

use super::*;
use serde_json::Value;
use serde_json::json;

fn obs() -> Value {
    json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}], "text": "Glucose"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "subject": {"reference": "Patient/p1"},
            "identifier": [{"system": "urn:lab", "value": "A,1"}],
            "meta": {"tag": [{"system": "urn:t", "code": "x"}], "source": "urn:src"}})
}

fn m(c: &str) -> bool {
    Criteria::parse(c)
        .unwrap_or_else(|e| panic!("{c}: {e}"))
        .matches(&obs())
}

#[test]
fn tokens() {
    assert!(m("Observation?code=http://loinc.org|2345-7"));
    assert!(m("Observation?code=2345-7"));
    assert!(m("Observation?code=http://loinc.org|"));
    assert!(!m("Observation?code=|2345-7"), "|code means no system");
    assert!(!m("Observation?code=http://snomed.info/sct|2345-7"));
    assert!(m("Observation?code=1,2345-7"), "comma is OR");
    assert!(m("Observation?status=final"));
    assert!(
        !m("Observation?status=final&status=amended"),
        "repeat is AND"
    );
    assert!(m("Observation?status:not=amended"));
    assert!(!m("Observation?status:not=final"));
    assert!(m("Observation?identifier=urn:lab|A\\,1"), "escaped comma");
    assert!(m("Observation?_id=o1"));
    assert!(m("Observation?_tag=urn:t|x"));
    assert!(m("Observation?category=laboratory&patient=Patient/p1"));
}

#[test]
fn references() {
    assert!(m("Observation?patient=Patient/p1"));
    assert!(m("Observation?patient=p1"));
    assert!(m("Observation?subject=Patient/p1"));
    assert!(!m("Observation?subject=Group/p1"));
    assert!(!m("Observation?patient=p2"));
    let mut abs = obs();
    abs["subject"] = json!({"reference": "http://ehr.example/fhir/Patient/p1/_history/2"});
    assert!(
        Criteria::parse("Observation?patient=Patient/p1")
            .unwrap()
            .matches(&abs)
    );
}

#[test]
fn strings_uri_and_missing() {
    let p = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Müller", "given": ["Zoë"]}]});
    let c = |q: &str| Criteria::parse(q).unwrap().matches(&p);
    assert!(c("Patient?family=mul"));
    assert!(c("Patient?name=zoe"));
    assert!(!c("Patient?family:exact=mul"));
    assert!(c("Patient?family:exact=Müller"));
    assert!(c("Patient?family:contains=ll"));
    assert!(c("Patient?birthdate:missing=true"));
    assert!(!c("Patient?name:missing=true"));
    assert!(m("Observation?_source=urn:src"));
}

#[test]
fn refusals_name_the_parameter() {
    for (c, param) in [
        ("Observation?subject.name=x", "subject.name"),
        (
            "Observation?_has:Observation:patient:code=1",
            "_has:Observation:patient:code",
        ),
        ("Observation?code:in=http://vs", "code:in"),
        ("Observation?code:below=http://loinc.org|1", "code:below"),
        ("Observation?value-quantity=sa5", "value-quantity"),
        ("Observation?_text=x", "_text"),
        ("Patient?deceased=true", "deceased"),
    ] {
        match Criteria::parse(c) {
            Err(CriteriaError::NotSupported { param: p, .. }) => assert_eq!(p, param, "{c}"),
            other => panic!("{c}: {other:?}"),
        }
    }
    assert!(matches!(
        Criteria::parse("Observation?foo=1"),
        Err(CriteriaError::Invalid(_))
    ));
    assert!(matches!(
        Criteria::parse("Observaton?code=1"),
        Err(CriteriaError::Invalid(_))
    ));
    assert!(matches!(
        Criteria::parse("Observation?patient=Device/1"),
        Err(CriteriaError::Invalid(_))
    ));
}

#[test]
fn other_types_never_match() {
    let c = Criteria::parse("Observation?code=2345-7").unwrap();
    assert!(!c.matches(&json!({"resourceType": "Condition", "code": obs()["code"]})));
    assert!(Criteria::parse("Observation").unwrap().matches(&obs()));
}

fn lab() -> Value {
    json!({"resourceType": "Observation", "id": "l1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose [Mass/volume] in Serum"}], "text": "Glucose"},
        "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:mrn", "value": "M1"}},
        "effectiveDateTime": "2024-03-15T10:30:00+01:00",
        "issued": "2024-03-15T12:00:00.123Z",
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}], "text": "Filler"}, "value": "F-1"}],
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ],
        "meta": {"lastUpdated": "2024-03-15T12:00:00Z", "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab"]}})
}

/// (criteria, expected) over `lab()`.
fn table(cases: &[(&str, bool)]) {
    let now = crate::datetime::parse("2024-06-01T00:00:00Z").unwrap().lo;
    for (c, want) in cases {
        let parsed = Criteria::parse(c).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(parsed.matches_at(&lab(), now), *want, "{c}");
    }
}

#[test]
fn dates_follow_precision_and_prefixes() {
    // effective = 2024-03-15T09:30:00Z, to the second.
    table(&[
        ("Observation?date=2024", true),
        ("Observation?date=2024-03", true),
        ("Observation?date=2024-03-15", true),
        ("Observation?date=2024-03-16", false),
        ("Observation?date=eq2024-03-15T09:30:00Z", true),
        ("Observation?date=2024-03-15T10:30:00%2B01:00", true),
        ("Observation?date=ne2024-03-15", false),
        ("Observation?date=ne2024-03-14", true),
        ("Observation?date=gt2024-03-14", true),
        ("Observation?date=gt2024-03-15", false),
        ("Observation?date=ge2024-03-15", true),
        ("Observation?date=ge2024-03-16", false),
        ("Observation?date=lt2024-03-16", true),
        ("Observation?date=lt2024-03-15", false),
        ("Observation?date=le2024-03-15", true),
        ("Observation?date=le2024-03-14", false),
        ("Observation?date=sa2024-03-14", true),
        ("Observation?date=sa2024-03-15", false),
        ("Observation?date=eb2024-03-16", true),
        ("Observation?date=eb2024-03-15", false),
        ("Observation?date=ap2024-03-10", true),
        ("Observation?date=ap2023-01-01", false),
        ("Observation?date=ge2024-01-01&date=lt2024-04-01", true),
        ("Observation?_lastUpdated=gt2024-03-15T11:59:59Z", true),
        ("Observation?_lastUpdated=lt2024-03-15T12:00:00Z", false),
    ]);
    // A Period covers its whole span; an open end runs forever.
    let enc = json!({"resourceType": "Encounter", "id": "e", "period": {"start": "2024-01-10", "end": "2024-01-20"}});
    let open = json!({"resourceType": "Encounter", "id": "e", "period": {"start": "2024-01-10"}});
    let m = |c: &str, r: &Value| Criteria::parse(c).unwrap().matches(r);
    assert!(m("Encounter?date=2024-01", &enc));
    assert!(
        !m("Encounter?date=2024-01-15", &enc),
        "eq needs the search range to contain the period"
    );
    assert!(
        m("Encounter?date=ge2024-01-15", &enc),
        "the period reaches above"
    );
    assert!(m("Encounter?date=le2024-01-15", &enc));
    assert!(!m("Encounter?date=sa2024-01-15", &enc));
    assert!(m("Encounter?date=gt2030-01-01", &open));
    assert!(!m("Encounter?date=eb2030-01-01", &open));
}

#[test]
fn quantities_numbers_and_units() {
    table(&[
        ("Observation?value-quantity=5.4", true),
        ("Observation?value-quantity=5", true),
        ("Observation?value-quantity=5.0", false),
        ("Observation?value-quantity=gt5", true),
        ("Observation?value-quantity=gt5.4", false),
        ("Observation?value-quantity=ge5.4", true),
        ("Observation?value-quantity=lt6", true),
        ("Observation?value-quantity=le5.3", false),
        ("Observation?value-quantity=ne5.4", false),
        ("Observation?value-quantity=ap5", true),
        (
            "Observation?value-quantity=5.4|http://unitsofmeasure.org|mmol/L",
            true,
        ),
        ("Observation?value-quantity=5.4||mmol/L", true),
        (
            "Observation?value-quantity=5.4|http://unitsofmeasure.org|mg/dL",
            false,
        ),
        (
            "Observation?value-quantity=gt5|http://snomed.info/sct|mmol/L",
            false,
        ),
        ("Observation?component-value-quantity=gt100", true),
        ("Observation?component-value-quantity=gt200", false),
    ]);
    let r = json!({"resourceType": "RiskAssessment", "id": "r", "prediction": [{"probabilityDecimal": 0.25}]});
    let m = |c: &str| Criteria::parse(c).unwrap().matches(&r);
    assert!(m("RiskAssessment?probability=0.25"));
    assert!(m("RiskAssessment?probability=gt0.2"));
    assert!(
        m("RiskAssessment?probability=0.3"),
        "0.3 stands for [0.25, 0.35)"
    );
    assert!(!m("RiskAssessment?probability=0.4"));
    assert!(m("RiskAssessment?probability=0.3,0.25"));
}

#[test]
fn composites_match_within_one_component() {
    table(&[
        (
            "Observation?code-value-quantity=http://loinc.org|2345-7$gt5",
            true,
        ),
        (
            "Observation?code-value-quantity=http://loinc.org|2345-7$lt5",
            false,
        ),
        (
            "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100",
            true,
        ),
        // 8480-6 is 120 and 8462-4 is 80: the pair must come from the same component.
        (
            "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt100",
            false,
        ),
        (
            "Observation?component-code-value-quantity=http://loinc.org|8462-4$lt100",
            true,
        ),
        (
            "Observation?combo-code-value-quantity=http://loinc.org|2345-7$5.4",
            true,
        ),
    ]);
}

#[test]
fn token_and_reference_modifiers() {
    table(&[
        ("Observation?code:text=gluc", true),
        ("Observation?code:text=serum", false),
        ("Observation?code:code-text=2345", true),
        (
            "Observation?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|FILL|F-1",
            true,
        ),
        (
            "Observation?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|PLAC|F-1",
            false,
        ),
        ("Observation?code:not=http://loinc.org|2345-7", false),
        ("Observation?code:not=http://loinc.org|9999-9", true),
        ("Observation?subject:Patient=p1", true),
        ("Observation?subject:Group=p1", false),
        ("Observation?subject:identifier=urn:mrn|M1", true),
        ("Observation?subject:identifier=urn:mrn|M2", false),
        ("Observation?patient:missing=false", true),
        ("Observation?specimen:missing=true", true),
        ("Observation?value-quantity:missing=false", true),
        (
            "Observation?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab",
            true,
        ),
        (
            "Observation?_profile:below=http://hl7.org/fhir/us/core/StructureDefinition",
            true,
        ),
        (
            "Observation?_profile:below=http://hl7.org/fhir/us/core/Structure",
            false,
        ),
        (
            "Observation?_profile:above=http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab/extra",
            true,
        ),
    ]);
}
