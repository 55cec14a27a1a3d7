//! The HTTP API as a client sees it, in-process: the real router over a real store (SQLite
//! in a temporary directory) and the embedded log, no process spawned, no port bound.
//! `spawn_hub()` gives each test its own hub (zero-to-production's `spawn_app`).

#![allow(clippy::unwrap_used)]

mod auth;
mod readiness;
mod resources;
mod safety_read;
mod sealed;
mod slow_readers;
mod stream_reads;
mod trust;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

pub(crate) struct TestHub {
    router: axum::Router,
    pub hub: fhir_hub::Hub,
    _dir: tempfile::TempDir,
}

pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

pub(crate) async fn spawn_hub() -> TestHub {
    spawn_hub_with(|_| {}).await
}

pub(crate) async fn spawn_hub_with(adjust: impl FnOnce(&mut fhir_hub::config::Config)) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fhir_hub::config::Config::defaults().unwrap();
    config.server.data_dir = dir.path().to_owned();
    config.server.base_url = "https://hub.example.org/fhir".into();
    // a loopback endpoint for the rest-hook subscriptions these tests create (never called)
    config.delivery.allowed_networks = vec!["127.0.0.0/8".into()];
    adjust(&mut config);
    let hub = fhir_hub::Hub::connect(config).await.unwrap();
    TestHub {
        router: fhir_hub::api::router(hub.clone()),
        hub,
        _dir: dir,
    }
}

/// An active R4 websocket subscription `s1` on `Observation?code=1`, stored straight (no
/// API, no audit): for tests that read its log through the stream core.
pub(crate) async fn websocket_subscription(hub: &fhir_hub::Hub) -> fhir_hub::model::Subscription {
    let write = hub_store::SubscriptionWrite {
        status: "active".into(),
        criteria: "Observation?code=1".into(),
        channel_type: "websocket".into(),
        endpoint: String::new(),
        resource: r#"{"resourceType":"Subscription","status":"active","reason":"test","criteria":"Observation?code=1","channel":{"type":"websocket"}}"#.into(),
        secret: None,
        client_certificate: None,
        owner: None,
    };
    let row = hub
        .store
        .create_subscription("default", "s1", &write)
        .await
        .unwrap();
    hub.subscriptions.read(row).unwrap()
}

impl TestHub {
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header("content-type", "application/fhir+json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None, &[]).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Answer {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value, if_match: Option<&str>) -> Answer {
        match if_match {
            Some(v) => {
                self.call(Method::PUT, path, Some(body), &[("if-match", v)])
                    .await
            }
            None => self.call(Method::PUT, path, Some(body), &[]).await,
        }
    }

    pub(crate) async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None, &[]).await
    }
}
