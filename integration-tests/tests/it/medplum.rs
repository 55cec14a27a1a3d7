//! Differential run against Medplum's matcher (`@medplum/core` `matchesSearchRequest`) on
//! Synthea Observations (`integration-tests/data`, kept in the repository: see its README),
//! for criteria where Medplum follows the specification.
//!
//! Known, explained disagreements are asserted as such below; anything else fails.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Command;

use hub_fhir::Criteria;
use serde_json::Value;

use crate::harness::require_external;

/// The 4,000 Synthea Observations kept in the repository.
fn synthea() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/synthea-r4-observations.ndjson.gz")
}

fn medplum_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("medplum");
    if dir.join("node_modules/@medplum/core").exists() {
        return Some(dir);
    }
    require_external("FHIR_HUB_MEDPLUM_READY")?;
    panic!(
        "FHIR_HUB_MEDPLUM_READY is set but {} has no node_modules (run npm ci there)",
        dir.display()
    );
}

#[test]
fn agrees_with_medplum_where_medplum_follows_the_spec() {
    let Some(dir) = medplum_dir() else { return };
    let file = std::fs::File::open(synthea())
        .expect("integration-tests/data/synthea-r4-observations.ndjson.gz");
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let lines: Vec<String> = reader
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("{\"resourceType\":\"Observation\""))
        .take(4000)
        .collect();
    let resources: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let patient = resources[0]["subject"]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let encounter = resources[1]["encounter"]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = resources[2]["id"].as_str().unwrap().to_owned();
    let criteria = vec![
        "Observation?code=http://loinc.org|8302-2".to_owned(),
        "Observation?code=8302-2".to_owned(),
        "Observation?code=http://loinc.org|8302-2,http://loinc.org|29463-7".to_owned(),
        "Observation?category=laboratory".to_owned(),
        "Observation?category=vital-signs,survey".to_owned(),
        "Observation?category:not=laboratory".to_owned(),
        "Observation?status=final".to_owned(),
        format!("Observation?patient={patient}"),
        format!("Observation?subject={patient}&code=http://loinc.org|29463-7"),
        format!("Observation?patient={patient}&category=laboratory"),
        format!("Observation?encounter={encounter}"),
        format!("Observation?_id={id}"),
        "Observation?value-concept=http://snomed.info/sct|449868002".to_owned(),
        "Observation?code:missing=false".to_owned(),
        // Known disagreements, asserted below as such:
        // 1. Medplum treats quantity parameters as never matching; the spec compares values.
        "Observation?value-quantity=gt100".to_owned(),
        // 2. Medplum lower-cases systems and codes; FHIR systems are case-sensitive URIs and
        //    LOINC codes are exact, so a wrongly cased system must not match.
        "Observation?code=http://LOINC.org|8302-2".to_owned(),
    ];
    let known_differences = [
        "Observation?value-quantity=gt100",
        "Observation?code=http://LOINC.org|8302-2",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let crit_path = tmp.path().join("criteria.json");
    let data_path = tmp.path().join("observations.ndjson");
    std::fs::write(&crit_path, serde_json::to_string(&criteria).unwrap()).unwrap();
    std::fs::write(&data_path, lines.join("\n")).unwrap();
    let out = Command::new("node")
        .arg(dir.join("differential.mjs"))
        .arg(&crit_path)
        .arg(&data_path)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();

    let now = hub_fhir::datetime::now_micros();
    let mut compared = 0;
    for c in &criteria {
        let parsed = Criteria::parse(c).unwrap();
        let ours: Vec<String> = resources
            .iter()
            .filter(|r| parsed.matches_at(*r, now))
            .map(|r| format!("Observation/{}", r["id"].as_str().unwrap()))
            .collect();
        let medplum: Vec<String> = theirs[c]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        if known_differences.contains(&c.as_str()) {
            if c.contains("value-quantity") {
                assert!(
                    medplum.is_empty() && !ours.is_empty(),
                    "{c}: Medplum should match none, we some"
                );
            } else {
                assert!(
                    ours.is_empty() && !medplum.is_empty(),
                    "{c}: Medplum ignores case, we do not"
                );
            }
            continue;
        }
        assert_eq!(
            ours,
            medplum,
            "{c}: ours {} vs Medplum {}",
            ours.len(),
            medplum.len()
        );
        compared += ours.len();
    }
    assert!(
        compared > 1000,
        "the criteria should select plenty of resources, got {compared}"
    );
    eprintln!(
        "{} criteria agree with Medplum over {} Observations ({compared} matches); {} known differences hold",
        criteria.len() - known_differences.len(),
        resources.len(),
        known_differences.len()
    );
}
