//! The Patient compartment (FHIR R4 `CompartmentDefinition/patient`, vendored from the
//! specification in `schemas/fhir/r4/`): which resources belong to one patient. A client
//! holding only `patient/` scopes may subscribe to and receive these and nothing else.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::criteria::Criteria;

const DEFINITION: &str =
    include_str!("../../../schemas/fhir/r4/compartmentdefinition-patient.json");

/// Resource type → the search parameters that place a resource in a patient's compartment.
fn params() -> &'static HashMap<String, Vec<String>> {
    static PARAMS: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    PARAMS.get_or_init(|| {
        let mut out = HashMap::new();
        let Ok(def) = serde_json::from_str::<Value>(DEFINITION) else {
            return out;
        };
        for r in def
            .get("resource")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(code) = r.get("code").and_then(Value::as_str) else {
                continue;
            };
            let ps: Vec<String> = r
                .get("param")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|p| *p != "{def}")
                .map(str::to_owned)
                .collect();
            if !ps.is_empty() {
                out.insert(code.to_owned(), ps);
            }
        }
        out
    })
}

/// The compartment parameters of a resource type (empty: the type is never in a patient's
/// compartment, except `Patient` itself by id).
pub fn patient_params(resource_type: &str) -> &'static [String] {
    params().get(resource_type).map_or(&[], Vec::as_slice)
}

/// Whether `value` (a search value for a reference) names `Patient/<patient>`.
fn names_patient(value: &str, patient: &str) -> bool {
    let v = value.trim();
    v == patient || v == format!("Patient/{patient}") || v.ends_with(&format!("/Patient/{patient}"))
}

/// Whether search parameters (`name=value` pairs of criteria or a topic filter) confine
/// results of `resource_type` to `patient`: one pair on a compartment parameter (plain, or
/// typed `subject:Patient`) naming only that patient, or `_id` for a Patient.
pub fn query_confined_to(resource_type: &str, pairs: &[(String, String)], patient: &str) -> bool {
    let ps = patient_params(resource_type);
    pairs.iter().any(|(name, value)| {
        // only a plain reference parameter, or one typed `:Patient`, confines: any other
        // modifier (`:identifier`, `:not`, `:missing`, `:above`...) changes what it matches
        let (base, modifier) = name.split_once(':').unwrap_or((name, ""));
        if !(modifier.is_empty() || modifier == "Patient") {
            return false;
        }
        // a comma is OR: every alternative must name the patient
        let all_name_patient = value.split(',').all(|v| names_patient(v, patient));
        all_name_patient
            && (ps.iter().any(|p| p == base) || (resource_type == "Patient" && base == "_id"))
    })
}

/// Whether `resource` is in `patient`'s compartment.
pub fn in_patient_compartment(resource: &Value, patient: &str) -> bool {
    let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    if ty == "Patient" && resource.get("id").and_then(Value::as_str) == Some(patient) {
        return true;
    }
    patient_params(ty).iter().any(|p| {
        Criteria::parse(&format!("{ty}?{p}=Patient/{patient}")).is_ok_and(|c| c.matches(resource))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_plain_or_patient_typed_parameters_confine_a_query() {
        let q = |name: &str, value: &str| vec![(name.to_owned(), value.to_owned())];
        assert!(query_confined_to(
            "Observation",
            &q("subject", "Patient/p1"),
            "p1"
        ));
        assert!(query_confined_to(
            "Observation",
            &q("subject:Patient", "p1"),
            "p1"
        ));
        for name in [
            "subject:identifier",
            "subject:not",
            "subject:missing",
            "subject:Group",
        ] {
            assert!(
                !query_confined_to("Observation", &q(name, "p1"), "p1"),
                "{name}"
            );
        }
        assert!(!query_confined_to("Patient", &q("_id:not", "p1"), "p1"));
    }

    #[test]
    fn observations_belong_by_subject_or_performer() {
        assert_eq!(patient_params("Observation"), ["subject", "performer"]);
        let obs = json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}});
        assert!(in_patient_compartment(&obs, "p1"));
        assert!(!in_patient_compartment(&obs, "p2"));
        let pat = json!({"resourceType": "Patient", "id": "p1"});
        assert!(in_patient_compartment(&pat, "p1"));
        assert!(!in_patient_compartment(&pat, "p2"));
        let topic = json!({"resourceType": "SubscriptionTopic", "id": "t"});
        assert!(!in_patient_compartment(&topic, "p1"));
    }

    #[test]
    fn queries_confined_to_a_patient() {
        let q = |s: &str| -> Vec<(String, String)> {
            s.split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect()
        };
        assert!(query_confined_to(
            "Observation",
            &q("subject=Patient/p1&code=x"),
            "p1"
        ));
        assert!(query_confined_to(
            "Observation",
            &q("subject:Patient=p1"),
            "p1"
        ));
        assert!(!query_confined_to("Observation", &q("code=x"), "p1"));
        assert!(!query_confined_to(
            "Observation",
            &q("subject=Patient/p2"),
            "p1"
        ));
        assert!(!query_confined_to(
            "Observation",
            &q("subject=Patient/p1,Patient/p2"),
            "p1"
        ));
        assert!(query_confined_to("Patient", &q("_id=p1"), "p1"));
        assert!(!query_confined_to("Observation", &q("_id=p1"), "p1"));
    }
}
