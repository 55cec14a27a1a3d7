//! Delivery benchmark: the real `fhir-hub` binary delivering signed rest-hooks to a local
//! receiver in this process (docs/benchmarks.md explains the scenarios).
//!
//! `cargo bench -p fhir-hub --bench delivery` prints deliveries/s with 1,000 subscriptions
//! and the CPU each process used, then the p99 latency of healthy endpoints with and without
//! 10% of 100 endpoints dead (connection refused) or hanging. PostgreSQL is used when
//! `FHIR_HUB_TEST_DATABASE_URL` names a server, SQLite otherwise.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    /// Arrival instants of notifications, by resource id.
    arrivals: Vec<(String, Instant)>,
    handshakes: usize,
}

type Shared = Arc<Mutex<Seen>>;

async fn hook(
    State(s): State<Shared>,
    Path(rest): Path<String>,
    headers: axum::http::HeaderMap,
) -> StatusCode {
    if rest.starts_with("hang") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let handshake = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("handshake-"));
    let mut seen = s.lock().unwrap();
    if handshake {
        seen.handshakes += 1;
    } else {
        seen.arrivals.push((rest, Instant::now()));
    }
    StatusCode::OK
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

struct HubProcess {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn database_url(dir: &std::path::Path) -> String {
    match std::env::var("FHIR_HUB_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => hub_store::fresh_postgres_schema(&base, "bench")
            .await
            .unwrap(),
        _ => format!("sqlite://{}", dir.join("hub.db").display()),
    }
}

async fn start_hub() -> HubProcess {
    let dir = tempfile::tempdir().unwrap();
    let db = database_url(dir.path()).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhir-hub"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--data-dir",
        ])
        .arg(dir.path())
        .env("HUB_DELIVERY__ALLOWED_NETWORKS", "[\"127.0.0.0/8\"]")
        .env("HUB_DELIVERY__POLL_MS", "100")
        .env("HUB_DELIVERY__REQUEST_TIMEOUT_MS", "5000")
        .env(
            "HUB_DELIVERY__RETRY_SCHEDULE",
            "[\"0s\",\"1s\",\"2s\",\"5s\",\"10s\",\"30s\",\"1m\"]",
        )
        .env("HUB_MATCHER__POLL_MS", "20")
        .env("HUB_GRPC__LISTEN", "")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("fhir-hub listening on ")
        .unwrap()
        .to_owned();
    HubProcess {
        child,
        url,
        _dir: dir,
    }
}

async fn subscribe(http: &reqwest::Client, hub: &str, endpoint: &str, code: &str) {
    let res = http
        .post(format!("{hub}/fhir/Subscription"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Subscription", "status": "requested", "reason": "bench",
            "criteria": format!("Observation?code=http://loinc.org|{code}"),
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

fn observation(id: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/bench"}, "valueQuantity": {"value": 7.2, "unit": "mmol/L"}})
}

async fn publish(http: &reqwest::Client, hub: &str, events: &[Value]) {
    let body: Vec<String> = events.iter().map(Value::to_string).collect();
    let res = http
        .post(format!("{hub}/events"))
        .header("content-type", "application/x-ndjson")
        .body(body.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

async fn wait_for(seen: &Shared, f: impl Fn(&Seen) -> bool, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f(&seen.lock().unwrap()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn receiver() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/{*rest}", axum::routing::any(hook))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// Scenario 1: 1,000 subscriptions on one code; events fan out to all of them.
async fn throughput(http: &reqwest::Client) {
    let hub = start_hub().await;
    let (base, seen) = receiver().await;
    for i in 0..1000 {
        subscribe(http, &hub.url, &format!("{base}/s{i}"), "bench").await;
    }
    assert!(
        wait_for(&seen, |s| s.handshakes >= 1000, Duration::from_secs(120)).await,
        "handshakes"
    );
    let events = 20;
    let total = events * 1000;
    let (hub_cpu0, me_cpu0) = (cpu_seconds(hub.child.id()), cpu_seconds(std::process::id()));
    let start = Instant::now();
    let batch: Vec<Value> = (0..events)
        .map(|i| observation(&format!("t{i}"), "bench"))
        .collect();
    publish(http, &hub.url, &batch).await;
    let done = wait_for(
        &seen,
        |s| s.arrivals.len() >= total,
        Duration::from_secs(300),
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    let got = seen.lock().unwrap().arrivals.len();
    let (first, last) = {
        let seen = seen.lock().unwrap();
        let first = seen.arrivals.iter().map(|(_, t)| *t).min();
        let last = seen.arrivals.iter().map(|(_, t)| *t).max();
        (
            first.map(|t| t.duration_since(start).as_secs_f64()),
            first
                .zip(last)
                .map(|(a, b)| b.duration_since(a).as_secs_f64()),
        )
    };
    let hub_cpu = cpu_seconds(hub.child.id()) - hub_cpu0;
    let me_cpu = cpu_seconds(std::process::id()) - me_cpu0;
    println!(
        "  throughput: {got} of {total} signed deliveries to 1,000 subscriptions in {secs:.2} s{}",
        if done { "" } else { " (timed out)" }
    );
    println!(
        "    end to end, deliveries/s   {:>10.0}   (publish → last receipt)",
        got as f64 / secs
    );
    println!(
        "    first delivery after       {:>10.2} s   (matching and logging 20,000 notifications)",
        first.unwrap_or(f64::NAN)
    );
    println!(
        "    delivery alone, /s         {:>10.0}   (first → last receipt; goal >= 5,000)",
        got as f64 / last.unwrap_or(f64::NAN)
    );
    println!(
        "    CPU: hub {hub_cpu:.1} s ({:.0}% of one core), receiver+load {me_cpu:.1} s ({:.0}%)",
        100.0 * hub_cpu / secs,
        100.0 * me_cpu / secs
    );
}

/// Scenario 2: 100 subscriptions, the first `bad` of them dead or hanging. Returns the
/// latencies (ms) of deliveries to subscriptions 10..100, which are healthy in every run.
async fn isolation(http: &reqwest::Client, bad: usize) -> Vec<f64> {
    let hub = start_hub().await;
    let (base, seen) = receiver().await;
    for i in 0..100 {
        let endpoint = if i < bad / 2 {
            "http://127.0.0.1:9/dead".to_owned() // connection refused
        } else if i < bad {
            format!("{base}/hang{i}")
        } else {
            format!("{base}/s{i}")
        };
        subscribe(http, &hub.url, &endpoint, "iso").await;
    }
    let healthy = 100 - bad;
    assert!(
        wait_for(&seen, |s| s.handshakes >= healthy, Duration::from_secs(60)).await,
        "handshakes"
    );
    // The bad ones have failed their handshakes by now and keep retrying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let events = 80;
    for i in 0..events {
        let id = format!("i{i}");
        sent.insert(id.clone(), Instant::now());
        publish(http, &hub.url, &[observation(&id, "iso")]).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_for(
        &seen,
        |s| s.arrivals.len() >= events * healthy,
        Duration::from_secs(60),
    )
    .await;
    let seen = seen.lock().unwrap();
    seen.arrivals
        .iter()
        .filter_map(|(path, at)| {
            // s{i}/Observation/{id}
            let mut parts = path.split('/');
            let sub: usize = parts.next()?.strip_prefix('s')?.parse().ok()?;
            let id = parts.nth(1)?;
            let t = sent.get(id)?;
            (sub >= 10).then(|| at.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let http = reqwest::Client::new();
    let db = if std::env::var("FHIR_HUB_TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "delivery benchmark (store: {db}, embedded log, payload + Standard Webhooks signatures)"
    );
    throughput(&http).await;
    // Interleaved rounds on fresh hubs, so drift on a shared machine hits both sides.
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let (mut p99_good, mut p99_bad) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut a = isolation(&http, 0).await;
        a.sort_by(f64::total_cmp);
        p99_good.push(percentile(&a, 0.99).round());
        good.extend(a);
        let mut b = isolation(&http, 10).await;
        b.sort_by(f64::total_cmp);
        p99_bad.push(percentile(&b, 0.99).round());
        bad.extend(b);
    }
    good.sort_by(f64::total_cmp);
    bad.sort_by(f64::total_cmp);
    let (p99a, p99b) = (percentile(&good, 0.99), percentile(&bad, 0.99));
    println!("  isolation: 100 subscriptions, 80 events 25 ms apart, 3 interleaved rounds;");
    println!("  latency publish → receipt at the 90 endpoints that are healthy in both setups");
    println!(
        "    all healthy                p50 {:>7.1} ms   p99 {p99a:>7.1} ms   ({} deliveries; p99 by round {p99_good:?})",
        percentile(&good, 0.5),
        good.len()
    );
    println!(
        "    10% dead or hanging        p50 {:>7.1} ms   p99 {p99b:>7.1} ms   ({} deliveries; p99 by round {p99_bad:?})",
        percentile(&bad, 0.5),
        bad.len()
    );
    println!(
        "    p99 change                 {:>+7.1}%   (goal < +10%)",
        100.0 * (p99b - p99a) / p99a
    );
}
