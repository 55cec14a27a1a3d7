//! Streaming channels with replayable offsets, with real third-party clients: SSE read by
//! `httpx-sse` (resume with `Last-Event-ID` and `from`, history-gone after retention purged
//! the asked-for numbers) and the websocket resume extension read by `websockets`.

use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, PyClient};
use crate::topics::{param, publish_final, subscription, topic};

const SSE_TYPE: &str = "urn:fhir-hub:channel-type";
const CHANNEL_TYPE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type";

pub(crate) fn sse_subscription() -> Value {
    let mut s = subscription("unused", Some("full-resource"), None);
    // the Backport IG's way to name a channel type R4 lacks
    s["channel"] = json!({"type": "rest-hook", "payload": "application/fhir+json",
        "_type": {"extension": [{"url": CHANNEL_TYPE,
                                 "valueCoding": {"system": SSE_TYPE, "code": "sse"}}]},
        "_payload": s["channel"]["_payload"].clone()});
    s
}

async fn publish(hub: &Hub, ids: std::ops::Range<usize>) {
    publish_final(hub, "s", ids).await;
}

/// The event number a bundle carries in its (last) notification-event.
fn event_number(bundle: &Value) -> String {
    let status = &bundle["entry"][0]["resource"];
    let events: Vec<&Value> = status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .collect();
    events.last().unwrap()["part"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn sse_resumes_by_event_number_and_says_when_history_is_gone() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let (c, t) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201, "{t}");
    let (c, s) = hub
        .post_json("/fhir/Subscription", &sse_subscription())
        .await;
    assert_eq!(c, 201, "{s}");
    assert_eq!(s["status"], "active", "an SSE client connects to the hub");
    let id = s["id"].as_str().unwrap().to_owned();
    let url = format!("{}/fhir/Subscription/{id}/$stream", hub.url);

    publish(&hub, 1..4).await;
    hub.wait_events(&id, 3).await;

    // from=1: the handshake, then 1, 2, 3 in order
    let from_start = format!("{url}?from=1");
    let c = PyClient::start(&python, "sse_client.py", &[&from_start, "4"]);
    let hs = c.next("handshake");
    assert_eq!(hs["event"], "handshake", "{hs}");
    for n in ["1", "2", "3"] {
        let e = c.next("event-notification");
        assert_eq!(
            (e["event"].as_str(), e["id"].as_str()),
            (Some("event-notification"), Some(n))
        );
        let bundle: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
        assert_eq!(event_number(&bundle), n);
        assert_eq!(
            bundle["entry"][1]["resource"]["resourceType"],
            "Observation"
        );
    }
    c.finish();

    // Last-Event-ID: 2 resumes with 3, nothing repeated; then live events arrive in order
    let c = PyClient::start(&python, "sse_client.py", &[&url, "4", "2"]);
    assert_eq!(c.next("handshake")["event"], "handshake");
    assert_eq!(c.next("resumed")["id"], "3");
    publish(&hub, 4..6).await;
    assert_eq!(c.next("live")["id"], "4");
    assert_eq!(c.next("live")["id"], "5");
    c.finish();

    // retention purges the log (a stream subscription's notifications go by age alone)
    let store = hub_store::Store::connect(&format!(
        "sqlite://{}",
        hub.data_dir.path().join("hub.db").display()
    ))
    .await
    .unwrap();
    assert_eq!(
        store
            .purge_notifications("9999-01-01T00:00:00Z")
            .await
            .unwrap(),
        5
    );
    let c = PyClient::start(&python, "sse_client.py", &[&from_start, "2"]);
    assert_eq!(c.next("handshake")["event"], "handshake");
    let gone = c.next("history-gone");
    assert_eq!(gone["event"], "history-gone", "{gone}");
    let oo: Value = serde_json::from_str(gone["data"].as_str().unwrap()).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo.to_string().contains("continues from event 6"), "{oo}");
    c.finish();

    // refusals are OperationOutcomes
    let (c, oo) = hub
        .get(&format!("/fhir/Subscription/{id}/$stream?from=zero"))
        .await;
    assert_eq!(c, 400, "{oo}");
    let rx = crate::receiver::TestReceiver::start().await;
    let (_, hook) = hub
        .post_json("/fhir/Subscription", &subscription(&rx.url, None, None))
        .await;
    let (c, oo) = hub
        .get(&format!(
            "/fhir/Subscription/{}/$stream",
            hook["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(c, 422, "{oo}");
    let (c, _) = hub.get("/fhir/Subscription/nobody/$stream").await;
    assert_eq!(c, 404);
    let (c, oo) = hub
        .get(&format!("/fhir/Subscription/{id}/$stream?token=forged"))
        .await;
    assert_eq!(c, 401, "{oo}");
}

#[tokio::test]
async fn websocket_binds_resume_after_the_last_event_seen() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let mut s = subscription("unused", Some("id-only"), None);
    s["channel"] = json!({"type": "websocket", "payload": "application/fhir+json",
        "_payload": s["channel"]["_payload"].clone()});
    let (c, s) = hub.post_json("/fhir/Subscription", &s).await;
    assert_eq!(c, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    publish(&hub, 1..4).await;
    hub.wait_events(&id, 3).await;

    let (_, p) = hub
        .get(&format!("/fhir/Subscription/{id}/$get-ws-binding-token"))
        .await;
    let token = param(&p, "token").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws_url = param(&p, "websocket-url").unwrap()["valueUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    // "I have seen 1": 2 and 3 come, in order, then live ones
    let c = PyClient::start(&python, "ws_client.py", &[&ws_url, &token, "4", "1"]);
    let hs = c.next("handshake");
    assert_eq!(
        param(&hs["entry"][0]["resource"], "type").unwrap()["valueCode"],
        "handshake"
    );
    assert_eq!(event_number(&c.next("event 2")), "2");
    assert_eq!(event_number(&c.next("event 3")), "3");
    publish(&hub, 4..5).await;
    assert_eq!(event_number(&c.next("event 4")), "4");
    c.finish();
}

pub(crate) fn hub_channel(code: &str, content: &str) -> Value {
    let mut s = sse_subscription();
    s["channel"]["_type"]["extension"][0]["valueCoding"]["code"] = json!(code);
    s["channel"]["_payload"]["extension"][0]["valueCode"] = json!(content);
    s
}

#[tokio::test]
async fn grpc_streams_from_an_event_number_and_consumers_resume_from_commits() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let target = hub.grpc_url.trim_start_matches("http://").to_owned();
    assert!(!target.is_empty(), "the hub printed its gRPC address");
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let mut ids = Vec::new();
    for (code, content) in [
        ("grpc", "full-resource"),
        ("grpc", "id-only"),
        ("sse", "empty"),
    ] {
        let (c, s) = hub
            .post_json("/fhir/Subscription", &hub_channel(code, content))
            .await;
        assert_eq!(c, 201, "{s}");
        ids.push(s["id"].as_str().unwrap().to_owned());
    }
    let (a, b, sse) = (&ids[0], &ids[1], &ids[2]);
    publish(&hub, 1..4).await;
    hub.wait_events(a, 3).await;
    hub.wait_events(b, 3).await;

    let health = PyClient::start(&python, "grpc_client.py", &[&target, "health"]);
    assert_eq!(health.next("health")["serving"], true);

    // from an event number
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", a, "2", "2"],
    );
    for n in [2, 3] {
        let m = c.next("notification");
        assert_eq!(m["event_number"], n, "{m}");
        assert_eq!(m["bundle_type"], "history");
    }
    c.finish();
    // live (0), then a new event
    let live = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", a, "0", "1"],
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    publish(&hub, 4..5).await;
    assert_eq!(live.next("live")["event_number"], 4);
    live.finish();

    // a named consumer commits, goes away, and resumes after its commit
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "consume", "etl", a, "2", "commit"],
    );
    assert_eq!(c.next("first")["event_number"], 1);
    assert_eq!(c.next("second")["event_number"], 2);
    c.finish();
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "consume", "etl", a, "2"],
    );
    assert_eq!(c.next("resumed")["event_number"], 3);
    assert_eq!(c.next("resumed")["event_number"], 4);
    c.finish();
    // over two subscriptions: each from its own committed offset (b: never committed)
    let ab = format!("{a},{b}");
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "consume", "etl", &ab, "6"],
    );
    let mut got: Vec<(String, i64)> = (0..6)
        .map(|_| {
            let m = c.next("merged");
            (
                m["subscription"].as_str().unwrap().to_owned(),
                m["event_number"].as_i64().unwrap(),
            )
        })
        .collect();
    c.finish();
    got.sort();
    let mut want: Vec<(String, i64)> = vec![(a.clone(), 3), (a.clone(), 4)];
    want.extend((1..=4).map(|n| (b.clone(), n)));
    want.sort();
    assert_eq!(got, want);

    // one consumer name, one connection at a time
    let holder = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "consume", "solo", a, "100"],
    );
    assert_eq!(holder.next("holder")["event_number"], 1);
    let second = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "consume", "solo", a, "1"],
    );
    assert_eq!(second.next("refused")["error"], "ABORTED");
    drop(holder);

    // statuses
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", "nobody", "1", "1"],
    );
    assert_eq!(c.next("unknown")["error"], "NOT_FOUND");
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", sse, "1", "1"],
    );
    assert_eq!(c.next("not grpc")["error"], "FAILED_PRECONDITION");
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "commit", "etl", a, "99"],
    );
    assert_eq!(c.next("past the count")["error"], "INVALID_ARGUMENT");
    let store = hub_store::Store::connect(&format!(
        "sqlite://{}",
        hub.data_dir.path().join("hub.db").display()
    ))
    .await
    .unwrap();
    store
        .purge_notifications("9999-01-01T00:00:00Z")
        .await
        .unwrap();
    // (1 is "everything still in the log": stream_starts.rs)
    let c = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", a, "2", "1"],
    );
    let gone = c.next("purged");
    assert_eq!(gone["error"], "OUT_OF_RANGE", "{gone}");
    assert!(gone["details"].as_str().unwrap().contains("5"), "{gone}");
}

#[tokio::test]
async fn classic_r4_websocket_binds_by_id_and_pings_per_event() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let id = classic_websocket_subscription(&hub).await;
    let ws_url = format!(
        "{}/$subscription-ws",
        hub.url.replacen("http", "ws", 1) + "/fhir"
    );
    let c = PyClient::start(
        &python,
        "ws_client.py",
        &[&ws_url, &format!("classic:{id}"), "3"],
    );
    assert_eq!(c.next("bound")["text"], format!("bound {id}"));
    publish(&hub, 1..3).await;
    for _ in 0..2 {
        assert_eq!(c.next("ping")["text"], format!("ping {id}"));
    }
    c.finish();
    // a topic-based or unknown id is refused in the classic protocol's words
    let c = PyClient::start(&python, "ws_client.py", &[&ws_url, "classic:nobody", "1"]);
    let refused = c.next("error");
    assert!(
        refused["text"].as_str().unwrap().starts_with("error "),
        "{refused}"
    );
}

/// A classic R4 websocket subscription (criteria, no topic), active; its id.
async fn classic_websocket_subscription(hub: &Hub) -> String {
    let (c, s) = hub
        .post_json(
            "/fhir/Subscription",
            &json!({"resourceType": "Subscription", "status": "requested", "reason": "classic",
                    "criteria": "Observation?code=http://loinc.org|2345-7",
                    "channel": {"type": "websocket"}}),
        )
        .await;
    assert_eq!(c, 201, "{s}");
    assert_eq!(s["status"], "active");
    s["id"].as_str().unwrap().to_owned()
}

/// Read `n` stream items from a client and return what identifies each (event numbers).
fn numbers(c: &PyClient, n: usize, what: &str) -> Vec<i64> {
    (0..n)
        .map(|_| {
            let m = c.next(what);
            m["event_number"]
                .as_i64()
                .or_else(|| m["id"].as_str().and_then(|s| s.parse().ok()))
                .or_else(|| event_number(&m).parse().ok())
                .unwrap_or_else(|| panic!("no event number in {m}"))
        })
        .collect()
}

#[tokio::test]
async fn every_stream_client_resumes_after_the_hub_is_killed() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let mut hub = Hub::start(HubEnv::default()).await;
    let (c, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let mut ids = Vec::new();
    for code in ["sse", "grpc"] {
        let (c, s) = hub
            .post_json("/fhir/Subscription", &hub_channel(code, "id-only"))
            .await;
        assert_eq!(c, 201, "{s}");
        ids.push(s["id"].as_str().unwrap().to_owned());
    }
    let mut ws = subscription("unused", Some("id-only"), None);
    ws["channel"] = json!({"type": "websocket", "payload": "application/fhir+json",
        "_payload": ws["channel"]["_payload"].clone()});
    let (c, s) = hub.post_json("/fhir/Subscription", &ws).await;
    assert_eq!(c, 201, "{s}");
    ids.push(s["id"].as_str().unwrap().to_owned());
    let (sse, grpc, ws) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let token = |hub: &Hub, id: &str| {
        let (hub_url, id) = (hub.url.clone(), id.to_owned());
        async move {
            let p: Value = reqwest::get(format!(
                "{hub_url}/fhir/Subscription/{id}/$get-ws-binding-token"
            ))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            (
                param(&p, "token").unwrap()["valueString"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                param(&p, "websocket-url").unwrap()["valueUrl"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        }
    };

    // every client reads 1..3 and waits for more
    publish(&hub, 1..4).await;
    for id in &ids {
        hub.wait_events(id, 3).await;
    }
    let sse_url = |hub: &Hub| format!("{}/fhir/Subscription/{sse}/$stream", hub.url);
    let grpc_target = |hub: &Hub| hub.grpc_url.trim_start_matches("http://").to_owned();
    let s = PyClient::start(
        &python,
        "sse_client.py",
        &[&format!("{}?from=1", sse_url(&hub)), "20"],
    );
    assert_eq!(s.next("handshake")["event"], "handshake");
    assert_eq!(numbers(&s, 3, "sse"), [1, 2, 3]);
    let g = PyClient::start(
        &python,
        "grpc_client.py",
        &[&grpc_target(&hub), "subscribe", &grpc, "1", "20"],
    );
    assert_eq!(numbers(&g, 3, "grpc"), [1, 2, 3]);
    let (tok, url) = token(&hub, &ws).await;
    let w = PyClient::start(&python, "ws_client.py", &[&url, &tok, "20", "0"]);
    w.next("handshake");
    assert_eq!(numbers(&w, 3, "ws"), [1, 2, 3]);

    // SIGKILL, mid-stream: no goodbye to anyone
    let _ = hub.child.kill();
    let _ = hub.child.wait();
    drop((s, g, w));
    let data_dir = std::mem::replace(&mut hub.data_dir, tempfile::tempdir().unwrap());
    drop(hub);
    let hub = Hub::start_in(HubEnv::default(), data_dir).await;

    // each client resumes from its last number (3): 4 and 5, nothing missing or repeated
    let s = PyClient::start(&python, "sse_client.py", &[&sse_url(&hub), "3", "3"]);
    let g = PyClient::start(
        &python,
        "grpc_client.py",
        &[&grpc_target(&hub), "subscribe", &grpc, "4", "2"],
    );
    let (tok, url) = token(&hub, &ws).await;
    let w = PyClient::start(&python, "ws_client.py", &[&url, &tok, "3", "3"]);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    publish(&hub, 4..6).await;
    assert_eq!(s.next("handshake")["event"], "handshake");
    assert_eq!(numbers(&s, 2, "sse"), [4, 5]);
    assert_eq!(numbers(&g, 2, "grpc"), [4, 5]);
    w.next("handshake");
    assert_eq!(numbers(&w, 2, "ws"), [4, 5]);
    s.finish();
    g.finish();
    w.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_process_receives_what_another_process_logged() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let Some(pg) = crate::harness::require_external("FHIR_HUB_TEST_DATABASE_URL") else {
        return;
    };
    let db = hub_store::fresh_postgres_schema(&pg, "streams")
        .await
        .unwrap();
    let base = HubEnv::default().arg("--database-url").arg(&db);
    // the process that ingests and matches
    let matcher = Hub::start(base.clone().arg("--roles").arg("api,matcher")).await;
    // the process a client streams from: no matcher here
    let streams = Hub::start(base.clone().arg("--roles").arg("api")).await;
    let (c, _) = matcher.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201);
    let (c, s) = matcher
        .post_json("/fhir/Subscription", &hub_channel("sse", "id-only"))
        .await;
    assert_eq!(c, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let url = format!("{}/fhir/Subscription/{id}/$stream", streams.url);
    let c = PyClient::start(&python, "sse_client.py", &[&url, "3"]);
    assert_eq!(c.next("handshake")["event"], "handshake");
    publish(&matcher, 1..3).await;
    assert_eq!(numbers(&c, 2, "cross-process"), [1, 2]);
    c.finish();

    // a named gRPC consumer is read by one connection in the whole cluster
    let (c, g) = matcher
        .post_json("/fhir/Subscription", &hub_channel("grpc", "id-only"))
        .await;
    assert_eq!(c, 201, "{g}");
    let grpc_id = g["id"].as_str().unwrap().to_owned();
    publish(&matcher, 3..4).await;
    let on_a = matcher.grpc_url.trim_start_matches("http://").to_owned();
    let on_b = streams.grpc_url.trim_start_matches("http://").to_owned();
    let first = PyClient::start(
        &python,
        "grpc_client.py",
        &[&on_a, "consume", "etl", &grpc_id, "100"],
    );
    assert_eq!(first.next("consumer on process A")["event_number"], 1);
    let second = PyClient::start(
        &python,
        "grpc_client.py",
        &[&on_b, "consume", "etl", &grpc_id, "1"],
    );
    assert_eq!(
        second.next("same consumer on process B")["error"],
        "ABORTED"
    );
    // the first connection goes away: the consumer is free for the other process
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let again = PyClient::start(
            &python,
            "grpc_client.py",
            &[&on_b, "consume", "etl", &grpc_id, "1"],
        );
        let m = again.next("consumer taken over on process B");
        if m["event_number"] == 1 {
            break;
        }
        assert_eq!(m["error"], "ABORTED", "{m}");
        assert!(
            std::time::Instant::now() < deadline,
            "the claim was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// An open stream of a subscription that is deleted and created again with its id (a new
/// log) ends, saying so: before, it stayed on the old log for good, silent, while its
/// heartbeats said all was well (found by review: a gRPC Subscribe got nothing for 20 s
/// while the new log held 5 events).
#[tokio::test]
async fn a_stream_of_a_re_created_subscription_ends_saying_so() {
    let hub = Hub::start(HubEnv::default().var("HUB_DATABASE__SAFETY_READ_MS", "500")).await;
    let (c, t) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201, "{t}");
    let mut sub = sse_subscription();
    sub["id"] = json!("again");
    let res = hub.put_json("/fhir/Subscription/again", &sub, None).await;
    assert!(res.status().is_success(), "{}", res.status());
    publish(&hub, 1..3).await;
    hub.wait_events("again", 2).await;
    let mut stream = hub
        .http
        .get(format!(
            "{}/fhir/Subscription/again/$stream?from=1",
            hub.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut text = String::new();
    // read until `from` what the stream had to say
    let mut read_until = async |text: &mut String, what: &str| {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !text.contains(what) {
            let chunk = tokio::time::timeout_at(deadline, stream.chunk())
                .await
                .unwrap_or_else(|_| panic!("no '{what}' within 30 s:\n{text}"))
                .unwrap();
            match chunk {
                Some(c) => text.push_str(&String::from_utf8_lossy(&c)),
                None => break,
            }
        }
    };
    read_until(&mut text, "id: 2").await;
    let deleted = hub
        .http
        .delete(format!("{}/fhir/Subscription/again", hub.url))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let res = hub.put_json("/fhir/Subscription/again", &sub, None).await;
    assert!(res.status().is_success(), "{}", res.status());
    publish(&hub, 3..6).await;
    hub.wait_events("again", 3).await;
    read_until(&mut text, "event: deleted").await;
    assert!(text.contains("event: deleted"), "{text}");
    assert!(
        !text.contains("id: 3"),
        "the old log's stream carried the new log's numbers:\n{text}"
    );
}

/// Cross-site websocket hijacking: a page of another site opening the hub's websocket in a
/// browser that holds something for the hub (here: an open hub on loopback, whose anonymous
/// caller may bind by id) gets an anonymous socket — `bind <id>` is refused — while a client
/// that sends no `Origin` (or an allowed one) binds as before. Found by review: no `Origin`
/// check on the upgrade (CORS does not apply to websockets).
#[tokio::test]
async fn a_websocket_from_a_foreign_origin_binds_nothing_without_a_token() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let hub = Hub::start(HubEnv::default()).await;
    let id = classic_websocket_subscription(&hub).await;
    let ws_url = format!(
        "{}/fhir/$subscription-ws",
        hub.url.replacen("http", "ws", 1)
    );
    let first_answer = |origin: Option<&'static str>| {
        let (ws_url, id) = (ws_url.clone(), id.clone());
        async move {
            let mut req = ws_url.into_client_request().unwrap();
            if let Some(o) = origin {
                req.headers_mut().insert("origin", o.parse().unwrap());
            }
            let (mut socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            socket
                .send(Message::Text(format!("bind {id}").into()))
                .await
                .unwrap();
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
                .await
                .expect("an answer to the bind");
            match answer {
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Close(f))) => format!("closed {f:?}"),
                other => format!("{other:?}"),
            }
        }
    };
    assert_eq!(first_answer(None).await, format!("bound {id}"));
    let foreign = first_answer(Some("https://evil.example")).await;
    assert!(
        !foreign.starts_with("bound"),
        "a page of another site bound by id: {foreign}"
    );
}
