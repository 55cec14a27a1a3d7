//! Every listener is bounded: an anonymous flood of three times the configured connection
//! limit on each listener (HTTP/1, HTTP/2 and websocket on the API port; gRPC), from two
//! addresses other than the test's own, while an authenticated `/health` and a live SSE
//! reader keep working. Past each flooding address's share the hub refuses at once (an
//! HTTP/1 client reads 503 with an OperationOutcome) and counts it; what it admitted it
//! closes when idle (or, for a websocket, unbound), so its open descriptors return to where
//! they were before the flood.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{Hub, HubEnv};
use crate::topics::{event, obs, topic};

mod flood;
use flood::Flood;

/// The hub's limits in these tests: every connection, and per peer address.
const TOTAL: usize = 24;
const PER_PEER: usize = 6;
/// The flood comes from these (loopback) addresses; the test's own calls from 127.0.0.1.
const FLOOD_FROM: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
/// Descriptors the hub may keep beyond its baseline after the flood (fewer than one
/// flooding address's share, so a share left open fails the test).
const SLACK: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http1,
    Http2,
    Websocket,
    Grpc,
}

#[tokio::test]
async fn an_http1_flood_is_refused_past_its_share_and_idled_out() {
    flood_test(Kind::Http1).await;
}

#[tokio::test]
async fn an_http2_flood_is_refused_past_its_share_and_idled_out() {
    flood_test(Kind::Http2).await;
}

#[tokio::test]
async fn a_websocket_flood_is_refused_past_its_share_and_unbound_sockets_closed() {
    flood_test(Kind::Websocket).await;
}

#[tokio::test]
async fn a_grpc_flood_is_refused_past_its_share_and_idled_out() {
    flood_test(Kind::Grpc).await;
}

/// Every accepted socket has Nagle's algorithm off (small frames of a stream go out at
/// once), the gRPC listener's too, and TCP keepalive on (a peer that vanished without a FIN
/// is found even on a quiet stream), read from the hub's own sockets.
#[tokio::test]
async fn accepted_sockets_have_nagle_off_and_keepalive_on_on_every_listener() {
    let Some(python) = crate::harness::require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let hub = Hub::start(HubEnv::default()).await;
    let script = format!("{}/python/socket_options.py", env!("CARGO_MANIFEST_DIR"));
    for (listener, url) in [("api", &hub.url), ("grpc", &hub.grpc_url)] {
        let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let me = s.local_addr().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        let options = loop {
            let out = std::process::Command::new(&python)
                .args([
                    &script,
                    &hub.child.id().to_string(),
                    &addr.port().to_string(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let found = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|v| v["peer"] == me.as_str());
            if let Some(v) = found {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "{listener}: the hub never accepted {me}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            options["nodelay"], true,
            "{listener}: the hub's socket for {me} has TCP_NODELAY off"
        );
        assert_eq!(
            options["keepalive"], true,
            "{listener}: the hub's socket for {me} has SO_KEEPALIVE off"
        );
    }
}

async fn flood_test(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::security::cli_key(
        dir.path(),
        "default",
        "hub/admin hub/publish hub/metrics system/*.cruds",
    );
    let hub = Hub::start_in(
        HubEnv::default()
            .var("HUB_AUTH__MODE", "required")
            .var("HUB_AUTH__RATE_LIMIT_PER_SEC", "0")
            .var("HUB_SERVER__MAX_CONNECTIONS", &TOTAL.to_string())
            .var(
                "HUB_SERVER__MAX_CONNECTIONS_PER_PEER",
                &PER_PEER.to_string(),
            )
            .var("HUB_SERVER__IDLE_TIMEOUT_SECS", "2")
            .var("HUB_SERVER__HEADER_READ_TIMEOUT_SECS", "2")
            .var("HUB_SERVER__UNBOUND_WEBSOCKET_SECS", "1"),
        dir,
    )
    .await;
    let api = Api {
        url: hub.url.clone(),
        key,
    };
    let (c, t) = api
        .call(Method::POST, "/fhir/SubscriptionTopic", Some(&topic()))
        .await;
    assert_eq!(c, 201, "{t}");
    let (c, s) = api
        .call(
            Method::POST,
            "/fhir/Subscription",
            Some(&crate::streams::sse_subscription()),
        )
        .await;
    assert_eq!(c, 201, "{s}");
    let mut sse = Sse::open(&api, s["id"].as_str().unwrap()).await;
    sse.until("handshake").await;
    // on the gRPC listener, a live Subscribe stream too (it is in flight, never idle)
    let python = match kind {
        Kind::Grpc => crate::harness::require_external("FHIR_HUB_PYTHON"),
        _ => None,
    };
    let grpc_reader = match &python {
        Some(python) => Some(grpc_reader(&api, &hub, python).await),
        None => None,
    };
    let grpc_next = |n: i64, when: &str| {
        if let Some(r) = &grpc_reader {
            let m = r.next(when);
            assert_eq!(m["event_number"], n, "gRPC Subscribe {when}: {m}");
        }
    };
    // one round of everything the test does later, so the store's pools are warm
    api.healthy("before the flood").await;
    api.publish("warm").await;
    sse.until("event-notification").await;
    grpc_next(1, "before the flood");
    let refused_before = api.refused(kind).await;
    let baseline = descriptors(&hub);

    let target: SocketAddr = match kind {
        Kind::Grpc => hub.grpc_url.trim_start_matches("http://").parse().unwrap(),
        _ => hub.url.trim_start_matches("http://").parse().unwrap(),
    };
    let flood = Flood::start(kind, target, 3 * TOTAL);
    flood.settled(Duration::from_secs(15)).await;

    // during the flood the hub answers an authenticated caller and streams to its reader
    api.healthy("during the flood").await;
    api.publish("during").await;
    sse.until("event-notification").await;
    grpc_next(2, "during the flood");
    let held = flood.most_held.load(Ordering::SeqCst);
    assert!(
        held <= FLOOD_FROM.len() * PER_PEER,
        "{kind:?}: the flood held {held} connections at once; each address may hold {PER_PEER}"
    );
    let refused = api.refused(kind).await - refused_before;
    let attempts = flood.refused.load(Ordering::SeqCst);
    assert!(
        refused >= (3 * TOTAL - FLOOD_FROM.len() * PER_PEER) as u64,
        "{kind:?}: fhir_hub_connections_refused_total went up by {refused} ({attempts} refusals seen)"
    );
    if matches!(kind, Kind::Http1 | Kind::Http2 | Kind::Websocket) {
        assert!(
            flood.told_503.load(Ordering::SeqCst) > 0,
            "{kind:?}: no refused client on the API port read the 503 OperationOutcome"
        );
    }

    // the flood stops sending but keeps its sockets: the hub closes what it admitted
    flood.stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = descriptors(&hub);
        if now <= baseline + SLACK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{kind:?}: the hub still holds {now} descriptors, {baseline} before the flood"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if kind == Kind::Websocket {
        let closes = flood.closes.lock().unwrap().clone();
        assert!(
            closes
                .iter()
                .any(|(code, why)| *code == 1008 && why.contains("no subscription bound")),
            "unbound websockets were closed with {closes:?}"
        );
    }
    // and the reader still reads
    api.publish("after").await;
    sse.until("event-notification").await;
    grpc_next(
        3,
        "after the flood (longer than the idle timeout after it opened)",
    );
    api.healthy("after the flood").await;
    flood.abort();
}

/// A gRPC `Subscribe` reader (grpcio) of a new gRPC subscription, from its first event.
async fn grpc_reader(api: &Api, hub: &Hub, python: &str) -> crate::harness::PyClient {
    let (c, s) = api
        .call(
            Method::POST,
            "/fhir/Subscription",
            Some(&crate::streams::hub_channel("grpc", "id-only")),
        )
        .await;
    assert_eq!(c, 201, "{s}");
    let target = hub.grpc_url.trim_start_matches("http://").to_owned();
    crate::harness::PyClient::start_with(
        python,
        "grpc_client.py",
        &[&target, "subscribe", s["id"].as_str().unwrap(), "1", "3"],
        &[("FHIR_HUB_TOKEN", &api.key)],
    )
}

/// The hub's open file descriptors.
fn descriptors(hub: &Hub) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", hub.child.id()))
        .unwrap()
        .count()
}

/// The test's own, authenticated calls (from 127.0.0.1, a fresh connection each).
struct Api {
    url: String,
    key: String,
}

impl Api {
    fn client(timeout: Option<Duration>) -> reqwest::Client {
        let b = reqwest::Client::builder().pool_max_idle_per_host(0);
        let b = match timeout {
            Some(t) => b.timeout(t),
            None => b,
        };
        b.build().unwrap()
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = Self::client(Some(Duration::from_secs(10)))
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} was not answered: {e}"));
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn healthy(&self, when: &str) {
        let (c, b) = self.call(Method::GET, "/health", None).await;
        assert_eq!(c, 200, "/health {when}: {b}");
    }

    async fn publish(&self, id: &str) {
        let o = obs(id, "final", "Patient/p1");
        let (c, b) = self
            .call(Method::POST, "/events", Some(&event("create", &o, None)))
            .await;
        assert_eq!(c, 202, "{b}");
    }

    /// `fhir_hub_connections_refused_total` of the flooded listener, all reasons.
    async fn refused(&self, kind: Kind) -> u64 {
        let listener = if kind == Kind::Grpc { "grpc" } else { "api" };
        let res = Self::client(Some(Duration::from_secs(10)))
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        let text = res.text().await.unwrap();
        let prefix = format!("fhir_hub_connections_refused_total{{listener=\"{listener}\"");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// A live SSE reader.
struct Sse {
    res: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(api: &Api, id: &str) -> Sse {
        let res = Api::client(None)
            .get(format!("{}/fhir/Subscription/{id}/$stream", api.url))
            .bearer_auth(&api.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        Sse {
            res,
            buf: String::new(),
        }
    }

    /// Read until the next event named `name`.
    async fn until(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(at) = self
                .buf
                .lines()
                .position(|l| l.strip_prefix("event:").map(str::trim) == Some(name))
            {
                self.buf = self.buf.lines().skip(at + 1).collect::<Vec<_>>().join("\n");
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.res.chunk())
                .await
                .unwrap_or_else(|_| panic!("the SSE reader got no {name} event"))
                .unwrap()
                .unwrap_or_else(|| panic!("the SSE stream ended before a {name} event"));
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
