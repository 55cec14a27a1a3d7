//! Topic-based subscriptions (Subscriptions R5 Backport IG on R4) end to end: a topic with
//! query and FHIRPath criteria and a filter, subscriptions at each content level going
//! requested → handshake → active, event-notification bundles numbered without gaps,
//! `$status`/`$events`, and every rejection the IG asks servers to make.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv};
use crate::receiver::TestReceiver;

const TOPIC: &str = "http://example.org/topics/lab-result-final";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

pub(crate) fn topic() -> Value {
    json!({
        "resourceType": "SubscriptionTopic",
        "url": TOPIC,
        "status": "active",
        "title": "A laboratory result became final",
        "resourceTrigger": [{
            "resource": "http://hl7.org/fhir/StructureDefinition/Observation",
            "supportedInteraction": ["create", "update"],
            "queryCriteria": {
                "previous": "status:not=final", "current": "status=final",
                "resultForCreate": "test-passes", "requireBoth": true
            },
            "fhirPathCriteria": "%current.code.coding.where(system = 'http://loinc.org').exists()"
        }],
        "canFilterBy": [{"resource": "Observation", "filterParameter": "patient"}]
    })
}

pub(crate) fn subscription(endpoint: &str, content: Option<&str>, filter: Option<&str>) -> Value {
    let mut s = json!({
        "resourceType": "Subscription", "status": "requested", "reason": "topic e2e",
        "criteria": TOPIC,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}
    });
    if let Some(c) = content {
        s["channel"]["_payload"] = json!({"extension": [
            {"url": format!("{BACKPORT}backport-payload-content"), "valueCode": c}]});
    }
    if let Some(f) = filter {
        s["_criteria"] = json!({"extension": [
            {"url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f}]});
    }
    s
}

pub(crate) fn obs(id: &str, status: &str, patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": status,
           "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
           "subject": {"reference": patient}, "valueQuantity": {"value": 6.1}})
}

pub(crate) fn event(action: &str, current: &Value, previous: Option<&Value>) -> Value {
    let mut e = json!({"id": uuid::Uuid::new_v4().to_string(), "action": action,
        "resourceType": "Observation", "resourceId": current["id"],
        "occurredAt": "2024-05-01T10:00:00Z", "resource": current});
    if let Some(p) = previous {
        e["previous"] = p.clone();
    }
    e
}

/// Publish creates of final lab Observations `{prefix}{i}` for Patient/p1.
pub(crate) async fn publish_final(hub: &Hub, prefix: &str, ids: std::ops::Range<usize>) {
    for i in ids {
        let o = obs(&format!("{prefix}{i}"), "final", "Patient/p1");
        let (c, b) = hub.post_json("/events", &event("create", &o, None)).await;
        assert_eq!(c, 202, "{b}");
    }
}

pub(crate) fn param<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

#[tokio::test]
async fn topic_subscriptions_notify_with_gap_free_event_numbers() {
    let hub = Hub::start(HubEnv::default()).await;
    let (status, t) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(status, 201, "{t}");
    let (_, found) = hub
        .get(&format!("/fhir/SubscriptionTopic?url={TOPIC}"))
        .await;
    assert_eq!(found["total"], 1);
    let (_, cs) = hub.get("/fhir/metadata").await;
    assert!(
        cs.to_string().contains(TOPIC),
        "the CapabilityStatement lists the topic"
    );

    let mut rx = TestReceiver::start().await;
    let mut ids = HashMap::new();
    for content in ["empty", "id-only", "full-resource"] {
        let (status, s) = hub
            .post_json(
                "/fhir/Subscription",
                &subscription(
                    &rx.url,
                    Some(content),
                    Some("Observation?patient=Patient/p1"),
                ),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        assert_eq!(s["status"], "requested");
        let id = s["id"].as_str().unwrap().to_owned();
        hub.wait_status(&id, "active").await;
        ids.insert(id, content);
    }
    assert_eq!(rx.handshakes(), 3, "one handshake bundle per subscription");

    let p1_final = obs("o1", "final", "Patient/p1");
    let p1_prelim = obs("o2", "preliminary", "Patient/p1");
    let p1_o2_final = obs("o2", "final", "Patient/p1");
    let p2_final = obs("o3", "final", "Patient/p2");
    for e in [
        event("create", &p1_final, None),                // fires
        event("create", &p2_final, None),                // filtered out (Patient/p2)
        event("create", &p1_prelim, None),               // current test fails
        event("update", &p1_final, Some(&p1_final)),     // final → final: requireBoth fails
        event("update", &p1_o2_final, Some(&p1_prelim)), // preliminary → final: fires
    ] {
        let (status, body) = hub.post_json("/events", &e).await;
        assert_eq!(status, 202, "{body}");
    }

    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for _ in 0..6 {
        let r = rx.next(Duration::from_secs(20)).await;
        assert_eq!(r.method, "POST");
        assert_eq!(r.headers["content-type"], "application/fhir+json");
        let bundle: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(bundle["type"], "history");
        let status = &bundle["entry"][0]["resource"];
        assert_eq!(status["resourceType"], "Parameters");
        assert_eq!(
            param(status, "type").unwrap()["valueCode"],
            "event-notification"
        );
        let sub_ref = param(status, "subscription").unwrap()["valueReference"]["reference"]
            .as_str()
            .unwrap();
        let id = sub_ref.rsplit('/').next().unwrap().to_owned();
        let content = ids[&id];
        // the IG: the topic SHOULD NOT be in empty notifications, SHOULD be in full-resource
        let topic = param(status, "topic").map(|t| t["valueCanonical"].clone());
        if content == "empty" {
            assert_eq!(topic, None, "{bundle}");
        } else {
            assert_eq!(topic, Some(json!(TOPIC)), "{bundle}");
        }
        let ev = param(status, "notification-event").unwrap();
        let number: i64 = ev["part"][0]["valueString"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let since: i64 = param(status, "events-since-subscription-start").unwrap()["valueString"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            since, number,
            "one event per bundle: the count is its number"
        );
        let entries = bundle["entry"].as_array().unwrap();
        match content {
            "empty" => assert_eq!(entries.len(), 1, "{bundle}"),
            "id-only" => {
                assert_eq!(entries.len(), 2);
                assert!(entries[1].get("resource").is_none());
                assert!(
                    entries[1]["fullUrl"]
                        .as_str()
                        .unwrap()
                        .ends_with("/Observation/o")
                        || entries[1]["fullUrl"]
                            .as_str()
                            .unwrap()
                            .contains("/Observation/o")
                );
            }
            _ => {
                assert_eq!(entries[1]["resource"]["resourceType"], "Observation");
                assert_eq!(entries[1]["resource"]["status"], "final");
            }
        }
        seen.entry(id).or_default().push(number);
    }
    for (id, numbers) in &seen {
        assert_eq!(
            numbers,
            &vec![1, 2],
            "Subscription/{id} ({}): gap-free, in order",
            ids[id]
        );
    }
    rx.assert_quiet(Duration::from_millis(800)).await;

    // $status and $events return what was sent
    let (id, _) = ids.iter().find(|(_, c)| **c == "full-resource").unwrap();
    let (code, st) = hub.get(&format!("/fhir/Subscription/{id}/$status")).await;
    assert_eq!(code, 200, "{st}");
    let p = &st["entry"][0]["resource"];
    assert_eq!(param(p, "type").unwrap()["valueCode"], "query-status");
    assert_eq!(param(p, "status").unwrap()["valueCode"], "active");
    assert_eq!(param(p, "topic").unwrap()["valueCanonical"], TOPIC);
    assert_eq!(
        param(p, "events-since-subscription-start").unwrap()["valueString"],
        "2"
    );
    let (code, ev) = hub
        .get(&format!(
            "/fhir/Subscription/{id}/$events?eventsSinceNumber=1&eventsUntilNumber=2"
        ))
        .await;
    assert_eq!(code, 200, "{ev}");
    let p = &ev["entry"][0]["resource"];
    assert_eq!(param(p, "type").unwrap()["valueCode"], "query-event");
    let numbers: Vec<&str> = p["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["name"] == "notification-event")
        .map(|x| x["part"][0]["valueString"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["1", "2"]);
    assert_eq!(ev["entry"][1]["resource"]["id"], "o1");
    assert_eq!(ev["entry"][2]["resource"]["id"], "o2");
    let (_, ev) = hub
        .get(&format!(
            "/fhir/Subscription/{id}/$events?eventsSinceNumber=2&content=id-only"
        ))
        .await;
    assert_eq!(ev["entry"].as_array().unwrap().len(), 2);
    assert!(ev["entry"][1].get("resource").is_none());
}

#[tokio::test]
async fn unsupported_topics_filters_channels_and_payloads_are_refused() {
    let hub = Hub::start(HubEnv::default()).await;
    let (status, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(status, 201);
    let endpoint = "https://example.org/hook";
    let check = |what: &'static str, status: u16, body: Value, needle: &'static str| {
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{what}");
        assert!(body.to_string().contains(needle), "{what}: {body}");
    };

    // unsupported topic
    let mut s = subscription(endpoint, None, None);
    s["criteria"] = json!("http://example.org/topics/unknown");
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    check("unknown topic", c, b, "is not supported");
    // unsupported filter (parameter not in canFilterBy)
    let s = subscription(endpoint, None, Some("Observation?code=2345-7"));
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    check("filter", c, b, "does not allow filtering on 'code'");
    // unsupported filter (resource the topic does not trigger on)
    let s = subscription(endpoint, None, Some("Condition?patient=Patient/1"));
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    check("filter resource", c, b, "no trigger for Condition");
    // unsupported channel type
    let mut s = subscription(endpoint, None, None);
    s["channel"]["type"] = json!("message");
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    check("message", c, b, "channel type 'message'");
    let mut s = subscription(endpoint, None, None);
    s["channel"]["type"] = json!("email");
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    check("email", c, b, "channel type 'email'");
    // a custom channel type (backport-channel-type)
    let mut s = subscription(endpoint, None, None);
    s["channel"]["_type"] = json!({"extension": [{"url": format!("{BACKPORT}backport-channel-type"),
        "valueCoding": {"system": "http://example.org/channels", "code": "sms"}}]});
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    check("custom channel", c, b, "'sms'");
    // unsupported payload type
    let mut s = subscription(endpoint, None, None);
    s["channel"]["payload"] = json!("application/fhir+xml");
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    check("xml payload", c, b, "application/fhir+xml");
    // unsupported payload content
    let s = subscription(endpoint, Some("everything"), None);
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    check("content", c, b, "payload content 'everything'");
    // unsupported channel + payload combination: a rest-hook topic subscription without payload
    let mut s = subscription(endpoint, None, None);
    s["channel"].as_object_mut().unwrap().remove("payload");
    let (c, b) = hub.post_json("/fhir/Subscription", &s).await;
    assert_eq!(c, 400, "{b}");
    assert!(b.to_string().contains("needs channel.payload"), "{b}");
    // topics the hub cannot honour
    let mut t = topic();
    t["url"] = json!("http://example.org/topics/event");
    t["eventTrigger"] = json!([{"event": {"text": "admission"}, "resource": "Encounter"}]);
    let (c, b) = hub.post_json("/fhir/SubscriptionTopic", &t).await;
    check("eventTrigger", c, b, "eventTrigger is not supported");
    let mut t = topic();
    t["url"] = json!("http://example.org/topics/shape");
    t["notificationShape"] =
        json!([{"resource": "Observation", "include": ["Observation:patient"]}]);
    let (c, b) = hub.post_json("/fhir/SubscriptionTopic", &t).await;
    check("include", c, b, "notificationShape.include");
    // a topic in use cannot be deleted
    let rx = TestReceiver::start().await;
    let (c, s) = hub
        .post_json("/fhir/Subscription", &subscription(&rx.url, None, None))
        .await;
    assert_eq!(c, 201, "{s}");
    let (_, found) = hub
        .get(&format!("/fhir/SubscriptionTopic?url={TOPIC}"))
        .await;
    let tid = found["entry"][0]["resource"]["id"].as_str().unwrap();
    let res = hub
        .http
        .delete(format!("{}/fhir/SubscriptionTopic/{tid}", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    // nor changed so that its subscribers' filters or url stop fitting
    let mut narrower = topic();
    narrower["id"] = json!(tid);
    narrower["canFilterBy"] = json!([]);
    let mut with_filter = subscription(&rx.url, None, Some("patient=Patient/1"));
    with_filter["status"] = json!("requested");
    let (c, b) = hub.post_json("/fhir/Subscription", &with_filter).await;
    assert_eq!(c, 201, "{b}");
    let res = hub
        .put_json(&format!("/fhir/SubscriptionTopic/{tid}"), &narrower, None)
        .await;
    assert_eq!(res.status(), 409);
    let b: Value = res.json().await.unwrap();
    assert!(b.to_string().contains("would refuse"), "{b}");
    let mut moved = topic();
    moved["id"] = json!(tid);
    moved["url"] = json!("http://example.org/topics/moved");
    let res = hub
        .put_json(&format!("/fhir/SubscriptionTopic/{tid}"), &moved, None)
        .await;
    assert_eq!(res.status(), 409);
}

/// Write bodies to files and validate them with the Python `fhir.resources` models.
fn validate_with_fhir_resources(python: &str, version: &str, bodies: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let f = dir.path().join(format!("{version}-{i}.json"));
        std::fs::write(&f, b).unwrap();
        files.push(f);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/validate_bundle.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(version)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{version} bundles do not validate:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bodies
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn r4b_and_r5_notifications_validate_with_fhir_resources() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let (status, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(status, 201);
    let mut rx = TestReceiver::start().await;
    // an R5-shaped Subscription
    let r5 = json!({
        "resourceType": "Subscription", "status": "requested", "name": "r5 lab results",
        "topic": TOPIC, "reason": "R5 e2e",
        "filterBy": [{"resourceType": "Observation", "filterParameter": "patient", "value": "Patient/p1"}],
        "channelType": {"system": "http://terminology.hl7.org/CodeSystem/subscription-channel-type", "code": "rest-hook"},
        "endpoint": rx.url, "heartbeatPeriod": 1, "timeout": 30, "maxCount": 10,
        "contentType": "application/fhir+json", "content": "full-resource"
    });
    let (c, s5) = hub.post_json("/fhir/Subscription", &r5).await;
    assert_eq!(c, 201, "{s5}");
    assert_eq!(
        s5["topic"], TOPIC,
        "read back in the R5 shape the client sent"
    );
    // the R4 form asking for R4B notifications
    let mut r4b = subscription(&rx.url, Some("id-only"), Some("patient=Patient/p1"));
    r4b["channel"]["payload"] = json!("application/fhir+json; fhirVersion=4.3");
    let (c, s4) = hub.post_json("/fhir/Subscription", &r4b).await;
    assert_eq!(c, 201, "{s4}");
    let id5 = s5["id"].as_str().unwrap();
    let id4 = s4["id"].as_str().unwrap();
    hub.wait_status(id5, "active").await;
    hub.wait_status(id4, "active").await;

    let (c, _) = hub
        .post_json(
            "/events",
            &event("create", &obs("o9", "final", "Patient/p1"), None),
        )
        .await;
    assert_eq!(c, 202);
    let mut by_version: HashMap<&str, Vec<Vec<u8>>> = HashMap::new();
    for _ in 0..2 {
        let r = rx.next(Duration::from_secs(20)).await;
        let ct = r.headers["content-type"].to_str().unwrap().to_owned();
        let v = if ct.contains("fhirVersion=5.0") {
            "R5"
        } else {
            "R4B"
        };
        assert!(ct.contains("fhirVersion="), "{ct}");
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            b["entry"][0]["resource"]["resourceType"],
            "SubscriptionStatus"
        );
        assert_eq!(
            b["entry"][0]["resource"]["notificationEvent"][0]["eventNumber"],
            "1"
        );
        if v == "R5" {
            assert_eq!(b["type"], "subscription-notification");
            assert_eq!(b["entry"][1]["resource"]["id"], "o9", "full-resource");
        } else {
            assert_eq!(b["type"], "history");
            assert!(b["entry"][1].get("resource").is_none(), "id-only");
        }
        by_version.entry(v).or_default().push(r.body.to_vec());
    }
    // handshakes and (after a quiet second) the R5 subscription's heartbeat
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rx.heartbeats() == 0 {
        assert!(std::time::Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for body in rx.control_bodies() {
        let b: Value = serde_json::from_slice(&body).unwrap();
        let kind = b["entry"][0]["resource"]["type"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(kind == "handshake" || kind == "heartbeat", "{kind}");
        let v = if b["type"] == "subscription-notification" {
            "R5"
        } else {
            "R4B"
        };
        by_version.entry(v).or_default().push(body.to_vec());
    }
    // $status and $events answer in the subscription's version
    let (_, st) = hub.get(&format!("/fhir/Subscription/{id5}/$status")).await;
    assert_eq!(st["entry"][0]["resource"]["type"], "query-status");
    let (_, ev) = hub.get(&format!("/fhir/Subscription/{id5}/$events")).await;
    assert_eq!(ev["entry"][0]["resource"]["type"], "query-event");
    assert_eq!(ev["entry"][1]["resource"]["id"], "o9");
    by_version
        .entry("R5")
        .or_default()
        .extend([st.to_string().into_bytes(), ev.to_string().into_bytes()]);
    assert!(
        by_version["R5"].len() >= 5,
        "notification, handshake, heartbeat, $status, $events"
    );
    assert!(by_version["R4B"].len() >= 2, "notification, handshake");
    for (v, bodies) in &by_version {
        validate_with_fhir_resources(&python, v, bodies);
    }
}

#[tokio::test]
async fn a_backport_r4_basic_topic_is_accepted() {
    let hub = Hub::start(HubEnv::default()).await;
    let x = |n: &str| {
        format!("http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.{n}")
    };
    let basic = json!({
        "resourceType": "Basic",
        "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
        "extension": [
            {"url": x("url"), "valueUri": "http://example.org/topics/r4-basic"},
            {"url": x("status"), "valueCode": "active"},
            {"url": x("resourceTrigger"), "extension": [
                {"url": "resource", "valueUri": "Encounter"},
                {"url": "supportedInteraction", "valueCode": "update"},
                {"url": "queryCriteria", "extension": [{"url": "current", "valueString": "status=finished"}]}
            ]}
        ]
    });
    let (c, t) = hub.post_json("/fhir/SubscriptionTopic", &basic).await;
    assert_eq!(c, 201, "{t}");
    assert_eq!(t["resourceType"], "SubscriptionTopic");
    assert_eq!(t["resourceTrigger"][0]["resource"], "Encounter");
    let (_, found) = hub
        .get("/fhir/SubscriptionTopic?url=http://example.org/topics/r4-basic")
        .await;
    assert_eq!(found["total"], 1);
}

#[test]
fn fhirpath_command_prints_json_or_an_operation_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let obs = dir.path().join("obs.json");
    std::fs::write(&obs, obs_json().to_string()).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::binary())
            .arg("fhirpath")
            .args(args)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    let (code, v) = run(&[
        "-e",
        "Observation.value.ofType(Quantity).value > 5",
        "-r",
        obs.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(v, json!([true]));
    let (code, v) = run(&[
        "-e",
        "Observation.valueQuantity",
        "-r",
        obs.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert_eq!(v["resourceType"], "OperationOutcome");
    assert!(v.to_string().contains("value.ofType(Quantity)"), "{v}");
    let (code, v) = run(&["-e", "1 +"]);
    assert_eq!(code, Some(2));
    assert_eq!(v["issue"][0]["code"], "invalid");
}

fn obs_json() -> Value {
    obs("o1", "final", "Patient/p1")
}

/// A hub started with `env`, holding the "became final" topic and one active id-only
/// rest-hook subscription to it, and that subscription's receiver.
async fn final_topic_subscriber(env: HubEnv) -> (Hub, TestReceiver) {
    let hub = Hub::start(env).await;
    let (status, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(status, 201);
    let rx = TestReceiver::start().await;
    let (c, s) = hub
        .post_json(
            "/fhir/Subscription",
            &subscription(&rx.url, Some("id-only"), None),
        )
        .await;
    assert_eq!(c, 201, "{s}");
    hub.wait_status(s["id"].as_str().unwrap(), "active").await;
    (hub, rx)
}

/// The event number of the next notification `rx` receives.
async fn next_event_number(rx: &mut TestReceiver) -> String {
    let r = rx.next(Duration::from_secs(20)).await;
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    let st = &b["entry"][0]["resource"];
    param(st, "notification-event").unwrap()["part"][0]["valueString"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Producers that do not send `previous` (bare resources on Kafka, most CDC feeds): the hub
/// remembers the last version of the types a subscribed topic compares, so "became final"
/// still fires exactly once.
#[tokio::test]
async fn previous_versions_are_supplied_when_events_lack_them() {
    let (hub, mut rx) = final_topic_subscriber(HubEnv::default()).await;

    let prelim = obs("v1", "preliminary", "Patient/p1");
    let fin = obs("v1", "final", "Patient/p1");
    // none of these envelopes carries `previous`
    for (i, (action, r)) in [("create", &prelim), ("update", &fin), ("update", &fin)]
        .into_iter()
        .enumerate()
    {
        let (c, b) = hub.post_json("/events", &event(action, r, None)).await;
        assert_eq!(c, 202, "{b}");
        // one event per batch, so each sees the version the previous one left
        if i < 2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(next_event_number(&mut rx).await, "1");
    // final → final (previous from the store) does not fire again
    rx.assert_quiet(Duration::from_millis(1500)).await;
}

/// Batches of one event, published all at once: each batch reads from the store the version
/// the batch before it recorded, so "became final" fires once per transition.
#[tokio::test]
async fn previous_versions_hold_across_batches_decided_back_to_back() {
    let (hub, mut rx) =
        final_topic_subscriber(HubEnv::default().var("HUB_MATCHER__BATCH_SIZE", "1")).await;

    let prelim = obs("b1", "preliminary", "Patient/p1");
    let fin = obs("b1", "final", "Patient/p1");
    // none carries `previous`; transitions to final at the 2nd and the 6th
    let steps = [
        ("create", &prelim),
        ("update", &fin),
        ("update", &fin),
        ("update", &fin),
        ("update", &prelim),
        ("update", &fin),
        ("update", &fin),
        ("update", &fin),
    ];
    let mut ndjson = String::new();
    for (action, r) in steps {
        ndjson.push_str(&event(action, r, None).to_string());
        ndjson.push('\n');
    }
    let (c, b) = hub
        .post_raw("/events", "application/x-ndjson", ndjson.into_bytes())
        .await;
    assert_eq!(c, 202, "{b}");
    for n in ["1", "2"] {
        assert_eq!(next_event_number(&mut rx).await, n);
    }
    // final → final never fires
    rx.assert_quiet(Duration::from_millis(2000)).await;
}

/// `backport-max-count`: events waiting for delivery go out several to a bundle, in order.
#[tokio::test]
async fn max_count_groups_waiting_events_into_one_bundle() {
    let hub = Hub::start(HubEnv::default()).await;
    let (status, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(status, 201);
    let mut rx = TestReceiver::start().await;
    rx.respond_with(503); // the handshake fails until the events are waiting
    let mut s = subscription(&rx.url, Some("id-only"), None);
    s["channel"]["extension"] =
        json!([{"url": format!("{BACKPORT}backport-max-count"), "valuePositiveInt": 5}]);
    let (c, s) = hub.post_json("/fhir/Subscription", &s).await;
    assert_eq!(c, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    publish_final(&hub, "m", 0..3).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, st) = hub.get(&format!("/fhir/Subscription/{id}/$status")).await;
        let p = &st["entry"][0]["resource"];
        if param(p, "events-since-subscription-start").unwrap()["valueString"] == "3" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events were not logged: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rx.respond_with(200);
    hub.wait_status(&id, "active").await;
    let r = rx.next(Duration::from_secs(20)).await;
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    let st = &b["entry"][0]["resource"];
    let numbers: Vec<&str> = st["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|p| p["part"][0]["valueString"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["1", "2", "3"], "{b}");
    assert_eq!(
        param(st, "events-since-subscription-start").unwrap()["valueString"],
        "3"
    );
    assert_eq!(
        b["entry"].as_array().unwrap().len(),
        4,
        "status + three id-only entries"
    );
    rx.assert_quiet(Duration::from_millis(800)).await;
}

/// The websocket channel with a real client (Python `websockets`): a token from
/// `$get-ws-binding-token`, `bind-with-token`, a handshake bundle, then event-notification
/// bundles numbered without gaps. A bad token gets an OperationOutcome.
#[tokio::test]
async fn websocket_subscriptions_bind_with_a_token_and_receive_bundles() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let (status, _) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(status, 201);
    let mut s = subscription("unused", Some("full-resource"), Some("patient=Patient/p1"));
    s["channel"] = json!({"type": "websocket", "payload": "application/fhir+json",
        "_payload": s["channel"]["_payload"].clone()});
    let (c, s) = hub.post_json("/fhir/Subscription", &s).await;
    assert_eq!(c, 201, "{s}");
    assert_eq!(
        s["status"], "active",
        "nothing to hand-shake with until a client binds"
    );
    let id = s["id"].as_str().unwrap().to_owned();

    // rest-hook subscriptions get no token
    let rx = TestReceiver::start().await;
    let (_, hook) = hub
        .post_json("/fhir/Subscription", &subscription(&rx.url, None, None))
        .await;
    let (c, b) = hub
        .get(&format!(
            "/fhir/Subscription/{}/$get-ws-binding-token",
            hook["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(c, 422, "{b}");

    let (c, p) = hub
        .get(&format!("/fhir/Subscription/{id}/$get-ws-binding-token"))
        .await;
    assert_eq!(c, 200, "{p}");
    let token = param(&p, "token").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws_url = param(&p, "websocket-url").unwrap()["valueUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ws_url.starts_with("ws://"), "{ws_url}");
    assert!(param(&p, "expiration").is_some());

    let client = crate::harness::PyClient::start(&python, "ws_client.py", &[&ws_url, &token, "3"]);
    let next = |what: &str| client.next(what);
    let hs = next("handshake");
    assert_eq!(
        hs["entry"][0]["resource"]["parameter"][3]["valueCode"], "handshake",
        "{hs}"
    );

    for (i, patient) in [(0, "Patient/p1"), (1, "Patient/p2"), (2, "Patient/p1")] {
        let (c, _) = hub
            .post_json(
                "/events",
                &event("create", &obs(&format!("w{i}"), "final", patient), None),
            )
            .await;
        assert_eq!(c, 202);
    }
    for expected in ["1", "2"] {
        let b = next("event-notification");
        let st = &b["entry"][0]["resource"];
        assert_eq!(
            param(st, "type").unwrap()["valueCode"],
            "event-notification"
        );
        assert_eq!(
            param(st, "notification-event").unwrap()["part"][0]["valueString"],
            expected
        );
        assert_eq!(
            b["entry"][1]["resource"]["subject"]["reference"],
            "Patient/p1"
        );
    }
    client.finish();
    // Cursors belong to readers: a socket's bind or receipt marks nothing delivered in the
    // store (it used to mark everything up to the count at bind time, sent or not). The
    // subscription counts its events; the websocket reader keeps its own position.
    let (_, st) = hub.get(&format!("/fhir/Subscription/{id}/$status")).await;
    let text = st.to_string();
    assert!(
        text.contains(r#""name":"delivered-through","valueString":"0""#),
        "{st}"
    );
    assert!(
        text.contains(r#""name":"events-since-subscription-start","valueString":"2""#),
        "{st}"
    );

    // an unknown token is refused with an OperationOutcome
    let refused =
        crate::harness::PyClient::start(&python, "ws_client.py", &[&ws_url, "not-a-token", "1"]);
    let reply = refused.next("refusal");
    assert_eq!(reply["resourceType"], "OperationOutcome", "{reply}");
}
