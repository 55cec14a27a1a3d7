//! A delivery process whose `LISTEN` connection goes silent — a NAT or a load balancer drops
//! it on the way without a reset, so neither end hears of it — still delivers what another
//! process logs: the listener's own pings stop coming back, it is replaced, and every reader
//! looks again.
//!
//! A TCP proxy written here stands between the delivery process and PostgreSQL; on command it
//! stops forwarding the connections that sent `LISTEN` (both ways, keeping them open), the
//! way such a middlebox does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Headless, Hub, HubEnv, glucose, require_external};
use crate::receiver::TestReceiver;

/// A forwarding proxy that can silence the `LISTEN` connections open so far.
struct SilencingProxy {
    port: u16,
    /// Connections numbered below this that sent `LISTEN` forward nothing more.
    silenced_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl SilencingProxy {
    async fn start(upstream: String) -> SilencingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silenced_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (below, counter) = (silenced_below.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let listens = Arc::new(AtomicBool::new(false));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let silent = {
                    let (below, listens) = (below.clone(), listens.clone());
                    move || listens.load(Ordering::SeqCst) && id < below.load(Ordering::SeqCst)
                };
                tokio::spawn(pump(cr, sw, Some(listens), silent.clone()));
                tokio::spawn(pump(sr, cw, None, silent));
            }
        });
        SilencingProxy {
            port,
            silenced_below,
            next,
        }
    }

    /// From now on the `LISTEN` connections open so far forward nothing, and stay open.
    fn silence_listeners(&self) {
        self.silenced_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Copy `from` to `to`; marks the connection as a listener when it carries `LISTEN`. Once
/// `silent()`, whatever arrives is swallowed and both ends are held open.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    listens: Option<Arc<AtomicBool>>,
    silent: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(l) = &listens
            && buf[..n].windows(6).any(|w| w == b"LISTEN")
        {
            l.store(true, Ordering::SeqCst);
        }
        if silent() {
            // a black hole: no reset, no close, nothing forwarded ever again
            let _hold = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `url` with its host and port replaced by `127.0.0.1:port`.
fn through(url: &str, port: u16) -> String {
    let start = url.find('@').map(|i| i + 1).unwrap_or("postgres://".len());
    let end = start + url[start..].find('/').unwrap();
    format!("{}127.0.0.1:{port}{}", &url[..start], &url[end..])
}

fn host_port(url: &str) -> String {
    let start = url.find('@').map(|i| i + 1).unwrap_or("postgres://".len());
    let end = start + url[start..].find('/').unwrap();
    url[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listen_connection_does_not_stall_delivery() {
    let Some(pg) = require_external("FHIR_HUB_TEST_DATABASE_URL") else {
        return;
    };
    let db = hub_store::fresh_postgres_schema(&pg, "silent")
        .await
        .unwrap();
    let proxy = SilencingProxy::start(host_port(&db)).await;
    let api = Hub::start(
        HubEnv::default()
            .arg("--database-url")
            .arg(&db)
            .arg("--roles")
            .arg("api,matcher"),
    )
    .await;
    let delivery = Headless::start(
        &HubEnv::default()
            .arg("--database-url")
            .arg(&through(&db, proxy.port))
            .arg("--roles")
            .arg("delivery"),
    );
    let mut rx = TestReceiver::start().await;
    let id = api
        .subscribe("Observation?code=2345-7", &rx.url, true)
        .await;
    api.wait_status(&id, "active").await;
    api.post_json("/events", &glucose("silent-1")).await;
    let r = rx.next(Duration::from_secs(20)).await;
    assert!(String::from_utf8_lossy(&r.body).contains("silent-1"));

    proxy.silence_listeners();
    // the worker parks idle; what the matcher process logs now wakes it only through a
    // NOTIFY, which the silent connection never brings
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 2..=3 {
        api.post_json("/events", &glucose(&format!("silent-{i}")))
            .await;
    }
    // found within two pings (database.listen_ping_ms, 5 s) or a safety read (10 s)
    for i in 2..=3 {
        let r = rx.next(Duration::from_secs(40)).await;
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains(&format!("silent-{i}")), "{body}");
    }
    // and the silent connection itself is found and replaced, with a WARN line that says so
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let log = delivery.data_dir.path().join("hub.log");
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("went silent")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no WARN line said the LISTEN connection went silent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
