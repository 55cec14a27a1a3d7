//! Every listener is bounded: an anonymous flood of three times the configured connection
//! limit on each listener (HTTP/1, HTTP/2 and websocket on the API port; gRPC), from two
//! addresses other than the test's own, while an authenticated `/health` and a live SSE
//! reader keep working. Past each flooding address's share the hub refuses at once (an
//! HTTP/1 client reads 503 with an OperationOutcome) and counts it; what it admitted it
//! closes when idle (or, for a websocket, unbound), so its open descriptors return to where
//! they were before the flood.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{Hub, HubEnv};
use crate::topics::{event, obs, topic};

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

/// Anonymous clients holding connections: each reconnects when the hub closes or refuses
/// it until `stop`; after `stop` each keeps what it holds until the hub closes it.
struct Flood {
    stop: Arc<AtomicBool>,
    /// Connections that had a first answer (admitted or refused).
    settled: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    /// Refused clients that read the hub's 503 OperationOutcome.
    told_503: Arc<AtomicUsize>,
    most_held: Arc<AtomicUsize>,
    /// Close frames websockets received.
    closes: Arc<Mutex<Vec<(u16, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

enum Outcome {
    Refused,
    /// Admitted, then closed by the hub.
    Closed,
}

#[derive(Clone)]
struct Counters {
    stop: Arc<AtomicBool>,
    told_503: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    most_held: Arc<AtomicUsize>,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
}

impl Counters {
    fn admitted(&self) {
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_held.fetch_max(now, Ordering::SeqCst);
    }

    fn released(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Flood {
    fn start(kind: Kind, target: SocketAddr, n: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let settled = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let c = Counters {
            stop: Arc::clone(&stop),
            told_503: Arc::default(),
            held: Arc::default(),
            most_held: Arc::default(),
            closes: Arc::default(),
        };
        let tasks = (0..n)
            .map(|i| {
                let (c, settled, refused) = (c.clone(), settled.clone(), refused.clone());
                let source = FLOOD_FROM[i % FLOOD_FROM.len()];
                tokio::spawn(async move {
                    let mut first = true;
                    loop {
                        let Ok(stream) = connect_from(source, target).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let outcome = session(kind, stream, target, &c, &mut first, &settled).await;
                        if matches!(outcome, Outcome::Refused) {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        if c.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .collect();
        Flood {
            stop,
            settled,
            refused,
            told_503: c.told_503,
            most_held: c.most_held,
            closes: c.closes,
            tasks,
        }
    }

    /// Wait until every client had a first answer (or `limit` passed: a hub that queues
    /// connections answers some never).
    async fn settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.settled.load(Ordering::SeqCst) < self.tasks.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn abort(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn connect_from(source: &str, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
    socket.connect(target).await
}

/// One connection's life; `first` marks the client's first answer for `settled`.
async fn session(
    kind: Kind,
    stream: TcpStream,
    target: SocketAddr,
    c: &Counters,
    first: &mut bool,
    settled: &AtomicUsize,
) -> Outcome {
    let settle = |first: &mut bool| {
        if std::mem::take(first) {
            settled.fetch_add(1, Ordering::SeqCst);
        }
    };
    match kind {
        Kind::Http1 => http1(stream, c, || settle(first)).await,
        Kind::Http2 | Kind::Grpc => http2(stream, c, || settle(first)).await,
        Kind::Websocket => websocket(stream, target, c, || settle(first)).await,
    }
}

/// Keep-alive requests for a page that does not exist, until `stop`; then silence.
async fn http1(mut s: TcpStream, c: &Counters, mut settle: impl FnMut()) -> Outcome {
    // a refusal comes at once, before the client says anything
    let mut buf = Vec::new();
    if let Ok(got) =
        tokio::time::timeout(Duration::from_millis(200), read_response(&mut s, &mut buf)).await
    {
        settle();
        if got.is_some_and(|(status, body)| status == 503 && body.contains("OperationOutcome")) {
            c.told_503.fetch_add(1, Ordering::SeqCst);
        }
        return Outcome::Refused;
    }
    let mut admitted = false;
    loop {
        let sent = s
            .write_all(b"GET /flood HTTP/1.1\r\nHost: hub\r\n\r\n")
            .await
            .is_ok();
        let answer = if sent {
            read_response(&mut s, &mut buf).await
        } else {
            None
        };
        match answer {
            Some((status, body)) if !admitted => {
                settle();
                if status == 503 {
                    if body.contains("OperationOutcome") {
                        c.told_503.fetch_add(1, Ordering::SeqCst);
                    }
                    return Outcome::Refused;
                }
                admitted = true;
                c.admitted();
            }
            Some(_) => {}
            None if admitted => {
                c.released();
                return Outcome::Closed;
            }
            None => {
                settle();
                return Outcome::Refused;
            }
        }
        if c.stop.load(Ordering::SeqCst) {
            // hold the connection, silent, until the hub closes it
            let mut b = [0u8; 512];
            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
            c.released();
            return Outcome::Closed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1 response (status and body), or `None` when the connection closed first.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, String)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            buf.drain(..end + 4 + len);
            return Some((status, body));
        }
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// An HTTP/2 connection (prior knowledge) that opens no stream but answers every PING and
/// SETTINGS, as a client holding connections would; held until the hub closes it.
async fn http2(mut s: TcpStream, c: &Counters, mut settle: impl FnMut()) -> Outcome {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&frame(4, 0, &[]));
    if s.write_all(&hello).await.is_err() {
        settle();
        return Outcome::Refused;
    }
    let mut admitted = false;
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            if admitted {
                c.released();
                return Outcome::Closed;
            }
            settle();
            return Outcome::Refused;
        }
        if !admitted && head.starts_with(b"HTTP/1.1 ") {
            // the API port's refusal, in HTTP/1
            settle();
            let mut text = head.to_vec();
            let _ = s.read_to_end(&mut text).await;
            let text = String::from_utf8_lossy(&text);
            if text.starts_with("HTTP/1.1 503") && text.contains("OperationOutcome") {
                c.told_503.fetch_add(1, Ordering::SeqCst);
            }
            return Outcome::Refused;
        }
        if !admitted {
            settle();
            admitted = true;
            c.admitted();
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (ty, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            c.released();
            return Outcome::Closed;
        }
        let reply = match (ty, flags & 1) {
            (4, 0) => Some(frame(4, 1, &[])),
            (6, 0) => Some(frame(6, 1, &payload)),
            _ => None,
        };
        if let Some(r) = reply
            && s.write_all(&r).await.is_err()
        {
            c.released();
            return Outcome::Closed;
        }
    }
}

fn frame(ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        ty,
        flags,
        0,
        0,
        0,
        0,
    ];
    f.extend_from_slice(payload);
    f
}

/// A websocket that binds nothing, held until the hub closes it.
async fn websocket(
    s: TcpStream,
    target: SocketAddr,
    c: &Counters,
    mut settle: impl FnMut(),
) -> Outcome {
    use tokio_tungstenite::tungstenite::{Error, Message};
    let url = format!("ws://{target}/fhir/$subscription-ws");
    let mut ws = match tokio_tungstenite::client_async(url, s).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            settle();
            if let Error::Http(res) = &e
                && res.status().as_u16() == 503
                && res
                    .body()
                    .as_ref()
                    .is_some_and(|b| String::from_utf8_lossy(b).contains("OperationOutcome"))
            {
                c.told_503.fetch_add(1, Ordering::SeqCst);
            }
            return Outcome::Refused;
        }
    };
    settle();
    c.admitted();
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Close(frame)) => {
                let (code, why) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                c.closes.lock().unwrap().push((code, why));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    c.released();
    Outcome::Closed
}
