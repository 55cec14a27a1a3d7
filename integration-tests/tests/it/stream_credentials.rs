//! The credential behind an open stream: a revoked key's (or a reduced one's) SSE, websocket
//! and gRPC streams end with a stated reason within `auth.stream_recheck_secs`; a binding
//! token acts as the credential that asked for it (grant, stream limit, audit name), and
//! issuing one is audited.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::disclosure::{create, disclosed, hub, publish, websocket_topic_subscription};
use crate::harness::{Hub, HubEnv, PyClient, require_external};
use crate::security::{admin_key, call};
use crate::streams::hub_channel;
use crate::topics::param;

/// A binding token of `sub` asked for by `key`.
pub(crate) async fn binding_token(hub: &Hub, key: &str, sub: &str) -> String {
    let (s, _, p) = call(
        hub,
        Method::GET,
        &format!("/fhir/Subscription/{sub}/$get-ws-binding-token"),
        Some(key),
        None,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    param(&p, "token").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_revoked_keys_streams_end_with_a_stated_reason() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    // the documented default is 30 s; a short interval keeps the test quick
    let (hub, admin) = hub(HubEnv::default().var("HUB_AUTH__STREAM_RECHECK_SECS", "1")).await;
    let scopes = "system/Subscription.cruds system/Observation.rs";
    let (_, owner) = admin_key(&hub, &admin, json!({ "scopes": scopes })).await;
    let sse = create(&hub, &owner, &hub_channel("sse", "full-resource")).await;
    let ws = create(&hub, &owner, &websocket_topic_subscription()).await;
    let grpc = create(&hub, &owner, &hub_channel("grpc", "full-resource")).await;
    let (reader_id, reader) = admin_key(&hub, &admin, json!({ "scopes": scopes })).await;
    let env = [("FHIR_HUB_TOKEN", reader.as_str())];
    let s = PyClient::start_with(
        &python,
        "sse_client.py",
        &[
            &format!("{}/fhir/Subscription/{sse}/$stream", hub.url),
            "10",
        ],
        &env,
    );
    assert_eq!(s.next("SSE handshake")["event"], "handshake");
    let token = binding_token(&hub, &reader, &ws).await;
    let w = PyClient::start(
        &python,
        "ws_client.py",
        &[
            &format!(
                "{}/fhir/$subscription-ws",
                hub.url.replacen("http", "ws", 1)
            ),
            &token,
            "10",
        ],
    );
    w.next("ws handshake");
    let target = hub.grpc_url.trim_start_matches("http://").to_owned();
    let g = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", &grpc, "1", "10"],
        &env,
    );
    // a second reader whose scopes will be reduced
    let (narrowed_id, narrowed) = admin_key(&hub, &admin, json!({ "scopes": scopes })).await;
    let n = PyClient::start_with(
        &python,
        "sse_client.py",
        &[
            &format!("{}/fhir/Subscription/{sse}/$stream", hub.url),
            "10",
        ],
        &[("FHIR_HUB_TOKEN", narrowed.as_str())],
    );
    assert_eq!(n.next("SSE handshake")["event"], "handshake");
    // every stream is live: each receives the first event
    publish(&hub, &admin, "r", &["p1"]).await;
    assert_eq!(n.next("SSE event")["event"], "event-notification");
    assert_eq!(s.next("SSE event")["event"], "event-notification");
    w.next("ws event");
    assert_eq!(g.next("gRPC event")["event_number"], 1);

    let (st, _, b) = call(
        &hub,
        Method::DELETE,
        &format!("/admin/keys/{reader_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert!(st == 200 || st == 204, "{st} {b}");
    // each stream ends, saying why, without another event to carry the news
    let ended = s.next("SSE access-ended");
    assert_eq!(ended["event"], "access-ended", "{ended}");
    assert!(
        ended["data"].as_str().unwrap().contains("revoked"),
        "{ended}"
    );
    assert_eq!(s.next("SSE end")["end"], true);
    let closed = w.next("ws close");
    assert_eq!(closed["closed"], 1008, "{closed}");
    assert!(
        closed["reason"].as_str().unwrap().contains("revoked"),
        "{closed}"
    );
    let status = g.next("gRPC status");
    assert_eq!(status["error"], "UNAUTHENTICATED", "{status}");

    // scopes reduced below the subscription's resource type end the stream too
    let (st, _, b) = call(
        &hub,
        Method::PATCH,
        &format!("/admin/keys/{narrowed_id}"),
        Some(&admin),
        Some(&json!({"scopes": "system/Subscription.rs"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let ended = n.next("SSE access-ended after the scopes were reduced");
    assert_eq!(ended["event"], "access-ended", "{ended}");
    assert!(
        ended["data"]
            .as_str()
            .unwrap()
            .contains("may not read Observation"),
        "{ended}"
    );
}

#[tokio::test]
async fn binding_tokens_act_as_the_credential_that_asked() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let (hub, admin) =
        hub(HubEnv::default().var("HUB_AUTH__MAX_STREAMS_PER_CREDENTIAL", "1")).await;
    let scopes = "system/Subscription.cruds system/Observation.rs";
    let (owner_id, owner) = admin_key(&hub, &admin, json!({ "scopes": scopes })).await;
    let ws = create(&hub, &owner, &websocket_topic_subscription()).await;
    let sse = create(&hub, &owner, &hub_channel("sse", "full-resource")).await;
    let (reader_id, reader) = admin_key(&hub, &admin, json!({ "scopes": scopes })).await;
    let ws_url = format!(
        "{}/fhir/$subscription-ws",
        hub.url.replacen("http", "ws", 1)
    );

    // issuing is audited under the credential that asked
    let first = binding_token(&hub, &reader, &ws).await;
    let (_, _, trail) = call(
        &hub,
        Method::GET,
        &format!("/fhir/AuditEvent?agent=key:{reader_id}&_count=1000"),
        Some(&admin),
        None,
    )
    .await;
    assert!(
        trail["entry"].as_array().unwrap().iter().any(|e| {
            e["resource"]["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.contains("binding token issued"))
        }),
        "{trail}"
    );

    // a bind is the reader's stream: it counts against the reader's limit (1) ...
    let w = PyClient::start(&python, "ws_client.py", &[&ws_url, &first, "3", "0"]);
    w.next("handshake");
    let second = binding_token(&hub, &reader, &ws).await;
    let refused = PyClient::start(&python, "ws_client.py", &[&ws_url, &second, "2"]);
    let m = refused.next("over the limit");
    assert!(m.to_string().contains("open streams"), "{m}");
    let sse_token = binding_token(&hub, &reader, &sse).await;
    let (s, _, b) = call(
        &hub,
        Method::GET,
        &format!("/fhir/Subscription/{sse}/$stream?token={sse_token}"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 429, "an SSE ?token= stream is the reader's too: {b}");

    // ... and its disclosures name the reader, not the subscription's owner
    publish(&hub, &admin, "b", &["p1"]).await;
    w.next("event");
    let rows = disclosed(&hub, &admin, &ws).await;
    assert_eq!(
        rows,
        BTreeSet::from([(
            format!("key:{reader_id}"),
            "websocket".to_owned(),
            "Observation/b1".to_owned()
        )]),
        "not key:{owner_id}"
    );

    // a token outlives no revocation of the key that asked for it
    drop(w);
    let third = binding_token(&hub, &reader, &ws).await;
    let (st, _, _) = call(
        &hub,
        Method::DELETE,
        &format!("/admin/keys/{reader_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert!(st == 200 || st == 204);
    let late = PyClient::start(&python, "ws_client.py", &[&ws_url, &third, "2"]);
    let m = late.next("revoked");
    assert!(m.to_string().contains("revoked"), "{m}");
}

/// A named gRPC consumer belongs to the credential that reads it: another key of the tenant
/// committing the same name moves nothing of it (before, any key with `Subscription.r` could
/// push another's consumer forward, and it silently skipped events).
#[tokio::test]
async fn a_consumer_belongs_to_its_credential() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let (hub, admin) = hub(HubEnv::default()).await;
    let scopes = "system/Subscription.cruds system/Observation.rs";
    let (_, a) = admin_key(&hub, &admin, json!({ "scopes": scopes })).await;
    let (_, b) = admin_key(&hub, &admin, json!({ "scopes": scopes })).await;
    let grpc = create(&hub, &a, &hub_channel("grpc", "full-resource")).await;
    publish(&hub, &admin, "c", &["p1", "p1", "p1", "p1"]).await;
    let target = hub.grpc_url.trim_start_matches("http://").to_owned();
    let as_a = [("FHIR_HUB_TOKEN", a.as_str())];
    let c = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "consume", "etl", &grpc, "2", "commit"],
        &as_a,
    );
    assert_eq!(c.next("a's first")["event_number"], 1);
    let second = c.next("a's second");
    assert_eq!(second["event_number"], 2);
    let generation = second["generation"].as_i64().unwrap().to_string();
    c.finish();
    // another key commits the same consumer name past the rest, even with the generation a's
    // stream carried: the name under b's key is another consumer, never read, and nothing moves
    let k = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "commit", "etl", &grpc, "4", &generation],
        &[("FHIR_HUB_TOKEN", b.as_str())],
    );
    assert_eq!(k.next("b's commit")["error"], "FAILED_PRECONDITION");
    k.finish();
    // a's consumer resumes where a committed
    let c = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "consume", "etl", &grpc, "2"],
        &as_a,
    );
    assert_eq!(c.next("a resumes")["event_number"], 3);
    assert_eq!(c.next("a resumes")["event_number"], 4);
    c.finish();
}
