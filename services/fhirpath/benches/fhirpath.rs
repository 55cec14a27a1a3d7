//! FHIRPath evaluation speed against fhirpath.js, in the same run.
//!
//! 2,000 Synthea Observations (every tenth one's subject rewritten to `Patient/123`) and the
//! three expressions of the topic benchmark. Each expression is parsed once and evaluated over
//! all resources for a fixed time, with `%current` = the resource and `%previous` = the same
//! resource marked preliminary. Then the same resources and expressions go to
//! `integration-tests/medplum/fhirpath-bench.mjs` (fhirpath.js, compiled, R4 model).
//!
//! Run: `taskset -c 0 cargo bench -p hub-fhirpath --bench fhirpath` (needs the Synthea data
//! set, `FHIR_HUB_SYNTHEA` or ../shared/data beside the repository, and, for the baseline,
//! `npm ci` in integration-tests/medplum).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use hub_fhirpath::{Env, Expression};
use serde_json::Value;

const EXPRESSIONS: [&str; 3] = [
    "Observation.category.coding.where(system='http://terminology.hl7.org/CodeSystem/observation-category' and code='laboratory').exists() and Observation.subject.reference='Patient/123'",
    "%current.status = 'final' and (%previous.empty() or %previous.status != 'final')",
    "Observation.value.ofType(Quantity).value > 5",
];

#[path = "../../fhir/benches/synthea/mod.rs"]
mod synthea;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(data) = synthea::full() else {
        return Ok(());
    };
    let seconds: f64 = std::env::var("FHIRPATH_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let count: usize = std::env::var("FHIRPATH_BENCH_RESOURCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let file = std::fs::File::open(&data)
        .map_err(|e| format!("{}: {e} (set FHIR_HUB_SYNTHEA)", data.display()))?;
    let mut resources: Vec<Value> = Vec::new();
    for line in BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
        let line = line?;
        if !line.starts_with("{\"resourceType\":\"Observation\"") {
            continue;
        }
        let mut v: Value = serde_json::from_str(&line)?;
        if resources.len().is_multiple_of(10) {
            v["subject"]["reference"] = Value::String("Patient/123".into());
        }
        resources.push(v);
        if resources.len() == count {
            break;
        }
    }
    let previous: Vec<Value> = resources
        .iter()
        .map(|r| {
            let mut p = r.clone();
            p["status"] = Value::String("preliminary".into());
            p
        })
        .collect();

    println!(
        "FHIRPath evaluation, {} Observations, {seconds} s per expression",
        resources.len()
    );
    let mut ours = Vec::new();
    for src in EXPRESSIONS {
        let e = Expression::parse(src)?;
        let envs: Vec<Env<'_>> = resources
            .iter()
            .zip(&previous)
            .map(|(r, p)| {
                Env::new()
                    .with_resource("current", Some(r))
                    .with_resource("previous", Some(p))
            })
            .collect();
        let mut trues = 0;
        for (r, env) in resources.iter().zip(&envs) {
            if e.evaluate_bool(r, env)? == Some(true) {
                trues += 1;
            }
        }
        let start = Instant::now();
        let mut evals = 0u64;
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            for (r, env) in resources.iter().zip(&envs) {
                std::hint::black_box(e.evaluate(Some(r), env)?);
            }
            evals += resources.len() as u64;
        }
        let ns = start.elapsed().as_nanos() as f64 / evals as f64;
        ours.push((ns, trues));
    }

    // the baseline, same resources
    let dir = std::env::temp_dir().join(format!("fhirpath-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("resources.json"), serde_json::to_vec(&resources)?)?;
    std::fs::write(
        dir.join("expressions.json"),
        serde_json::to_vec(&EXPRESSIONS)?,
    )?;
    let script = root.join("integration-tests/medplum/fhirpath-bench.mjs");
    let theirs: Option<Value> = std::process::Command::new("node")
        .arg(&script)
        .arg(dir.join("resources.json"))
        .arg(dir.join("expressions.json"))
        .arg(seconds.to_string())
        .current_dir(root.join("integration-tests/medplum"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok());
    let _ = std::fs::remove_dir_all(&dir);

    for (i, src) in EXPRESSIONS.iter().enumerate() {
        let (ns, trues) = ours[i];
        println!("\n{src}");
        println!(
            "  hub-fhirpath   {ns:>9.0} ns/eval   ({trues} true of {})",
            resources.len()
        );
        match theirs.as_ref().and_then(|t| t["results"].get(i)) {
            Some(t) => {
                let their_ns = t["ns_per_eval"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "  fhirpath.js    {their_ns:>9.0} ns/eval   ({} true)   → {:.1}x faster",
                    t["trues"],
                    their_ns / ns
                );
            }
            None => println!(
                "  fhirpath.js    not run (node or integration-tests/medplum/node_modules missing)"
            ),
        }
    }
    Ok(())
}
