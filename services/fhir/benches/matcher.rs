//! Matcher benchmark on the Synthea data (docs/benchmarks.md explains the workload).
//!
//! `cargo bench -p hub-fhir --bench matcher` prints, on one core: events/s for the index
//! with 101,000 subscriptions (JSON parsing included), the same for a linear scan with the
//! same evaluator, bytes per indexed subscription, and the index on the 1,000-subscription
//! workload that `scripts/bench-matcher.sh` also gives to Medplum (written to
//! `$FHIR_HUB_BENCH_OUT/medplum-workload.json`).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::time::Instant;

use hub_fhir::Criteria;
use hub_fhir::index::CriteriaIndex;
use serde_json::{Value, json};

mod synthea;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

struct Data {
    observations: Vec<Vec<u8>>,
    patients: Vec<String>,
    codes: Vec<String>,
    values: Vec<f64>,
    dates: Vec<String>,
}

fn load(path: &std::path::Path) -> Data {
    let file = std::fs::File::open(path).expect("the Synthea data (set FHIR_HUB_SYNTHEA)");
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut d = Data {
        observations: Vec::new(),
        patients: Vec::new(),
        codes: Vec::new(),
        values: Vec::new(),
        dates: Vec::new(),
    };
    for line in reader.lines() {
        let line = line.unwrap();
        if line.starts_with("{\"resourceType\":\"Patient\"") {
            let v: Value = serde_json::from_str(&line).unwrap();
            d.patients.push(v["id"].as_str().unwrap().to_owned());
        } else if line.starts_with("{\"resourceType\":\"Observation\"") {
            let v: Value = serde_json::from_str(&line).unwrap();
            if let Some(c) = v.pointer("/code/coding/0/code").and_then(Value::as_str) {
                d.codes.push(c.to_owned());
            }
            if let Some(x) = v.pointer("/valueQuantity/value").and_then(Value::as_f64) {
                d.values.push(x);
            }
            if let Some(t) = v.get("effectiveDateTime").and_then(Value::as_str) {
                d.dates.push(t[..10].to_owned());
            }
            d.observations.push(line.into_bytes());
        }
    }
    d.codes.sort();
    d.codes.dedup();
    d.values.sort_by(f64::total_cmp);
    d.dates.sort();
    d
}

/// The 101,000 subscriptions of the workload.
fn big_workload(d: &Data) -> Vec<String> {
    let mut out = Vec::with_capacity(101_000);
    for i in 0..100_000usize {
        let p = d
            .patients
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("synthetic-{i}"));
        out.push(format!(
            "Observation?patient=Patient/{p}&category=laboratory"
        ));
    }
    // Broad ones: a code each; value and date thresholds in the top 10% / 2% of the data.
    for i in 0..334usize {
        out.push(format!(
            "Observation?code=http://loinc.org|{}",
            d.codes[i * 7 % d.codes.len()]
        ));
    }
    for i in 0..333usize {
        let q = 0.90 + 0.0999 * (i as f64 / 333.0);
        out.push(format!(
            "Observation?value-quantity=gt{}",
            d.values[(q * d.values.len() as f64) as usize]
        ));
    }
    for i in 0..333usize {
        let q = 0.98 + 0.0199 * (i as f64 / 333.0);
        out.push(format!(
            "Observation?date=ge{}",
            d.dates[(q * d.dates.len() as f64) as usize]
        ));
    }
    out
}

/// 1,000 subscriptions Medplum's matcher evaluates per the spec (token and reference).
fn medplum_workload(d: &Data) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..500usize {
        out.push(format!(
            "Observation?patient=Patient/{}&category=laboratory",
            d.patients[i % d.patients.len()]
        ));
    }
    for i in 0..500usize {
        out.push(format!(
            "Observation?code=http://loinc.org|{}",
            d.codes[i % d.codes.len()]
        ));
    }
    out
}

fn build(criteria: &[String]) -> CriteriaIndex<u32> {
    let mut index = CriteriaIndex::new();
    for (i, c) in criteria.iter().enumerate() {
        index.insert("t", Criteria::parse(c).unwrap(), i as u32);
    }
    index
}

/// (events/s, matches) for parsing only what the criteria read (the hub's way) + match.
fn run_projected(index: &CriteriaIndex<u32>, events: &[Vec<u8>], now: i64) -> (f64, usize) {
    let start = Instant::now();
    let mut matches = 0;
    for e in events {
        let Some(p) = index.projection("t") else {
            continue;
        };
        let v = p.parse(e).unwrap();
        matches += index.matches("t", &v, now).len();
    }
    (events.len() as f64 / start.elapsed().as_secs_f64(), matches)
}

/// (events/s, matches) for a whole parse + match over `events`.
fn run(index: &CriteriaIndex<u32>, events: &[Vec<u8>], linear: bool, now: i64) -> (f64, usize) {
    let start = Instant::now();
    let mut matches = 0;
    for e in events {
        let v: Value = serde_json::from_slice(e).unwrap();
        matches += if linear {
            index.matches_linear("t", &v, now).len()
        } else {
            index.matches("t", &v, now).len()
        };
    }
    (events.len() as f64 / start.elapsed().as_secs_f64(), matches)
}

/// Events/s, each the median of five rounds taken in turns: a whole `Value` parse of each
/// line; reading each line as `fhir-hub publish` does (the text reader) and writing its log
/// record; reading those records back as the matcher does.
fn read_events(lines: &[Vec<u8>]) -> [f64; 3] {
    use hub_fhir::raw_event::RawEvent;
    let records: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| {
            let (e, _) = RawEvent::from_ndjson_line_named(l, None, "t").unwrap();
            e.to_json_bytes()
        })
        .collect();
    let rate = |f: &dyn Fn(&[u8]) -> usize, over: &[Vec<u8>]| {
        let start = Instant::now();
        let n: usize = over.iter().map(|l| f(l)).sum();
        std::hint::black_box(n);
        over.len() as f64 / start.elapsed().as_secs_f64()
    };
    let whole = |l: &[u8]| usize::from(serde_json::from_slice::<Value>(l).unwrap().is_object());
    let publish = |l: &[u8]| {
        let (e, _) = RawEvent::from_ndjson_line_named(l, None, "t").unwrap();
        e.to_json_bytes().len()
    };
    let matcher = |r: &[u8]| {
        let (e, _) = RawEvent::parse(r, None, "t", "not an object").unwrap();
        e.resource.map_or(0, |r| r.get().len())
    };
    let mut rounds = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..5 {
        rounds[0].push(rate(&whole, lines));
        rounds[1].push(rate(&publish, lines));
        rounds[2].push(rate(&matcher, &records));
    }
    rounds.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    })
}

fn main() {
    let Some(path) = synthea::full() else { return };
    let t = Instant::now();
    let d = load(&path);
    let now = hub_fhir::datetime::now_micros();
    eprintln!(
        "loaded {} Observations, {} patients in {:.1}s",
        d.observations.len(),
        d.patients.len(),
        t.elapsed().as_secs_f64()
    );
    let bytes: usize = d.observations.iter().map(Vec::len).sum();

    // Reading change events, before any matching: what `fhir-hub publish` and `POST /events`
    // do with each bare resource (read and check it, write its log record), and what the
    // matcher does with each log record, against a whole `Value` parse of the same lines.
    let reading = read_events(&d.observations);
    println!(
        "reading change events: {} Synthea Observations ({:.1} MB of JSON), one core, median of 5 rounds",
        d.observations.len(),
        bytes as f64 / 1e6
    );
    for (what, rate) in [
        ("a whole serde_json::Value parse", reading[0]),
        (
            "publish: a line read and checked, its record written",
            reading[1],
        ),
        ("matcher: a log record read", reading[2]),
    ] {
        println!(
            "    {what:<55}{rate:>10.0} events/s  {:>6.1} MB/s  {:.2}x the Value parse",
            rate * bytes as f64 / d.observations.len() as f64 / 1e6,
            rate / reading[0]
        );
    }
    if std::env::var_os("MATCHER_BENCH_READ_ONLY").is_some() {
        return;
    }

    let criteria = big_workload(&d);
    let rss0 = rss_bytes();
    let t = Instant::now();
    let index = build(&criteria);
    let build_s = t.elapsed().as_secs_f64();
    let per_sub = (rss_bytes().saturating_sub(rss0)) as f64 / criteria.len() as f64;

    // For a profiler: only the hub's way (projected parse + match) for this many seconds.
    if let Some(secs) = std::env::var("MATCHER_BENCH_PROFILE_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < secs {
            let (rate, _) = run_projected(&index, &d.observations, now);
            eprintln!("indexed, projected parse: {rate:.0} events/s");
        }
        return;
    }
    let _ = run(&index, &d.observations[..2000], false, now); // warm up
    // The three rates compared are measured in turns, five rounds, and each is the median
    // of its rounds: a shared machine's speed drifts within a run, and a ratio of rates
    // taken seconds apart would carry that drift.
    let parse_only_once = || {
        let start = Instant::now();
        for e in &d.observations {
            let v: Value = serde_json::from_slice(e).unwrap();
            std::hint::black_box(&v);
        }
        d.observations.len() as f64 / start.elapsed().as_secs_f64()
    };
    let (mut parse_rounds, mut indexed_rounds, mut projected_rounds) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut matches = 0;
    for _ in 0..5 {
        parse_rounds.push(parse_only_once());
        let (rate, m) = run(&index, &d.observations, false, now);
        indexed_rounds.push(rate);
        matches = m;
        let (rate, m) = run_projected(&index, &d.observations, now);
        assert_eq!(m, matches, "the projection changes no result");
        projected_rounds.push(rate);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<String> = parse_rounds
        .iter()
        .zip(&projected_rounds)
        .map(|(p, q)| format!("{:.2}", q / p))
        .collect();
    let (parse_only, indexed, projected) = (
        median(parse_rounds),
        median(indexed_rounds),
        median(projected_rounds),
    );
    let sample = &d.observations[..300];
    let (linear, _) = run(&index, sample, true, now);
    let (indexed_sample, _) = run(&index, sample, false, now);
    // The result sets agree on the sample (the property test checks this more widely).
    let projection = index.projection("t").unwrap();
    for e in sample.iter().take(50) {
        let v: Value = serde_json::from_slice(e).unwrap();
        let fast = index.matches("t", &v, now);
        assert_eq!(fast, index.matches_linear("t", &v, now));
        assert_eq!(fast, index.matches("t", &projection.parse(e).unwrap(), now));
    }

    // Churn: subscription writes change the index in place. Each change takes one entry
    // out and puts a new one in (an update; a create or a delete is half of it), on the
    // 101,000-subscription index; compared with rebuilding it, which is what every write cost
    // before.
    let mut index = index;
    let mut handles: Vec<hub_fhir::index::Handle> = Vec::new();
    let churn = 10_000usize;
    let fresh: Vec<Criteria> = (0..churn)
        .map(|i| {
            Criteria::parse(&format!(
                "Observation?patient=Patient/churn-{i}&category=laboratory"
            ))
            .unwrap()
        })
        .collect();
    let t = Instant::now();
    for (i, c) in fresh.into_iter().enumerate() {
        handles.push(index.insert("t", c, u32::MAX - i as u32));
    }
    let insert_s = t.elapsed().as_secs_f64() / churn as f64;
    let t = Instant::now();
    for h in handles {
        index.remove("t", h);
    }
    let remove_s = t.elapsed().as_secs_f64() / churn as f64;
    let change_s = insert_s + remove_s;
    // at 100 writes/s: the matcher's share spent on them, in place and by rebuilding
    let share_in_place = 100.0 * change_s;
    let share_rebuild = 100.0 * build_s;
    let (after_churn, _) = run(&index, &d.observations[..20_000], false, now);

    let small = medplum_workload(&d);
    let small_index = build(&small);
    let (small_rate, small_matches) = run(&small_index, &d.observations, false, now);
    let (small_linear, _) = run(&small_index, &d.observations[..5000], true, now);

    if let Ok(dir) = std::env::var("FHIR_HUB_BENCH_OUT") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            format!("{dir}/medplum-workload.json"),
            json!({"criteria": small}).to_string(),
        )
        .unwrap();
    }

    println!(
        "matcher benchmark: {} Synthea Observations ({:.1} MB of JSON), one core",
        d.observations.len(),
        bytes as f64 / 1e6
    );
    println!(
        "  workload A: {} subscriptions (100,000 patient+category, 334 code, 333 value-quantity=gt, 333 date=ge)",
        criteria.len()
    );
    println!("    index build                {:>12.2} s", build_s);
    println!(
        "    memory per subscription    {:>12.0} bytes (RSS growth / subscriptions)",
        per_sub
    );
    println!(
        "    JSON parsing alone         {:>12.0} events/s   (a whole serde_json::Value)",
        parse_only
    );
    println!(
        "    indexed, whole parse       {:>12.0} events/s   {:.2} matches/event",
        indexed,
        matches as f64 / d.observations.len() as f64
    );
    println!(
        "    indexed, projected parse   {:>12.0} events/s   {:.2}x JSON parsing alone (parse only the elements the criteria read + match; by round: {})",
        projected,
        projected / parse_only,
        ratios.join(", ")
    );
    println!(
        "    linear scan, same evaluator{:>12.0} events/s   (300-event sample; indexed on it: {:.0})",
        linear, indexed_sample
    );
    println!(
        "    indexed / linear           {:>12.0}x",
        indexed_sample / linear
    );
    println!(
        "    change in place            {:>12.1} µs   (insert {:.1} + remove {:.1}; a rebuild: {:.0} ms)",
        change_s * 1e6,
        insert_s * 1e6,
        remove_s * 1e6,
        build_s * 1e3
    );
    println!(
        "    100 writes/s cost          {:>12.4} % of one core in place ({:.0} % by rebuilding); matching after {churn} changes: {:.0} events/s",
        share_in_place * 100.0,
        share_rebuild * 100.0,
        after_churn
    );
    println!(
        "  workload B: {} subscriptions Medplum can evaluate (500 patient+category, 500 code)",
        small.len()
    );
    println!(
        "    indexed (parse + match)    {:>12.0} events/s   {:.2} matches/event",
        small_rate,
        small_matches as f64 / d.observations.len() as f64
    );
    println!(
        "    linear scan, same evaluator{:>12.0} events/s",
        small_linear
    );
    println!(
        "RESULT indexed_a={indexed:.0} projected_a={projected:.0} parse_only={parse_only:.0} linear_a={linear:.0} ratio_a={:.0} bytes_per_sub={per_sub:.0} indexed_b={small_rate:.0} linear_b={small_linear:.0} change_us={:.1} rebuild_ms={:.0} read_value={:.0} read_publish={:.0} read_matcher={:.0}",
        indexed_sample / linear,
        change_s * 1e6,
        build_s * 1e3,
        reading[0],
        reading[1],
        reading[2]
    );
}
