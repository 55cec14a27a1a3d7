//! One FHIR resource API for Subscription and SubscriptionTopic: the same status codes,
//! headers and URLs for both (they used to drift: update without an id, 422 vs 400, delete of
//! an unknown id, Content-Location and fullUrl).

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::spawn_hub;

const BASE: &str = "https://hub.example.org/fhir";

fn subscription() -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "api test",
           "criteria": "Observation?code=http://loinc.org|2345-7",
           "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
                       "payload": "application/fhir+json"}})
}

fn topic() -> Value {
    json!({"resourceType": "SubscriptionTopic", "url": "http://example.org/topics/api-test",
           "status": "active",
           "resourceTrigger": [{"resource": "http://hl7.org/fhir/StructureDefinition/Observation",
                                "supportedInteraction": ["create"]}]})
}

/// (type, a valid resource, a change that is still valid, a malformed one)
fn kinds() -> Vec<(&'static str, Value, Value, Value)> {
    let sub = subscription();
    let mut sub2 = sub.clone();
    sub2["reason"] = json!("changed");
    let mut sub_bad = sub.clone();
    sub_bad.as_object_mut().unwrap().remove("criteria");
    let t = topic();
    let mut t2 = t.clone();
    t2["title"] = json!("changed");
    let mut t_bad = t.clone();
    t_bad.as_object_mut().unwrap().remove("url");
    vec![
        ("Subscription", sub, sub2, sub_bad),
        ("SubscriptionTopic", t, t2, t_bad),
    ]
}

#[tokio::test]
async fn both_types_answer_the_same_way() {
    let hub = spawn_hub().await;
    for (ty, body, changed, malformed) in kinds() {
        // create: 201, absolute Location, ETag, Last-Modified
        let a = hub.post(&format!("/fhir/{ty}"), &body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{ty}: {}", a.body);
        let id = a.body["id"].as_str().unwrap().to_owned();
        let v1 = format!("{BASE}/{ty}/{id}/_history/1");
        assert_eq!(a.headers["location"], v1.as_str(), "{ty}");
        assert_eq!(a.headers["content-location"], v1.as_str(), "{ty}");
        assert_eq!(a.headers["etag"], "W/\"1\"", "{ty}");
        assert!(
            a.headers["last-modified"]
                .to_str()
                .unwrap()
                .ends_with("GMT")
        );
        assert_eq!(a.body["meta"]["versionId"], "1");

        // malformed content is 400 on create and on update
        let a = hub.post(&format!("/fhir/{ty}"), &malformed).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{ty}: {}", a.body);
        assert_eq!(a.body["resourceType"], "OperationOutcome");

        // update: the body must carry the URL's id
        let path = format!("/fhir/{ty}/{id}");
        let a = hub.put(&path, &changed, None).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{ty} without id: {}",
            a.body
        );
        let mut other = changed.clone();
        other["id"] = json!("someone-else");
        assert_eq!(
            hub.put(&path, &other, None).await.status,
            StatusCode::BAD_REQUEST
        );
        let mut changed = changed.clone();
        changed["id"] = json!(id);
        // If-Match: stale 412, not a version 400, current 200
        let a = hub.put(&path, &changed, Some("W/\"7\"")).await;
        assert_eq!(
            a.status,
            StatusCode::PRECONDITION_FAILED,
            "{ty}: {}",
            a.body
        );
        for bad in ["W/\"-1\"", "W/\"0\"", "yesterday"] {
            let a = hub.put(&path, &changed, Some(bad)).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{ty} If-Match {bad}");
        }
        let a = hub.put(&path, &changed, Some("W/\"1\"")).await;
        assert_eq!(a.status, StatusCode::OK, "{ty}: {}", a.body);
        assert_eq!(a.headers["etag"], "W/\"2\"");
        assert_eq!(
            a.headers["content-location"],
            format!("{BASE}/{ty}/{id}/_history/2").as_str()
        );

        // search: absolute fullUrls
        let a = hub.get(&format!("/fhir/{ty}")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body["type"], "searchset");
        assert_eq!(
            a.body["entry"][0]["fullUrl"],
            format!("{BASE}/{ty}/{id}").as_str()
        );
        assert_eq!(
            hub.get(&format!("/fhir/{ty}?colour=red")).await.status,
            StatusCode::BAD_REQUEST
        );

        // vread of the first version
        let a = hub.get(&format!("/fhir/{ty}/{id}/_history/1")).await;
        assert_eq!(a.status, StatusCode::OK, "{ty}: {}", a.body);
        assert_eq!(a.body["meta"]["versionId"], "1");
        assert_ne!(a.body.get("title"), Some(&json!("changed")));
        assert_eq!(
            hub.get(&format!("/fhir/{ty}/{id}/_history/9")).await.status,
            StatusCode::NOT_FOUND
        );

        // delete: 200 with an OperationOutcome; unknown ids are 404 for every type
        let a = hub.delete(&path).await;
        assert_eq!(a.status, StatusCode::OK, "{ty}: {}", a.body);
        assert_eq!(a.body["resourceType"], "OperationOutcome");
        assert_eq!(hub.get(&path).await.status, StatusCode::NOT_FOUND);
        let a = hub.delete(&path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{ty} deleted twice");
        let a = hub.delete(&format!("/fhir/{ty}/never-was")).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{ty}");
        assert_eq!(a.body["issue"][0]["code"], "not-found");
        // the delete is a version: vread says gone
        let a = hub.get(&format!("/fhir/{ty}/{id}/_history/3")).await;
        assert_eq!(a.status, StatusCode::GONE, "{ty}: {}", a.body);

        // _history: newest first, create, update, delete
        let a = hub.get(&format!("/fhir/{ty}/{id}/_history")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body["type"], "history");
        let methods: Vec<&str> = a.body["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["method"].as_str().unwrap())
            .collect();
        assert_eq!(methods, ["DELETE", "PUT", "POST"], "{ty}");

        // update-as-create with the same id continues the version numbers
        let a = hub.put(&path, &changed, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{ty}: {}", a.body);
        assert_eq!(a.body["meta"]["versionId"], "4", "{ty}");
        // If-Match on an id that does not exist
        let mut nobody = changed.clone();
        nobody["id"] = json!("nobody");
        let a = hub
            .put(&format!("/fhir/{ty}/nobody"), &nobody, Some("W/\"1\""))
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{ty}: {}", a.body);
        // clean up so the next type starts alone
        let _ = hub.delete(&path).await;
    }
}

#[tokio::test]
async fn secrets_are_never_read_back() {
    let hub = spawn_hub().await;
    let mut s = subscription();
    s["channel"]["extension"] = json!([{"url": "urn:fhir-hub:webhook-secret",
        "valueString": "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]);
    let a = hub.post("/fhir/Subscription", &s).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap();
    for path in [
        format!("/fhir/Subscription/{id}"),
        format!("/fhir/Subscription/{id}/_history/1"),
        format!("/fhir/Subscription/{id}/_history"),
        "/fhir/Subscription".to_owned(),
    ] {
        let a = hub.get(&path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert!(!a.body.to_string().contains("whsec_"), "{path}: {}", a.body);
    }
    // a generated secret is shown once, in the create answer
    let a = hub.post("/fhir/Subscription", &subscription()).await;
    assert!(a.body.to_string().contains("whsec_"));
    let id = a.body["id"].as_str().unwrap();
    assert!(
        !hub.get(&format!("/fhir/Subscription/{id}"))
            .await
            .body
            .to_string()
            .contains("whsec_")
    );
}
