//! What the benchmarks that run the real `fhir-hub` binary share: starting it, reading its
//! memory and CPU from /proc, and printing latencies.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A hub process (all roles), killed on drop.
pub(crate) struct HubProcess {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) grpc: String,
    pub(crate) dir: tempfile::TempDir,
    /// The changes topic in Kafka mode.
    pub(crate) topic: Option<String>,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hub binary: this build's, or another build's named by `FHIR_HUB_BENCH_BIN` (to
/// compare two builds on one machine in one session).
pub(crate) fn hub_binary() -> std::ffi::OsString {
    std::env::var_os("FHIR_HUB_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_fhir-hub").into())
}

/// Start the release binary on free ports with a data directory of its own: embedded mode, or
/// Kafka mode on `kafka` = (brokers, partitions) with a changes topic of its own; `config`
/// is TOML added to the defaults.
pub(crate) fn start_hub(kafka: Option<(&str, usize)>, config: &str) -> HubProcess {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.toml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = Command::new(hub_binary());
    cmd.arg("--config").arg(&file);
    let mut topic = None;
    if let Some((brokers, partitions)) = kafka {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let t = format!("bench.changes.{run}");
        // a consumer group of its own: a killed hub's member would otherwise hold up the
        // next hub's rebalance until its session times out (one run fell to 90 events/s)
        cmd.args(["--kafka-brokers", brokers])
            .env("HUB_LOG__CHANGES_TOPIC", &t)
            .env("HUB_KAFKA__MATCHER_GROUP", format!("bench.matcher.{run}"))
            .env("HUB_KAFKA__PARTITIONS", partitions.to_string());
        topic = Some(t);
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("HUB_GRPC__LISTEN", "127.0.0.1:0")
        .env("HUB_MATCHER__POLL_MS", "20")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut grpc) = (String::new(), String::new());
    while url.is_empty() || grpc.is_empty() {
        let line = lines.next().unwrap().unwrap();
        if let Some(u) = line.strip_prefix("fhir-hub listening on ") {
            url = u.to_owned();
        }
        if let Some(a) = line.strip_prefix("fhir-hub grpc listening on ") {
            grpc = format!("http://{a}");
        }
    }
    std::thread::spawn(move || for _ in lines {});
    HubProcess {
        child,
        url,
        grpc,
        dir,
        topic,
    }
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a process now, in KB.
pub(crate) fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// The most resident memory a process has had, in KB.
pub(crate) fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name
    (ticks(11) + ticks(12)) / 100.0
}

/// A channel of one of the hub's own types (`sse`, `grpc`) in the Backport R4 form, id-only.
pub(crate) fn hub_channel(code: &str) -> Value {
    json!({"type": "rest-hook", "payload": "application/fhir+json",
        "_type": {"extension": [{
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type",
            "valueCoding": {"system": "urn:fhir-hub:channel-type", "code": code}}]},
        "_payload": {"extension": [{
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
            "valueCode": "id-only"}]}})
}

pub(crate) async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    http.post(url)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// (p50, p95, p99, max) of latencies in ms.
pub(crate) fn quantiles(v: &mut [f64]) -> Option<(f64, f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    Some((q(0.5), q(0.95), q(0.99), v[v.len() - 1]))
}

pub(crate) fn percentiles(mut v: Vec<f64>) -> String {
    match quantiles(&mut v) {
        None => "nothing arrived".to_owned(),
        Some((p50, _, p99, max)) => format!(
            "p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({} samples)",
            v.len()
        ),
    }
}

/// A new topic of `partitions` on `brokers`, named after `prefix`.
pub(crate) async fn create_topic(brokers: &str, prefix: &str, partitions: i32) -> String {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let topic = format!("{prefix}.{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    topic
}

/// A plain librdkafka producer with the hub's producer settings (services/log/src/kafka.rs).
pub(crate) fn hub_like_producer(brokers: &str) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// A final glucose Observation (LOINC 2345-7) named `id`, for `patient` if given: what the
/// benchmarks' subscriptions match.
pub(crate) fn glucose(id: &str, patient: Option<&str>) -> Value {
    let mut obs = json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}});
    if let Some(p) = patient {
        obs["subject"] = json!({"reference": format!("Patient/{p}")});
    }
    obs
}

/// What [`offered_load`] measured.
pub(crate) struct OfferedLoad {
    /// Publish → receipt of each event that arrived, ms.
    pub(crate) latencies: Vec<f64>,
    /// Each publish request's own time (sent → accepted), ms.
    pub(crate) answered: Vec<f64>,
    pub(crate) accepted: usize,
    pub(crate) sent: usize,
    /// The rate actually sent, events/s.
    pub(crate) offered: f64,
}

/// Publish `rate` glucose Observations/s for `secs` seconds to `hub`, each its own
/// `POST /events`, and time each from its send to its arrival on an SSE client of
/// subscription `sse_id` (which they must all match), after ten warm-up events have gone
/// through the whole path. `before_id` is what precedes an Observation's id in what the
/// client receives (`Observation/` in an id-only bundle, `"id":"` in a full resource);
/// `mode` names the run in messages.
pub(crate) async fn offered_load(
    hub: &HubProcess,
    sse_id: &str,
    before_id: &str,
    rate: u64,
    secs: u64,
    mode: &str,
    per_request: usize,
) -> OfferedLoad {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = hub.url.trim_start_matches("http://").to_owned();
    let path = format!("/fhir/Subscription/{sse_id}/$stream");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Warm up before the clock starts, as the broker's own figure does: ten events through
    // the whole path (the matcher's consumer has joined its group, connections are open).
    let http = reqwest::Client::new();
    let url = format!("{}/events", hub.url);
    {
        let mut buf = vec![0u8; 65536];
        let mut text = String::new();
        for i in 0..10 {
            let obs = glucose(&format!("warm-{i}"), None);
            http.post(&url)
                .header("content-type", "application/fhir+json")
                .body(obs.to_string())
                .send()
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let last = format!("{before_id}warm-9");
        while !text.contains(&last) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(k)) if k > 0 => text.push_str(&String::from_utf8_lossy(&buf[..k])),
                _ => panic!("{mode}: the warm-up events did not arrive within 60 s"),
            }
        }
    }
    let origin = Instant::now();
    let total = (rate * secs) as usize;
    let marker = format!("{before_id}lat-");
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut text = String::new();
        let mut lat = Vec::with_capacity(total);
        // a bundle names its focus more than once: count each event once
        let mut seen = std::collections::HashSet::new();
        // keep-alive comments keep the socket busy: stop after 20 s without a new event
        let mut progress = Instant::now();
        while lat.len() < total && progress.elapsed() < Duration::from_secs(20) {
            let k = match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
                Ok(Ok(k)) if k > 0 => k,
                _ => break,
            };
            text.push_str(&String::from_utf8_lossy(&buf[..k]));
            // each event's Observation id names it: lat-<seq>-<micros since origin> (two
            // sends can share a microsecond; the sequence keeps them apart)
            while let Some(at) = text.find(&marker) {
                let rest = &text[at + marker.len()..];
                let end = rest
                    .find(|c: char| !c.is_ascii_digit() && c != '-')
                    .unwrap_or(rest.len());
                if end == rest.len() {
                    break; // the name continues in the next read
                }
                let name = rest[..end].to_owned();
                let sent: u64 = name
                    .split('-')
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if seen.insert(name) {
                    progress = Instant::now();
                    let now = origin.elapsed().as_micros() as u64;
                    lat.push((sent, now.saturating_sub(sent) as f64 / 1000.0));
                }
                text.drain(..at + marker.len() + end);
            }
        }
        lat
    });
    // one request per `per_request` events (NDJSON when more than one), at the offered rate
    let per_request = per_request.max(1);
    let mut tick =
        tokio::time::interval(Duration::from_micros(1_000_000 * per_request as u64 / rate));
    let mut sends = Vec::with_capacity(total);
    for first in (0..total).step_by(per_request) {
        tick.tick().await;
        let (http, url) = (http.clone(), url.clone());
        let sent = origin.elapsed().as_micros();
        let last = (first + per_request).min(total);
        sends.push(tokio::spawn(async move {
            let body: Vec<String> = (first..last)
                .map(|seq| glucose(&format!("lat-{seq}-{sent}"), None).to_string())
                .collect();
            let kind = if body.len() == 1 {
                "application/fhir+json"
            } else {
                "application/x-ndjson"
            };
            let t = Instant::now();
            let ok = http
                .post(&url)
                .header("content-type", kind)
                .body(body.join("\n"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (ok, t.elapsed().as_secs_f64() * 1000.0, last - first)
        }));
    }
    let mut accepted = 0usize;
    let mut answered = Vec::with_capacity(total);
    for t in sends {
        if let Ok((ok, ms, n)) = t.await {
            accepted += if ok { n } else { 0 };
            answered.push(ms);
        }
    }
    let offered = total as f64 / origin.elapsed().as_secs_f64();
    let timed = reader.await.unwrap();
    if std::env::var("STREAMS_BENCH_TIMELINE").is_ok() {
        // where the slow ones are: per 500 ms of sending, how many and the worst
        let mut slots = std::collections::BTreeMap::<u64, (usize, f64)>::new();
        for &(sent, ms) in &timed {
            let s = slots.entry(sent / 500_000).or_default();
            s.0 += 1;
            s.1 = s.1.max(ms);
        }
        for (slot, (n, worst)) in slots {
            println!(
                "  {mode} t={:>5.1}s events {n:>4} worst {worst:>7.1} ms",
                slot as f64 / 2.0
            );
        }
    }
    OfferedLoad {
        latencies: timed.into_iter().map(|(_, ms)| ms).collect(),
        answered,
        accepted,
        sent: total,
        offered,
    }
}
