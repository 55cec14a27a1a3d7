//! End to end, side by side with the broker's own limit (docs/benchmarks.md, "End to end").
//!
//! `cargo bench -p fhir-hub --bench e2e` runs, in one process and one run:
//! 1. **The broker alone** (with `FHIR_HUB_TEST_KAFKA`): a plain librdkafka producer (the
//!    hub's producer settings) sends the Synthea Observations to a topic with the hub's
//!    partition count, and a consumer reads them back: produce and consume records/s; the
//!    lower is the limit.
//! 2. **Kafka mode**: a hub process (all roles) with one subscription,
//!    `Observation?category=laboratory`, read by a gRPC client (`Subscribe` from event 1) and
//!    an SSE client; `fhir-hub publish` sends the same Observations. Events/s from the start
//!    of the publish to the last notification received by both clients, and the ratio to
//!    the broker's limit; the publish command's own rate against the plain producer's.
//! 3. **Embedded mode**: the same, published with `POST /events` (NDJSON, 1,000 per request,
//!    four requests at a time).
//!
//! For each hub process: CPU seconds (user + system) and peak RSS over its run. The table is
//! printed as markdown and written with the figures as JSON to `$FHIR_HUB_BENCH_OUT`
//! (`e2e.md`, `e2e.json`) when that is set. Sizes: `E2E_BENCH_EVENTS` (default: all 88,674
//! Observations of `../shared/data`). Under `cargo test` (no `--bench` argument) it runs a
//! smoke of 300 events, so it keeps compiling and running in CI.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{HubProcess, cpu_seconds, env_usize, hub_channel, peak_rss_kb, post};

const PARTITIONS: usize = 6;
const CRITERIA: &str = "Observation?category=laboratory";

fn data_path() -> String {
    std::env::var("FHIR_HUB_SYNTHEA").unwrap_or_else(|_| {
        format!(
            "{}/../../../shared/data/synthea-r4-resources.ndjson.gz",
            env!("CARGO_MANIFEST_DIR")
        )
    })
}

/// The first `n` Observations as NDJSON lines, and how many are laboratory results.
fn observations(n: usize) -> (Vec<String>, usize) {
    let file = std::fs::File::open(data_path()).expect("the Synthea data (set FHIR_HUB_SYNTHEA)");
    let mut out = Vec::new();
    let mut labs = 0;
    for line in BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
        let line = line.unwrap();
        if !line.starts_with("{\"resourceType\":\"Observation\"") {
            continue;
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        let lab = v["category"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["coding"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["code"] == "laboratory"))
            })
        });
        labs += usize::from(lab);
        out.push(line);
        if out.len() == n {
            break;
        }
    }
    (out, labs)
}

/// One row of the table.
struct Row {
    what: String,
    figure: String,
    note: String,
    json: (String, Value),
}

fn row(what: &str, figure: String, note: String, key: &str, value: Value) -> Row {
    Row {
        what: what.to_owned(),
        figure,
        note,
        json: (key.to_owned(), value),
    }
}

/// The broker alone: (produce records/s, consume records/s).
async fn broker_raw(brokers: &str, lines: &[String]) -> (f64, f64) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = format!("bench.raw.{}", uuid::Uuid::new_v4().simple());
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
    admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                &topic,
                PARTITIONS as i32,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    // the hub's producer settings (services/log/src/kafka.rs)
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // the producer has its metadata and producer id before the clock starts
    producer
        .send(
            FutureRecord::to(&topic).payload("warm-up").key("warm-up"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let t = Instant::now();
    let mut sends = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let key = format!("Observation/{i}");
        let mut record = FutureRecord::to(&topic).payload(line.as_bytes()).key(&key);
        // queue everything, then wait: the producer pipelines as the hub's does
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    sends.push(f);
                    break;
                }
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for s in sends {
        s.await.unwrap().unwrap();
    }
    let produce = lines.len() as f64 / t.elapsed().as_secs_f64();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    // the clock starts at the first record: joining the group is not reading
    let first = consumer.recv().await.unwrap();
    drop(first);
    let t = Instant::now();
    let mut read = 1usize;
    while read < lines.len() + 1 {
        let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await else {
            break;
        };
        read += 1;
    }
    let consume = (read - 1) as f64 / t.elapsed().as_secs_f64();
    (produce, consume)
}

/// Read `expected` notifications of `sub` over gRPC from event 1.
async fn grpc_reader(
    hub: &HubProcess,
    sub: String,
    expected: usize,
) -> tokio::task::JoinHandle<Instant> {
    use fhir_hub::channels::grpc::pb;
    let mut client =
        pb::notification_stream_client::NotificationStreamClient::connect(hub.grpc.clone())
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20);
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            subscription_id: sub,
            from_event_number: 1,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        let mut last = 0i64;
        while (last as usize) < expected {
            let n = stream.message().await.unwrap().unwrap();
            assert_eq!(n.event_number, last + 1, "in order, no gap");
            last = n.event_number;
        }
        Instant::now()
    })
}

/// Read `expected` notifications of `sub` over SSE (a raw HTTP/1.1 reader: one
/// `event-notification` per event).
async fn sse_reader(
    hub: &HubProcess,
    sub: &str,
    expected: usize,
) -> tokio::task::JoinHandle<Instant> {
    let addr = hub.url.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let path = format!("/fhir/Subscription/{sub}/$stream?from=1");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::spawn(async move {
        const MARK: &[u8] = b"event: event-notification";
        let mut buf = vec![0u8; 1 << 16];
        let mut tail: Vec<u8> = Vec::new();
        let mut seen = 0usize;
        while seen < expected {
            let k = match tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf)).await {
                Ok(Ok(k)) if k > 0 => k,
                _ => panic!("SSE: {seen} of {expected} notifications arrived"),
            };
            tail.extend_from_slice(&buf[..k]);
            let mut from = 0;
            while let Some(at) = tail[from..].windows(MARK.len()).position(|w| w == MARK) {
                seen += 1;
                from += at + MARK.len();
            }
            // keep a possibly cut mark for the next read
            let keep = tail.len().saturating_sub(MARK.len());
            tail.drain(..from.max(keep));
        }
        Instant::now()
    })
}

/// A hub with one criteria subscription read over gRPC and SSE: (grpc id, sse id).
async fn subscribed(hub: &HubProcess) -> (String, String) {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for code in ["grpc", "sse"] {
        // an R4 criteria subscription with the resource in each notification (the Backport
        // content extension is for topic-based ones)
        let mut channel = hub_channel(code);
        channel.as_object_mut().unwrap().remove("_payload");
        let s = post(
            &http,
            &format!("{}/fhir/Subscription", hub.url),
            &json!({"resourceType": "Subscription", "status": "requested", "reason": "bench",
                    "criteria": CRITERIA, "channel": channel}),
        )
        .await;
        ids.push(s["id"].as_str().unwrap_or_else(|| panic!("{s}")).to_owned());
    }
    (ids[0].clone(), ids[1].clone())
}

/// What one end-to-end run measured.
struct Run {
    events_per_s: f64,
    publish_per_s: f64,
    cpu_s: f64,
    peak_rss_mb: f64,
    notifications: usize,
}

/// Publish the Observations into `hub` (with `publish`, which returns when they are
/// accepted) and wait until both readers have every laboratory notification.
async fn end_to_end<F, Fut>(hub: &HubProcess, labs: usize, n: usize, publish: F) -> Run
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (grpc_id, sse_id) = subscribed(hub).await;
    let pid = hub.child.id();
    let grpc = grpc_reader(hub, grpc_id, labs).await;
    let sse = sse_reader(hub, &sse_id, labs).await;
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    publish().await;
    let published = t.elapsed().as_secs_f64();
    let (g, s) = (grpc.await.unwrap(), sse.await.unwrap());
    let done = g.max(s).duration_since(t).as_secs_f64();
    Run {
        events_per_s: n as f64 / done,
        publish_per_s: n as f64 / published,
        cpu_s: cpu_seconds(pid) - cpu0,
        peak_rss_mb: peak_rss_kb(pid) as f64 / 1024.0,
        notifications: labs * 2,
    }
}

#[tokio::main]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke {
        300
    } else {
        env_usize("E2E_BENCH_EVENTS", usize::MAX)
    };
    let (lines, labs) = observations(n);
    let n = lines.len();
    let scratch = tempfile::tempdir().unwrap();
    let ndjson = scratch.path().join("observations.ndjson");
    std::fs::write(&ndjson, lines.join("\n") + "\n").unwrap();
    println!(
        "end-to-end benchmark: {n} Synthea Observations ({labs} laboratory, matched by `{CRITERIA}`, read by one gRPC and one SSE client, full resources){}",
        if smoke { " [smoke]" } else { "" }
    );
    let mut rows: Vec<Row> = Vec::new();

    let brokers = std::env::var("FHIR_HUB_TEST_KAFKA")
        .ok()
        .filter(|b| !b.is_empty());
    if let Some(brokers) = brokers.as_deref() {
        let (produce, consume) = broker_raw(brokers, &lines).await;
        let limit = produce.min(consume);
        rows.push(row(
            "broker alone: librdkafka producer",
            format!("{produce:.0} records/s"),
            format!("{PARTITIONS} partitions, the hub's producer settings"),
            "broker_produce_per_s",
            json!(produce),
        ));
        rows.push(row(
            "broker alone: consumer of the same records",
            format!("{consume:.0} records/s"),
            format!("limit: {limit:.0}/s (the lower)"),
            "broker_consume_per_s",
            json!(consume),
        ));
        let hub = common::start_hub(Some((brokers, PARTITIONS)), "");
        let topic = hub.topic.clone().unwrap();
        let config = hub.dir.path().join("bench.toml");
        let run = end_to_end(&hub, labs, n, || async {
            let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_fhir-hub"))
                .arg("--config")
                .arg(&config)
                .args(["--kafka-brokers", brokers])
                .env("HUB_LOG__CHANGES_TOPIC", &topic)
                .env("RUST_LOG", "error")
                .args(["publish", "--quiet", "--input"])
                .arg(&ndjson)
                .stdout(std::process::Stdio::null())
                .status()
                .await
                .unwrap();
            assert!(status.success(), "fhir-hub publish failed: {status}");
        })
        .await;
        rows.push(row(
            "`fhir-hub publish` (process start to exit)",
            format!("{:.0} events/s", run.publish_per_s),
            format!(
                "{:.0}% of the plain producer (goal ≥ 80%)",
                100.0 * run.publish_per_s / produce
            ),
            "kafka_publish_per_s",
            json!(run.publish_per_s),
        ));
        rows.push(row(
            "Kafka mode end to end: publish → both clients have every notification",
            format!("{:.0} events/s", run.events_per_s),
            format!(
                "{:.0}% of the broker's limit (goal ≥ 80%); {} notifications; hub CPU {:.1} s, peak RSS {:.0} MB",
                100.0 * run.events_per_s / limit,
                run.notifications,
                run.cpu_s,
                run.peak_rss_mb
            ),
            "kafka_end_to_end_per_s",
            json!({"events_per_s": run.events_per_s, "ratio_to_broker": run.events_per_s / limit,
                   "hub_cpu_s": run.cpu_s, "hub_peak_rss_mb": run.peak_rss_mb}),
        ));
    } else {
        println!("  (Kafka mode skipped: set FHIR_HUB_TEST_KAFKA to a broker)");
    }

    let hub = common::start_hub(None, "");
    let url = format!("{}/events", hub.url);
    let run = end_to_end(&hub, labs, n, || async {
        let http = reqwest::Client::new();
        let chunks: Vec<String> = lines.chunks(1000).map(|c| c.join("\n")).collect();
        let mut pending = futures::stream::iter(chunks.into_iter().map(|body| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "POST /events: {}", r.status());
            }
        }))
        .buffer_unordered(4);
        use futures::StreamExt;
        while pending.next().await.is_some() {}
    })
    .await;
    rows.push(row(
        "embedded end to end: publish → both clients have every notification",
        format!("{:.0} events/s", run.events_per_s),
        format!(
            "{} notifications ({:.0}/s); `POST /events` alone {:.0} events/s; hub CPU {:.1} s, peak RSS {:.0} MB",
            run.notifications,
            run.notifications as f64 * run.events_per_s / n as f64,
            run.publish_per_s,
            run.cpu_s,
            run.peak_rss_mb
        ),
        "embedded_end_to_end_per_s",
        json!({"events_per_s": run.events_per_s, "publish_per_s": run.publish_per_s,
               "hub_cpu_s": run.cpu_s, "hub_peak_rss_mb": run.peak_rss_mb}),
    ));

    let mut md = String::from("| what | measured | against |\n|---|---|---|\n");
    for r in &rows {
        md.push_str(&format!("| {} | {} | {} |\n", r.what, r.figure, r.note));
    }
    println!("\n{md}");
    if let Ok(dir) = std::env::var("FHIR_HUB_BENCH_OUT") {
        std::fs::create_dir_all(&dir).unwrap();
        let mut figures = serde_json::Map::new();
        figures.insert("events".into(), json!(n));
        figures.insert("laboratory".into(), json!(labs));
        figures.insert("smoke".into(), json!(smoke));
        for r in rows {
            figures.insert(r.json.0, r.json.1);
        }
        std::fs::write(format!("{dir}/e2e.md"), &md).unwrap();
        std::fs::write(
            format!("{dir}/e2e.json"),
            serde_json::to_string_pretty(&Value::Object(figures)).unwrap(),
        )
        .unwrap();
    }
}
