//! The official FHIRPath test suites (`tests/data`, from FHIR/fhir-test-cases: see its README).
//!
//! Every test runs; the ones this engine does not pass are listed, with the reason, in
//! `tests/known-failures-{r4,r5}.txt`. The list is enforced both ways: a listed test that
//! starts passing fails the run (take it off the list), and so does an unlisted failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use hub_fhirpath::{Env, Expression, Value};
use serde_json::Value as Json;

/// The suites and their input resources, kept in the repository.
fn data() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The text form the suite uses for one result item.
fn render(v: &Value<'_>) -> (String, String) {
    let (ns, ty) = v.type_name();
    let ty = ty.to_string();
    let text = match v.to_system() {
        Value::Temporal(t) => format!("@{}", t.to_literal_text()),
        Value::Quantity(q) => hub_fhirpath::value::quantity_text_pub(&q),
        other => other
            .to_text()
            .unwrap_or_else(|| hub_fhirpath::to_json(v).to_string()),
    };
    let ty = if ns == "System" {
        match ty.as_str() {
            "Boolean" => "boolean".into(),
            "Integer" => "integer".into(),
            "Decimal" => "decimal".into(),
            "String" => "string".into(),
            "Date" => "date".into(),
            "DateTime" => "dateTime".into(),
            "Time" => "time".into(),
            _ => ty,
        }
    } else {
        ty
    };
    (ty, text)
}

fn matches_expected(got: &(String, String), want: &Json) -> bool {
    let wv = want["value"].as_str().unwrap_or("");
    let value_ok = got.1 == wv
        || match (got.1.parse::<f64>(), wv.parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b && want["type"].as_str() == Some("decimal"),
            _ => false,
        };
    let type_ok = match want["type"].as_str() {
        None => true,
        Some(t) => {
            t == got.0 || (t == "dateTime" && got.0 == "instant") || (t == "string" && got.1 == wv)
        }
    };
    value_ok && type_ok
}

fn run_one(t: &Json, inputs: &HashMap<String, Json>) -> Result<(), String> {
    let expr = t["expression"].as_str().unwrap_or("");
    let invalid = t["invalid"].as_str().is_some();
    let parsed = match Expression::parse(expr) {
        Ok(p) => p,
        Err(e) if invalid => return Ok(()).map(|()| drop(e)),
        Err(e) => return Err(format!("syntax error: {e}")),
    };
    let resource = t["inputjson"].as_str().and_then(|f| inputs.get(f));
    // The static check against the input's type: in strict mode it runs first; on every
    // valid expression it must not refuse anything (topics rely on it at write time).
    if let Some(rt) = resource.and_then(|r| r["resourceType"].as_str())
        && let Err(e) = parsed.check(rt)
    {
        if t["mode"].as_str() == Some("strict") && invalid {
            return Ok(());
        }
        if !invalid {
            return Err(format!("static check refused a valid expression: {e}"));
        }
    }
    let env = Env::new();
    let result = match parsed.evaluate(resource, &env) {
        Ok(r) => r,
        Err(_) if invalid => return Ok(()),
        Err(e) => return Err(format!("error: {e}")),
    };
    if invalid {
        return Err(format!("expected an error, got {} items", result.len()));
    }
    let got: Vec<(String, String)> = if t["predicate"].as_str() == Some("true") {
        vec![("boolean".into(), (!result.is_empty()).to_string())]
    } else {
        result.iter().map(render).collect()
    };
    let want = t["outputs"].as_array().cloned().unwrap_or_default();
    if got.len() != want.len() {
        return Err(format!("expected {} items, got {got:?}", want.len()));
    }
    if t["ordered"].as_str() == Some("false") {
        let mut used = vec![false; got.len()];
        for w in &want {
            let Some(i) = (0..got.len()).find(|&i| !used[i] && matches_expected(&got[i], w)) else {
                return Err(format!("{w} not in {got:?}"));
            };
            used[i] = true;
        }
    } else {
        for (g, w) in got.iter().zip(&want) {
            if !matches_expected(g, w) {
                return Err(format!("expected {w}, got {g:?}"));
            }
        }
    }
    Ok(())
}

fn run_suite(version: &str, file: &str) {
    let dir = data();
    let tests: Vec<Json> =
        serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
    let mut inputs = HashMap::new();
    for entry in std::fs::read_dir(dir.join("inputs-json")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Ok(j) = serde_json::from_str::<Json>(&std::fs::read_to_string(&path).unwrap()) {
            inputs.insert(name, j);
        }
    }
    let known_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/known-failures-{version}.txt"));
    let known: BTreeSet<String> = std::fs::read_to_string(&known_path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut failed = Vec::new();
    let mut unexpected = Vec::new();
    let mut now_passing = Vec::new();
    for t in &tests {
        let base = t["name"].as_str().unwrap_or("?").to_string();
        let n = seen.entry(base.clone()).or_default();
        *n += 1;
        let name = if *n > 1 { format!("{base}#{n}") } else { base };
        let outcome = std::panic::catch_unwind(|| run_one(t, &inputs))
            .unwrap_or_else(|_| Err("panicked".to_string()));
        match outcome {
            Ok(()) => {
                if known.contains(&name) {
                    now_passing.push(name);
                }
            }
            Err(why) => {
                if !known.contains(&name) {
                    unexpected.push(format!(
                        "{name}  `{}`: {why}",
                        t["expression"].as_str().unwrap_or("")
                    ));
                }
                failed.push(name);
            }
        }
    }
    let passed = tests.len() - failed.len();
    eprintln!(
        "FHIRPath {version} suite: {passed}/{} passed, {} failed (known failures: {})",
        tests.len(),
        failed.len(),
        known.len()
    );
    if std::env::var_os("FHIRPATH_LIST_FAILURES").is_some() {
        for f in &failed {
            println!("{f}");
        }
    }
    assert!(
        unexpected.is_empty() && now_passing.is_empty(),
        "{version}: unexpected failures:\n{}\n\nlisted as known failures but now passing (remove them from {}):\n{}",
        unexpected.join("\n"),
        known_path.display(),
        now_passing.join("\n")
    );
}

#[test]
fn official_r4_suite() {
    run_suite("r4", "r4/tests-fhir-r4.json");
}

#[test]
fn official_r5_suite() {
    run_suite("r5", "r5/tests-fhir-r5.json");
}

/// Robustness: every suite expression against every input resource (most of them the wrong
/// one), and some hostile ones, must answer a result or an error, never panic.
#[test]
fn no_expression_panics_on_any_input() {
    let dir = data();
    let mut inputs = vec![None];
    for entry in std::fs::read_dir(dir.join("inputs-json")).unwrap() {
        let path = entry.unwrap().path();
        if let Ok(j) = serde_json::from_str::<Json>(&std::fs::read_to_string(&path).unwrap()) {
            inputs.push(Some(j));
        }
    }
    let mut exprs: Vec<String> = Vec::new();
    for suite in ["r4/tests-fhir-r4.json", "r5/tests-fhir-r5.json"] {
        let tests: Vec<Json> =
            serde_json::from_str(&std::fs::read_to_string(dir.join(suite)).unwrap()).unwrap();
        exprs.extend(
            tests
                .iter()
                .filter_map(|t| t["expression"].as_str().map(str::to_owned)),
        );
    }
    exprs.extend(
        [
            "'abc'.substring(1, 9223372036854775807)",
            "@2019-01-01 + 9223372036854775807 days",
            "@2019-01-01T10:00 + 9223372036854775807 'ms'",
            "@2019 + 99999999999 months",
            "79228162514264337593543950335 'g' + 1 'kg'",
            "79228162514264337593543950335 * 10",
            "0.0000000000000000000000000001.lowBoundary()",
            "1.lowBoundary(99)",
            "(1 | 2).skip(-5).take(9223372036854775807)",
            "'x'.matches('(')",
            "2147483647 + 1",
            "(-2147483647 - 1) div -1",
        ]
        .map(str::to_owned),
    );
    for e in &exprs {
        let Ok(parsed) = Expression::parse(e) else {
            continue;
        };
        for input in &inputs {
            let env = Env::new()
                .with_resource("current", input.as_ref())
                .with_resource("previous", input.as_ref());
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = parsed.evaluate(input.as_ref(), &env);
                if let Some(rt) = input.as_ref().and_then(|i| i["resourceType"].as_str()) {
                    let _ = parsed.check(rt);
                }
            }));
            assert!(
                r.is_ok(),
                "`{e}` panicked on {:?}",
                input.as_ref().map(|i| &i["resourceType"])
            );
        }
    }
}
