use serde_json::json;

use super::*;

fn lab_topic() -> Value {
    json!({
        "resourceType": "SubscriptionTopic",
        "url": "http://example.org/topics/lab-final",
        "status": "active",
        "resourceTrigger": [{
            "resource": "http://hl7.org/fhir/StructureDefinition/Observation",
            "supportedInteraction": ["create", "update"],
            "queryCriteria": {"previous": "status:not=final", "current": "status=final",
                              "resultForCreate": "test-passes", "requireBoth": true},
            "fhirPathCriteria": "%current.category.coding.where(code = 'laboratory').exists()"
        }],
        "canFilterBy": [
            {"resource": "Observation", "filterParameter": "patient"},
            {"resource": "Observation", "filterParameter": "value-quantity", "comparator": ["gt", "lt", "eq"]}
        ]
    })
}

fn obs(status: &str, patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": "o1", "status": status,
           "category": [{"coding": [{"code": "laboratory"}]}],
           "code": {"text": "x"}, "subject": {"reference": patient},
           "valueQuantity": {"value": 7}})
}

#[test]
fn query_and_fhirpath_criteria_with_previous_and_current() {
    let t = parse(&lab_topic()).unwrap();
    let tr = &t.triggers[0];
    assert_eq!(tr.resource, "Observation");
    let fin = obs("final", "Patient/1");
    let pre = obs("preliminary", "Patient/1");
    // create of a final result: previous counts as passing (resultForCreate)
    assert!(tr.fires_ok(Action::Create, "Observation", Some(&fin), None));
    assert!(!tr.fires_ok(Action::Create, "Observation", Some(&pre), None));
    // preliminary → final fires; final → final does not (requireBoth)
    assert!(tr.fires_ok(Action::Update, "Observation", Some(&fin), Some(&pre)));
    assert!(!tr.fires_ok(Action::Update, "Observation", Some(&fin), Some(&fin)));
    // deletes are not a supported interaction of this trigger
    assert!(!tr.fires_ok(Action::Delete, "Observation", None, Some(&fin)));
    // other types never
    assert!(!tr.fires_ok(Action::Create, "Condition", Some(&fin), None));
    // the FHIRPath part: not a lab result
    let mut vital = fin.clone();
    vital["category"][0]["coding"][0]["code"] = json!("vital-signs");
    assert!(!tr.fires_ok(Action::Create, "Observation", Some(&vital), None));
}

#[test]
fn filters_follow_can_filter_by() {
    let t = parse(&lab_topic()).unwrap();
    let f = parse_filter(&t, "Observation?patient=Patient/1", "f").unwrap();
    assert!(f.accepts("Observation", Some(&obs("final", "Patient/1")), None));
    assert!(!f.accepts("Observation", Some(&obs("final", "Patient/2")), None));
    // the single resource type may be left out
    assert!(parse_filter(&t, "patient=Patient/1", "f").is_ok());
    // the dotted form of the Inferno kit's samples means the same
    let f = parse_filter(&t, "Observation.patient=Patient/1", "f").unwrap();
    assert_eq!(
        (f.resource.as_str(), f.query.as_str()),
        ("Observation", "patient=Patient/1")
    );
    assert!(!f.accepts("Observation", Some(&obs("final", "Patient/2")), None));
    assert!(parse_filter(&t, "value-quantity=gt5", "f").is_ok());
    let refused = |s: &str| parse_filter(&t, s, "f").unwrap_err().summary();
    assert!(refused("code=1234-5").contains("does not allow filtering on 'code'"));
    assert!(refused("patient:missing=true").contains("modifier :missing"));
    assert!(refused("value-quantity=ge5").contains("comparator ge"));
    assert!(refused("Condition?patient=Patient/1").contains("no trigger for Condition"));
}

#[test]
fn unsupported_topics_are_refused_by_name() {
    let mut t = lab_topic();
    t["eventTrigger"] = json!([{"event": {"text": "x"}, "resource": "Observation"}]);
    assert!(parse(&t).unwrap_err().summary().contains("eventTrigger"));
    let mut t = lab_topic();
    t["notificationShape"] =
        json!([{"resource": "Observation", "include": ["Observation:patient"]}]);
    assert!(parse(&t).unwrap_err().summary().contains("include"));
    let mut t = lab_topic();
    t["resourceTrigger"][0]["fhirPathCriteria"] = json!("status = ");
    assert!(
        parse(&t)
            .unwrap_err()
            .summary()
            .contains("fhirPathCriteria")
    );
    let mut t = lab_topic();
    t["resourceTrigger"][0]["fhirPathCriteria"] = json!("%current.valueQuantity.value > 5");
    let why = parse(&t).unwrap_err().summary();
    assert!(why.contains("value.ofType(Quantity)"), "{why}");
    let mut t = lab_topic();
    t["resourceTrigger"][0]["fhirPathCriteria"] = json!("Encounter.status = 'finished'");
    assert!(parse(&t).unwrap_err().summary().contains("about Encounter"));
    let mut t = lab_topic();
    t["canFilterBy"][0]["filterParameter"] = json!("no-such-param");
    assert!(parse(&t).unwrap_err().summary().contains("no-such-param"));
    let mut t = lab_topic();
    t["resourceTrigger"][0]["resource"] = json!("Wombat");
    assert!(parse(&t).is_err());
}

#[test]
fn the_backport_r4_basic_representation_reads_as_a_topic() {
    let x = |n: &str| {
        format!("http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.{n}")
    };
    let basic = json!({
        "resourceType": "Basic", "id": "r4-lab",
        "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/artifact-url", "valueUri": "http://example.org/topics/r4-lab"},
            {"url": x("status"), "valueCode": "active"},
            {"url": x("resourceTrigger"), "extension": [
                {"url": "resource", "valueUri": "http://hl7.org/fhir/StructureDefinition/Observation"},
                {"url": "supportedInteraction", "valueCode": "create"},
                {"url": "supportedInteraction", "valueCode": "update"},
                {"url": "queryCriteria", "extension": [
                    {"url": "current", "valueString": "status=final"},
                    {"url": "resultForCreate", "valueCode": "test-passes"},
                    {"url": "requireBoth", "valueBoolean": false}
                ]},
                {"url": "fhirPathCriteria", "valueString": "%current.status = 'final'"}
            ]},
            {"url": x("canFilterBy"), "extension": [
                {"url": "resource", "valueUri": "Observation"},
                {"url": "filterParameter", "valueString": "patient"}
            ]}
        ]
    });
    let topic_json = from_backport_basic(&basic).unwrap();
    assert_eq!(
        topic_json["resourceTrigger"][0]["supportedInteraction"],
        json!(["create", "update"])
    );
    let t = parse(&topic_json).unwrap();
    assert_eq!(t.url, "http://example.org/topics/r4-lab");
    assert_eq!(
        t.triggers[0].interactions,
        vec![Action::Create, Action::Update]
    );
    assert!(t.triggers[0].fires_ok(
        Action::Create,
        "Observation",
        Some(&obs("final", "Patient/1")),
        None
    ));
    assert!(!t.triggers[0].fires_ok(
        Action::Create,
        "Observation",
        Some(&obs("preliminary", "Patient/1")),
        None
    ));
    assert_eq!(t.can_filter_by[0].parameter, "patient");
    assert!(from_backport_basic(&json!({"resourceType": "Basic"})).is_none());
}

trait FiresOk {
    fn fires_ok(
        &self,
        action: Action,
        ty: &str,
        current: Option<&serde_json::Value>,
        previous: Option<&serde_json::Value>,
    ) -> bool;
}

impl FiresOk for super::ResourceTrigger {
    fn fires_ok(
        &self,
        action: Action,
        ty: &str,
        current: Option<&serde_json::Value>,
        previous: Option<&serde_json::Value>,
    ) -> bool {
        self.fires(action, ty, current, previous)
            .expect("evaluation within budget")
    }
}
