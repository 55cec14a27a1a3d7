//! Data is never the reason the hub stops: poison events of several kinds go to quarantine
//! with their reason, are counted, listed, replayed and dropped, and the events after them
//! flow on. The first case is the reproduced crash from the reliability review: an
//! Observation whose `effectiveDateTime` ends in a multi-byte character used to panic the
//! matcher on every restart.

use std::time::Duration;

use hub_log::EventLog;
use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, envelope};
use crate::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(20);
const TOPIC: &str = "http://example.org/topics/too-costly";

/// A topic whose FHIRPath grows a string geometrically (each `replace('', …)` puts the
/// replacement around every character): over any sane budget on the first event.
fn costly_topic() -> Value {
    let chain = ".replace('', 'abcdefghij')".repeat(6);
    json!({
        "resourceType": "SubscriptionTopic", "url": TOPIC, "status": "active",
        "resourceTrigger": [{
            "resource": "http://hl7.org/fhir/StructureDefinition/Observation",
            "supportedInteraction": ["create", "update"],
            "fhirPathCriteria": format!("%current.id{chain}.length() > 0")
        }]
    })
}

fn dated(id: &str, when: &str) -> Value {
    let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
           "effectiveDateTime": when});
    // parsed from text: a `json!` literal would be an f64 and lose the trailing zero
    o["valueQuantity"] = serde_json::from_str(r#"{"value": 1.50}"#).unwrap();
    o
}

async fn quarantine(hub: &Hub) -> Value {
    let (status, body) = hub.get("/admin/quarantine").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Two subscriptions: Observations dated from 2020 (notified), and the costly topic (its
/// trigger over budget on every Observation: the event is quarantined for it).
async fn dated_and_costly(hub: &Hub) -> (TestReceiver, TestReceiver) {
    let dated_rx = TestReceiver::start().await;
    let topic_rx = TestReceiver::start().await;
    let by_date = hub
        .subscribe("Observation?date=ge2020-01-01", &dated_rx.url, true)
        .await;
    hub.wait_status(&by_date, "active").await;
    let (status, t) = hub
        .post_json("/fhir/SubscriptionTopic", &costly_topic())
        .await;
    assert_eq!(status, 201, "{t}");
    let (status, s) = hub
        .post_json(
            "/fhir/Subscription",
            &json!({"resourceType": "Subscription", "status": "requested", "reason": "costly",
                    "criteria": TOPIC,
                    "channel": {"type": "rest-hook", "endpoint": topic_rx.url,
                                "payload": "application/fhir+json"}}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    hub.wait_status(s["id"].as_str().unwrap(), "active").await;
    (dated_rx, topic_rx)
}

#[tokio::test]
async fn poison_events_are_quarantined_and_the_rest_flows_on() {
    let mut hub = Hub::start(HubEnv::default()).await;
    let (mut dated_rx, mut topic_rx) = dated_and_costly(&hub).await;

    // 1. The reproduced crash: a date whose fraction ends in a multi-byte character.
    let (status, body) = hub
        .post_json(
            "/events",
            &envelope(&dated("bad-date", "2024-01-01T10:00:00.12345é"), "create"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // 2. A record that is not a change event at all, written straight into the log as
    //    another producer could (the ingest API would refuse it).
    let log = hub_log::embedded::EmbeddedLog::open(&hub.data_dir.path().join("log.db"))
        .await
        .unwrap();
    log.publish(
        "fhir.changes",
        &[hub_log::Record {
            key: "Observation/x".into(),
            payload: b"{not json \xff".to_vec(),
        }],
    )
    .await
    .unwrap();
    // 3. A good event after them: its date matches; the costly topic cannot be evaluated,
    //    so the event is quarantined for the topic while the date subscriber gets it.
    let (status, body) = hub
        .post_json(
            "/events",
            &envelope(&dated("good", "2024-03-01T10:00:00Z"), "create"),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    let got = dated_rx.next(WAIT).await;
    assert_eq!(got.path, "/hook/Observation/good");
    // Decimals arrive as the producer wrote them.
    assert!(
        String::from_utf8_lossy(&got.body).contains(r#""value":1.50"#),
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    // The poison date matched nothing (an unreadable date is not ≥ 2020) and crashed nothing.
    dated_rx.assert_quiet(Duration::from_millis(500)).await;
    topic_rx.assert_quiet(Duration::from_millis(100)).await;
    assert!(
        hub.child.try_wait().unwrap().is_none(),
        "the hub is still running"
    );

    // Three records: the unreadable one, and both Observations for the costly topic (the
    // bad date too: the topic fires on every Observation).
    let mut q = quarantine(&hub).await;
    for _ in 0..100 {
        if q["total"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        q = quarantine(&hub).await;
    }
    assert_eq!(q["total"], 3, "{q}");
    let items = q["items"].as_array().unwrap();
    let unreadable = items.iter().find(|i| i["stage"] == "parse").expect("{q}");
    assert!(
        unreadable["reason"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{unreadable}"
    );
    assert!(unreadable["payload"]["base64"].is_string(), "{unreadable}");
    let costly = items
        .iter()
        .find(|i| i["stage"] == "match" && i["key"] == "Observation/good")
        .expect("{q}");
    let reason = costly["reason"].as_str().unwrap();
    assert!(
        reason.contains(TOPIC) && reason.contains("budget"),
        "{reason}"
    );
    assert_eq!(costly["tenant"], "default");
    let text = hub.metrics().await;
    assert!(
        text.contains("fhir_hub_events_quarantined_total 3"),
        "{text}"
    );
    assert!(text.contains("fhir_hub_quarantined_events 3"), "{text}");

    // Drop the unreadable one; replay the costly one (the topic still cannot be evaluated,
    // so it comes back under its new log position; the date subscriber is not notified
    // twice: the log deduplicates by event id).
    let del = hub
        .http
        .delete(format!("{}/admin/quarantine/{}", hub.url, unreadable["id"]))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let (status, body) = hub
        .post_json(
            &format!("/admin/quarantine/{}/$replay", costly["id"]),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let requarantined = |q: &Value| {
        q["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["eventId"] == costly["eventId"] && i["id"] != costly["id"])
            .cloned()
    };
    let mut q = quarantine(&hub).await;
    for _ in 0..100 {
        if requarantined(&q).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        q = quarantine(&hub).await;
    }
    assert_eq!(q["total"], 2, "{q}");
    assert!(requarantined(&q).is_some(), "{q}");
    dated_rx.assert_quiet(Duration::from_millis(500)).await;
    let (status, body) = hub.get("/admin/quarantine/999999").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let (status, _) = hub.get("/admin/quarantine/abc").await;
    assert_eq!(status, 404);

    // The matcher is still going round its loop, and has read everything: ready.
    let (status, ready) = hub.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["components"]["matcher"]["status"], "pass", "{ready}");
    assert_eq!(
        ready["components"]["consumerLag"]["status"], "pass",
        "{ready}"
    );

    // And the hub stops cleanly: nothing is stuck.
    assert!(hub.terminate().success());
}

/// A bare resource written straight to the topic is named by its log position
/// (`log:topic:partition:offset`). Replayed from quarantine, it is the same event, not a new
/// one at its new position: the subscription it reached is not notified twice, and it comes
/// back to quarantine under the id it had.
#[tokio::test]
async fn a_replayed_bare_resource_keeps_its_event_id() {
    let hub = Hub::start(HubEnv::default()).await;
    let (mut dated_rx, mut topic_rx) = dated_and_costly(&hub).await;
    let log = hub_log::embedded::EmbeddedLog::open(&hub.data_dir.path().join("log.db"))
        .await
        .unwrap();
    let bare = dated("bare", "2024-03-01T10:00:00Z");
    log.publish(
        "fhir.changes",
        &[hub_log::Record {
            key: "Observation/bare".into(),
            payload: bare.to_string().into_bytes(),
        }],
    )
    .await
    .unwrap();
    assert_eq!(dated_rx.next(WAIT).await.path, "/hook/Observation/bare");
    let mut q = quarantine(&hub).await;
    for _ in 0..100 {
        if q["total"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        q = quarantine(&hub).await;
    }
    let first = q["items"][0].clone();
    let event_id = first["eventId"].as_str().unwrap().to_owned();
    assert!(event_id.starts_with("log:fhir.changes:0:"), "{first}");

    let (status, body) = hub
        .post_json(
            &format!("/admin/quarantine/{}/$replay", first["id"]),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let again = |q: &Value| {
        q["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] != first["id"])
            .cloned()
    };
    let mut q = quarantine(&hub).await;
    for _ in 0..100 {
        if again(&q).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        q = quarantine(&hub).await;
    }
    let again = again(&q).expect("the replayed event is quarantined again");
    assert_eq!(again["eventId"], event_id.as_str(), "{again}");
    assert_eq!(q["total"], 1, "{q}");
    dated_rx.assert_quiet(Duration::from_millis(500)).await;
    topic_rx.assert_quiet(Duration::from_millis(100)).await;
}

/// `/ready` reports the matchers' lag on the change topic as `warn` beyond
/// `server.ready_max_lag`, and still answers 200: here an api process whose matchers are not
/// running. Lag is the cluster's; failing readiness on it would take every API process out of
/// its load balancer at once during one large publish, though each still serves.
#[tokio::test]
async fn ready_reports_lag_but_says_whether_this_process_serves() {
    let hub = Hub::start(
        HubEnv::default()
            .arg("--roles")
            .arg("api")
            .var("HUB_SERVER__READY_MAX_LAG", "5"),
    )
    .await;
    let (status, ready) = hub.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["components"]["consumerLag"]["records"], 0, "{ready}");
    for i in 0..8 {
        let (c, b) = hub
            .post_json(
                "/events",
                &crate::harness::envelope(&crate::harness::glucose(&format!("lag{i}")), "create"),
            )
            .await;
        assert_eq!(c, 202, "{b}");
    }
    let (status, ready) = hub.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "pass", "{ready}");
    let lag = &ready["components"]["consumerLag"];
    assert_eq!(
        (lag["status"].as_str(), lag["records"].as_u64()),
        (Some("warn"), Some(8)),
        "{ready}"
    );
    assert!(
        lag["error"]
            .as_str()
            .unwrap()
            .contains("8 change events behind"),
        "{ready}"
    );
}
