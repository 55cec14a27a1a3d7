//! Sealed values: a client cannot hand the hub a sealed form, a sealed value opens only in
//! the subscription and field it was sealed for, and one that does not open never fails a
//! read (issue 28, item 4).

use serde_json::{Value, json};

use super::{TestHub, spawn_hub};

fn hook(headers: Value) -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
        "criteria": "Observation?code=x",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/a", "header": headers}})
}

async fn create(t: &TestHub, headers: Value) -> String {
    let a = t.post("/fhir/Subscription", &hook(headers)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn client_supplied_sealed_forms_are_refused() {
    let t = spawn_hub().await;
    for header in [
        "X-Api-Key: enc:v1:local:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Authorization: enc:v2:nokey:AAAA",
        "X-Anything: ENC:v1:nokey:AAAA",
    ] {
        let a = t.post("/fhir/Subscription", &hook(json!([header]))).await;
        assert_eq!(a.status, 422, "{header}: {}", a.body);
        assert_eq!(a.body["resourceType"], "OperationOutcome");
    }
    let mut body = hook(json!([]));
    body["channel"]["extension"] =
        json!([{"url": "urn:fhir-hub:webhook-secret", "valueString": "enc:v1:local:AAAA"}]);
    let a = t.post("/fhir/Subscription", &body).await;
    assert_eq!(a.status, 422, "{}", a.body);
}

/// Replace a stored subscription's resource (as a database-copy holder or an older hub
/// version could have left it).
async fn store_resource(t: &TestHub, id: &str, edit: impl FnOnce(&mut Value)) {
    let row = t
        .hub
        .store
        .get_subscription("default", id)
        .await
        .unwrap()
        .unwrap();
    let mut resource: Value = serde_json::from_str(&row.resource).unwrap();
    edit(&mut resource);
    t.hub
        .store
        .move_secrets(
            "default",
            id,
            &resource.to_string(),
            row.secret.as_deref(),
            row.client_certificate.as_deref(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_value_that_does_not_open_never_fails_a_read() {
    let t = spawn_hub().await;
    let id = create(&t, json!(["X-Api-Key: k1"])).await;
    store_resource(&t, &id, |r| {
        r["channel"]["header"] = json!(["X-Api-Key: enc:v1:nokey:AAAA"]);
    })
    .await;
    for path in [
        format!("/fhir/Subscription/{id}/$status"),
        format!("/fhir/Subscription/{id}/$events"),
        format!("/fhir/Subscription/{id}"),
        "/fhir/Subscription/$status".to_owned(),
    ] {
        let a = t.get(&path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
    // the typed subscription reads too (its deliveries fail, stated: model's unit tests)
    assert!(
        t.hub
            .subscriptions
            .get(&t.hub.store, "default", &id)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_sealed_value_does_not_open_in_another_subscription() {
    let t = spawn_hub().await;
    let a = create(&t, json!(["X-Api-Key: secret-of-a"])).await;
    let b = create(&t, json!(["X-Api-Key: b"])).await;
    // a's sealed header copied into b's row (what the oracle did with a chosen ciphertext)
    let row_a = t
        .hub
        .store
        .get_subscription("default", &a)
        .await
        .unwrap()
        .unwrap();
    let sealed: Value = serde_json::from_str(&row_a.resource).unwrap();
    let header = sealed["channel"]["header"][0].as_str().unwrap().to_owned();
    assert!(header.starts_with("X-Api-Key: enc:v"), "{header}");
    store_resource(&t, &b, |r| r["channel"]["header"] = json!([header])).await;
    let sub = t
        .hub
        .subscriptions
        .get(&t.hub.store, "default", &b)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !sub.spec
            .channel
            .headers
            .iter()
            .any(|(_, v)| v.contains("secret-of-a")),
        "{:?}",
        sub.spec.channel.headers
    );
}

#[tokio::test]
async fn every_header_not_declared_non_secret_is_sealed_and_redacted() {
    let t = spawn_hub().await;
    let id = create(
        &t,
        json!([
            "X-Vault-Token: hvs.secret1",
            "Ocp-Apim-Subscription-Key: secret2",
            "X-Request-Id: r1"
        ]),
    )
    .await;
    let row = t
        .hub
        .store
        .get_subscription("default", &id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !row.resource.contains("secret1") && !row.resource.contains("secret2"),
        "{}",
        row.resource
    );
    let read = t.get(&format!("/fhir/Subscription/{id}")).await;
    assert_eq!(
        read.body["channel"]["header"],
        json!([
            "X-Vault-Token: [redacted]",
            "Ocp-Apim-Subscription-Key: [redacted]",
            "X-Request-Id: r1"
        ])
    );
    // delivery opens them
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
            .contains(&("X-Vault-Token".to_owned(), "hvs.secret1".to_owned()))
    );
}
