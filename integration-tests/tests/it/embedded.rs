//! The embedded default end to end: no Kafka, no PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, envelope, glucose, other_observation};
use crate::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn matching_observation_reaches_the_rest_hook_and_others_do_not() {
    let hub = Hub::start(HubEnv::default()).await;
    let mut full = TestReceiver::start().await;
    let mut empty = TestReceiver::start().await;
    hub.subscribe("Observation?code=http://loinc.org|2345-7", &full.url, true)
        .await;
    hub.subscribe(
        "Observation?code=http://loinc.org|2345-7&patient=Patient/p1",
        &empty.url,
        false,
    )
    .await;

    let (status, body) = hub.post_json("/events", &other_observation("o0")).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = hub
        .post_json("/events", &envelope(&glucose("o1"), "create"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["published"], 1);

    // With a payload: PUT [endpoint]/Observation/o1 carrying the resource.
    let got = full.next(WAIT).await;
    assert_eq!(got.method, "PUT");
    assert_eq!(got.path, "/hook/Observation/o1");
    let resource: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(resource, glucose("o1"));
    assert_eq!(got.headers["x-test"], "e2e");
    assert!(got.headers.contains_key("webhook-id"));

    // Without a payload: an empty POST to the endpoint.
    let got = empty.next(WAIT).await;
    assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/hook"));
    assert!(got.body.is_empty());

    // The non-matching Observation produced nothing anywhere.
    full.assert_quiet(Duration::from_millis(700)).await;
    empty.assert_quiet(Duration::from_millis(100)).await;

    // Metrics count what happened, in the Prometheus text format.
    let text = hub.metrics().await;
    assert!(text.contains("fhir_hub_events_published_total 2"), "{text}");
    assert!(
        text.contains("fhir_hub_notifications_logged_total 2"),
        "{text}"
    );
    // Two handshakes and two notifications.
    assert!(
        text.contains("fhir_hub_delivery_attempts_total{outcome=\"delivered\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("fhir_hub_subscriptions{status=\"active\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn bundles_and_the_publish_command_feed_the_same_pipeline() {
    let hub = Hub::start(HubEnv::default()).await;
    let mut rx = TestReceiver::start().await;
    hub.subscribe("Observation?code=2345-7", &rx.url, true)
        .await;

    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": glucose("b1"), "request": {"method": "PUT", "url": "Observation/b1"}},
        {"request": {"method": "DELETE", "url": "Observation/b0"}}
    ]});
    let (status, body) = hub.post_json("/fhir", &bundle).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/b1");

    // `fhir-hub publish` from another process into the same embedded log.
    let file = hub.data_dir.path().join("in.ndjson");
    let lines = [
        glucose("c1").to_string(),
        other_observation("c2").to_string(),
        glucose("c3").to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = std::process::Command::new(crate::harness::binary())
        .args(["publish", "--quiet", "--input"])
        .arg(&file)
        .arg("--data-dir")
        .arg(hub.data_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published 3 change events"));
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/c1");
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/c3");

    // A file with a bad line publishes nothing and says which line.
    let bad = hub.data_dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"resourceType\":\"Observatoin\",\"id\":\"x\"}}\n",
            glucose("d1")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::harness::binary())
        .args(["publish", "--quiet", "--input"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(hub.data_dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("Observatoin"),
        "{stderr}"
    );
    rx.assert_quiet(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_everything_in_order_once_it_is_up() {
    let hub = Hub::start(HubEnv::default()).await;
    let mut rx = TestReceiver::start().await;
    rx.respond_with(503);
    let id = hub
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    for i in 0..5 {
        let (status, _) = hub.post_json("/events", &glucose(&format!("r{i}"))).await;
        assert_eq!(status, 202);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rx.respond_with(200);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(rx.next(WAIT).await.path);
    }
    let expected: Vec<String> = (0..5).map(|i| format!("/hook/Observation/r{i}")).collect();
    assert_eq!(ids, expected);
    let (_, sub) = hub.get(&format!("/fhir/Subscription/{id}")).await;
    assert_eq!(sub["status"], "active");
}

/// Subscription writes change the matcher's index in place: an edited criteria matches
/// what it says now (and no longer what it said), a deleted subscription matches nothing,
/// and the tenant is indexed whole only once.
#[tokio::test]
async fn edits_and_deletes_change_matching_in_place() {
    let hub = Hub::start(HubEnv::default()).await;
    let mut rx = TestReceiver::start().await;
    let mut other_rx = TestReceiver::start().await;
    let id = hub
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    let keep = hub
        .subscribe("Observation?code=2345-7", &other_rx.url, true)
        .await;
    hub.wait_status(&id, "active").await;
    hub.wait_status(&keep, "active").await;
    hub.post_json("/events", &glucose("before")).await;
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/before");
    assert_eq!(other_rx.next(WAIT).await.path, "/hook/Observation/before");

    // edit: the criteria now names the other code
    let (_, mut sub) = hub.get(&format!("/fhir/Subscription/{id}")).await;
    sub["criteria"] = json!("Observation?code=8867-4");
    let answer = hub
        .put_json(&format!("/fhir/Subscription/{id}"), &sub, None)
        .await;
    assert_eq!(answer.status(), 200);
    hub.wait_status(&id, "active").await;
    hub.post_json("/events", &glucose("old-code")).await;
    hub.post_json("/events", &other_observation("new-code"))
        .await;
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/new-code");
    // the untouched subscription kept matching all along
    assert_eq!(other_rx.next(WAIT).await.path, "/hook/Observation/old-code");

    // delete: nothing more for it, the other one still matches
    let status = hub
        .http
        .delete(format!("{}/fhir/Subscription/{id}", hub.url))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    hub.post_json("/events", &other_observation("after-delete"))
        .await;
    hub.post_json("/events", &glucose("still-kept")).await;
    assert_eq!(
        other_rx.next(WAIT).await.path,
        "/hook/Observation/still-kept"
    );
    rx.assert_quiet(Duration::from_millis(700)).await;

    // a fresh subscription with the first one's criteria matches at once
    let again = hub
        .subscribe("Observation?code=8867-4", &rx.url, true)
        .await;
    hub.wait_status(&again, "active").await;
    hub.post_json("/events", &other_observation("fresh")).await;
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/fresh");

    let log = std::fs::read_to_string(hub.data_dir.path().join("hub.log")).unwrap();
    let built = log.matches("matcher index built for a tenant").count();
    assert_eq!(
        built, 1,
        "the tenant is indexed whole once, then changed in place:\n{log}"
    );
}

#[tokio::test]
async fn state_survives_a_graceful_restart() {
    let mut hub = Hub::start(HubEnv::default()).await;
    let mut rx = TestReceiver::start().await;
    let id = hub
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    hub.post_json("/events", &glucose("s1")).await;
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/s1");

    let status = hub.terminate();
    assert!(
        status.success(),
        "SIGTERM should end the hub cleanly: {status:?}"
    );
    let data_dir = std::mem::replace(&mut hub.data_dir, tempfile::tempdir().unwrap());
    drop(hub);

    let hub = Hub::start_in(HubEnv::default(), data_dir).await;
    let (code, sub) = hub.get(&format!("/fhir/Subscription/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(sub["criteria"], "Observation?code=2345-7");
    hub.post_json("/events", &glucose("s2")).await;
    assert_eq!(rx.next(WAIT).await.path, "/hook/Observation/s2");
    // Nothing delivered before the restart comes again.
    rx.assert_quiet(Duration::from_millis(1000)).await;
}

/// A client that retries a request (after a 503, a timeout, a dropped connection) with the
/// same `Idempotency-Key` causes no second notification: the events the hub names get the
/// same ids again, and the notification log deduplicates by event id.
#[tokio::test]
async fn retries_with_an_idempotency_key_notify_once() {
    let hub = Hub::start(HubEnv::default()).await;
    let mut rx = TestReceiver::start().await;
    let id = hub
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    hub.wait_status(&id, "active").await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": glucose("idem-1"),
        "request": {"method": "PUT", "url": "Observation/idem-1"}}]});
    let post = |key: Option<&'static str>, body: Vec<u8>, path: &'static str, ct: &'static str| {
        let mut req = hub
            .http
            .post(format!("{}{path}", hub.url))
            .header("content-type", ct)
            .body(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.send()
    };
    let ndjson = format!("{}\n", glucose("idem-2")).into_bytes();
    for _ in 0..3 {
        let r = post(
            Some("order-42"),
            bundle.to_string().into_bytes(),
            "/fhir",
            "application/fhir+json",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 202);
        let r = post(
            Some("order-43"),
            ndjson.clone(),
            "/events",
            "application/x-ndjson",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 202);
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(rx.next(Duration::from_secs(20)).await.path);
    }
    got.sort();
    assert_eq!(
        got,
        ["/hook/Observation/idem-1", "/hook/Observation/idem-2"]
    );
    rx.assert_quiet(Duration::from_millis(1500)).await;
    // without a key, a resend is a new event
    let r = post(None, ndjson.clone(), "/events", "application/x-ndjson")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        rx.next(Duration::from_secs(20)).await.path,
        "/hook/Observation/idem-2"
    );
    // a key that is not a header token is refused with an OperationOutcome
    let r = post(Some(" "), ndjson, "/events", "application/x-ndjson")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
}
