//! Bad input gets a 4xx OperationOutcome naming the problem, and the hub keeps running.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, glucose};
use crate::receiver::TestReceiver;

fn diagnostics(oo: &Value) -> String {
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn subscription(criteria: &str) -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "t",
           "criteria": criteria,
           "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}})
}

#[tokio::test]
async fn malformed_events_unknown_types_and_unsupported_criteria_are_refused() {
    let hub = Hub::start(HubEnv::default().var("HUB_SERVER__MAX_BODY_BYTES", "4096")).await;
    let mut rx = TestReceiver::start().await;
    hub.subscribe("Observation?code=2345-7", &rx.url, true)
        .await;

    // Malformed JSON.
    let (s, oo) = hub
        .post_raw("/events", "application/json", b"{\"id\": ".to_vec())
        .await;
    assert_eq!(s, 400);
    assert!(diagnostics(&oo).contains("not valid JSON"), "{oo}");

    // An envelope missing a field, and one with a bad action.
    let (s, oo) = hub
        .post_json("/events", &json!({"id": "e1", "action": "create", "resourceType": "Observation", "resourceId": "o1"}))
        .await;
    assert_eq!(s, 400);
    assert!(
        diagnostics(&oo).contains("'occurredAt' is required"),
        "{oo}"
    );
    let (s, oo) = hub
        .post_json(
            "/events",
            &json!({"id": "e1", "action": "upsert", "resourceType": "Observation",
            "resourceId": "o1", "occurredAt": "2024-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(diagnostics(&oo).contains("upsert"), "{oo}");

    // Unknown resource type, as an envelope and as a bare resource.
    let (s, oo) = hub
        .post_json(
            "/events",
            &json!({"id": "e2", "action": "delete", "resourceType": "Observatoin",
            "resourceId": "o1", "occurredAt": "2024-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        diagnostics(&oo).contains("unknown resourceType 'Observatoin'"),
        "{oo}"
    );
    assert_eq!(oo["issue"][0]["expression"][0], "resourceType");
    let (s, oo) = hub
        .post_json("/events", &json!({"resourceType": "Labresult", "id": "x"}))
        .await;
    assert_eq!(s, 400);
    assert!(diagnostics(&oo).contains("Labresult"), "{oo}");

    // NDJSON: line 2 is bad, so line 1 (a matching Observation) is not published either.
    let ndjson = format!("{}\n{{\"resourceType\":\"Observation\"}}\n", glucose("n1"));
    let (s, oo) = hub
        .post_raw("/events", "application/x-ndjson", ndjson.into_bytes())
        .await;
    assert_eq!(s, 400);
    assert!(diagnostics(&oo).starts_with("line 2"), "{oo}");

    // A bundle with one bad entry.
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": glucose("n2"), "request": {"method": "PUT", "url": "Observation/n2"}},
        {"request": {"method": "DELETE", "url": "Observation?code=1"}}]});
    let (s, oo) = hub.post_json("/fhir", &bundle).await;
    assert_eq!(s, 400);
    assert!(diagnostics(&oo).contains("Bundle.entry[1]"), "{oo}");

    // Too large.
    let big =
        json!({"resourceType": "Observation", "id": "big", "note": [{"text": "x".repeat(8000)}]});
    let (s, oo) = hub.post_json("/events", &big).await;
    assert_eq!(s, 413);
    assert_eq!(oo["issue"][0]["code"], "too-long");

    // Unsupported and invalid criteria, each naming the parameter.
    for (criteria, status, needle) in [
        ("Observation?date=ge2024-13-01", 422, "not a FHIR date"),
        (
            "Observation?code:below=http://loinc.org|1",
            422,
            "'code:below'",
        ),
        ("Observation?subject.name=peter", 422, "'subject.name'"),
        ("Observation?_has:Observation:patient:code=1", 422, "_has"),
        (
            "Observation?code:in=http://example.org/vs",
            422,
            "'code:in'",
        ),
        (
            "Observation?colour=blue",
            422,
            "'colour' is not a search parameter of Observation",
        ),
        (
            "Observatoin?code=1",
            422,
            "unknown resource type 'Observatoin'",
        ),
    ] {
        let (s, oo) = hub
            .post_json("/fhir/Subscription", &subscription(criteria))
            .await;
        assert_eq!(s, status, "{criteria}: {oo}");
        assert!(diagnostics(&oo).contains(needle), "{criteria}: {oo}");
        assert_eq!(oo["issue"][0]["expression"][0], "Subscription.criteria");
    }
    // A Subscription missing required elements is malformed (400).
    let (s, oo) = hub
        .post_json(
            "/fhir/Subscription",
            &json!({"resourceType": "Subscription", "status": "requested"}),
        )
        .await;
    assert_eq!(s, 400, "{oo}");

    // Nothing of the rejected input was delivered, and the hub is still healthy.
    rx.assert_quiet(Duration::from_millis(1500)).await;
    let (s, health) = hub.get("/health").await;
    assert_eq!(s, 200);
    assert_eq!(health["status"], "pass");
    // ...and still delivers.
    hub.post_json("/events", &glucose("ok")).await;
    assert_eq!(
        rx.next(Duration::from_secs(20)).await.path,
        "/hook/Observation/ok"
    );
}

#[tokio::test]
async fn subscription_api_follows_fhir_rest() {
    let hub = Hub::start(HubEnv::default()).await;
    let (s, oo) = hub.get("/fhir/Subscription/does-not-exist").await;
    assert_eq!(s, 404);
    assert_eq!(oo["issue"][0]["code"], "not-found");
    let (s, _) = hub.get("/nowhere").await;
    assert_eq!(s, 404);

    let (s, created) = hub
        .post_json("/fhir/Subscription", &subscription("Patient?family=smith"))
        .await;
    assert_eq!(s, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["meta"]["versionId"], "1");

    // Update: id must match; If-Match guards against lost updates.
    let mut body = created.clone();
    body["reason"] = json!("changed");
    body["status"] = json!("off");
    let path = format!("/fhir/Subscription/{id}");
    let res = hub.put_json(&path, &body, Some("W/\"1\"")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "W/\"2\"");
    let res = hub.put_json(&path, &body, Some("W/\"1\"")).await;
    assert_eq!(res.status(), 412);
    let mut wrong = body.clone();
    wrong["id"] = json!("other");
    let res = hub.put_json(&path, &wrong, None).await;
    assert_eq!(res.status(), 400);

    // Search by status.
    let (_, off) = hub.get("/fhir/Subscription?status=off").await;
    assert_eq!(off["type"], "searchset");
    assert_eq!(off["total"], 1);
    assert_eq!(off["entry"][0]["resource"]["reason"], "changed");
    let (_, active) = hub.get("/fhir/Subscription?status=active").await;
    assert_eq!(active["total"], 0);
    let (s, _) = hub.get("/fhir/Subscription?colour=red").await;
    assert_eq!(s, 400);

    // Delete.
    let res = hub
        .http
        .delete(format!("{}/fhir/Subscription/{id}", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (s, _) = hub.get(&format!("/fhir/Subscription/{id}")).await;
    assert_eq!(s, 404);

    // The CapabilityStatement is FHIR and names what is supported.
    let (s, cs) = hub.get("/fhir/metadata").await;
    assert_eq!(s, 200);
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["rest"][0]["resource"][0]["type"], "Subscription");
}

/// A write without `Content-Type` is refused (415, OperationOutcome): a browser page can
/// send one without a CORS preflight (a `Blob` body without a type), so accepting it would
/// let any page opened inside the network create subscriptions or publish events (CSRF).
#[tokio::test]
async fn writes_without_a_content_type_are_refused() {
    let hub = Hub::start(HubEnv::default()).await;
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "csrf",
        "criteria": "Observation?code=1",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}});
    for (path, body) in [
        ("/fhir/Subscription", sub.to_string()),
        (
            "/events",
            crate::harness::envelope(&crate::harness::glucose("c1"), "create").to_string(),
        ),
        (
            "/fhir",
            json!({"resourceType": "Bundle", "type": "batch", "entry": []}).to_string(),
        ),
    ] {
        let res = hub
            .http
            .post(format!("{}{path}", hub.url))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 415, "{path}");
        let oo: Value = res.json().await.unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome", "{path}: {oo}");
    }
    let res = hub
        .http
        .put(format!("{}/fhir/Subscription/x1", hub.url))
        .body(sub.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let (s, all) = hub.get("/fhir/Subscription").await;
    assert_eq!((s, all["total"].as_u64()), (200, Some(0)), "{all}");
}

/// `fhir-hub config` never prints credentials: the database password and Kafka client
/// secrets are shown as `***`.
#[test]
fn the_config_command_hides_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    let toml = "[kafka.client]\n\"sasl.password\" = \"kafka-s3cret\"\n\"linger.ms\" = \"5\"\n";
    std::fs::write(&file, toml).unwrap();
    let out = std::process::Command::new(crate::harness::binary())
        .arg("--config")
        .arg(&file)
        .arg("config")
        .env(
            "HUB_DATABASE__URL",
            "postgres://hub:s3cret-pw@db.example.org:5432/hub",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        text.contains("postgres://hub:***@db.example.org:5432/hub"),
        "{text}"
    );
    assert!(text.contains(r#""linger.ms": "5""#), "{text}");
}
