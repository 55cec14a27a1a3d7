//! Secrets on reads and at rest, and errors as OperationOutcomes, through the router.

use serde_json::json;

use super::spawn_hub;

fn hook(endpoint: &str) -> serde_json::Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
        "criteria": "Observation?code=x",
        "channel": {"type": "rest-hook", "endpoint": endpoint,
                    "header": ["Authorization: Bearer s3cret", "X-Request-Id: t1"]}})
}

#[tokio::test]
async fn credential_headers_are_redacted_sealed_and_kept() {
    let t = spawn_hub().await;
    let created = t
        .post("/fhir/Subscription", &hook("http://127.0.0.1:9/a"))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    // the answer to the create echoes what the client sent
    assert_eq!(
        created.body["channel"]["header"],
        json!(["Authorization: Bearer s3cret", "X-Request-Id: t1"])
    );
    let id = created.body["id"].as_str().unwrap().to_owned();
    let redacted = json!(["Authorization: [redacted]", "X-Request-Id: t1"]);
    let read = t.get(&format!("/fhir/Subscription/{id}")).await;
    assert_eq!(read.body["channel"]["header"], redacted);
    let vread = t.get(&format!("/fhir/Subscription/{id}/_history/1")).await;
    assert_eq!(vread.body["channel"]["header"], redacted);
    let history = t.get(&format!("/fhir/Subscription/{id}/_history")).await;
    assert_eq!(
        history.body["entry"][0]["resource"]["channel"]["header"],
        redacted
    );
    let search = t.get("/fhir/Subscription").await;
    assert_eq!(
        search.body["entry"][0]["resource"]["channel"]["header"],
        redacted
    );
    // stored sealed
    let row = t
        .hub
        .store
        .get_subscription("default", &id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.resource.contains("Authorization: enc:v2:local:"),
        "{}",
        row.resource
    );
    assert!(!row.resource.contains("s3cret"));
    assert!(row.secret.as_deref().unwrap().starts_with("enc:v2:local:"));
    let first_secret = t
        .hub
        .subscriptions
        .get(&t.hub.store, "default", &id)
        .await
        .unwrap()
        .unwrap()
        .secret
        .unwrap();
    assert!(row.owner.as_deref().unwrap_or("").contains("anonymous"));
    // PUT what was read: the credential is kept, and opens for delivery
    let mut back = read.body.clone();
    back["reason"] = json!("changed");
    let put = t
        .put(&format!("/fhir/Subscription/{id}"), &back, None)
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let sub = t
        .hub
        .subscriptions
        .get(&t.hub.store, "default", &id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        sub.spec
            .channel
            .headers
            .contains(&("Authorization".to_owned(), "Bearer s3cret".to_owned()))
    );
    assert_eq!(
        sub.secret.as_deref(),
        Some(first_secret.as_str()),
        "same endpoint, same secret"
    );
    // a new endpoint keeps neither the secret nor the redacted credential
    let mut moved = back.clone();
    moved["channel"]["endpoint"] = json!("http://127.0.0.1:9/elsewhere");
    let put = t
        .put(&format!("/fhir/Subscription/{id}"), &moved, None)
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let sub = t
        .hub
        .subscriptions
        .get(&t.hub.store, "default", &id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(sub.secret.as_deref(), Some(first_secret.as_str()));
    assert!(
        !sub.spec
            .channel
            .headers
            .iter()
            .any(|(_, v)| v.contains("s3cret"))
    );
}

#[tokio::test]
async fn reserved_headers_and_plain_text_errors() {
    let t = spawn_hub().await;
    let mut body = hook("http://127.0.0.1:9/a");
    body["channel"]["header"] = json!(["Host: internal", "X-Ok: 1"]);
    let a = t.post("/fhir/Subscription", &body).await;
    assert_eq!(a.status, 422, "{}", a.body);
    // an extractor's plain-text refusal is an OperationOutcome too
    let a = t.get("/admin/quarantine?after=notanumber").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["resourceType"], "OperationOutcome", "{}", a.body);
    assert_eq!(a.body["issue"][0]["code"], "invalid");
}
