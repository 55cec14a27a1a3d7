//! Stream channel benchmark (docs/benchmarks.md): what idle stream connections cost the hub,
//! how fast one event fans out to all of them, and how fast a gRPC consumer replays the log.
//!
//! `cargo bench -p fhir-hub --bench streams` (sizes: STREAMS_BENCH_CONNECTIONS, default
//! 10,000; STREAMS_BENCH_REPLAY, default 1,000,000; STREAMS_BENCH_RATE, the offered load of
//! the latency runs, default 1,000 events/s; with FHIR_HUB_TEST_KAFKA, Kafka mode and the
//! broker's own latency too). The hub is the real binary in its own
//! process (embedded mode), so its memory is measured alone (RSS growth from
//! /proc/PID/status); the clients run here.
//!
//! 1. N SSE connections to one subscription, then N websocket bindings to another: RSS growth
//!    per idle connection; then one matching event, and the time until every client has it
//!    (p50/p99/max).
//! 2. gRPC replay: R notifications logged for one subscription (written through the store,
//!    as the matcher writes them), read by one `Subscribe` from event number 1.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use common::{HubProcess, env_usize, hub_channel, percentiles, post, rss_kb};

/// `fetch.wait.max.ms` for Kafka mode and the broker's own figure
/// (`STREAMS_BENCH_FETCH_WAIT_MS`, default 1): tansu answers a fetch only when that wait
/// ends, even with records waiting, so it sets the floor of every latency there (a Kafka
/// broker answers as soon as a record arrives, whatever the setting).
fn fetch_wait_ms() -> usize {
    env_usize("STREAMS_BENCH_FETCH_WAIT_MS", 1)
}

fn start_hub(kafka: Option<&str>) -> HubProcess {
    let config = format!(
        "[kafka.client]\n\"fetch.wait.max.ms\" = \"{}\"\n",
        fetch_wait_ms()
    );
    common::start_hub(kafka.map(|b| (b, 1)), &config)
}

const TOPIC: &str = "http://example.org/topics/bench-streams";

fn subscription(channel: Value) -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "bench",
           "criteria": TOPIC, "channel": channel})
}

/// Open `n` connections with `open`, measure the hub's RSS growth, publish one event and
/// time its arrival at every client (`wait` resolves when a client has it).
async fn idle_and_fan_out<C, O, W, F1, F2>(what: &str, hub: &HubProcess, n: usize, open: O, wait: W)
where
    C: Send + 'static,
    O: Fn(usize) -> F1,
    F1: std::future::Future<Output = C>,
    W: Fn(C) -> F2 + Send + Sync + Copy + 'static,
    F2: std::future::Future<Output = ()> + Send,
{
    let pid = hub.child.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kb(pid);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(open(i).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kb(pid);
    println!(
        "{what}: {n} idle connections, hub RSS {} → {} MB: {:.1} KB per connection",
        before / 1024,
        after / 1024,
        (after.saturating_sub(before)) as f64 / n as f64
    );
    let arrivals = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for c in clients {
        let arrivals = Arc::clone(&arrivals);
        tasks.push(tokio::spawn(async move {
            wait(c).await;
            arrivals
                .lock()
                .await
                .push(start.elapsed().as_secs_f64() * 1000.0);
        }));
    }
    let http = reqwest::Client::new();
    let obs = common::glucose(&format!("fan-{what}"), None);
    post(&http, &format!("{}/events", hub.url), &obs).await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    let got = arrivals.lock().await.clone();
    println!("{what}: one event to every client: {}", percentiles(got));
}

/// A fresh hub with a topic and one subscription of each stream channel type; (hub, sse id,
/// websocket id, grpc id). Each phase gets its own process, so memory one phase freed does
/// not flatter the next.
async fn prepared_hub() -> (HubProcess, String, String, String) {
    prepared_hub_on(None).await
}

async fn prepared_hub_on(kafka: Option<&str>) -> (HubProcess, String, String, String) {
    let hub = start_hub(kafka);
    let http = reqwest::Client::new();
    let topic = json!({"resourceType": "SubscriptionTopic", "url": TOPIC, "status": "active",
        "resourceTrigger": [{"resource": "http://hl7.org/fhir/StructureDefinition/Observation",
                             "supportedInteraction": ["create", "update"]}]});
    post(
        &http,
        &format!("{}/fhir/SubscriptionTopic", hub.url),
        &topic,
    )
    .await;
    let sse = post(
        &http,
        &format!("{}/fhir/Subscription", hub.url),
        &subscription(hub_channel("sse")),
    )
    .await;
    let sse_id = sse["id"].as_str().unwrap().to_owned();
    let ws_channel = json!({"type": "websocket", "payload": "application/fhir+json"});
    let ws = post(
        &http,
        &format!("{}/fhir/Subscription", hub.url),
        &subscription(ws_channel),
    )
    .await;
    let ws_id = ws["id"].as_str().unwrap().to_owned();
    let grpc = post(
        &http,
        &format!("{}/fhir/Subscription", hub.url),
        &subscription(hub_channel("grpc")),
    )
    .await;
    let grpc_id = grpc["id"].as_str().unwrap().to_owned();
    (hub, sse_id, ws_id, grpc_id)
}

/// Publish `rate` events/s for `secs` seconds, each one its own request, and time each from
/// the request to its arrival on an SSE client of a subscription they all match (after ten
/// warm-up events have gone through).
async fn latency(mode: &str, kafka: Option<&str>, rate: u64, secs: u64) {
    let (hub, sse_id, _, _) = prepared_hub_on(kafka).await;
    let load = common::offered_load(&hub, &sse_id, "Observation/", rate, secs, mode, 1).await;
    println!(
        "{mode}: publish → SSE client, {rate} events/s asked ({:.0}/s sent) for {secs} s: {} (received {} of {} accepted, {} sent); the publish request alone (sent → 202): {}",
        load.offered,
        percentiles(load.latencies.clone()),
        load.latencies.len(),
        load.accepted,
        load.sent,
        percentiles(load.answered.clone())
    );
}

/// The broker's own latency, the floor for Kafka mode: a plain librdkafka producer (the
/// hub's producer settings: idempotent, acks=all, linger 5 ms) sends `rate` records/s for
/// `secs` seconds to a topic of its own, and a consumer (the hub's fetch settings) times each
/// from send to receipt.
async fn broker_latency(brokers: &str, rate: u64, secs: u64) {
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::FutureRecord;
    let topic = common::create_topic(brokers, "bench.raw", 1).await;
    let producer = common::hub_like_producer(brokers);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait_ms().to_string())
        .set("session.timeout.ms", "10000")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let origin = Instant::now();
    let total = (rate * secs) as usize;
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total);
        while lat.len() < total {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await
            else {
                break;
            };
            let sent: Option<u64> = m
                .payload()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| p.parse().ok());
            if let Some(sent) = sent {
                let now = origin.elapsed().as_micros() as u64;
                lat.push(now.saturating_sub(sent) as f64 / 1000.0);
            }
        }
        lat
    });
    // the consumer has joined its group before the clock starts
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut sends = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let payload = (origin.elapsed().as_micros() as u64).to_string();
        let (producer, topic) = (producer.clone(), topic.clone());
        sends.push(tokio::spawn(async move {
            let key = format!("k{i}");
            producer
                .send(
                    FutureRecord::to(&topic).payload(&payload).key(&key),
                    Duration::from_secs(30),
                )
                .await
                .is_ok()
        }));
    }
    for s in sends {
        let _ = s.await;
    }
    let lat = reader.await.unwrap();
    println!(
        "kafka broker alone (librdkafka producer → consumer, the hub's settings, fetch.wait.max.ms {}), {rate} records/s for {secs} s: {}",
        fetch_wait_ms(),
        percentiles(lat)
    );
}

#[tokio::main]
async fn main() {
    let n = env_usize("STREAMS_BENCH_CONNECTIONS", 10_000);
    let replay = env_usize("STREAMS_BENCH_REPLAY", 1_000_000);
    let http = reqwest::Client::new();

    let rate = env_usize("STREAMS_BENCH_RATE", 1000) as u64;
    latency("embedded", None, rate, 10).await;
    match std::env::var("FHIR_HUB_TEST_KAFKA") {
        Ok(brokers) if !brokers.is_empty() => {
            broker_latency(&brokers, rate, 10).await;
            latency("kafka", Some(&brokers), rate, 10).await
        }
        _ => println!("kafka: set FHIR_HUB_TEST_KAFKA to a broker to measure Kafka mode"),
    }

    let (hub, sse_id, _, _) = prepared_hub().await;
    let addr = hub.url.trim_start_matches("http://").to_owned();

    // SSE: a raw HTTP/1.1 request per connection; the handshake event proves it is open
    let sse_path = format!("/fhir/Subscription/{sse_id}/$stream");
    idle_and_fan_out(
        "SSE",
        &hub,
        n,
        |_| {
            let (addr, path) = (addr.clone(), sse_path.clone());
            async move {
                let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
                s.write_all(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
                let mut buf = vec![0u8; 8192];
                let mut seen = String::new();
                while !seen.contains("event: handshake") {
                    let k = s.read(&mut buf).await.unwrap();
                    assert!(k > 0, "SSE connection closed");
                    seen.push_str(&String::from_utf8_lossy(&buf[..k]));
                }
                s
            }
        },
        |mut s: tokio::net::TcpStream| async move {
            let mut buf = vec![0u8; 16384];
            let mut seen = String::new();
            while !seen.contains("event: event-notification") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => seen.push_str(&String::from_utf8_lossy(&buf[..k])),
                }
            }
        },
    )
    .await;

    drop(hub);

    // websocket: one binding per connection
    let (hub, _, ws_id, _) = prepared_hub().await;
    let addr = hub.url.trim_start_matches("http://").to_owned();
    let ws_url = format!("ws://{addr}/fhir/$subscription-ws");
    let token_url = format!(
        "{}/fhir/Subscription/{ws_id}/$get-ws-binding-token",
        hub.url
    );
    idle_and_fan_out(
        "websocket",
        &hub,
        n,
        |_| {
            let (url, token_url, http) = (ws_url.clone(), token_url.clone(), http.clone());
            async move {
                // a binding token binds one socket: one token per connection
                let p: Value = http
                    .get(&token_url)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let token = p["parameter"][0]["valueString"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .unwrap();
                ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
                    "bind-with-token: {token}"
                )))
                .await
                .unwrap();
                let _handshake = ws.next().await;
                ws
            }
        },
        |mut ws| async move {
            let _ = ws.next().await;
        },
    )
    .await;

    drop(hub);

    // gRPC replay
    let (hub, _, _, grpc_id) = prepared_hub().await;
    let store = hub_store::Store::connect(&format!(
        "sqlite://{}",
        hub.dir.path().join("hub.db").display()
    ))
    .await
    .unwrap();
    let t = Instant::now();
    let mut logged = 0usize;
    while logged < replay {
        let batch: Vec<hub_store::NewNotification> = (logged..(logged + 5000).min(replay))
            .map(|i| hub_store::NewNotification {
                tenant: "default".into(),
                subscription_id: grpc_id.clone(),
                event_id: format!("replay-{i}"),
                action: "create".into(),
                focus_type: "Observation".into(),
                focus_id: format!("o{i}"),
                focus_version: None,
                occurred_at: "2024-01-01T00:00:00Z".into(),
                resource: None,
            })
            .collect();
        logged += store.append_notifications(&batch).await.unwrap().len();
    }
    println!(
        "gRPC replay: {replay} notifications logged in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    use fhir_hub::channels::grpc::pb;
    let mut client =
        pb::notification_stream_client::NotificationStreamClient::connect(hub.grpc.clone())
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20);
    let t = Instant::now();
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            subscription_id: grpc_id.clone(),
            from_event_number: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut read = 0usize;
    let mut last = 0i64;
    while read < replay {
        let n = stream.message().await.unwrap().unwrap();
        assert_eq!(n.event_number, last + 1, "in order, no gap");
        last = n.event_number;
        read += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "gRPC replay: {read} notifications from event 1 in {secs:.1} s: {:.0} notifications/s (goal ≥ 100,000/s)",
        read as f64 / secs
    );
}
