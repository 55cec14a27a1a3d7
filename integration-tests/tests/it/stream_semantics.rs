//! The edges of the stream semantics (issue 29, defects 5–7), with real clients: the
//! slow-reader policy (a raw socket that completes its handshake and never reads again, and a
//! grpcio client that stops iterating, are dropped within `streams.write_timeout_secs`, read
//! from the hub's own sockets), commit fencing by the consumer's generation, `Consume` over
//! repeated and several subscriptions, gRPC heartbeats, websocket bindings that fail alone,
//! and SSE event names a browser's `EventSource` does not take for an error.
//! `docs/channels/semantics.md` names these tests cell by cell.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::disclosure::websocket_topic_subscription;
use crate::harness::{Hub, HubEnv, PyClient};
use crate::streams::{hub_channel, sse_subscription};
use crate::topics::{event, obs, param, publish_final, topic};

/// The write timeout these tests configure (seconds).
const WRITE_TIMEOUT: &str = "2";
/// How long a test waits for what should take seconds (a hang guard, not a measurement).
const GUARD: Duration = Duration::from_secs(90);

fn slow_reader_env() -> HubEnv {
    HubEnv::default().var("HUB_STREAMS__WRITE_TIMEOUT_SECS", WRITE_TIMEOUT)
}

/// Publish `n` final Observations of about 64 KiB each: a few megabytes, more than the
/// socket and HTTP/2 buffers between the hub and a client that stopped reading hold.
async fn publish_big(hub: &Hub, prefix: &str, n: usize) {
    let note = "x".repeat(64 * 1024);
    for i in 0..n {
        let mut o = obs(&format!("{prefix}{i}"), "final", "Patient/p1");
        o["note"] = json!([{ "text": note }]);
        let (c, b) = hub.post_json("/events", &event("create", &o, None)).await;
        assert_eq!(c, 202, "{b}");
    }
}

async fn create(hub: &Hub, body: &Value) -> String {
    let (c, s) = hub.post_json("/fhir/Subscription", body).await;
    assert_eq!(c, 201, "{s}");
    s["id"].as_str().unwrap().to_owned()
}

async fn binding_token(hub: &Hub, id: &str) -> String {
    let (c, p) = hub
        .get(&format!("/fhir/Subscription/{id}/$get-ws-binding-token"))
        .await;
    assert_eq!(c, 200, "{p}");
    param(&p, "token").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// The peers of the hub's connected sockets on `port`, read from the hub's own sockets.
fn hub_peers(python: &str, hub: &Hub, port: &str) -> Vec<String> {
    let script = format!("{}/python/socket_options.py", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(python)
        .args([&script, &hub.child.id().to_string(), port])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["peer"].to_string())
        .map(|p| p.trim_matches('"').to_owned())
        .collect()
}

/// Wait until the hub holds no socket on `port` to `peer` (any peer: `None`); returns how
/// long that took.
async fn until_dropped(python: &str, hub: &Hub, port: &str, peer: Option<&str>) -> Duration {
    let start = Instant::now();
    loop {
        let peers = hub_peers(python, hub, port);
        if !peers.iter().any(|p| peer.is_none_or(|want| p == want)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < GUARD,
            "the hub still holds the stalled reader's socket ({peers:?}) after {GUARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until no socket in any state, the kernel's orphans included, has `peer` as its
/// remote end: a connection closed with a FIN keeps what its client never read queued (in
/// FIN-WAIT-1) for as long as the client answers zero-window probes; the hub resets it.
async fn until_released(peer: &str) -> Duration {
    let start = Instant::now();
    loop {
        let out = std::process::Command::new("ss")
            .args(["-tnH", "state", "all", "dst", peer])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if text.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < GUARD,
            "the kernel still holds the stalled reader's socket after {GUARD:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn slow_reader_closes(hub: &Hub) -> u64 {
    let text = hub.metrics().await;
    text.lines()
        .find(|l| l.starts_with("fhir_hub_connections_closed_total{reason=\"slow_reader\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Defect 5, websocket: a socket that binds and then never reads is dropped once a write
/// waits past the write timeout; before, the hub queued megabytes for it and kept it.
#[tokio::test]
async fn a_websocket_that_stops_reading_is_dropped_after_the_write_timeout() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(slow_reader_env()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let id = create(&hub, &websocket_topic_subscription()).await;
    let token = binding_token(&hub, &id).await;
    let api = host_port(&hub.url).to_owned();
    let stalled = PyClient::start(&python, "stalled_reader.py", &["ws", &api, &token]);
    let peer = stalled.next("stalled websocket open")["peer"]
        .as_str()
        .unwrap()
        .to_owned();
    let port = api.rsplit(':').next().unwrap().to_owned();
    assert!(hub_peers(&python, &hub, &port).contains(&peer));
    publish_big(&hub, "w", 100).await;
    let took = until_dropped(&python, &hub, &port, Some(&peer)).await;
    eprintln!("stalled websocket dropped {took:?} after the last publish");
    let freed = until_released(&peer).await;
    eprintln!("and its queued bytes released {freed:?} later");
    assert!(slow_reader_closes(&hub).await >= 1);
}

/// Defect 5, SSE: an HTTP/1.1 stream whose client stopped reading is dropped, while a reader
/// that keeps reading gets every event of the same burst.
#[tokio::test]
async fn an_sse_stream_that_stops_reading_is_dropped_and_a_reading_one_is_not() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(slow_reader_env()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let id = create(&hub, &sse_subscription()).await;
    let path = format!("/fhir/Subscription/{id}/$stream");
    let api = host_port(&hub.url).to_owned();
    let stalled = PyClient::start(&python, "stalled_reader.py", &["sse", &api, &path]);
    let peer = stalled.next("stalled SSE open")["peer"]
        .as_str()
        .unwrap()
        .to_owned();
    let reading = PyClient::start(
        &python,
        "sse_client.py",
        &[&format!("{}{path}", hub.url), "101"],
    );
    assert_eq!(reading.next("handshake")["event"], "handshake");
    publish_big(&hub, "s", 100).await;
    let port = api.rsplit(':').next().unwrap().to_owned();
    let took = until_dropped(&python, &hub, &port, Some(&peer)).await;
    eprintln!("stalled SSE stream dropped {took:?} after the last publish");
    let freed = until_released(&peer).await;
    eprintln!("and its queued bytes released {freed:?} later");
    for n in 1..=100 {
        let e = reading.next("a reading client gets every event");
        assert_eq!(e["event"], "event-notification", "{e}");
        assert_eq!(e["id"], n.to_string(), "{e}");
    }
    assert!(slow_reader_closes(&hub).await >= 1);
}

/// Defect 5, gRPC: a grpcio `Subscribe`, then a `Consume`, whose caller stops iterating
/// fills its HTTP/2 window; the connection is dropped after the write timeout.
#[tokio::test]
async fn grpc_streams_that_stop_reading_are_dropped_after_the_write_timeout() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(slow_reader_env()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let id = create(&hub, &hub_channel("grpc", "full-resource")).await;
    let target = host_port(&hub.grpc_url).to_owned();
    let stalled = PyClient::start(&python, "stalled_reader.py", &["grpc", &target, &id]);
    // a live stream: one event after it opened, which it takes
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish_final(&hub, "g", 0..1).await;
    assert_eq!(stalled.next("stalled gRPC open")["open"], true);
    publish_big(&hub, "g", 100).await;
    let port = target.rsplit(':').next().unwrap().to_owned();
    let took = until_dropped(&python, &hub, &port, None).await;
    eprintln!("stalled gRPC Subscribe dropped {took:?} after the last publish");
    assert!(slow_reader_closes(&hub).await >= 1);
    drop(stalled);

    // a named consumer reading the same backlog from its start, stalled after one message
    let consumer = PyClient::start(&python, "stalled_reader.py", &["consume", &target, &id]);
    assert_eq!(consumer.next("stalled Consume open")["open"], true);
    let start = Instant::now();
    until_dropped(&python, &hub, &port, None).await;
    eprintln!(
        "stalled gRPC Consume dropped {:?} after it opened",
        start.elapsed()
    );
    assert!(slow_reader_closes(&hub).await >= 2);
}

/// Defect 6: commits are fenced by the generation `Consume` returns. A commit without one,
/// or with an older one (another `Consume` of the name began since), moves nothing.
#[tokio::test]
async fn commits_are_fenced_by_the_consumers_generation() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let a = create(&hub, &hub_channel("grpc", "id-only")).await;
    publish_final(&hub, "f", 1..5).await;
    hub.wait_events(&a, 4).await;
    let target = host_port(&hub.grpc_url).to_owned();
    let grpc = |args: &[&str]| {
        let mut all = vec![target.as_str()];
        all.extend_from_slice(args);
        PyClient::start(&python, "grpc_client.py", &all)
    };

    let first = grpc(&["consume", "etl", &a, "1"]);
    let m = first.next("first session");
    assert_eq!(m["event_number"], 1);
    let old = m["generation"].as_i64().unwrap();
    assert!(old >= 1, "{m}");
    first.finish();
    // a second session holds the name now
    let holder = grpc(&["consume", "etl", &a, "100"]);
    let m = holder.next("second session");
    assert_eq!(m["event_number"], 1);
    let current = m["generation"].as_i64().unwrap();
    assert!(current > old, "{m}");

    let c = grpc(&["commit", "etl", &a, "4"]);
    assert_eq!(c.next("no generation")["error"], "FAILED_PRECONDITION");
    let c = grpc(&["commit", "etl", &a, "4", &old.to_string()]);
    let stale = c.next("stale generation");
    assert_eq!(stale["error"], "ABORTED", "{stale}");
    let c = grpc(&["commit", "etl", &a, "1", &current.to_string()]);
    assert_eq!(c.next("current generation")["committed"], 1);
    drop(holder);
    // only the holder's commit moved the consumer
    let resumed = grpc(&["consume", "etl", &a, "1"]);
    assert_eq!(resumed.next("resumed")["event_number"], 2);
}

/// Defect 7: `Consume` reads a subscription named twice once, and several subscriptions
/// take turns instead of one backlog draining before the next starts.
#[tokio::test]
async fn consume_reads_each_subscription_once_and_interleaves_them() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let a = create(&hub, &hub_channel("grpc", "id-only")).await;
    let b = create(&hub, &hub_channel("grpc", "id-only")).await;
    const N: i64 = 100;
    publish_final(&hub, "i", 0..N as usize).await;
    hub.wait_events(&a, N).await;
    hub.wait_events(&b, N).await;
    let target = host_port(&hub.grpc_url).to_owned();

    let twice = format!("{a},{a}");
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "consume", "twice", &twice, &(N + 1).to_string()],
    );
    let got: Vec<i64> = (0..N)
        .map(|_| c.next("a named twice")["event_number"].as_i64().unwrap())
        .collect();
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "each event once, in order"
    );
    // after the backlog, the next message is the next event, not the backlog again
    publish_final(&hub, "j", 0..1).await;
    let next = c.next("after the backlog");
    assert_eq!(next["event_number"], N + 1, "{next}");
    c.finish();

    let both = format!("{a},{b}");
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "consume", "both", &both, &(2 * N + 2).to_string()],
    );
    // the event published above reached both
    let got: Vec<(String, i64)> = (0..2 * N + 2)
        .map(|_| {
            let m = c.next("two subscriptions");
            (
                m["subscription"].as_str().unwrap().to_owned(),
                m["event_number"].as_i64().unwrap(),
            )
        })
        .collect();
    c.finish();
    for id in [&a, &b] {
        let numbers: Vec<i64> = got.iter().filter(|g| &g.0 == id).map(|g| g.1).collect();
        assert_eq!(
            numbers,
            (1..=N + 1).collect::<Vec<_>>(),
            "{id}: once each, in order"
        );
    }
    // taking turns: both appear within the first backlog's length
    let head: Vec<&String> = got.iter().take(N as usize).map(|g| &g.0).collect();
    assert!(
        head.contains(&&a) && head.contains(&&b),
        "the first {N} messages came from one subscription only"
    );
}

/// The SubscriptionStatus `type` of a notification bundle.
fn status_type(bundle: &Value) -> String {
    param(&bundle["entry"][0]["resource"], "type").unwrap()["valueCode"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn with_heartbeat(mut s: Value) -> Value {
    s["channel"]["extension"] = json!([{
        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period",
        "valueUnsignedInt": 1
    }]);
    s
}

/// Defect 7: every stream sends heartbeats on the subscription's heartbeatPeriod; gRPC
/// ignored it before.
#[tokio::test]
async fn every_stream_sends_heartbeats_on_the_heartbeat_period() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let sse = create(&hub, &with_heartbeat(hub_channel("sse", "id-only"))).await;
    let ws = create(&hub, &with_heartbeat(websocket_topic_subscription())).await;
    let grpc = create(&hub, &with_heartbeat(hub_channel("grpc", "id-only"))).await;
    publish_final(&hub, "h", 1..3).await;
    for id in [&sse, &ws, &grpc] {
        hub.wait_events(id, 2).await;
    }
    let target = host_port(&hub.grpc_url).to_owned();

    let s = PyClient::start(
        &python,
        "sse_client.py",
        &[&format!("{}/fhir/Subscription/{sse}/$stream", hub.url), "2"],
    );
    assert_eq!(s.next("SSE handshake")["event"], "handshake");
    assert_eq!(s.next("SSE heartbeat")["event"], "heartbeat");

    let ws_url = format!(
        "{}/fhir/$subscription-ws",
        hub.url.replacen("http", "ws", 1)
    );
    let token = binding_token(&hub, &ws).await;
    let w = PyClient::start(&python, "ws_client.py", &[&ws_url, &token, "2"]);
    assert_eq!(status_type(&w.next("ws handshake")), "handshake");
    assert_eq!(status_type(&w.next("ws heartbeat")), "heartbeat");

    for call in [
        vec![target.as_str(), "subscribe", &grpc, "0", "2"],
        vec![target.as_str(), "consume", "beats", &grpc, "4"],
    ] {
        let g = PyClient::start(&python, "grpc_client.py", &call);
        let mut beats = 0;
        // a consumer first reads the two events, then hears heartbeats
        while beats < 2 {
            let m = g.next("gRPC heartbeat");
            assert!(m.get("error").is_none(), "{m}");
            if m["heartbeat"] == true {
                assert_eq!(m["event_number"], 2, "{m}");
                assert_eq!(status_type(&m["bundle"]), "heartbeat", "{m}");
                beats += 1;
            }
        }
    }
}

/// Defect 7: a failed `bind-with-token` is answered for that binding alone (the socket and
/// its good bindings go on), and a binding token of an SSE subscription binds no websocket.
#[tokio::test]
async fn a_failed_websocket_binding_fails_alone_and_tokens_bind_their_own_channel() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let ws = create(&hub, &websocket_topic_subscription()).await;
    let sse = create(&hub, &sse_subscription()).await;
    let ws_url = format!(
        "{}/fhir/$subscription-ws",
        hub.url.replacen("http", "ws", 1)
    );
    let good = binding_token(&hub, &ws).await;
    let sse_token = binding_token(&hub, &sse).await;
    let tokens = format!("{good},not-a-token,{sse_token}");
    let c = PyClient::start(&python, "ws_client.py", &[&ws_url, &tokens, "4"]);
    // the refusals are written at once, the handshake through the binding's reader: any order
    let first: Vec<Value> = (0..3).map(|_| c.next("three answers")).collect();
    let (outcomes, bundles): (Vec<&Value>, Vec<&Value>) = first
        .iter()
        .partition(|m| m["resourceType"] == "OperationOutcome");
    assert_eq!(bundles.len(), 1, "{first:?}");
    assert_eq!(status_type(bundles[0]), "handshake", "{first:?}");
    assert_eq!(outcomes.len(), 2, "{first:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| o.to_string().contains("unknown, used or expired")),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| o.to_string().contains("channel type 'sse'")),
        "{outcomes:?}"
    );
    // the good binding still delivers
    publish_final(&hub, "b", 1..2).await;
    let note = c.next("event on the good binding");
    assert_eq!(status_type(&note), "event-notification", "{note}");
    // the SSE token was not used up by the refused bind
    let s = PyClient::start(
        &python,
        "sse_client.py",
        &[
            &format!(
                "{}/fhir/Subscription/{sse}/$stream?token={sse_token}",
                hub.url
            ),
            "1",
        ],
    );
    assert_eq!(s.next("SSE with its token")["event"], "handshake");
}

/// Defect 7: an SSE stream that cannot read the notification log says so with an event
/// named `unavailable`, never `error` (which a browser's EventSource takes for a broken
/// connection and reports to `onerror`).
#[tokio::test]
async fn an_sse_stream_names_no_event_error() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let mut hub = Hub::start(HubEnv::default()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let id = create(&hub, &sse_subscription()).await;
    publish_final(&hub, "e", 1..4).await;
    hub.wait_events(&id, 3).await;
    // a fresh process (nothing cached from the matcher), then a log it cannot read
    let _ = hub.child.kill();
    let _ = hub.child.wait();
    let data_dir = std::mem::replace(&mut hub.data_dir, tempfile::tempdir().unwrap());
    drop(hub);
    let hub = Hub::start_in(HubEnv::default(), data_dir).await;
    let db = format!("sqlite://{}", hub.data_dir.path().join("hub.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    // the events themselves (the stream's start is placed on the log's numbers first)
    sqlx::query("ALTER TABLE logged_events RENAME TO logged_events_away")
        .execute(&pool)
        .await
        .unwrap();
    let url = format!("{}/fhir/Subscription/{id}/$stream?from=1", hub.url);
    let c = PyClient::start(&python, "sse_client.py", &[&url, "3"]);
    assert_eq!(c.next("handshake")["event"], "handshake");
    let e = c.next("the log is unavailable");
    assert_eq!(e["event"], "unavailable", "{e}");
    let oo: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    assert_eq!(c.next("end")["end"], true);
}
