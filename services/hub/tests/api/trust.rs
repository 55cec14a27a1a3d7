//! Tenancy, the audit trail and the open mode, tried as an attacker would (issue 28, items
//! 5, 6 and 8): tenant admins stay in their tenant, a flood of bad keys is one audit row,
//! nothing is disclosed without its audit row, an open hub answers only loopback names.

use axum::http::Method;
use fhir_hub::auth::keys::{self, KeySpec};
use serde_json::{Value, json};

use super::{Answer, TestHub, spawn_hub, spawn_hub_with};

async fn key(t: &TestHub, tenant: &str, scopes: &str, patient: Option<&str>) -> (String, String) {
    let (row, token) = keys::create(
        &t.hub.store,
        KeySpec {
            tenant: tenant.into(),
            name: "t".into(),
            scopes: scopes.into(),
            patient: patient.map(str::to_owned),
            expires_at: None,
        },
    )
    .await
    .unwrap();
    (row.id, token)
}

async fn as_key(
    t: &TestHub,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    let auth = format!("Bearer {token}");
    t.call(method, path, body, &[("authorization", auth.as_str())])
        .await
}

async fn required() -> TestHub {
    spawn_hub_with(|c| c.auth.mode = fhir_hub::config::AuthMode::Required).await
}

#[tokio::test]
async fn a_tenant_admin_stays_in_its_tenant() {
    let t = required().await;
    let (_, operator) = key(&t, "default", "hub/operator", None).await;
    let (_, admin_a) = key(&t, "a", "hub/admin", None).await;
    let (b_id, _) = key(&t, "b", "system/Subscription.rs", None).await;
    let (a_id, _) = key(&t, "a", "system/Subscription.rs", None).await;
    let scopes = json!({"tenant": "b", "scopes": "system/Subscription.rs"});
    let a = as_key(&t, &admin_a, Method::POST, "/admin/keys", Some(&scopes)).await;
    assert_eq!(a.status, 403, "a key in another tenant: {}", a.body);
    for grant in ["hub/operator", "hub/metrics"] {
        let a = as_key(
            &t,
            &admin_a,
            Method::POST,
            "/admin/keys",
            Some(&json!({"scopes": grant})),
        )
        .await;
        assert_eq!(a.status, 403, "{grant}: {}", a.body);
    }
    let list = as_key(&t, &admin_a, Method::GET, "/admin/keys", None).await;
    assert_eq!(list.status, 200);
    let tenants: Vec<&str> = list.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tenant"].as_str().unwrap())
        .collect();
    assert!(tenants.iter().all(|t| *t == "a"), "{tenants:?}");
    let patch = json!({"scopes": "system/Subscription.cruds"});
    let path = format!("/admin/keys/{b_id}");
    let a = as_key(&t, &admin_a, Method::PATCH, &path, Some(&patch)).await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = as_key(&t, &admin_a, Method::DELETE, &path, None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    for path in [
        "/fhir/AuditEvent?_tenant=*",
        "/fhir/AuditEvent?_tenant=b",
        "/metrics",
    ] {
        let a = as_key(&t, &admin_a, Method::GET, path, None).await;
        assert_eq!(a.status, 403, "{path}: {}", a.body);
    }
    // its own tenant it administers
    let a = as_key(
        &t,
        &admin_a,
        Method::DELETE,
        &format!("/admin/keys/{a_id}"),
        None,
    )
    .await;
    assert_eq!(a.status, 204, "{}", a.body);
    // an operator's key living in the admin's tenant is the operator's to change or revoke
    let (op_in_a, _) = key(&t, "a", "hub/operator", None).await;
    let op_path = format!("/admin/keys/{op_in_a}");
    let a = as_key(&t, &admin_a, Method::DELETE, &op_path, None).await;
    assert_eq!(a.status, 403, "revoking an operator key: {}", a.body);
    let demote = json!({"scopes": "system/Subscription.rs"});
    let a = as_key(&t, &admin_a, Method::PATCH, &op_path, Some(&demote)).await;
    assert_eq!(a.status, 403, "demoting an operator key: {}", a.body);
    assert_eq!(
        as_key(&t, &admin_a, Method::GET, "/fhir/AuditEvent", None)
            .await
            .status,
        200
    );
    // the operator reaches every tenant
    let a = as_key(&t, &operator, Method::POST, "/admin/keys", Some(&scopes)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = as_key(&t, &operator, Method::DELETE, &path, None).await;
    assert_eq!(a.status, 204, "{}", a.body);
    for path in ["/fhir/AuditEvent?_tenant=*", "/metrics"] {
        assert_eq!(
            as_key(&t, &operator, Method::GET, path, None).await.status,
            200,
            "{path}"
        );
    }
}

async fn credential_rows(t: &TestHub) -> Vec<hub_store::AuditRow> {
    let q = hub_store::AuditQuery {
        limit: 100_000,
        ..Default::default()
    };
    let rows = t.hub.store.audit_events(&q).await.unwrap();
    rows.into_iter()
        .filter(|r| r.audit.kind == "credential" && r.audit.outcome != "0")
        .collect()
}

async fn flood(t: &TestHub, n: u32) -> (u32, u32) {
    let (mut unauthorized, mut throttled) = (0, 0);
    for i in 0..n {
        let bad = format!("fhk_{i:016x}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        match as_key(t, &bad, Method::GET, "/fhir/Subscription", None)
            .await
            .status
            .as_u16()
        {
            401 => unauthorized += 1,
            429 => throttled += 1,
            s => panic!("{s}"),
        }
    }
    (unauthorized, throttled)
}

#[tokio::test]
async fn a_flood_of_bad_keys_writes_no_row_per_refusal_and_is_throttled() {
    let t = required().await;
    let (unauthorized, throttled) = flood(&t, 3000).await;
    let rows = credential_rows(&t).await;
    assert!(
        rows.is_empty(),
        "{} audit rows for 3000 refusals",
        rows.len()
    );
    // the peer's budget (auth.refusals_per_minute_per_peer = 30, and the one refusal that
    // exceeds it) runs out, and the rest is 429
    assert!(
        unauthorized <= 31 && throttled >= 2969,
        "{unauthorized} {throttled}"
    );
    // a good credential from the same address is still served (a proxy, a NAT)
    let (_, good) = key(&t, "default", "system/Subscription.rs", None).await;
    let a = as_key(&t, &good, Method::GET, "/fhir/Subscription", None).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

// after: new API
#[tokio::test]
async fn refusals_are_written_as_one_row_per_peer_and_window() {
    let t = required().await;
    flood(&t, 3000).await;
    fhir_hub::audit::write_refusals(
        &t.hub.store,
        &t.hub.auth.refusals,
        std::time::Duration::from_secs(60),
    )
    .await;
    let rows = credential_rows(&t).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let d = rows[0].audit.detail.as_deref().unwrap();
    assert!(d.starts_with("3000 refused credentials"), "{d}");
    assert_eq!(rows[0].audit.agent, "peer:unknown");
    // never a presented key id verbatim
    assert!(!d.contains("0000000000000001"), "{d}");
}
// end: new API

/// Make the audit trail unwritable (the table gone), as a full disk or a lost grant would.
async fn break_the_audit(t: &TestHub) {
    use sqlx::ConnectOptions;
    let url = t.hub.config.database_url();
    let mut c = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_gone")
        .execute(&mut c)
        .await
        .unwrap();
}

async fn subscription_with_a_notification(t: &TestHub) -> String {
    let body = json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
        "criteria": "Observation?code=x",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/a",
                    "payload": "application/fhir+json"}});
    with_a_notification(t, body).await
}

async fn with_a_notification(t: &TestHub, body: Value) -> String {
    let a = t.post("/fhir/Subscription", &body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}});
    let logged = t
        .hub
        .store
        .append_notifications(&[hub_store::NewNotification {
            tenant: "default".into(),
            subscription_id: id.clone(),
            event_id: "e1".into(),
            action: "create".into(),
            focus_type: "Observation".into(),
            focus_id: "o1".into(),
            focus_version: None,
            occurred_at: "2026-01-01T00:00:00Z".into(),
            resource: Some(obs.to_string().into()),
        }])
        .await
        .unwrap();
    assert_eq!(logged.len(), 1);
    id
}

#[tokio::test]
async fn no_audit_row_no_disclosure() {
    let t = spawn_hub().await;
    let id = subscription_with_a_notification(&t).await;
    let path = format!("/fhir/Subscription/{id}/$events?content=full-resource");
    assert_eq!(t.get(&path).await.status, 200);
    break_the_audit(&t).await;
    let a = t.get(&path).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(!a.body.to_string().contains("Patient/p1"), "{}", a.body);
}

#[tokio::test]
async fn an_sse_stream_ends_rather_than_disclose_unaudited() {
    use tower::ServiceExt;
    let t = spawn_hub().await;
    let sse = json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
        "criteria": "Observation?code=x",
        "channel": {"type": "rest-hook", "payload": "application/fhir+json",
            "_type": {"extension": [{
                "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type",
                "valueCoding": {"system": "urn:fhir-hub:channel-type", "code": "sse"}}]}}});
    let id = with_a_notification(&t, sse).await;
    break_the_audit(&t).await;
    let req = axum::http::Request::get(format!("/fhir/Subscription/{id}/$stream"))
        .header("last-event-id", "0")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = t.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    // the stream ends by itself (a stream that went on would hang here)
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        axum::body::to_bytes(res.into_body(), 1 << 20),
    )
    .await
    .expect("the stream ends")
    .unwrap();
    let text = String::from_utf8_lossy(&body);
    // not `error`, which a browser's EventSource takes for a broken connection
    assert!(text.contains("event: unavailable"), "{text}");
    assert!(text.contains("audit"), "{text}");
    assert!(!text.contains("Patient/p1"), "{text}");
}

// after: new API
#[tokio::test]
async fn the_operator_may_choose_to_fail_open() {
    let t = spawn_hub_with(|c| c.audit.fail_closed = false).await;
    let id = subscription_with_a_notification(&t).await;
    break_the_audit(&t).await;
    let path = format!("/fhir/Subscription/{id}/$events?content=full-resource");
    assert_eq!(t.get(&path).await.status, 200);
}
// end: new API

#[tokio::test]
async fn reading_a_quarantined_event_is_audited() {
    let t = spawn_hub().await;
    t.hub
        .store
        .quarantine(&[hub_store::NewQuarantined {
            source: "changes/0@1".into(),
            tenant: Some("default".into()),
            event_id: Some("e".into()),
            record_key: None,
            payload: b"{\"patient\": \"p1\"}".to_vec(),
            stage: hub_store::QuarantineStage::Parse,
            reason: "r".into(),
        }])
        .await
        .unwrap();
    let list = t.get("/admin/quarantine").await;
    let id = list.body["items"][0]["id"].as_i64().unwrap();
    let a = t.get(&format!("/admin/quarantine/{id}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let q = hub_store::AuditQuery {
        entity: Some(format!("Quarantine/{id}")),
        limit: 100,
        ..Default::default()
    };
    let rows = t.hub.store.audit_events(&q).await.unwrap();
    assert_eq!(rows.len(), 2, "the list and the read: {rows:?}");
    assert!(rows.iter().all(|r| r.audit.agent == "anonymous"));
}

#[tokio::test]
async fn an_open_hub_answers_only_loopback_names_and_sends_no_cors() {
    let t = spawn_hub().await;
    for host in ["evil.example", "evil.example:8080", "127.0.0.1.nip.io"] {
        let a = t
            .call(Method::GET, "/fhir/Subscription", None, &[("host", host)])
            .await;
        assert_eq!(a.status, 421, "{host}: {}", a.body);
    }
    for host in ["localhost:8080", "127.0.0.1", "[::1]:9"] {
        let a = t
            .call(Method::GET, "/fhir/Subscription", None, &[("host", host)])
            .await;
        assert_eq!(a.status, 200, "{host}");
    }
    let a = t
        .call(
            Method::GET,
            "/fhir/Subscription/nope/$stream",
            None,
            &[("host", "localhost"), ("origin", "https://evil.example")],
        )
        .await;
    assert!(
        a.headers.get("access-control-allow-origin").is_none(),
        "{:?}",
        a.headers
    );
    // a hub that needs credentials answers the pages of the origins it lists (none by
    // default), whatever the Host
    let headers = [
        ("host", "hub.example.org"),
        ("origin", "https://app.example"),
    ];
    let t = required().await;
    let a = t
        .call(
            Method::GET,
            "/fhir/Subscription/nope/$stream",
            None,
            &headers,
        )
        .await;
    assert!(a.headers.get("access-control-allow-origin").is_none());
    let t = spawn_hub_with(|c| {
        c.auth.mode = fhir_hub::config::AuthMode::Required;
        c.cors.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let a = t
        .call(
            Method::GET,
            "/fhir/Subscription/nope/$stream",
            None,
            &headers,
        )
        .await;
    assert_eq!(
        a.headers.get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
}

#[tokio::test]
async fn health_tells_store_errors_only_to_the_operator() {
    let t = required().await;
    t.hub.store.close().await;
    let a = t.get("/health").await;
    assert_eq!(a.status, 503);
    let err = a.body["components"]["store"]["error"].as_str().unwrap();
    assert_eq!(
        err, "not answering (details for hub/operator)",
        "{}",
        a.body
    );
    let a = t.get("/ready").await;
    assert_eq!(a.body["components"]["store"]["error"], err, "{}", a.body);
}

#[tokio::test]
async fn a_patient_key_cannot_subscribe_past_its_patient_with_a_modifier() {
    let t = required().await;
    let (_, pat) = key(
        &t,
        "default",
        "system/Subscription.cruds patient/Observation.rs",
        Some("p1"),
    )
    .await;
    let body = |criteria: &str| {
        json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
            "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/a"}})
    };
    let a = as_key(
        &t,
        &pat,
        Method::POST,
        "/fhir/Subscription",
        Some(&body("Observation?subject:identifier=p1")),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    // other modifiers: refused too (403, or 422 where the criteria parser knows none)
    for criteria in [
        "Observation?subject:not=Patient/p1",
        "Observation?subject:missing=false",
    ] {
        let a = as_key(
            &t,
            &pat,
            Method::POST,
            "/fhir/Subscription",
            Some(&body(criteria)),
        )
        .await;
        assert!(
            matches!(a.status.as_u16(), 403 | 422),
            "{criteria}: {}",
            a.body
        );
    }
    let ok = body("Observation?subject=Patient/p1");
    let a = as_key(&t, &pat, Method::POST, "/fhir/Subscription", Some(&ok)).await;
    assert_eq!(a.status, 201, "{}", a.body);
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = spawn_hub().await;
    let db = t.hub.config.server.data_dir.join("hub.db");
    let log = t.hub.config.embedded_log_path();
    for f in [db, log] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
}

/// On a process without the matcher role (which keeps no parsed criteria), a reader that may
/// read none of a criteria subscription's resource type is still refused at connect (before,
/// it was let in and shown withheld events).
#[tokio::test]
async fn an_api_only_process_refuses_a_reader_without_the_type() {
    let t = spawn_hub_with(|c| {
        c.auth.mode = fhir_hub::config::AuthMode::Required;
        c.server.roles = vec![fhir_hub::config::Role::Api];
    })
    .await;
    let (_, owner) = key(
        &t,
        "default",
        "system/Subscription.cruds system/Observation.rs",
        None,
    )
    .await;
    let (_, narrow) = key(&t, "default", "system/Subscription.rs", None).await;
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "t",
        "criteria": "Observation?code=http://loinc.org|2345-7",
        "channel": {"type": "websocket"}});
    let a = as_key(&t, &owner, Method::POST, "/fhir/Subscription", Some(&sub)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    let path = format!("/fhir/Subscription/{id}/$events");
    let a = as_key(&t, &narrow, Method::GET, &path, None).await;
    assert_eq!(a.status, 403, "{}", a.body);
}
