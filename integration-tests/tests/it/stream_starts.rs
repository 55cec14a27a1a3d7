//! Start positions and reset policies, the same on every stream channel, with the real
//! clients (`httpx-sse`, `websockets`, `grpcio` with `grpcio-status`): earliest retained,
//! latest, at an event number, at a time; positions beyond the head refused; named consumers
//! that start again after retention purged their position (their auto-reset policy); and
//! `$events` answering exactly the asked range of what is retained.
//! `docs/channels/semantics.md` names these tests cell by cell.

use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, PyClient};
use crate::streams::hub_channel;
use crate::topics::{param, publish_final, subscription, topic};

/// A hub with the lab topic, one subscription per channel (SSE, gRPC, websocket), and
/// events 1–3 logged for each.
struct Setup {
    hub: Hub,
    python: String,
    sse: String,
    grpc: String,
    ws: String,
}

impl Setup {
    async fn start() -> Option<Setup> {
        let python = crate::harness::require_external("FHIR_HUB_PYTHON")?;
        let hub = Hub::start(HubEnv::default()).await;
        let (c, t) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
        assert_eq!(c, 201, "{t}");
        let mut ws = subscription("unused", Some("id-only"), None);
        ws["channel"] = json!({"type": "websocket", "payload": "application/fhir+json",
            "_payload": ws["channel"]["_payload"].clone()});
        let mut ids = Vec::new();
        for s in [
            hub_channel("sse", "id-only"),
            hub_channel("grpc", "id-only"),
            ws,
        ] {
            let (c, s) = hub.post_json("/fhir/Subscription", &s).await;
            assert_eq!(c, 201, "{s}");
            ids.push(s["id"].as_str().unwrap().to_owned());
        }
        let setup = Setup {
            hub,
            python,
            grpc: ids.remove(1),
            sse: ids.remove(0),
            ws: ids.remove(0),
        };
        setup.publish(1..4).await;
        Some(setup)
    }

    /// Publish events `ids` and wait until every subscription counted them.
    async fn publish(&self, ids: std::ops::Range<usize>) {
        let total = ids.end as i64 - 1;
        publish_final(&self.hub, "s", ids).await;
        for id in [&self.sse, &self.grpc, &self.ws] {
            self.hub.wait_events(id, total).await;
        }
    }

    fn target(&self) -> String {
        self.hub.grpc_url.trim_start_matches("http://").to_owned()
    }

    fn sse_url(&self, query: &str) -> String {
        format!(
            "{}/fhir/Subscription/{}/$stream{query}",
            self.hub.url, self.sse
        )
    }

    fn grpc(&self, args: &[&str]) -> PyClient {
        let target = self.target();
        let mut all = vec![target.as_str()];
        all.extend_from_slice(args);
        PyClient::start(&self.python, "grpc_client.py", &all)
    }

    fn sse(&self, query: &str, count: &str, last_event_id: Option<&str>) -> PyClient {
        let url = self.sse_url(query);
        let mut args = vec![url.as_str(), count];
        args.extend(last_event_id);
        PyClient::start(&self.python, "sse_client.py", &args)
    }

    /// A websocket client bound to the websocket subscription with `start` after the token.
    async fn ws(&self, start: Option<&str>, count: &str) -> PyClient {
        let (_, p) = self
            .hub
            .get(&format!(
                "/fhir/Subscription/{}/$get-ws-binding-token",
                self.ws
            ))
            .await;
        let token = param(&p, "token").unwrap()["valueString"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = param(&p, "websocket-url").unwrap()["valueUrl"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut args = vec![url.as_str(), token.as_str(), count];
        args.extend(start);
        PyClient::start(&self.python, "ws_client.py", &args)
    }

    /// Purge (retention) every notification of events logged before the second batch, and
    /// return the instant the second batch starts at (a stored instant).
    async fn purge_first_batch(&self, next: std::ops::Range<usize>) -> String {
        let db = format!(
            "sqlite://{}",
            self.hub.data_dir.path().join("hub.db").display()
        );
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        let last: String = sqlx::query_scalar("SELECT MAX(logged_at) FROM logged_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        // the second batch is logged at a later instant (stored with sub-second digits)
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        self.publish(next).await;
        let second: String =
            sqlx::query_scalar("SELECT MIN(logged_at) FROM logged_events WHERE logged_at > $1")
                .bind(&last)
                .fetch_one(&pool)
                .await
                .unwrap();
        let store = hub_store::Store::connect(&db).await.unwrap();
        let purged = store.purge_notifications(&second).await.unwrap();
        assert_eq!(purged, 9, "three events of three subscriptions purged");
        second
    }
}

/// The event number a bundle carries in its (last) notification-event.
fn event_number(bundle: &Value) -> i64 {
    let status = &bundle["entry"][0]["resource"];
    status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|p| p["name"] == "notification-event")
        .unwrap()["part"][0]["valueString"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The `type` of a bundle's SubscriptionStatus (`handshake`, `event-notification`, …).
fn kind(bundle: &Value) -> String {
    param(&bundle["entry"][0]["resource"], "type").map_or_else(
        || format!("not a notification bundle: {bundle}"),
        |p| p["valueCode"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Defect 2: a named consumer whose committed position retention purged, and one that never
/// committed, start again (auto-reset EARLIEST by default, reported in the metadata);
/// `Subscribe(from_event_number = 1)` means everything still in the log.
#[tokio::test]
async fn named_consumers_start_again_after_retention_purged_their_position() {
    let Some(s) = Setup::start().await else {
        return;
    };
    let a = s.grpc.clone();
    // "etl" reads and commits 1 and 2
    let c = s.grpc(&["consume", "etl", &a, "2", "commit"]);
    assert_eq!(c.next("first")["event_number"], 1);
    assert_eq!(c.next("second")["event_number"], 2);
    c.finish();
    // "strict" reads and commits 2 as well (a commit carries its Consume's generation), and
    // will refuse to be reset
    let c = s.grpc(&["consume", "strict", &a, "2", "commit"]);
    assert_eq!(c.next("strict first")["event_number"], 1);
    assert_eq!(c.next("strict second")["event_number"], 2);
    c.finish();
    s.purge_first_batch(4..6).await; // 1–3 purged; 4 and 5 retained

    // committed 2, 3 purged: continues from 4, and says it was reset
    let c = s.grpc(&["consume", "etl", &a, "2", "meta"]);
    let meta = c.next("metadata");
    let first = c.next("after the reset");
    assert_eq!(first["event_number"], 4, "{first}");
    assert_eq!(c.next("after the reset")["event_number"], 5);
    assert_eq!(
        meta["metadata"]["fhir-hub-reset"],
        json!([format!("{a} 2 3")]),
        "{meta}"
    );
    c.finish();
    // never committed: from the first event still in the log
    let c = s.grpc(&["consume", "fresh", &a, "2"]);
    assert_eq!(c.next("fresh")["event_number"], 4);
    assert_eq!(c.next("fresh")["event_number"], 5);
    c.finish();
    // auto_reset FAIL: refused with an ErrorInfo, committed or not
    let c = s.grpc(&["consume", "strict", &a, "1", "reset=fail"]);
    let e = c.next("purged, fail");
    assert_eq!(e["error"], "OUT_OF_RANGE", "{e}");
    assert_eq!(e["error_info"]["reason"], "HISTORY_GONE", "{e}");
    assert_eq!(e["error_info"]["domain"], "fhir-hub", "{e}");
    assert_eq!(e["error_info"]["metadata"]["first_available"], "4", "{e}");
    assert_eq!(e["error_info"]["metadata"]["head"], "5", "{e}");
    let c = s.grpc(&["consume", "never", &a, "1", "reset=fail"]);
    let e = c.next("never committed, fail");
    assert_eq!(e["error"], "FAILED_PRECONDITION", "{e}");
    assert_eq!(e["error_info"]["reason"], "NO_COMMITTED_POSITION", "{e}");
    // auto_reset LATEST: only what comes next
    let c = s.grpc(&["consume", "tail", &a, "1", "reset=latest", "meta"]);
    assert_eq!(c.next("opened")["metadata"]["fhir-hub-reset"], Value::Null);
    s.publish(6..7).await;
    assert_eq!(c.next("live")["event_number"], 6);
    c.finish();

    // Subscribe: 1 is everything still in the log
    let c = s.grpc(&["subscribe", &a, "1", "2"]);
    assert_eq!(c.next("from 1")["event_number"], 4);
    assert_eq!(c.next("from 1")["event_number"], 5);
    c.finish();
    // a purged number: OUT_OF_RANGE by default, or reset when asked
    let c = s.grpc(&["subscribe", &a, "2", "1"]);
    let e = c.next("purged");
    assert_eq!(e["error"], "OUT_OF_RANGE", "{e}");
    assert_eq!(e["error_info"]["reason"], "HISTORY_GONE", "{e}");
    assert_eq!(e["error_info"]["metadata"]["first_available"], "4", "{e}");
    let c = s.grpc(&["subscribe", &a, "at=2", "1", "reset=earliest", "meta"]);
    assert_eq!(
        c.next("reset")["metadata"]["fhir-hub-reset"],
        json!([format!("{a} 1 3")])
    );
    assert_eq!(c.next("reset")["event_number"], 4);
    c.finish();
}

/// Defect 3: a position beyond the head is refused on every channel (it would skip the
/// events in between for good), saying the first available event and the head.
#[tokio::test]
async fn positions_beyond_the_head_are_refused_on_every_channel() {
    let Some(s) = Setup::start().await else {
        return;
    };
    // SSE: Last-Event-ID 7 of 3, and ?from=9: 416 with an OperationOutcome
    for (query, last) in [("", Some("7")), ("?from=9", None)] {
        let c = s.sse(query, "2", last);
        let r = c.next("refused");
        assert_eq!(r["status"], 416, "{r}");
        assert_eq!(r["body"]["resourceType"], "OperationOutcome", "{r}");
        assert!(r["body"].to_string().contains("beyond the head (3)"), "{r}");
        assert_eq!(r["headers"]["fhir-hub-first-available"], "1", "{r}");
        assert_eq!(r["headers"]["fhir-hub-head"], "3", "{r}");
        c.finish();
    }
    // at the head is fine: the next event comes
    let c = s.sse("", "2", Some("3"));
    assert_eq!(c.next("handshake")["event"], "handshake");
    s.publish(4..5).await;
    assert_eq!(c.next("next")["id"], "4");
    c.finish();

    // gRPC: OUT_OF_RANGE with an ErrorInfo naming first available and head
    for from in ["9", "at=9"] {
        let c = s.grpc(&["subscribe", &s.grpc, from, "1"]);
        let e = c.next("beyond");
        assert_eq!(e["error"], "OUT_OF_RANGE", "{e}");
        let info = &e["error_info"];
        assert_eq!(info["reason"], "BEYOND_HEAD", "{e}");
        assert_eq!(info["metadata"]["first_available"], "1", "{e}");
        assert_eq!(info["metadata"]["head"], "4", "{e}");
        assert_eq!(info["metadata"]["subscription_id"], s.grpc.as_str(), "{e}");
    }

    // websocket: an OperationOutcome for that binding instead of its handshake
    let c = s.ws(Some("9"), "1").await;
    let oo = c.next("refused binding");
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    let text = oo.to_string();
    assert!(text.contains(&format!("Subscription/{}", s.ws)), "{oo}");
    assert!(text.contains("beyond the head (4)"), "{oo}");
    c.finish();
    // at the head: a handshake, then the next event
    let c = s.ws(Some("4"), "2").await;
    assert_eq!(kind(&c.next("handshake")), "handshake");
    s.publish(5..6).await;
    assert_eq!(event_number(&c.next("next")), 5);
    c.finish();
}

/// The start positions, the same on every channel: earliest retained (no notice: nothing
/// asked was lost), latest, at an event number, at a time; a purged number on SSE and
/// websocket continues from the first event retained with a notice.
#[tokio::test]
async fn every_channel_starts_at_earliest_latest_a_number_or_a_time() {
    let Some(s) = Setup::start().await else {
        return;
    };
    let second = s.purge_first_batch(4..7).await; // 1–3 purged; 4–6 retained

    // SSE
    let c = s.sse("?from=earliest", "3", None);
    assert_eq!(c.next("handshake")["event"], "handshake");
    assert_eq!(c.next("earliest")["id"], "4");
    assert_eq!(c.next("earliest")["id"], "5");
    c.finish();
    let c = s.sse("?from=5", "2", None);
    assert_eq!(c.next("handshake")["event"], "handshake");
    assert_eq!(c.next("at 5")["id"], "5");
    c.finish();
    let c = s.sse(&format!("?from={second}"), "2", None);
    assert_eq!(c.next("handshake")["event"], "handshake");
    assert_eq!(c.next("at a time")["id"], "4");
    c.finish();
    let c = s.sse("?from=2", "3", None);
    assert_eq!(c.next("handshake")["event"], "handshake");
    let gone = c.next("history-gone");
    assert_eq!(gone["event"], "history-gone", "{gone}");
    assert!(
        gone["data"]
            .as_str()
            .unwrap()
            .contains("continues from event 4"),
        "{gone}"
    );
    assert_eq!(c.next("continues")["id"], "4");
    c.finish();
    // Last-Event-ID wins over ?from= (a browser reconnects to the same URL)
    let c = s.sse("?from=earliest", "2", Some("5"));
    assert_eq!(c.next("handshake")["event"], "handshake");
    assert_eq!(c.next("resumed")["id"], "6");
    c.finish();
    let latest = s.sse("?from=latest", "2", None);
    assert_eq!(latest.next("handshake")["event"], "handshake");

    // websocket
    let c = s.ws(Some("earliest"), "2").await;
    assert_eq!(kind(&c.next("handshake")), "handshake");
    assert_eq!(event_number(&c.next("earliest")), 4);
    c.finish();
    let c = s.ws(Some("from=6"), "2").await;
    assert_eq!(kind(&c.next("handshake")), "handshake");
    assert_eq!(event_number(&c.next("at 6")), 6);
    c.finish();
    let c = s.ws(Some(&format!("from={second}")), "2").await;
    assert_eq!(kind(&c.next("handshake")), "handshake");
    assert_eq!(event_number(&c.next("at a time")), 4);
    c.finish();
    let c = s.ws(Some("1"), "3").await;
    assert_eq!(kind(&c.next("handshake")), "handshake");
    let gone = c.next("history gone");
    assert_eq!(gone["resourceType"], "OperationOutcome", "{gone}");
    assert!(gone.to_string().contains("continuing from 4"), "{gone}");
    assert_eq!(event_number(&c.next("continues")), 4);
    c.finish();
    let ws_latest = s.ws(Some("latest"), "2").await;
    assert_eq!(kind(&ws_latest.next("handshake")), "handshake");

    // gRPC Subscribe
    let at_time = format!("time={second}");
    for (from, first) in [("earliest", 4), ("at=5", 5), (at_time.as_str(), 4)] {
        let c = s.grpc(&["subscribe", &s.grpc, from, "1"]);
        assert_eq!(c.next(from)["event_number"], first, "{from}");
        c.finish();
    }
    let c = s.grpc(&["subscribe", &s.grpc, "time=yesterday", "1"]);
    assert_eq!(c.next("not an instant")["error"], "INVALID_ARGUMENT");
    let grpc_latest = s.grpc(&["subscribe", &s.grpc, "latest", "1", "meta"]);
    grpc_latest.next("opened");

    // latest, on every channel: the next event and nothing before it
    s.publish(7..8).await;
    assert_eq!(latest.next("latest")["id"], "7");
    assert_eq!(event_number(&ws_latest.next("latest")), 7);
    assert_eq!(grpc_latest.next("latest")["event_number"], 7);
}

/// Defect 4: `$events` after a purge answers exactly the asked range of what is retained,
/// and its SubscriptionStatus says which asked events were purged.
#[tokio::test]
async fn events_after_a_purge_answers_the_asked_range_and_says_what_was_purged() {
    let Some(s) = Setup::start().await else {
        return;
    };
    s.purge_first_batch(4..8).await; // 1–3 purged; 4–7 retained
    let events = |since: i64, until: i64| {
        let path = format!(
            "/fhir/Subscription/{}/$events?eventsSinceNumber={since}&eventsUntilNumber={until}",
            s.sse
        );
        let hub = &s.hub;
        async move {
            let (c, b) = hub.get(&path).await;
            assert_eq!(c, 200, "{b}");
            let status = &b["entry"][0]["resource"];
            let numbers: Vec<i64> = status["parameter"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["name"] == "notification-event")
                .map(|p| {
                    p["part"][0]["valueString"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            let error = param(status, "error").map(|e| {
                e["valueCodeableConcept"]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            });
            (numbers, error)
        }
    };
    // 2..5: 4 and 5 only, never 6 and 7; 2 and 3 said to be purged
    let (numbers, error) = events(2, 5).await;
    assert_eq!(numbers, [4, 5]);
    let error = error.expect("the purge is said");
    assert!(error.contains("events 2 to 3 were purged"), "{error}");
    // wholly purged: nothing, said
    let (numbers, error) = events(1, 3).await;
    assert!(numbers.is_empty(), "{numbers:?}");
    assert!(error.unwrap().contains("events 1 to 3 were purged"));
    // wholly retained: no notice
    let (numbers, error) = events(5, 6).await;
    assert_eq!(numbers, [5, 6]);
    assert_eq!(error, None);
}
