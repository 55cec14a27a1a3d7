//! Behaviour the subscription hub relies on, beyond the official suite.
#![allow(clippy::unwrap_used)]

use hub_fhirpath::{Env, EvalError, Expression};
use serde_json::json;

fn obs(status: &str, value: f64) -> serde_json::Value {
    json!({
        "resourceType": "Observation", "id": "o1", "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/123"},
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    })
}

#[test]
fn current_and_previous() {
    let e = Expression::parse(
        "%current.status = 'final' and (%previous.empty() or %previous.status != 'final')",
    )
    .unwrap();
    let prelim = obs("preliminary", 1.0);
    let fin = obs("final", 1.0);
    let check = |cur: &serde_json::Value, prev: Option<&serde_json::Value>| {
        let env = Env::new()
            .with_resource("current", Some(cur))
            .with_resource("previous", prev);
        e.evaluate_bool(cur, &env).unwrap()
    };
    assert_eq!(check(&fin, None), Some(true), "a create that is final");
    assert_eq!(
        check(&fin, Some(&prelim)),
        Some(true),
        "preliminary → final"
    );
    assert_eq!(check(&fin, Some(&fin)), Some(false), "final → final");
    assert_eq!(check(&prelim, None), Some(false));
}

#[test]
fn choice_types_and_quantities() {
    let o = obs("final", 7.5);
    let env = Env::new();
    let t = |s: &str| {
        Expression::parse(s)
            .unwrap()
            .evaluate_bool(&o, &env)
            .unwrap()
    };
    assert_eq!(
        t("Observation.value.ofType(Quantity).value > 5"),
        Some(true)
    );
    assert_eq!(t("Observation.value is Quantity"), Some(true));
    assert_eq!(t("Observation.value.ofType(string).exists()"), Some(false));
    assert_eq!(
        t("Observation.value > 70 'mg/L'"),
        Some(true),
        "7.5 mg/dL = 75 mg/L"
    );
    assert_eq!(
        t(
            "Observation.category.coding.where(system='http://terminology.hl7.org/CodeSystem/observation-category' and code='laboratory').exists() and Observation.subject.reference='Patient/123'"
        ),
        Some(true)
    );
}

#[test]
fn errors_name_the_problem() {
    let o = obs("final", 1.0);
    let env = Env::new();
    let err = Expression::parse("Observation.valueQuantity.value")
        .unwrap()
        .evaluate(Some(&o), &env)
        .unwrap_err();
    assert!(
        matches!(&err, EvalError::Semantic(m) if m.contains("value.ofType(Quantity)")),
        "{err}"
    );
    let err = Expression::parse("(Observation.status | Observation.id).startsWith('x')")
        .unwrap()
        .evaluate(Some(&o), &env)
        .unwrap_err();
    assert!(matches!(err, EvalError::Execution(_)), "{err}");
    assert!(Expression::parse("Observation.status = ").is_err());
}

#[test]
fn untyped_json_still_navigates() {
    // resources of types the R4 model lacks (R5 SubscriptionTopic) are read as plain JSON
    let r = json!({"resourceType": "SubscriptionTopic", "resourceTrigger": [{"resource": "Observation"}]});
    let e = Expression::parse("resourceTrigger.resource").unwrap();
    assert_eq!(
        e.evaluate_json(Some(&r)).unwrap(),
        vec![json!("Observation")]
    );
}

/// A resource with `n` nested components, each with codings: descendants() grows with it.
fn large(n: usize) -> serde_json::Value {
    let components: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({"code": {"coding": [{"system": "http://loinc.org", "code": format!("c{i}")}]},
                         "valueQuantity": {"value": i, "unit": "mg"}})
        })
        .collect();
    let mut o = obs("final", 1.0);
    o["component"] = json!(components);
    o
}

#[test]
fn hostile_expressions_stop_at_the_budget() {
    let o = large(2_000);
    let env = Env::new();
    // geometric string growth: ~10^6 times the input after six rounds
    let grow = format!("id{}.length()", ".replace('', 'abcdefghij')".repeat(6));
    // quadratic walk over a large resource
    let walk = "descendants().repeat($this).count()";
    // a wide cross product
    let cross = "descendants().select(%resource.descendants()).count()";
    for src in [grow.as_str(), walk, cross] {
        let e = Expression::parse(src).unwrap();
        let started = std::time::Instant::now();
        let err = e.evaluate(Some(&o), &env).unwrap_err();
        assert!(matches!(err, EvalError::Budget(_)), "{src}: {err}");
        // the time limit (250 ms) plus one check interval; generous for a loaded machine
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{src} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn the_budget_leaves_ordinary_expressions_alone() {
    let o = large(2_000);
    let env = Env::new();
    let e = Expression::parse("component.code.coding.where(code = 'c1999').exists()").unwrap();
    assert_eq!(e.evaluate_bool(&o, &env).unwrap(), Some(true));
    let e = Expression::parse("descendants().count() > 10000").unwrap();
    assert_eq!(e.evaluate_bool(&o, &env).unwrap(), Some(true));
    let e = Expression::parse("id.replace('', '-').length()").unwrap();
    assert_eq!(e.evaluate_json(Some(&o)).unwrap(), vec![json!(5)]);
}

#[test]
fn limits_are_configurable() {
    let o = obs("final", 1.0);
    let mut env = Env::new();
    env.limits.max_steps = 5;
    let e = Expression::parse("code.coding.code.first() = '2345-7'").unwrap();
    assert!(matches!(
        e.evaluate(Some(&o), &env),
        Err(EvalError::Budget(_))
    ));
}
