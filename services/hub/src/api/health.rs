//! `GET /health`: each component's state and the version.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{Value, json};

use crate::auth::PeerAddr;
use crate::config::AuthMode;
use crate::state::Hub;

/// What a failed check says to a caller who is not the hub's operator: the store's or the
/// log's error text names hosts, users, paths and versions.
const NOT_ANSWERING: &str = "not answering (details for hub/operator)";

/// Who sees the components' error texts: the operator of the whole hub (open mode's caller
/// is one). Anyone else — a probe, a tenant — gets [`NOT_ANSWERING`].
async fn operator_asks(hub: &Hub, headers: &HeaderMap, addr: Option<PeerAddr>) -> bool {
    if !crate::auth::has_credential(headers, None) && hub.config.auth.mode != AuthMode::Open {
        return false;
    }
    crate::auth::establish(hub, headers, None, addr.map(|a| a.0))
        .await
        .is_ok_and(|c| c.scopes.is_operator())
}

async fn check<F, E>(f: F, detailed: bool) -> Value
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let start = Instant::now();
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(Ok(())) => json!({"status": "pass", "latencyMs": start.elapsed().as_millis() as u64}),
        Ok(Err(e)) if detailed => json!({"status": "fail", "error": e.to_string()}),
        Ok(Err(_)) => json!({"status": "fail", "error": NOT_ANSWERING}),
        Err(_) => json!({"status": "fail", "error": "no answer within 5 s"}),
    }
}

pub async fn health(
    State(hub): State<Hub>,
    addr: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let detailed = operator_asks(&hub, &headers, addr.map(|a| a.0)).await;
    report(&hub, detailed).await
}

async fn report(hub: &Hub, detailed: bool) -> (StatusCode, Json<Value>) {
    let store = check(hub.store.health(), detailed).await;
    let log = check(hub.log.health(), detailed).await;
    let ok = store["status"] == "pass" && log["status"] == "pass";
    let mut store = store;
    store["backend"] = json!(format!("{:?}", hub.store.backend()).to_lowercase());
    let mut log = log;
    log["backend"] = json!(hub.log.backend());
    let body = json!({
        "status": if ok { "pass" } else { "fail" },
        "version": env!("CARGO_PKG_VERSION"),
        "roles": hub.config.server.roles,
        "components": { "store": store, "log": log },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /ready`: whether THIS process can do its work: the store and the log answer, and the
/// matcher (when this process runs it) came round its loop within `server.ready_stall_secs`.
/// 503 with the reason otherwise, so an orchestrator can restart or stop routing.
///
/// The matcher group's lag is reported (`warn` beyond `server.ready_max_lag`) but never fails
/// readiness: it is a property of the whole cluster, and one large publish would otherwise
/// take every API process out of its load balancer at once, when each of them still serves.
pub async fn ready(
    State(hub): State<Hub>,
    addr: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let detailed = operator_asks(&hub, &headers, addr.map(|a| a.0)).await;
    let (health_status, Json(health)) = report(&hub, detailed).await;
    let limit_ms = i64::try_from(hub.config.server.ready_stall_secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let stalled = hub.metrics.matcher_stalled_ms(crate::metrics::now_ms());
    let matcher = match stalled {
        None => json!({"status": "pass", "note": "no matcher in this process"}),
        Some(ms) if ms <= limit_ms => json!({"status": "pass", "sinceLastLoopMs": ms}),
        Some(ms) => json!({"status": "fail", "sinceLastLoopMs": ms,
            "error": format!("the matcher has not come round its loop for {} s (limit {} s)",
                             ms / 1000, limit_ms / 1000)}),
    };
    let lag = consumer_lag(&hub, detailed).await;
    let ok = health_status == StatusCode::OK && matcher["status"] == "pass";
    let body = json!({
        "status": if ok { "pass" } else { "fail" },
        "components": {"store": health["components"]["store"], "log": health["components"]["log"],
                       "matcher": matcher, "consumerLag": lag},
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The matcher group's lag on the change topic, whichever process runs the matchers:
/// `warn` beyond `server.ready_max_lag` records (0: no limit). Informational only.
async fn consumer_lag(hub: &Hub, detailed: bool) -> Value {
    let limit = hub.config.server.ready_max_lag;
    let topic = &hub.config.log.changes_topic;
    let group = &hub.config.kafka.matcher_group;
    match tokio::time::timeout(Duration::from_secs(5), hub.log.lag(topic, group)).await {
        Ok(Ok(lag)) if limit > 0 && lag > limit => json!({"status": "warn", "records": lag,
            "limit": limit,
            "error": format!("the matchers are {lag} change events behind (limit {limit})")}),
        Ok(Ok(lag)) => json!({"status": "pass", "records": lag, "limit": limit}),
        // the log's own check above says whether it is down; an unknown lag fails nothing
        Ok(Err(e)) if detailed => json!({"status": "warn", "error": e.to_string()}),
        Ok(Err(_)) => json!({"status": "warn", "error": NOT_ANSWERING}),
        Err(_) => json!({"status": "warn", "error": "no answer within 5 s"}),
    }
}

/// `GET /metrics` on the API listener: this process's metrics, for a credential with scope
/// `hub/metrics` or `hub/operator` (they span every tenant).
pub async fn metrics(
    State(hub): State<Hub>,
    caller: crate::auth::Caller,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !caller.scopes.may_read_metrics() {
        return super::ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            hub_fhir::OperationOutcome::error(
                hub_fhir::IssueType::Forbidden,
                "/metrics spans every tenant: it needs scope hub/metrics or hub/operator",
            ),
        )
        .into_response();
    }
    exposition(&hub).await
}

/// `GET /metrics` on the admin listener, which asks no credential (it is bound where only
/// scrapers reach; nothing in it names a tenant, a subscription or a patient).
pub async fn admin_metrics(State(hub): State<Hub>) -> axum::response::Response {
    exposition(&hub).await
}

/// The OpenMetrics text of this process, with the gauges read for the scrape: subscriptions
/// by status and the quarantine (store), and, in a process that runs the matcher, its
/// group's lag per partition.
async fn exposition(hub: &Hub) -> axum::response::Response {
    use axum::response::IntoResponse;
    let by_status = hub.store.count_by_status().await.unwrap_or_default();
    let quarantined = hub.store.count_quarantined().await.ok();
    if hub.config.has_role(crate::config::Role::Matcher) {
        let topic = &hub.config.log.changes_topic;
        let group = &hub.config.kafka.matcher_group;
        if let Ok(Ok(lag)) =
            tokio::time::timeout(Duration::from_secs(3), hub.log.partition_lag(topic, group)).await
        {
            hub.metrics.consumer_lag(&lag);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.metrics.render(&by_status, quarantined),
    )
        .into_response()
}
