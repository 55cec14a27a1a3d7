//! A tiny real HTTP endpoint on port 0 that records each rest-hook it receives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
struct Shared {
    tx: mpsc::UnboundedSender<Received>,
    status: Arc<AtomicU16>,
    hang: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds each request is held before it is answered (a slow receiver).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    heartbeats: Arc<std::sync::atomic::AtomicUsize>,
    control: Arc<std::sync::Mutex<Vec<Bytes>>>,
    peers: Arc<std::sync::Mutex<std::collections::HashSet<std::net::SocketAddr>>>,
}

pub(crate) struct TestReceiver {
    pub url: String,
    rx: mpsc::UnboundedReceiver<Received>,
    status: Arc<AtomicU16>,
    hang: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds each request is held before it is answered (a slow receiver).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    heartbeats: Arc<std::sync::atomic::AtomicUsize>,
    control: Arc<std::sync::Mutex<Vec<Bytes>>>,
    peers: Arc<std::sync::Mutex<std::collections::HashSet<std::net::SocketAddr>>>,
}

async fn record(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    s.peers.lock().unwrap().insert(peer);
    if s.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if status.is_success() {
        if id.starts_with("handshake-") {
            s.handshakes.fetch_add(1, Ordering::SeqCst);
            s.control.lock().unwrap().push(body);
        } else if id.starts_with("heartbeat-") {
            s.heartbeats.fetch_add(1, Ordering::SeqCst);
            s.control.lock().unwrap().push(body);
        } else {
            let _ = s.tx.send(Received {
                method,
                path: uri.path().to_owned(),
                headers,
                body,
            });
        }
    }
    status
}

impl TestReceiver {
    pub(crate) async fn start() -> TestReceiver {
        Self::start_at("127.0.0.1:0").await
    }

    /// A receiver on `addr` (an `ip:port`; port 0 picks one).
    pub(crate) async fn start_at(addr: &str) -> TestReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(200));
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let heartbeats = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let control = Arc::new(std::sync::Mutex::new(Vec::new()));
        let peers = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let app = Router::new().fallback(record).with_state(Shared {
            tx,
            status: Arc::clone(&status),
            hang: Arc::clone(&hang),
            delay_ms: Arc::clone(&delay_ms),
            handshakes: Arc::clone(&handshakes),
            heartbeats: Arc::clone(&heartbeats),
            control: Arc::clone(&control),
            peers: Arc::clone(&peers),
        });
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
        });
        TestReceiver {
            url: format!("http://{addr}/hook"),
            rx,
            status,
            hang,
            delay_ms,
            handshakes,
            heartbeats,
            control,
            peers,
        }
    }

    /// How many distinct connections (client address and port) requests came on.
    pub(crate) fn connections(&self) -> usize {
        self.peers.lock().unwrap().len()
    }

    /// Bodies of the accepted handshakes and heartbeats, in arrival order.
    pub(crate) fn control_bodies(&self) -> Vec<Bytes> {
        self.control.lock().unwrap().clone()
    }

    /// Hold each request for `d` before answering it (a slow receiver).
    pub(crate) fn delay(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Never answer (the connection stays open).
    pub(crate) fn hang(&self) {
        self.hang.store(true, Ordering::SeqCst);
    }

    /// Accepted handshakes so far (they are not returned by `next`).
    pub(crate) fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Accepted heartbeats so far (not returned by `next`).
    pub(crate) fn heartbeats(&self) -> usize {
        self.heartbeats.load(Ordering::SeqCst)
    }

    /// Answer every request with `status` (non-2xx requests are not recorded).
    pub(crate) fn respond_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub(crate) async fn next(&mut self, within: Duration) -> Received {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .expect("no rest-hook arrived in time")
            .expect("receiver closed")
    }

    /// Nothing arrives within `d`.
    pub(crate) async fn assert_quiet(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected rest-hook: {} {}", r.method, r.path);
        }
    }
}

/// A receiver on 127.0.0.2 that a subscription reaches by a test host name of its own (a line
/// of `/etc/hosts`, removed when `hosts` is dropped), for tests of names that move.
pub(crate) struct NamedReceiver {
    pub hosts: crate::harness::HostsEntry,
    pub rx: TestReceiver,
    /// The receiver's port: a receiver at the name's next address listens on it too.
    pub port: String,
    /// `http://<name>:<port>/hook`.
    pub endpoint: String,
}

impl NamedReceiver {
    /// `None` where `/etc/hosts` cannot be written (not root): the caller skips, unless
    /// `FHIR_HUB_REQUIRE_EXTERNAL=1` makes that a failure.
    pub(crate) async fn start(prefix: &str) -> Option<NamedReceiver> {
        let name = format!("{prefix}-{}.fhir-hub.test", uuid::Uuid::new_v4().simple());
        let Some(hosts) = crate::harness::HostsEntry::add(&name, "127.0.0.2") else {
            assert!(
                std::env::var("FHIR_HUB_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
                "/etc/hosts is not writable but FHIR_HUB_REQUIRE_EXTERNAL=1"
            );
            eprintln!("skipping: /etc/hosts is not writable");
            return None;
        };
        let rx = TestReceiver::start_at("127.0.0.2:0").await;
        let port = rx
            .url
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .trim_end_matches("/hook")
            .to_owned();
        let endpoint = format!("http://{name}:{port}/hook");
        Some(NamedReceiver {
            hosts,
            rx,
            port,
            endpoint,
        })
    }
}
