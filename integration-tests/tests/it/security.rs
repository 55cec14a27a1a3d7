//! Security, tried as a client and an attacker would: `auth.mode = "required"`, API keys
//! (made with `fhir-hub keys create` and the admin API), OAuth2 JWTs from an issuer run by
//! PyJWT, SMART scopes at create and at delivery, `patient/` scopes, tenants (404 on every
//! surface), the audit trail, rate limits, slow clients, and logs free of identifiers.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Hub, HubEnv, PyClient, binary, envelope, glucose, require_external};
use crate::receiver::TestReceiver;

/// A patient id and resource ids that must never appear in the hub's log.
const MARKER: &str = "phi7731marker";

/// `fhir-hub keys create` against a data directory: the token it prints.
pub(crate) fn cli_key(dir: &std::path::Path, tenant: &str, scopes: &str) -> String {
    let out = std::process::Command::new(binary())
        .args([
            "keys", "create", "--tenant", tenant, "--scope", scopes, "--name", "cli",
        ])
        .arg("--data-dir")
        .arg(dir)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One request with an optional bearer token: status, headers, JSON body (or Null).
pub(crate) async fn call(
    hub: &Hub,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = hub.http.request(method, format!("{}{path}", hub.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.json().await.unwrap_or(Value::Null))
}

fn rest_hook(criteria: &str, endpoint: &str) -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "security",
           "criteria": criteria,
           "channel": {"type": "rest-hook", "endpoint": endpoint,
                       "payload": "application/fhir+json",
                       "header": ["Authorization: Bearer receiver-secret-1"]}})
}

fn observation(id: &str, patient: &str) -> Value {
    let mut o = glucose(id);
    o["subject"] = json!({"reference": format!("Patient/{patient}")});
    o
}

/// Make a key with the admin API; its id and token.
pub(crate) async fn admin_key(hub: &Hub, admin: &str, body: Value) -> (String, String) {
    let (s, _, k) = call(hub, Method::POST, "/admin/keys", Some(admin), Some(&body)).await;
    assert_eq!(s, 201, "{k}");
    (
        k["id"].as_str().unwrap().to_owned(),
        k["token"].as_str().unwrap().to_owned(),
    )
}

async fn wait_active(hub: &Hub, token: &str, id: &str) {
    for _ in 0..100 {
        let (_, _, s) = call(
            hub,
            Method::GET,
            &format!("/fhir/Subscription/{id}"),
            Some(token),
            None,
        )
        .await;
        if s["status"] == "active" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Subscription/{id} never became active");
}

async fn publish(hub: &Hub, token: &str, resource: &Value) -> u16 {
    let res = hub
        .http
        .post(format!("{}/events", hub.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(envelope(resource, "create").to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    if status != 202 {
        eprintln!("publish: {status} {}", res.text().await.unwrap_or_default());
    }
    status
}

async fn disclosures(hub: &Hub, admin: &str, tenant: &str, sub: &str) -> Vec<Value> {
    let (s, _, b) = call(
        hub,
        Method::GET,
        &format!("/fhir/AuditEvent?subscription={sub}&_tenant={tenant}"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .filter(|r| r["type"]["code"] == "110106")
        .collect()
}

#[tokio::test]
async fn keys_scopes_tenants_audit_and_clean_logs() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // keys for several tenants: the operator of the whole hub (hub/admin is one tenant's)
    let admin = cli_key(dir.path(), "default", "hub/operator");
    assert!(admin.starts_with("fhk_"), "{admin}");
    let env = HubEnv::default()
        .var("HUB_AUTH__MODE", "required")
        .var("HUB_AUDIT__REFUSAL_WINDOW_SECS", "1");
    let hub = Hub::start_in(env, dir).await;

    // no credential, a made-up key, a malformed header: 401 with an OperationOutcome
    let (s, h, b) = call(&hub, Method::GET, "/fhir/Subscription", None, None).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert!(h.get("www-authenticate").is_some());
    let fake = "fhk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(
        call(&hub, Method::GET, "/fhir/Subscription", Some(fake), None)
            .await
            .0,
        401
    );
    let res = hub
        .http
        .get(format!("{}/fhir/Subscription", hub.url))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    // /metrics and the admin APIs need their scopes too
    assert_eq!(call(&hub, Method::GET, "/metrics", None, None).await.0, 401);

    let scopes = "system/Subscription.cruds system/Observation.rs";
    let (a_id, a) = admin_key(&hub, &admin, json!({"tenant": "alpha", "scopes": scopes})).await;
    let (_, b_key) = admin_key(&hub, &admin, json!({"tenant": "beta", "scopes": scopes})).await;
    let (_, publisher) = admin_key(
        &hub,
        &admin,
        json!({"tenant": "alpha", "scopes": "hub/publish"}),
    )
    .await;
    let (_, reader) = admin_key(
        &hub,
        &admin,
        json!({"tenant": "alpha", "scopes": "system/Subscription.rs"}),
    )
    .await;
    let (_, pat) = admin_key(
        &hub,
        &admin,
        json!({"tenant": "alpha", "patient": MARKER,
               "scopes": "system/Subscription.cruds patient/Observation.rs"}),
    )
    .await;
    // scopes that mean nothing are refused, not silently granted nothing
    let (s, _, _) = call(
        &hub,
        Method::POST,
        "/admin/keys",
        Some(&admin),
        Some(&json!({"scopes": "system/Observation.read?x=1 opnid"})),
    )
    .await;
    assert_eq!(s, 422);
    // a non-admin cannot make keys
    let (s, _, _) = call(
        &hub,
        Method::POST,
        "/admin/keys",
        Some(&a),
        Some(&json!({"scopes": "hub/admin"})),
    )
    .await;
    assert_eq!(s, 403);

    let mut rx_a = TestReceiver::start().await;
    let mut rx_p = TestReceiver::start().await;
    let criteria = "Observation?code=http://loinc.org|2345-7";
    // wrong scope: 403 (read-only key; a type the key cannot read)
    let (s, _, b) = call(
        &hub,
        Method::POST,
        "/fhir/Subscription",
        Some(&reader),
        Some(&rest_hook(criteria, &rx_a.url)),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["issue"][0]["code"], "forbidden");
    let (s, _, b) = call(
        &hub,
        Method::POST,
        "/fhir/Subscription",
        Some(&a),
        Some(&rest_hook("Patient?name=x", &rx_a.url)),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let (s, _, sub_a) = call(
        &hub,
        Method::POST,
        "/fhir/Subscription",
        Some(&a),
        Some(&rest_hook(criteria, &rx_a.url)),
    )
    .await;
    assert_eq!(s, 201, "{sub_a}");
    let sub_a = sub_a["id"].as_str().unwrap().to_owned();
    wait_active(&hub, &a, &sub_a).await;
    // reads never show the credential a channel header carries
    let (_, _, read) = call(
        &hub,
        Method::GET,
        &format!("/fhir/Subscription/{sub_a}"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(
        read["channel"]["header"],
        json!(["Authorization: [redacted]"]),
        "{read}"
    );
    assert!(!read.to_string().contains("receiver-secret-1"));

    // another tenant's subscription is a 404 on REST, SSE, websocket and gRPC
    for path in [
        format!("/fhir/Subscription/{sub_a}"),
        format!("/fhir/Subscription/{sub_a}/$status"),
        format!("/fhir/Subscription/{sub_a}/$events"),
        format!("/fhir/Subscription/{sub_a}/_history"),
        format!("/fhir/Subscription/{sub_a}/$stream"),
        format!("/fhir/Subscription/{sub_a}/$get-ws-binding-token"),
    ] {
        let (s, _, b) = call(&hub, Method::GET, &path, Some(&b_key), None).await;
        assert_eq!(s, 404, "{path}: {b}");
    }
    let (s, _, _) = call(
        &hub,
        Method::DELETE,
        &format!("/fhir/Subscription/{sub_a}"),
        Some(&b_key),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (_, _, listed) = call(&hub, Method::GET, "/fhir/Subscription", Some(&b_key), None).await;
    assert_eq!(listed["total"], 0, "{listed}");
    let ws_url = format!(
        "{}/fhir/$subscription-ws",
        hub.url.replacen("http", "ws", 1)
    );
    let ws = PyClient::start_with(
        &python,
        "ws_client.py",
        &[&ws_url, &format!("classic:{sub_a}"), "1"],
        &[("FHIR_HUB_TOKEN", &b_key)],
    );
    let m = ws.next("classic bind of another tenant's subscription");
    assert!(
        m["text"].as_str().unwrap_or("").contains("is not known"),
        "{m}"
    );
    let target = hub.grpc_url.trim_start_matches("http://").to_owned();
    let g = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", &sub_a, "1", "1"],
        &[("FHIR_HUB_TOKEN", &b_key)],
    );
    assert_eq!(g.next("gRPC of another tenant")["error"], "NOT_FOUND");
    let g = PyClient::start(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", &sub_a, "1", "1"],
    );
    assert_eq!(
        g.next("gRPC without a credential")["error"],
        "UNAUTHENTICATED"
    );

    // a patient/ key subscribes only within its patient's compartment
    let (s, _, b) = call(
        &hub,
        Method::POST,
        "/fhir/Subscription",
        Some(&pat),
        Some(&rest_hook(criteria, &rx_p.url)),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let confined = format!("Observation?subject=Patient/{MARKER}");
    let (s, _, sub_p) = call(
        &hub,
        Method::POST,
        "/fhir/Subscription",
        Some(&pat),
        Some(&rest_hook(&confined, &rx_p.url)),
    )
    .await;
    assert_eq!(s, 201, "{sub_p}");
    let sub_p = sub_p["id"].as_str().unwrap().to_owned();
    wait_active(&hub, &pat, &sub_p).await;

    // publishing needs hub/publish
    assert_eq!(publish(&hub, &a, &observation("obs-x", "other")).await, 403);
    assert_eq!(
        publish(
            &hub,
            &publisher,
            &observation(&format!("{MARKER}-1"), MARKER)
        )
        .await,
        202
    );
    assert_eq!(
        publish(&hub, &publisher, &observation("obs-other-1", "other")).await,
        202
    );
    let got = rx_a.next(Duration::from_secs(20)).await;
    assert!(String::from_utf8_lossy(&got.body).contains(MARKER));
    // the credential header reaches the endpoint, though it is stored sealed
    assert_eq!(got.headers["authorization"], "Bearer receiver-secret-1");
    let got = rx_a.next(Duration::from_secs(20)).await;
    assert!(String::from_utf8_lossy(&got.body).contains("obs-other-1"));
    let got = rx_p.next(Duration::from_secs(20)).await;
    assert!(String::from_utf8_lossy(&got.body).contains(MARKER));
    rx_p.assert_quiet(Duration::from_secs(1)).await;

    // event ids are per producer: a second producer reusing an id suppresses nothing
    let (_, publisher2) = admin_key(
        &hub,
        &admin,
        json!({"tenant": "alpha", "scopes": "hub/publish"}),
    )
    .await;
    for (who, obs) in [
        (&publisher, "obs-same-id-1"),
        (&publisher2, "obs-same-id-2"),
    ] {
        let mut env = envelope(&observation(obs, "other"), "create");
        env["id"] = json!("shared-event-id");
        let res = hub
            .http
            .post(format!("{}/events", hub.url))
            .bearer_auth(who)
            .header("content-type", "application/json")
            .body(env.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 202);
    }
    for obs in ["obs-same-id-1", "obs-same-id-2"] {
        let got = rx_a.next(Duration::from_secs(20)).await;
        assert!(String::from_utf8_lossy(&got.body).contains(obs), "{obs}");
    }

    // the key loses Observation.rs: its subscription stops receiving Observations at once
    let (s, _, b) = call(
        &hub,
        Method::PATCH,
        &format!("/admin/keys/{a_id}"),
        Some(&admin),
        Some(&json!({"scopes": "system/Subscription.cruds"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        publish(&hub, &publisher, &observation("obs-after-1", "other")).await,
        202
    );
    // the patient subscription still gets its patient's observation: the event was matched
    assert_eq!(
        publish(
            &hub,
            &publisher,
            &observation(&format!("{MARKER}-2"), MARKER)
        )
        .await,
        202
    );
    rx_p.next(Duration::from_secs(20)).await;
    rx_a.assert_quiet(Duration::from_secs(2)).await;

    // a revoked key stops working at once
    let (s, _, _) = call(
        &hub,
        Method::DELETE,
        &format!("/admin/keys/{a_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, _) = call(
        &hub,
        Method::GET,
        &format!("/fhir/Subscription/{sub_a}"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(s, 401);

    // the audit trail: one disclosure per delivered notification, with what and to whom
    let d = disclosures(&hub, &admin, "alpha", &sub_a).await;
    assert_eq!(d.len(), 4, "{d:?}");
    assert!(
        d.iter()
            .all(|e| e["agent"][0]["who"]["identifier"]["value"] == format!("key:{a_id}"))
    );
    let d = disclosures(&hub, &admin, "alpha", &sub_p).await;
    assert_eq!(d.len(), 2, "{d:?}");
    let (_, _, changes) = call(
        &hub,
        Method::GET,
        &format!("/fhir/AuditEvent?entity=Subscription/{sub_a}&_tenant=alpha"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(changes["entry"][0]["resource"]["action"], "C", "{changes}");
    // refused credentials: one row per peer and window (audit.refusal_window_secs), with a
    // count, never the presented key id
    let mut refused = Value::Null;
    for _ in 0..50 {
        refused = call(
            &hub,
            Method::GET,
            "/fhir/AuditEvent?agent=peer:127.0.0.1&_tenant=*",
            Some(&admin),
            None,
        )
        .await
        .2;
        if refused["total"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused["total"].as_u64().unwrap() >= 1, "{refused}");
    let detail = refused["entry"][0]["resource"]["outcomeDesc"]
        .as_str()
        .unwrap();
    assert!(detail.contains("refused credentials"), "{detail}");
    assert!(!detail.contains("0123456789abcdef"), "{detail}");
    // AuditEvent needs hub/admin
    assert_eq!(
        call(&hub, Method::GET, "/fhir/AuditEvent", Some(&b_key), None)
            .await
            .0,
        403
    );

    // secrets at rest: sealed in the database (the embedded key in the data directory)
    let db = format!("sqlite://{}", hub.data_dir.path().join("hub.db").display());
    let pool = sqlx::sqlite::SqlitePool::connect(&db).await.unwrap();
    let (secret, resource): (String, String) =
        sqlx::query_as("SELECT secret, resource FROM subscriptions WHERE id = ?")
            .bind(&sub_a)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(secret.starts_with("enc:v2:local:"), "{secret}");
    assert!(
        resource.contains("Authorization: enc:v2:local:"),
        "{resource}"
    );
    assert!(!resource.contains("receiver-secret-1"));
    let (hashes,): (String,) = sqlx::query_as("SELECT group_concat(secret_hash) FROM api_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    // fhk_ + 16 hex digits + _ = 21 characters before the secret
    assert!(!hashes.contains(&a[21..]), "key secrets are hashed");
    pool.close().await;

    // nothing in the log names the patient or the resources
    let log = std::fs::read_to_string(hub.data_dir.path().join("hub.log")).unwrap();
    assert!(
        log.contains("published change events"),
        "the log was captured"
    );
    assert!(!log.contains(MARKER), "the hub's log holds an identifier");
    assert!(!log.contains("receiver-secret-1"));
}

#[tokio::test]
async fn jwt_bearer_tokens_from_a_jwks() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let issuer = PyClient::start(&python, "jwt_issuer.py", &["https://issuer.test"]);
    let base = issuer.next("issuer address")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[auth]\nmode = \"required\"\njwks_min_refresh_secs = 2\n\n[[auth.issuers]]\n\
             issuer = \"https://issuer.test\"\njwks_url = \"{base}/jwks.json\"\n\
             audience = \"https://hub.test/fhir\"\nleeway_secs = 5\n\
             tenants = [\"alpha\", \"beta\"]\n\
             algorithms = [\"RS384\", \"ES384\", \"RS256\", \"ES256\"]\n"
        ),
    )
    .unwrap();
    let hub = Hub::start_in(HubEnv::default(), dir).await;
    let http = reqwest::Client::new();
    let token = |q: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/token?{q}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let fetches = || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let v: Value = http
                .get(format!("{base}/fetches"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["count"].as_i64().unwrap()
        }
    };
    let hub = &hub;
    let status = |t: String| async move {
        call(hub, Method::GET, "/fhir/Subscription", Some(&t), None).await
    };

    for alg in [
        "alg=RS384",
        "alg=ES384",
        "alg=RS256",
        "alg=ES256&kid=ec-256",
    ] {
        let (s, _, b) = status(token(format!("{alg}&tenant=alpha")).await).await;
        assert_eq!(s, 200, "{alg}: {b}");
    }
    for (why, q) in [
        ("expired", "exp=-120"),
        ("not yet valid", "nbf=120"),
        ("wrong audience", "aud=https://other.test/fhir"),
        ("signed by another key", "forge=1"),
        ("signed by another EC key", "alg=ES384&forge=1"),
        ("unknown issuer", "iss=https://evil.test"),
        ("unknown key id", "kid=nope"),
    ] {
        let (s, _, b) = status(token(q.to_owned()).await).await;
        assert_eq!(s, 401, "{why}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome");
    }
    // unknown kids are fetched for at most once per jwks_min_refresh_secs
    let before = fetches().await;
    for _ in 0..5 {
        status(token("kid=nope".into()).await).await;
    }
    assert!(
        fetches().await - before <= 1,
        "the JWKS was fetched for every unknown kid"
    );
    // key rotation: a new kid is found by fetching again
    reqwest::get(format!("{base}/rotate")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, _, b) = status(token("kid=rsa-2&tenant=alpha".into()).await).await;
    assert_eq!(s, 200, "{b}");

    // tenant and scopes come from the token
    let alpha = token("tenant=alpha".into()).await;
    let body = json!({"resourceType": "Subscription", "status": "requested", "reason": "jwt",
        "criteria": "Observation?code=x",
        "channel": {"type": "rest-hook", "endpoint": format!("{base}/hook")}});
    let (s, _, sub) = call(
        hub,
        Method::POST,
        "/fhir/Subscription",
        Some(&alpha),
        Some(&body),
    )
    .await;
    assert_eq!(s, 201, "{sub}");
    let id = sub["id"].as_str().unwrap();
    let beta = token("tenant=beta".into()).await;
    // the issuer speaks for alpha and beta only (auth.issuers.tenants)
    let gamma = token("tenant=gamma".into()).await;
    let (s, _, b) = call(hub, Method::GET, "/fhir/Subscription", Some(&gamma), None).await;
    assert_eq!(s, 401, "{b}");
    let (s, _, _) = call(
        hub,
        Method::GET,
        &format!("/fhir/Subscription/{id}"),
        Some(&beta),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let narrow = token("tenant=alpha&scope=system/Subscription.rs".into()).await;
    let (s, _, _) = call(
        hub,
        Method::POST,
        "/fhir/Subscription",
        Some(&narrow),
        Some(&body),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, _) = call(
        hub,
        Method::GET,
        &format!("/fhir/Subscription/{id}"),
        Some(&narrow),
        None,
    )
    .await;
    assert_eq!(s, 200);

    // a token client that loses Observation.rs stops receiving Observations
    let mut rx = TestReceiver::start().await;
    let client = token("tenant=alpha&sub=lab-client".into()).await;
    let (s, _, sub) = call(
        hub,
        Method::POST,
        "/fhir/Subscription",
        Some(&client),
        Some(&rest_hook(
            "Observation?code=http://loinc.org|2345-7",
            &rx.url,
        )),
    )
    .await;
    assert_eq!(s, 201, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    wait_active(hub, &client, &sub_id).await;
    let publisher = token("tenant=alpha&sub=producer&scope=hub/publish".into()).await;
    assert_eq!(
        publish(hub, &publisher, &observation("obs-jwt-1", "other")).await,
        202
    );
    let got = rx.next(Duration::from_secs(20)).await;
    assert!(String::from_utf8_lossy(&got.body).contains("obs-jwt-1"));
    let lost = token("tenant=alpha&sub=lab-client&scope=system/Subscription.cruds".into()).await;
    let (s, _, _) = call(hub, Method::GET, "/fhir/Subscription", Some(&lost), None).await;
    assert_eq!(s, 200);
    // the grant is written through in the background; then the matcher rebuilds
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        publish(hub, &publisher, &observation("obs-jwt-2", "other")).await,
        202
    );
    rx.assert_quiet(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn bursts_get_429_and_slow_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let key = cli_key(dir.path(), "default", "system/Subscription.rs");
    let hub = Hub::start_in(
        HubEnv::default()
            .var("HUB_AUTH__MODE", "required")
            .var("HUB_AUTH__RATE_LIMIT_PER_SEC", "2")
            .var("HUB_AUTH__RATE_LIMIT_BURST", "3")
            .var("HUB_SERVER__HEADER_READ_TIMEOUT_SECS", "1"),
        dir,
    )
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let (s, h, b) = call(&hub, Method::GET, "/fhir/Subscription", Some(&key), None).await;
        if s == 429 {
            limited = Some((h, b));
            break;
        }
        assert_eq!(s, 200, "{b}");
    }
    let (h, b) = limited.expect("a burst of 10 at 2/s with a burst of 3 must be limited");
    assert_eq!(b["issue"][0]["code"], "throttled", "{b}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(h["ratelimit-limit"], "2");
    assert_eq!(h["ratelimit-remaining"], "0");

    // slowloris: headers that never finish are cut off after header_read_timeout_secs
    let addr = hub.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the slow connection was not closed"
    );
    // an idle connection that never sends anything is closed as well
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the idle connection was not closed"
    );
    // and the hub still answers
    assert_eq!(call(&hub, Method::GET, "/health", None, None).await.0, 200);
}

#[test]
fn open_mode_refuses_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.mode") && err.contains("keys create"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_listeners_and_client_certificates_as_credentials() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let pki = tempfile::tempdir().unwrap();
    crate::mtls::make_pki(pki.path());
    let p = |f: &str| pki.path().join(f).display().to_string();
    // the client certificate's fingerprint maps it to an API key
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-in",
            &p("client.pem"),
            "-noout",
            "-fingerprint",
            "-sha256",
        ])
        .output()
        .unwrap();
    let fp: String = String::from_utf8_lossy(&out.stdout)
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .replace(':', "")
        .to_ascii_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let token = cli_key(dir.path(), "default", "system/Subscription.cruds");
    let key_id = &token[4..20];
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[auth]\nmode = \"required\"\n[auth.client_certificates]\n\"{fp}\" = \"{key_id}\"\n\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            p("server.pem"),
            p("server.key"),
            p("ca.pem")
        ),
    )
    .unwrap();
    let hub = Hub::start_in(HubEnv::default(), dir).await;
    assert!(hub.url.starts_with("https://"), "{}", hub.url);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(p("ca.pem")).unwrap()).unwrap();
    let tls_client = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let url = format!("{}/fhir/Subscription", hub.url);
    // TLS without a credential: 401; with the bearer key: 200
    let res = tls_client.get(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res = tls_client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // the mapped client certificate is the credential
    let mut pem = std::fs::read(p("client.pem")).unwrap();
    pem.extend(std::fs::read(p("client.key")).unwrap());
    let mtls = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let res = mtls.get(&url).send().await.unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
    // plain HTTP to the TLS port gets no answer
    let plain = hub.url.replacen("https", "http", 1);
    let res = reqwest::get(format!("{plain}/health")).await;
    assert!(res.map(|r| !r.status().is_success()).unwrap_or(true));

    // gRPC over TLS (grpcio trusting the test CA), with the bearer key
    let target = hub.grpc_url.trim_start_matches("http://").to_owned();
    let h = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "health"],
        &[("FHIR_HUB_CA", &p("ca.pem"))],
    );
    assert_eq!(h.next("gRPC health over TLS")["serving"], true);
    let g = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", "nope", "1", "1"],
        &[("FHIR_HUB_CA", &p("ca.pem")), ("FHIR_HUB_TOKEN", &token)],
    );
    assert_eq!(g.next("gRPC over TLS")["error"], "NOT_FOUND");
    // on gRPC too the mapped client certificate is the credential (the listener hands it to
    // each request), and without one there is none
    let g = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", "nope", "1", "1"],
        &[
            ("FHIR_HUB_CA", &p("ca.pem")),
            ("FHIR_HUB_CLIENT_CERT", &p("client.pem")),
            ("FHIR_HUB_CLIENT_KEY", &p("client.key")),
        ],
    );
    assert_eq!(
        g.next("gRPC with a client certificate")["error"],
        "NOT_FOUND"
    );
    let g = PyClient::start_with(
        &python,
        "grpc_client.py",
        &[&target, "subscribe", "nope", "1", "1"],
        &[("FHIR_HUB_CA", &p("ca.pem"))],
    );
    assert_eq!(
        g.next("gRPC without a credential")["error"],
        "UNAUTHENTICATED"
    );
}
