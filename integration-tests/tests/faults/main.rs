//! The fault suite: real processes, real faults, and a checker that proves nothing is lost.
//!
//! One run starts a PostgreSQL of its own (initdb in a temp dir on a free port, so it can be
//! killed without touching the machine's), a tansu broker of its own, and the hub split by
//! role in Kafka mode: two api processes, a matcher and two delivery processes. A publisher
//! sends change events at a steady rate through the first api (retrying a refused batch
//! with the same event ids, as a producer should), with poison records written straight to
//! the broker between them. Subscribers: rest-hook receivers that answer well, fail 30% of
//! requests, are down for a while, or hang; and, on the second api process, a Server-Sent
//! Events reader that reads slowly and resumes with `Last-Event-ID`, a websocket client that
//! binds again with the last number it saw, and a named gRPC consumer that commits and
//! resumes from its committed offset. While events flow the suite kills (-9) every hub
//! process, the broker and PostgreSQL, and restarts them; deletes a subscription and
//! re-creates it with the same id; silences every PostgreSQL connection of the second
//! delivery process (a TCP proxy here stops forwarding without closing); holds `FOR UPDATE`
//! locks on rows the hub writes longer than its lock timeout; and writes a flood of records
//! with NUL and invalid UTF-8 in every envelope field, the key and the headers.
//!
//! A second test, `a_large_fan_out_batch_is_logged_gap_free`, logs one batch that matches
//! every one of many subscriptions and prints the matcher's peak memory.
//!
//! The checker, per subscription: every event number from 1 to the number of good events
//! published arrived at least once, the first arrivals in event-number order (no gap, no
//! reordering); duplicates are counted and carry the notification id of the first copy.
//!
//! Short run (the CI run): `cargo test -p integration-tests --test faults` (10,000 events;
//! a 1,000-subscription × 100-event fan-out batch).
//! Long run: `FAULTS_EVENTS=200000 FAULTS_RATE=300 FAULTS_OUTAGE_SECS=180 cargo test
//! --release -p integration-tests --test faults -- --nocapture` (docs/reliability.md).
//! Needs `FHIR_HUB_TEST_KAFKA`-style prerequisites: the tansu binary (`FHIR_HUB_TANSU` or
//! the cache path `scripts/test.sh` installs it in) and PostgreSQL's `initdb`/`postgres`.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../it/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../it/hostile_records.rs"]
mod hostile_records;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use harness::{Headless, Hub, HubEnv, free_port};

const IG: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const TOPIC: &str = "http://example.org/topics/admission";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A log file in `dir` that every restart of a process appends to.
fn append_log(dir: &tempfile::TempDir, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join(name))
        .unwrap()
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------
// PostgreSQL of the suite's own.

struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

fn pg_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FHIR_HUB_PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
fn as_db_user(bin: PathBuf) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    fn start() -> Postgres {
        let bin = pg_bin().expect("PostgreSQL's initdb (set FHIR_HUB_PG_BIN to its bin dir)");
        let dir = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let out = as_db_user(bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "root", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            bin,
            dir,
            port: free_port(),
            child: None,
        };
        pg.spawn();
        pg
    }

    fn spawn(&mut self) {
        let log = append_log(&self.dir, "pg.log");
        let child = as_db_user(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=300",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port, "postgres");
    }

    fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.port)
    }

    /// A crash: SIGQUIT is PostgreSQL's immediate shutdown (no checkpoint, crash recovery
    /// at the next start), which also ends every backend at once.
    fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.crash();
    }
}

// ---------------------------------------------------------------------------------------
// A tansu broker of the suite's own.

struct Broker {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FHIR_HUB_TANSU") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("FHIR_HUB_CACHE").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/fhir-hub"),
        PathBuf::from,
    );
    let p = cache.join("tansu/bin/tansu");
    assert!(
        p.exists(),
        "tansu is missing: scripts/test.sh installs it, or set FHIR_HUB_TANSU"
    );
    p
}

impl Broker {
    fn start() -> Broker {
        let mut b = Broker {
            bin: tansu_bin(),
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = append_log(&self.dir, "tansu.log");
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port, "tansu");
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Receivers with faults, all recording into the checker.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Good,
    /// 500 for about 30% of requests.
    Flaky,
    /// 503 to everything while the outage lasts.
    Outage,
    /// Holds every request without answering while the hang lasts.
    Hang,
    /// Answers well, for a subscription deleted and re-created with the same id: arrivals
    /// are recorded per incarnation (`<id>@<epoch>`), each under its focus, so a number that
    /// came with two different events (one incarnation's notification numbered as the
    /// other's) is a violation.
    Recreated,
}

/// One arrival: (subscription, event number, notification id).
#[derive(Default)]
struct Checker {
    arrivals: Mutex<Vec<(String, i64, String, Instant)>>,
}

impl Checker {
    fn record(&self, sub: &str, number: i64, id: &str) {
        self.arrivals
            .lock()
            .unwrap()
            .push((sub.to_owned(), number, id.to_owned(), Instant::now()));
    }

    /// The highest event number that arrived for `sub` (0: none).
    fn max(&self, sub: &str) -> i64 {
        let a = self.arrivals.lock().unwrap();
        a.iter()
            .filter(|x| x.0 == sub)
            .map(|x| x.1)
            .max()
            .unwrap_or(0)
    }

    fn last_arrival(&self) -> Option<Instant> {
        self.arrivals.lock().unwrap().last().map(|a| a.3)
    }

    fn distinct(&self, sub: &str) -> usize {
        let a = self.arrivals.lock().unwrap();
        let mut n: Vec<i64> = a.iter().filter(|x| x.0 == sub).map(|x| x.1).collect();
        n.sort_unstable();
        n.dedup();
        n.len()
    }

    /// Every number 1..=expected, first arrivals in order, duplicates with the first copy's
    /// id. Returns (delivered distinct, duplicates) or the violations.
    fn verify(&self, sub: &str, expected: i64) -> Result<(usize, usize), String> {
        let a = self.arrivals.lock().unwrap();
        let mut first: BTreeMap<i64, &str> = BTreeMap::new();
        let mut order = Vec::new();
        let mut duplicates = 0;
        let mut problems = Vec::new();
        for (s, n, id, _) in a.iter().filter(|x| x.0 == sub) {
            match first.get(n) {
                None => {
                    first.insert(*n, id);
                    order.push(*n);
                }
                Some(prev) => {
                    duplicates += 1;
                    // a grouped message's id names its first notification and last event
                    // number: the same event re-sent in a group cut differently comes under
                    // another id, and the event number inside identifies it
                    let grouped = prev.contains("..") || id.contains("..");
                    if *prev != id.as_str() && !grouped {
                        problems.push(format!(
                            "{s}: event {n} came twice with different ids ({prev}, {id})"
                        ));
                    }
                }
            }
        }
        let missing: Vec<i64> = (1..=expected).filter(|n| !first.contains_key(n)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{sub}: {} of {expected} events never arrived (first: {:?})",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        if let Some(w) = order.windows(2).find(|w| w[1] < w[0]) {
            problems.push(format!(
                "{sub}: event {} first arrived after {}",
                w[1], w[0]
            ));
        }
        if let Some(extra) = first.keys().find(|n| **n > expected || **n < 1) {
            problems.push(format!("{sub}: an event number out of range: {extra}"));
        }
        if problems.is_empty() {
            Ok((first.len(), duplicates))
        } else {
            Err(problems.join("\n"))
        }
    }
}

#[derive(Clone)]
struct ReceiverState {
    mode: Mode,
    /// While true, an Outage or Hang receiver misbehaves.
    faulty: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
    checker: Arc<Checker>,
    /// The incarnation a `Recreated` receiver records arrivals under.
    epoch: Arc<AtomicU64>,
}

fn status_param<'a>(bundle: &'a Value, name: &str) -> Vec<&'a Value> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .collect()
}

/// The subscription id and event numbers of an event-notification bundle.
fn numbers_of(bundle: &Value) -> Option<(String, Vec<i64>)> {
    let (sub, events) = events_of(bundle)?;
    Some((sub, events.into_iter().map(|(n, _)| n).collect()))
}

/// The subscription id and (event number, focus reference) of an event-notification bundle.
fn events_of(bundle: &Value) -> Option<(String, Vec<(i64, String)>)> {
    if status_param(bundle, "type").first()?["valueCode"] != "event-notification" {
        return None;
    }
    let sub = status_param(bundle, "subscription").first()?["valueReference"]["reference"]
        .as_str()?
        .rsplit('/')
        .next()?
        .to_owned();
    let events = status_param(bundle, "notification-event")
        .iter()
        .filter_map(|e| {
            let n = e["part"][0]["valueString"].as_str()?.parse().ok()?;
            let focus = e["part"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "focus")
                .and_then(|p| p["valueReference"]["reference"].as_str())
                .unwrap_or("")
                .to_owned();
            Some((n, focus))
        })
        .collect();
    Some((sub, events))
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = s.counter.fetch_add(1, Ordering::SeqCst);
    let faulty = s.faulty.load(Ordering::SeqCst);
    match s.mode {
        Mode::Outage if faulty => return StatusCode::SERVICE_UNAVAILABLE,
        Mode::Hang if faulty => {
            while s.faulty.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // the hub gave up on this request long ago: it was not delivered
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        // a fixed pseudo-random 30%: 3 of every 10 requests, spread out
        Mode::Flaky if (n * 7) % 10 < 3 => return StatusCode::INTERNAL_SERVER_ERROR,
        _ => {}
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if let Some((sub, events)) = serde_json::from_slice::<Value>(&body)
        .ok()
        .as_ref()
        .and_then(events_of)
    {
        for (n, focus) in events {
            if s.mode == Mode::Recreated {
                let epoch = s.epoch.load(Ordering::SeqCst);
                s.checker.record(&format!("{sub}@{epoch}"), n, &focus);
            } else {
                s.checker.record(&sub, n, &id);
            }
        }
    }
    StatusCode::OK
}

struct Receiver {
    url: String,
    faulty: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
}

async fn receiver(mode: Mode, checker: &Arc<Checker>) -> Receiver {
    receiver_at(mode, checker, "127.0.0.1:0").await
}

async fn receiver_at(mode: Mode, checker: &Arc<Checker>, addr: &str) -> Receiver {
    let faulty = Arc::new(AtomicBool::new(false));
    let epoch = Arc::new(AtomicU64::new(0));
    let state = ReceiverState {
        mode,
        faulty: Arc::clone(&faulty),
        counter: Arc::default(),
        checker: Arc::clone(checker),
        epoch: Arc::clone(&epoch),
    };
    let app = Router::new().fallback(receive).with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url: format!("http://{addr}/{mode:?}"),
        faulty,
        epoch,
    }
}

// ---------------------------------------------------------------------------------------
// Stream clients: each reads one subscription from `base` until it has `expected` events,
// recording every arrival in the checker, and disconnects after `resume_every` messages to
// resume; each returns how many times it connected.

struct Reader {
    base: String,
    id: String,
    checker: Arc<Checker>,
    expected: Arc<AtomicU64>,
    resume_every: usize,
}

// ---------------------------------------------------------------------------------------
// An SSE reader that reads slowly and disconnects and resumes with Last-Event-ID.

async fn sse_reader(r: Reader) -> usize {
    let Reader {
        base,
        id,
        checker,
        expected,
        resume_every,
    } = r;
    let http = reqwest::Client::new();
    let mut last: i64 = 0;
    let mut reconnects = 0;
    loop {
        let want = expected.load(Ordering::SeqCst);
        if want > 0 && last >= i64::try_from(want).unwrap_or(i64::MAX) {
            return reconnects;
        }
        let mut req = http.get(format!("{base}/fhir/Subscription/{id}/$stream"));
        req = if last == 0 {
            req.query(&[("from", "1")])
        } else {
            req.header("last-event-id", last.to_string())
        };
        let Ok(mut res) = req.send().await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        reconnects += 1;
        let mut buf = String::new();
        let mut this_connection = 0;
        'read: loop {
            let want = expected.load(Ordering::SeqCst);
            if want > 0 && last >= i64::try_from(want).unwrap_or(i64::MAX) {
                return reconnects;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(2), res.chunk()).await;
            let chunk = match chunk {
                Err(_) => continue 'read, // quiet: look at `expected` again
                Ok(Ok(Some(chunk))) => chunk,
                Ok(_) => break 'read,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let mut event = "";
                let mut data = String::new();
                let mut fid = None;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = if v == "event-notification" { "n" } else { "" };
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        fid = v.parse::<i64>().ok();
                    }
                }
                if event == "n"
                    && let Ok(bundle) = serde_json::from_str::<Value>(&data)
                    && let Some((sub, numbers)) = numbers_of(&bundle)
                {
                    for n in numbers {
                        // a stream's copies are keyed by number (the SSE id)
                        checker.record(&sub, n, &format!("sse-{n}"));
                    }
                    if let Some(f) = fid {
                        last = last.max(f);
                    }
                    let want = expected.load(Ordering::SeqCst);
                    if want > 0 && last >= i64::try_from(want).unwrap_or(i64::MAX) {
                        return reconnects;
                    }
                    this_connection += 1;
                    // a slow reader
                    if this_connection % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if this_connection >= resume_every {
                        break 'read;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A gRPC analytics consumer: a named consumer that commits every 100 notifications, drops
// its stream now and then, and resumes from its committed offset (re-reading what it had
// not committed: duplicates with the same notification id).

fn reached(last: i64, expected: &AtomicU64) -> bool {
    let want = expected.load(Ordering::SeqCst);
    want > 0 && last >= i64::try_from(want).unwrap_or(i64::MAX)
}

async fn grpc_consumer(r: Reader) -> usize {
    let Reader {
        base: grpc,
        id,
        checker,
        expected,
        resume_every,
    } = r;
    use fhir_hub::channels::grpc::pb;
    use pb::notification_stream_client::NotificationStreamClient;
    let consumer = "fault-suite-analytics".to_owned();
    let mut last = 0i64;
    let mut reconnects = 0;
    loop {
        if reached(last, &expected) {
            return reconnects;
        }
        let Ok(mut client) = NotificationStreamClient::connect(grpc.clone()).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let request = pb::ConsumeRequest {
            consumer: consumer.clone(),
            subscription_ids: vec![id.clone()],
            ..Default::default()
        };
        // refused while the previous connection's claim lives (ABORTED), or the api is down
        let Ok(res) = client.consume(request).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        reconnects += 1;
        // commits carry the generation this Consume started
        let generation = res
            .metadata()
            .get("x-consumer-generation")
            .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        let mut stream = res.into_inner();
        let mut this_connection = 0;
        loop {
            if reached(last, &expected) {
                let _ = client
                    .commit(pb::CommitRequest {
                        consumer: consumer.clone(),
                        subscription_id: id.clone(),
                        event_number: last,
                        generation,
                    })
                    .await;
                return reconnects;
            }
            let n = match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(n))) if n.heartbeat => continue,
                Ok(Ok(Some(n))) => n,
                Ok(_) => break,
            };
            checker.record(&n.subscription_id, n.event_number, &n.notification_id);
            last = last.max(n.event_number);
            this_connection += 1;
            if this_connection % 100 == 0 {
                let _ = client
                    .commit(pb::CommitRequest {
                        consumer: consumer.clone(),
                        subscription_id: id.clone(),
                        event_number: last,
                        generation,
                    })
                    .await;
            }
            if this_connection >= resume_every {
                break;
            }
        }
        drop(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A websocket client that binds with the last event number it saw, disconnects now and
// then and binds again (a fresh single-use token each time).

async fn ws_reader(r: Reader) -> usize {
    let Reader {
        base,
        id,
        checker,
        expected,
        resume_every,
    } = r;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let http = reqwest::Client::new();
    let mut last = 0i64;
    let mut reconnects = 0;
    loop {
        if reached(last, &expected) {
            return reconnects;
        }
        let token: Option<Value> = match http
            .post(format!(
                "{base}/fhir/Subscription/{id}/$get-ws-binding-token"
            ))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        let param = |v: &Value, name: &str, key: &str| {
            v["parameter"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .and_then(|p| p[key].as_str())
                .map(str::to_owned)
        };
        let Some((token, url)) = token.and_then(|v| {
            Some((
                param(&v, "token", "valueString")?,
                param(&v, "websocket-url", "valueUrl")?,
            ))
        }) else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        if ws
            .send(Message::text(format!("bind-with-token: {token} {last}")))
            .await
            .is_err()
        {
            continue;
        }
        reconnects += 1;
        let mut this_connection = 0;
        loop {
            if reached(last, &expected) {
                let _ = ws.close(None).await;
                return reconnects;
            }
            let text = match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break,
            };
            let Ok(bundle) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some((sub, numbers)) = numbers_of(&bundle) {
                for n in numbers {
                    checker.record(&sub, n, &format!("ws-{n}"));
                    last = last.max(n);
                }
                this_connection += 1;
                if this_connection >= resume_every {
                    let _ = ws.close(None).await;
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The hub, split by role.

struct Roles {
    env: HubEnv,
    /// The store every process uses, but the second delivery process, which reaches
    /// PostgreSQL through `db_delivery2` (the test's proxy, which can go silent).
    db: String,
    db_delivery2: String,
    api_port: u16,
    api: Option<Hub>,
    /// A second api process (streams read from it: what the matcher logged reaches it
    /// through the store's wake-ups), with a fixed gRPC port so a restart keeps it.
    api2_port: u16,
    grpc2_port: u16,
    api2: Option<Hub>,
    matcher: Option<Headless>,
    /// Two delivery processes: subscriptions are shared out by leases; a killed one's
    /// subscriptions move to the other.
    delivery: Option<Headless>,
    delivery2: Option<Headless>,
}

impl Roles {
    async fn start(env: HubEnv, db: String, db_delivery2: String) -> Roles {
        let api_port = free_port();
        let mut r = Roles {
            env,
            db,
            db_delivery2,
            api_port,
            api: None,
            api2_port: free_port(),
            grpc2_port: free_port(),
            api2: None,
            matcher: None,
            delivery: None,
            delivery2: None,
        };
        r.start_api().await;
        r.start_api2().await;
        r.matcher = Some(Headless::start(&r.role("matcher")));
        r.delivery = Some(Headless::start(&r.role("delivery")));
        r.delivery2 = Some(Headless::start(&r.role("delivery2")));
        r
    }

    async fn start_api2(&mut self) {
        let env = self
            .role("api")
            .listen(&format!("127.0.0.1:{}", self.api2_port))
            .var(
                "HUB_GRPC__LISTEN",
                &format!("127.0.0.1:{}", self.grpc2_port),
            );
        self.api2 = Some(Hub::start(env).await);
    }

    fn url2(&self) -> String {
        format!("http://127.0.0.1:{}", self.api2_port)
    }

    /// What the second delivery process (the one behind the proxy) has logged so far.
    fn delivery2_log(&self) -> String {
        self.delivery2
            .as_ref()
            .and_then(|h| std::fs::read_to_string(h.data_dir.path().join("hub.log")).ok())
            .unwrap_or_default()
    }

    fn grpc2(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc2_port)
    }

    /// The environment of one process: `delivery2` is a delivery process behind the proxy.
    fn role(&self, role: &str) -> HubEnv {
        let db = if role == "delivery2" {
            &self.db_delivery2
        } else {
            &self.db
        };
        self.env
            .clone()
            .arg("--roles")
            .arg(role.trim_end_matches('2'))
            .arg("--database-url")
            .arg(db)
    }

    async fn start_api(&mut self) {
        let env = self
            .role("api")
            .listen(&format!("127.0.0.1:{}", self.api_port));
        self.api = Some(Hub::start(env).await);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    async fn kill_and_restart(&mut self, role: &str) {
        match role {
            "api" => {
                if let Some(mut a) = self.api.take() {
                    kill9(&mut a.child);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.start_api().await;
            }
            "api2" => {
                if let Some(mut a) = self.api2.take() {
                    kill9(&mut a.child);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.start_api2().await;
            }
            "matcher" | "delivery" | "delivery2" => {
                let slot = match role {
                    "matcher" => &mut self.matcher,
                    "delivery" => &mut self.delivery,
                    _ => &mut self.delivery2,
                };
                if let Some(mut h) = slot.take() {
                    kill9(&mut h.child);
                }
                // A matcher comes back after its consumer-group session has expired (as a
                // supervisor with a restart delay would bring it): tansu 0.6 sometimes
                // forms the group with an empty assignment when a new member joins while a
                // killed one is still in it (docs/reliability.md).
                let delay = if role == "matcher" { 11_000 } else { 500 };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let env = self.role(role);
                let slot = match role {
                    "matcher" => &mut self.matcher,
                    "delivery" => &mut self.delivery,
                    _ => &mut self.delivery2,
                };
                *slot = Some(Headless::start(&env));
            }
            _ => unreachable!(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Events and poison.

fn encounter_event(i: u64) -> Value {
    json!({
        "id": format!("evt-{i}"), "action": "create", "resourceType": "Encounter",
        "resourceId": format!("enc-{i}"), "occurredAt": "2024-05-01T10:00:00Z",
        "resource": {"resourceType": "Encounter", "id": format!("enc-{i}"), "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": format!("Patient/p{}", i % 50)}}
    })
}

/// Records no envelope check would let through the API, written straight to the topic:
/// the reproduced crash (a multi-byte character inside a date's fraction), bytes that are
/// not JSON, an envelope missing its resource, JSON nested past any parser's depth, a
/// resource of the wrong shape.
fn poison(i: u64) -> Vec<u8> {
    match i % 5 {
        0 => json!({"id": format!("poison-{i}"), "action": "create", "resourceType": "Observation",
            "resourceId": format!("p{i}"), "occurredAt": "2024-05-01T10:00:00Z",
            "resource": {"resourceType": "Observation", "id": format!("p{i}"), "status": "final",
                "code": {"text": "x"}, "effectiveDateTime": "2024-01-01T10:00:00.12345é"}})
        .to_string()
        .into_bytes(),
        1 => b"\xff\xfe not json at all".to_vec(),
        2 => json!({"id": format!("poison-{i}"), "action": "update"})
            .to_string()
            .into_bytes(),
        3 => format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        _ => json!({"id": format!("poison-{i}"), "action": "create", "resourceType": "Encounter",
            "resourceId": format!("p{i}"), "occurredAt": "not a time",
            "resource": {"resourceType": "Encounter", "id": 17, "status": ["in-progress"],
                "subject": 5}})
        .to_string()
        .into_bytes(),
    }
}

async fn produce_poison(brokers: &str, topic: &str, i: u64) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let payload = poison(i);
    let key = format!("poison-{i}");
    let record = FutureRecord::to(topic).payload(&payload).key(&key);
    let _ = producer.send(record, Duration::from_secs(30)).await;
}

/// Publish `total` good events at about `rate` per second in NDJSON batches, retrying a
/// refused batch (the api restarting, the broker down) with the same event ids until it
/// is taken; a poison record every `poison_every` events.
async fn publish(
    url: String,
    brokers: String,
    topic: String,
    total: u64,
    rate: u64,
    poison_every: u64,
    published: Arc<AtomicU64>,
) -> u64 {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let batch = 20u64;
    let pause = Duration::from_millis(1000 * batch / rate.max(1));
    let mut retries = 0;
    let mut i = 0;
    let mut poisons = 0;
    while i < total {
        let n = batch.min(total - i);
        let body: String = (i..i + n)
            .map(|k| encounter_event(k).to_string() + "\n")
            .collect();
        loop {
            let sent = http
                .post(format!("{url}/events"))
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().as_u16() == 202) {
                break;
            }
            retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        i += n;
        published.store(i, Ordering::SeqCst);
        if poison_every > 0 && i / poison_every > poisons {
            poisons += 1;
            produce_poison(&brokers, &topic, poisons).await;
        }
        tokio::time::sleep(pause).await;
    }
    retries
}

/// The hostile flood (tests/it/hostile_records.rs: NUL, raw NUL, invalid UTF-8, controls and
/// huge strings in every envelope field; NUL, controls, invalid UTF-8 and 100 KB in the key)
/// written straight to the topic, each record also carrying headers with NUL and invalid
/// UTF-8. Returns how many records went out (each must be quarantined).
async fn produce_hostile_flood(brokers: &str, topic: &str) -> usize {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let (poison, _, _) = hostile_records::flood(true);
    let bad_header: &[u8] = b"\x00\xff\xfe\xc3 \x1b[2J";
    for (key, payload) in &poison {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trace\u{0}id",
                value: Some(bad_header),
            })
            .insert(Header {
                key: "tenant",
                value: Some(b"\xff\x00".as_slice()),
            });
        let record = FutureRecord::to(topic)
            .payload(payload)
            .key(key)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    poison.len()
}

// ---------------------------------------------------------------------------------------
// A TCP proxy between one hub process and PostgreSQL that can go silent.

/// Forwards every connection to `upstream`; `silence()` makes the connections open so far
/// stop forwarding in both directions without closing (a middlebox that black-holes them:
/// no reset, no FIN, the bytes simply go nowhere); connections opened later forward.
/// `resume()` lets the silenced ones carry on where they stopped (nothing was lost on the
/// way, as after a network stall that TCP rides out).
struct SilencingProxy {
    port: u16,
    /// Connections numbered below this are silent while `silent` is set.
    silenced_below: Arc<AtomicU64>,
    silent: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
}

impl SilencingProxy {
    async fn start(upstream: String) -> SilencingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silenced_below = Arc::new(AtomicU64::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let (below, on, counter) = (silenced_below.clone(), silent.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue; // PostgreSQL is down: the client sees its connection end
                };
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let held = {
                    let (below, on) = (below.clone(), on.clone());
                    move || on.load(Ordering::SeqCst) && id < below.load(Ordering::SeqCst)
                };
                tokio::spawn(pump(cr, sw, held.clone()));
                tokio::spawn(pump(sr, cw, held));
            }
        });
        SilencingProxy {
            port,
            silenced_below,
            silent,
            next,
        }
    }

    fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.port)
    }

    fn silence(&self) {
        self.silenced_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
        self.silent.store(true, Ordering::SeqCst);
    }

    fn resume(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }
}

/// Copy `from` to `to`; while `held()`, read nothing (what the other end sends waits in the
/// socket buffers, unanswered) and keep both ends open.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    held: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while held() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while held() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Another session takes `FOR UPDATE` locks on rows the hub writes for subscription `id`
/// (its row, which every append of a matching event updates, and its delivery state, which
/// every delivery updates) inside a transaction it keeps open for `hold`, then commits.
async fn hold_row_locks(db: &str, id: &str, hold: Duration) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    for sql in [
        "SELECT 1 FROM subscriptions WHERE id = $1 FOR UPDATE",
        "SELECT 1 FROM delivery_state WHERE subscription_id = $1 FOR UPDATE",
    ] {
        let locked = sqlx::query(sql).bind(id).fetch_all(&mut *tx).await.unwrap();
        assert_eq!(locked.len(), 1, "{sql}: {id}");
    }
    tokio::time::sleep(hold).await;
    tx.commit().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The run.

async fn create(url: &str, body: &Value) -> Value {
    let res = reqwest::Client::new()
        .post(format!(
            "{url}/fhir/{}",
            body["resourceType"].as_str().unwrap()
        ))
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let v: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    v
}

fn subscription(endpoint: &str, channel: &str) -> Value {
    let mut s = json!({
        "resourceType": "Subscription", "status": "requested", "reason": "fault suite",
        "criteria": TOPIC,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
            // a backlog (after an outage, behind a flaky endpoint) goes out 50 events per
            // bundle instead of one request each
            "extension": [{"url": format!("{IG}backport-timeout"), "valueUnsignedInt": 2},
                          {"url": format!("{IG}backport-max-count"), "valuePositiveInt": 50}],
            "_payload": {"extension": [{"url": format!("{IG}backport-payload-content"), "valueCode": "id-only"}]}}
    });
    if channel == "sse" || channel == "grpc" {
        s["channel"] = json!({"type": "rest-hook", "payload": "application/fhir+json",
            "_type": {"extension": [{"url": format!("{IG}backport-channel-type"),
                "valueCoding": {"system": "urn:fhir-hub:channel-type", "code": channel}}]},
            "_payload": s["channel"]["_payload"].clone()});
    }
    if channel == "websocket" {
        s["channel"] = json!({"type": "websocket", "payload": "application/fhir+json",
            "_payload": s["channel"]["_payload"].clone()});
    }
    s
}

/// The subscription's `events-since-subscription-start`, from `$status`.
async fn events_counted(url: &str, id: &str) -> Option<i64> {
    let v: Value = reqwest::get(format!("{url}/fhir/Subscription/{id}/$status"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["entry"][0]["resource"]["parameter"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == "events-since-subscription-start")?["valueString"]
        .as_str()?
        .parse()
        .ok()
}

/// The tests of this target run one at a time: each is a machine's worth of processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn put_subscription(url: &str, id: &str, body: &Value) {
    let mut body = body.clone();
    body["id"] = json!(id);
    let res = reqwest::Client::new()
        .put(format!("{url}/fhir/Subscription/{id}"))
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "PUT {id}: {}", res.status());
}

async fn wait_active(url: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = reqwest::get(format!("{url}/fhir/Subscription/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "active" {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never became active: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_under_faults() {
    let _serial = SERIAL.lock().await;
    let total = env_num("FAULTS_EVENTS", 10_000);
    let rate = env_num("FAULTS_RATE", 110);
    let outage = Duration::from_secs(env_num("FAULTS_OUTAGE_SECS", 15));
    let started = Instant::now();

    let mut pg = Postgres::start();
    let mut broker = Broker::start();
    let topic = format!("faults-{}", uuid::Uuid::new_v4().simple());
    // retries every 150 ms for 25 minutes: no subscription goes off during the run (one
    // environment variable holds at most 128 KiB)
    let mut schedule = vec!["\"0s\"".to_owned()];
    schedule.extend(std::iter::repeat_n("\"150ms\"".to_owned(), 10_000));
    // the second delivery process reaches PostgreSQL through a proxy that will go silent
    let proxy = Arc::new(SilencingProxy::start(format!("127.0.0.1:{}", pg.port)).await);
    let env = HubEnv::default()
        .arg("--kafka-brokers")
        .arg(&broker.addr())
        .var("HUB_LOG__CHANGES_TOPIC", &topic)
        .var("HUB_KAFKA__PARTITIONS", "3")
        .var("HUB_KAFKA__MATCHER_GROUP", &format!("g-{topic}"))
        .var(
            "HUB_DELIVERY__RETRY_SCHEDULE",
            &format!("[{}]", schedule.join(",")),
        )
        .var("HUB_DELIVERY__LEASE_TTL_MS", "3000")
        // a statement waits at most 2 s for a row lock another session holds
        .var("HUB_DATABASE__LOCK_TIMEOUT_MS", "2000")
        .var("RUST_LOG", "info");
    let mut roles = Roles::start(env, pg.url(), proxy.url()).await;
    let url = roles.url();

    let checker = Arc::new(Checker::default());
    let good = receiver(Mode::Good, &checker).await;
    let flaky = receiver(Mode::Flaky, &checker).await;
    let down = receiver(Mode::Outage, &checker).await;
    let hang = receiver(Mode::Hang, &checker).await;
    let recreated_rx = receiver(Mode::Recreated, &checker).await;
    // a receiver whose DNS name moves: the old address starts failing, the name points at
    // a new one (an /etc/hosts entry; the suite runs as root)
    let moving_name = format!("moving-{}.fhir-hub.test", uuid::Uuid::new_v4().simple());
    let hosts = harness::HostsEntry::add(&moving_name, "127.0.0.2")
        .expect("the fault suite points a name at a new address in /etc/hosts: run it as root");
    let moving_old = receiver_at(Mode::Outage, &checker, "127.0.0.2:0").await;
    let moving_port = moving_old
        .url
        .trim_start_matches("http://127.0.0.2:")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let _moving_new = receiver_at(Mode::Good, &checker, &format!("127.0.0.3:{moving_port}")).await;
    let moving_url = format!("http://{moving_name}:{moving_port}/Moving");
    create(
        &url,
        &json!({"resourceType": "SubscriptionTopic", "url": TOPIC, "status": "active",
            "resourceTrigger": [{"resource": "http://hl7.org/fhir/StructureDefinition/Encounter", "supportedInteraction": ["create", "update"]}]}),
    )
    .await;
    let mut subs: Vec<(&str, String)> = Vec::new();
    for (name, r) in [
        ("good", &good),
        ("flaky", &flaky),
        ("down", &down),
        ("hang", &hang),
    ] {
        let s = create(&url, &subscription(&r.url, "rest-hook")).await;
        subs.push((name, s["id"].as_str().unwrap().to_owned()));
    }
    let s = create(&url, &subscription(&moving_url, "rest-hook")).await;
    subs.push(("moving", s["id"].as_str().unwrap().to_owned()));
    let sse = create(&url, &subscription("", "sse")).await;
    let sse_id = sse["id"].as_str().unwrap().to_owned();
    subs.push(("sse", sse_id.clone()));
    let grpc = create(&url, &subscription("", "grpc")).await;
    let grpc_id = grpc["id"].as_str().unwrap().to_owned();
    subs.push(("grpc", grpc_id.clone()));
    let ws = create(&url, &subscription("", "websocket")).await;
    let ws_id = ws["id"].as_str().unwrap().to_owned();
    subs.push(("ws", ws_id.clone()));
    // deleted and re-created with the same id while events flow (checked on its own)
    let recreated = "recreated";
    let recreated_body = subscription(&recreated_rx.url, "rest-hook");
    put_subscription(&url, recreated, &recreated_body).await;
    // every rest-hook subscription hand-shaken before the faults start
    for (_, id) in &subs {
        wait_active(&url, id).await;
    }
    wait_active(&url, recreated).await;

    let published = Arc::new(AtomicU64::new(0));
    let expected = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish(
        url.clone(),
        broker.addr(),
        topic.clone(),
        total,
        rate,
        total / 10,
        Arc::clone(&published),
    ));
    // the stream readers read from the second api process: what the matcher logs reaches
    // them through the store's wake-ups
    let reader_of = |base: String, id: &str, resume_every| Reader {
        base,
        id: id.to_owned(),
        checker: Arc::clone(&checker),
        expected: Arc::clone(&expected),
        resume_every,
    };
    let reader = tokio::spawn(sse_reader(reader_of(roles.url2(), &sse_id, 700)));
    let grpc_reader = tokio::spawn(grpc_consumer(reader_of(roles.grpc2(), &grpc_id, 900)));
    let ws_reader = tokio::spawn(ws_reader(reader_of(roles.url2(), &ws_id, 60)));

    // The faults, one after another while events flow; each one's recovery time is the
    // time from the restart to the next notification received anywhere.
    let mut faults: Vec<(String, Duration)> = Vec::new();
    let step = Duration::from_millis((1000 * total / rate.max(1) / 16).max(1500));
    let silent_for = Duration::from_secs(env_num("FAULTS_SILENT_SECS", 25));
    let lock_for = Duration::from_secs(env_num("FAULTS_LOCK_SECS", 8));
    let mut silence: Option<tokio::task::JoinHandle<()>> = None;
    let mut silence_seen = String::new();
    let mut lock: Option<tokio::task::JoinHandle<()>> = None;
    let mut flood = 0;
    // events whose publishing starts after the re-created subscription's PUT returned
    let mut after_put = 0;
    let recovered = |since: Instant, checker: &Arc<Checker>| {
        let checker = Arc::clone(checker);
        async move {
            let deadline = since + Duration::from_secs(60);
            loop {
                if checker.last_arrival().is_some_and(|t| t > since) {
                    return since.elapsed();
                }
                if Instant::now() > deadline {
                    return Duration::from_secs(60);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    down.faulty.store(true, Ordering::SeqCst);
    let outage_started = Instant::now();
    for fault in [
        "matcher",
        "delivery",
        "recreate",
        "silent-pg",
        "api",
        "api2",
        "poison-bytes",
        "row-lock",
        "broker",
        "postgres",
        "delivery2",
        "dns",
        "hang",
    ] {
        tokio::time::sleep(step).await;
        match fault {
            "recreate" => {
                let res = reqwest::Client::new()
                    .delete(format!("{url}/fhir/Subscription/{recreated}"))
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success(), "DELETE: {}", res.status());
                // longer than the rest-hook timeout (2 s): whatever the old incarnation's
                // worker had on the wire has arrived or been given up by now
                tokio::time::sleep(Duration::from_secs(3)).await;
                recreated_rx.epoch.store(1, Ordering::SeqCst);
                put_subscription(&url, recreated, &recreated_body).await;
                after_put = total.saturating_sub(published.load(Ordering::SeqCst) + 20);
                wait_active(&url, recreated).await;
            }
            "silent-pg" => {
                // every connection the second delivery process holds (its pools and its
                // LISTEN session) stops forwarding without closing, for longer than the
                // listener's ping detection (2 × database.listen_ping_ms); new ones work
                proxy.silence();
                let proxy = Arc::clone(&proxy);
                silence = Some(tokio::spawn(async move {
                    tokio::time::sleep(silent_for).await;
                    proxy.resume();
                }));
            }
            "poison-bytes" => flood = produce_hostile_flood(&broker.addr(), &topic).await,
            "row-lock" => {
                let (db, id) = (pg.url(), subs[0].1.clone());
                lock = Some(tokio::spawn(async move {
                    hold_row_locks(&db, &id, lock_for).await;
                }));
            }
            "broker" => {
                broker.kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                broker.spawn();
            }
            "postgres" => {
                // the silence and the lock end first (the crash would end them)
                if let Some(s) = silence.take() {
                    s.await.unwrap();
                }
                if let Some(l) = lock.take() {
                    l.await.unwrap();
                }
                let log = roles.delivery2_log();
                silence_seen = log
                    .lines()
                    .filter(|l| l.contains("went silent"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
                    .join("\n");
                pg.crash();
                tokio::time::sleep(Duration::from_secs(2)).await;
                pg.spawn();
            }
            "dns" => {
                moving_old.faulty.store(true, Ordering::SeqCst);
                assert!(hosts.point_to("127.0.0.3"));
            }
            "hang" => {
                hang.faulty.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(6)).await;
                hang.faulty.store(false, Ordering::SeqCst);
            }
            role => roles.kill_and_restart(role).await,
        }
        let back = Instant::now();
        let took = recovered(back, &checker).await;
        eprintln!(
            "fault: {fault} at {:?}, next notification {took:?} after recovery",
            started.elapsed()
        );
        faults.push((fault.to_owned(), took));
    }
    let remaining = outage.saturating_sub(outage_started.elapsed());
    tokio::time::sleep(remaining).await;
    down.faulty.store(false, Ordering::SeqCst);
    // at least FAULTS_OUTAGE_SECS, and as long as the fault sequence
    let outage = outage_started.elapsed();
    eprintln!("receiver outage over after {outage:?}");

    let retries = publisher.await.unwrap();
    let n = published.load(Ordering::SeqCst);
    assert_eq!(n, total);
    expected.store(n, Ordering::SeqCst);
    let expected_n = i64::try_from(n).unwrap();

    // Drain: every subscription counts every good event, every channel delivers them.
    let deadline = Instant::now() + Duration::from_secs(env_num("FAULTS_DRAIN_SECS", 300));
    for (name, id) in &subs {
        loop {
            let counted = events_counted(&url, id).await;
            let received = checker.distinct(id);
            let counted_all = counted == Some(expected_n);
            if counted_all && received >= total as usize {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} ({id}) did not drain: counted {counted:?}, received {received} of {total}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The re-created subscription: its new incarnation counts what was matched after the
    // PUT, at least every event published after it; every one arrives.
    let new_key = format!("{recreated}@1");
    let new_count = loop {
        let counted = events_counted(&url, recreated).await.unwrap_or(0);
        if counted > 0 && checker.distinct(&new_key) >= usize::try_from(counted).unwrap() {
            break counted;
        }
        assert!(
            Instant::now() < deadline,
            "the re-created subscription did not drain: counted {counted}, received {}",
            checker.distinct(&new_key)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // each stream reader ends once it has every event, saying how often it connected
    let connections = |reader: tokio::task::JoinHandle<usize>| async move {
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    };
    let reconnects = connections(reader).await;
    let grpc_reconnects = connections(grpc_reader).await;
    let ws_reconnects = connections(ws_reader).await;

    // The checker.
    let mut report = Vec::new();
    let mut problems = Vec::new();
    let mut all_dup = 0;
    for (name, id) in &subs {
        match checker.verify(id, expected_n) {
            Ok((delivered, duplicates)) => {
                all_dup += duplicates;
                report.push(format!(
                    "{name:>6}: delivered {delivered}/{expected_n}, lost 0, duplicates {duplicates}"
                ));
            }
            Err(e) => problems.push(e),
        }
    }
    // the old incarnation delivered a gap-free prefix and nothing after its delete; the new
    // one every number from 1, each with one event (an old notification numbered as a new
    // one would carry another focus), and at least every event published after the PUT
    let old_key = format!("{recreated}@0");
    let old_count = checker.max(&old_key);
    if old_count == 0 {
        problems.push("the re-created subscription delivered nothing before its delete".into());
    }
    for (key, n) in [(&old_key, old_count), (&new_key, new_count)] {
        match checker.verify(key, n) {
            Ok((delivered, duplicates)) => {
                all_dup += duplicates;
                report.push(format!(
                    "{key}: delivered {delivered}/{n}, lost 0, duplicates {duplicates}"
                ));
            }
            Err(e) => problems.push(e),
        }
    }
    if new_count < i64::try_from(after_put).unwrap() {
        problems.push(format!(
            "the re-created subscription counted {new_count} events, fewer than the {after_put} published after its PUT"
        ));
    }
    if silence_seen.is_empty() {
        problems
            .push("the second delivery process never reported its LISTEN connection silent".into());
    }
    // the poison is kept in quarantine with its reason, for an operator to list and replay
    let quarantine: Value = reqwest::get(format!("{url}/admin/quarantine"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    let quarantined = quarantine["total"].as_u64().unwrap_or(0);
    // 8 of the 10 poison records of the publisher (two are valid Observations matching
    // nothing) and every record of the hostile flood
    let want_quarantined = 8 + u64::try_from(flood).unwrap();
    if quarantined < want_quarantined {
        problems.push(format!(
            "{quarantined} records quarantined, {want_quarantined} expected: {quarantine}"
        ));
    }
    let mut summary: HashMap<&str, String> = HashMap::new();
    summary.insert("events", format!("{total}"));
    summary.insert("publish retries", format!("{retries}"));
    summary.insert("sse reconnects", format!("{reconnects}"));
    summary.insert("grpc reconnects", format!("{grpc_reconnects}"));
    summary.insert("ws reconnects", format!("{ws_reconnects}"));
    summary.insert("duplicates", format!("{all_dup}"));
    summary.insert("quarantined", format!("{quarantined}"));
    summary.insert("hostile flood", format!("{flood} records"));
    summary.insert(
        "re-created",
        format!("old incarnation {old_count} events, new {new_count} (at least {after_put})"),
    );
    summary.insert("silent LISTEN", silence_seen.clone());
    eprintln!(
        "fault suite: {total} events at {rate}/s, {} faults ({}), receiver outage {:.1?}, in {:.1?}\n{}\n{summary:?}",
        faults.len() + 3,
        faults
            .iter()
            .map(|(f, t)| format!("{f} recovered in {t:.1?}"))
            .collect::<Vec<_>>()
            .join(", "),
        outage,
        started.elapsed(),
        report.join("\n")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------
// One large fan-out batch.

/// A line of `/proc/<pid>/status` in kB (`VmHWM`: peak resident memory; `VmRSS`).
fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `FAULTS_FANOUT_SUBSCRIPTIONS` subscriptions (CI 1,000; the figure 10,000) that
/// all match every event of one batch of `FAULTS_FANOUT_EVENTS` (CI 100; the 500),
/// in Kafka mode on PostgreSQL with the matcher in a process of its own: every
/// subscription's log holds every event, numbered 1..=events without a gap, and the
/// matcher's peak resident memory (VmHWM) is printed before and after the batch.
/// `FAULTS_FANOUT_CHUNK` sets `matcher.max_notifications_per_transaction` (a huge value
/// logs the batch in one transaction, as the matcher did before the bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_batch_is_logged_gap_free() {
    use futures::StreamExt;
    let _serial = SERIAL.lock().await;
    let subs = env_num("FAULTS_FANOUT_SUBSCRIPTIONS", 1_000);
    let events = env_num("FAULTS_FANOUT_EVENTS", 100);
    let pg = Postgres::start();
    let broker = Broker::start();
    let topic = format!("fanout-{}", uuid::Uuid::new_v4().simple());
    let mut env = HubEnv::default()
        .arg("--kafka-brokers")
        .arg(&broker.addr())
        .arg("--database-url")
        .arg(&pg.url())
        .var("HUB_LOG__CHANGES_TOPIC", &topic)
        .var("HUB_KAFKA__PARTITIONS", "1")
        .var("HUB_KAFKA__MATCHER_GROUP", &format!("g-{topic}"))
        .var("HUB_MATCHER__BATCH_SIZE", &events.to_string())
        .var("RUST_LOG", "info");
    if let Ok(chunk) = std::env::var("FAULTS_FANOUT_CHUNK") {
        env = env.var("HUB_MATCHER__MAX_NOTIFICATIONS_PER_TRANSACTION", &chunk);
    }
    let api = Hub::start(env.clone().arg("--roles").arg("api")).await;
    let url = api.url.clone();
    create(
        &url,
        &json!({"resourceType": "SubscriptionTopic", "url": TOPIC, "status": "active",
            "resourceTrigger": [{"resource": "http://hl7.org/fhir/StructureDefinition/Encounter", "supportedInteraction": ["create", "update"]}]}),
    )
    .await;
    // stream subscriptions (SSE): matched and logged like any, with no endpoint to call
    let started = Instant::now();
    let body = subscription("", "sse");
    let created = futures::stream::iter(0..subs)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            async move { create(&url, &body).await }
        })
        .buffer_unordered(8)
        .count()
        .await;
    assert_eq!(created, usize::try_from(subs).unwrap());
    println!("{subs} subscriptions created in {:.1?}", started.elapsed());

    let matcher = Headless::start(&env.clone().arg("--roles").arg("matcher"));
    let pid = matcher.child.id();
    let db = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let logged = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM notification_log")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    // the matcher is up (a running process, its memory before the batch)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hwm_before = proc_kb(pid, "VmHWM");
    let body: String = (0..events)
        .map(|k| encounter_event(k).to_string() + "\n")
        .collect();
    let res = reqwest::Client::new()
        .post(format!("{url}/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let started = Instant::now();
    let want = i64::try_from(subs * events).unwrap();
    let deadline = Duration::from_secs(env_num("FAULTS_FANOUT_SECS", 3600));
    loop {
        let got = logged().await;
        if got >= want {
            break;
        }
        assert!(
            started.elapsed() < deadline,
            "{got} of {want} notifications logged after {deadline:?}"
        );
        assert!(proc_kb(pid, "VmRSS") > 0, "the matcher process is gone");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();
    let hwm_after = proc_kb(pid, "VmHWM");
    println!(
        "fan-out batch: {subs} subscriptions x {events} events = {want} notifications logged in \
         {took:.1?}; matcher VmHWM {hwm_before} kB before the batch, {hwm_after} kB after \
         (VmRSS now {} kB)",
        proc_kb(pid, "VmRSS")
    );

    // every subscription's log: exactly 1..=events, and its count says so
    let complete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT log_key FROM notification_log GROUP BY log_key
           HAVING count(*) = $1 AND min(event_number) = 1 AND max(event_number) = $1) t",
    )
    .bind(i64::try_from(events).unwrap())
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(complete, i64::try_from(subs).unwrap(), "gap-free logs");
    let counted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE events_since_start = $1")
            .bind(i64::try_from(events).unwrap())
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(counted, i64::try_from(subs).unwrap(), "events counted");
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM subscriptions LIMIT 3")
        .fetch_all(&db)
        .await
        .unwrap();
    for id in ids {
        assert_eq!(
            events_counted(&url, &id).await,
            Some(i64::try_from(events).unwrap()),
            "$status of {id}"
        );
    }
}
