//! Start the real binary on port 0 with its own data directory and talk to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub(crate) fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("FHIR_HUB_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/it-<hash> → target/<profile>/fhir-hub
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("fhir-hub"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p fhir-hub` before the integration tests",
        bin.display()
    );
    bin
}

/// A port free on loopback now (for a process that must be told its port).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn require_external(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("FHIR_HUB_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
                "{var} is not set but FHIR_HUB_REQUIRE_EXTERNAL=1"
            );
            eprintln!("skipping: {var} is not set");
            None
        }
    }
}

/// A running hub process, killed on drop.
pub(crate) struct Hub {
    pub url: String,
    /// `http://127.0.0.1:PORT` of the gRPC listener.
    pub grpc_url: String,
    pub child: Child,
    pub data_dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// Builder for the environment a hub process gets.
#[derive(Default, Clone)]
pub(crate) struct HubEnv {
    pub vars: Vec<(String, String)>,
    pub args: Vec<String>,
    /// `--listen` (default `127.0.0.1:0`); a fixed one lets a restarted process keep its
    /// address.
    pub listen: Option<String>,
}

impl HubEnv {
    pub(crate) fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.push((k.into(), v.into()));
        self
    }

    pub(crate) fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    #[allow(dead_code)] // used by the fault suite (tests/faults), which shares this file
    pub(crate) fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.into());
        self
    }
}

impl Hub {
    pub(crate) async fn start(env: HubEnv) -> Hub {
        let data_dir = tempfile::tempdir().unwrap();
        Self::start_in(env, data_dir).await
    }

    pub(crate) async fn start_in(env: HubEnv, data_dir: tempfile::TempDir) -> Hub {
        let mut child = spawn(&env, &data_dir);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let (gtx, grx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("fhir-hub listening on ") {
                    let _ = tx.send(url.to_owned());
                }
                if let Some(addr) = line.strip_prefix("fhir-hub grpc listening on ") {
                    let _ = gtx.send(format!("http://{addr}"));
                }
            }
        });
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .expect("fhir-hub did not report its address within 60 s");
        let grpc_url = grx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        Hub {
            url,
            grpc_url,
            child,
            data_dir,
            http: reqwest::Client::new(),
        }
    }
}

/// A hub process without the api role (no API address to wait for); killed on drop.
pub(crate) struct Headless {
    pub child: Child,
    pub data_dir: tempfile::TempDir,
    /// The admin listener's address as the process prints it (`http://127.0.0.1:PORT`).
    admin: std::sync::Mutex<(std::sync::mpsc::Receiver<String>, Option<String>)>,
}

impl Headless {
    pub(crate) fn start(env: &HubEnv) -> Headless {
        let data_dir = tempfile::tempdir().unwrap();
        let mut child = spawn(env, &data_dir);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // read stdout to its end (a process whose pipe fills would block)
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("fhir-hub admin listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        Headless {
            child,
            data_dir,
            admin: std::sync::Mutex::new((rx, None)),
        }
    }

    /// The admin listener's base URL, once the process printed it (60 s at most).
    #[allow(dead_code)] // not every test target that shares this file asks
    pub(crate) async fn admin_url(&self) -> String {
        tokio::task::block_in_place(|| {
            let mut admin = self.admin.lock().unwrap();
            if admin.1.is_none() {
                let url = admin
                    .0
                    .recv_timeout(Duration::from_secs(60))
                    .expect("the process did not print its admin address within 60 s");
                admin.1 = Some(url);
            }
            admin.1.clone().unwrap_or_default()
        })
    }
}

impl Drop for Headless {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.data_dir.path().join("hub.log"))
        {
            eprintln!("---- fhir-hub (headless) log ----\n{log}");
        }
    }
}

fn spawn(env: &HubEnv, data_dir: &tempfile::TempDir) -> Child {
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .arg("--listen")
        .arg(env.listen.as_deref().unwrap_or("127.0.0.1:0"))
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(&env.args)
        .current_dir(data_dir.path())
        // Fast polling keeps the tests quick; production defaults are slower.
        .env("HUB_DELIVERY__POLL_MS", "200")
        // 0 s, then 40 retries 250 ms apart: about 10 s before a subscription goes off.
        .env("HUB_DELIVERY__RETRY_SCHEDULE", test_schedule())
        // The receivers run on loopback, which production refuses.
        .env("HUB_DELIVERY__ALLOWED_NETWORKS", "[\"127.0.0.0/8\"]")
        // Idle rest-hook subscriptions park after 100 ms (2 s in production), so every test
        // delivers through parking and waking, not only the one about it.
        .env("HUB_DELIVERY__PARK_IDLE_AFTER_MS", "100")
        .env("HUB_MATCHER__POLL_MS", "100")
        // every test hub picks free ports
        .env("HUB_GRPC__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info,fhir_hub=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(data_dir.path().join("hub.log")).expect("hub.log"),
        ));
    for (k, v) in &env.vars {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn fhir-hub")
}

impl Hub {
    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, "application/fhir+json", body.to_string().into_bytes())
            .await
    }

    pub(crate) async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// PUT a FHIR resource, optionally with `If-Match`; the status and the response.
    pub(crate) async fn put_json(
        &self,
        path: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .put(format!("{}{path}", self.url))
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        req.send().await.unwrap()
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Create a rest-hook subscription and return its id.
    pub(crate) async fn subscribe(&self, criteria: &str, endpoint: &str, payload: bool) -> String {
        self.subscribe_full(criteria, endpoint, payload).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Create a rest-hook subscription and return the hub's answer (with the secret).
    pub(crate) async fn subscribe_full(
        &self,
        criteria: &str,
        endpoint: &str,
        payload: bool,
    ) -> Value {
        let mut channel = json!({"type": "rest-hook", "endpoint": endpoint,
                                 "header": ["X-Test: e2e"]});
        if payload {
            channel["payload"] = json!("application/fhir+json");
        }
        let (status, body) = self
            .post_json(
                "/fhir/Subscription",
                &json!({"resourceType": "Subscription", "status": "requested",
                        "reason": "e2e", "criteria": criteria, "channel": channel}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            body["status"], "requested",
            "active only after the handshake"
        );
        body
    }

    /// Wait until the subscription has `status`.
    pub(crate) async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, sub) = self.get(&format!("/fhir/Subscription/{id}")).await;
            if sub["status"] == status {
                return sub;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Subscription/{id} never became {status}: {sub}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Send SIGTERM and wait for a clean exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fhir-hub did not stop within 40 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let Ok(log) = std::fs::read_to_string(self.data_dir.path().join("hub.log")) else {
            return;
        };
        // A failing test shows what the hub logged.
        if std::thread::panicking() {
            eprintln!("---- fhir-hub log ----\n{log}");
            return;
        }
        // Every end-to-end test checks that the hub logged no resource body and no patient
        // reference (the tests' resources are about Patient/p1 and similar).
        let leaks: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"resourceType\"") || l.contains("Patient/"))
            .collect();
        assert!(
            leaks.is_empty(),
            "the hub logged resource content or identifiers:\n{}",
            leaks.join("\n")
        );
    }
}

fn test_schedule() -> String {
    let mut items = vec!["\"0s\"".to_owned()];
    items.extend(std::iter::repeat_n("\"250ms\"".to_owned(), 40));
    format!("[{}]", items.join(","))
}

pub(crate) fn glucose(id: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
           "subject": {"reference": "Patient/p1"},
           "valueQuantity": {"value": 5.4, "unit": "mmol/L"}})
}

pub(crate) fn other_observation(id: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}})
}

pub(crate) fn envelope(resource: &Value, action: &str) -> Value {
    json!({"id": uuid::Uuid::new_v4().to_string(), "action": action,
           "resourceType": resource["resourceType"], "resourceId": resource["id"],
           "occurredAt": "2024-05-01T10:00:00Z", "resource": resource})
}

/// A Python test client (`integration-tests/python/SCRIPT`) whose stdout lines are JSON
/// values, read as they come.
pub(crate) struct PyClient {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl PyClient {
    pub(crate) fn start(python: &str, script: &str, args: &[&str]) -> PyClient {
        Self::start_with(python, script, args, &[])
    }

    /// With extra environment variables (a credential in `FHIR_HUB_TOKEN`).
    pub(crate) fn start_with(
        python: &str,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> PyClient {
        let path = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(python)
            .arg(path)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        PyClient { child, lines }
    }

    /// The next line as JSON; fails the test after 20 s.
    pub(crate) fn next(&self, what: &str) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no message from the client: {what}"));
        serde_json::from_str(&line).unwrap()
    }

    /// Wait for the client to exit successfully.
    pub(crate) fn finish(mut self) {
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    /// `GET /metrics` as text.
    pub(crate) async fn metrics(&self) -> String {
        let res = self.http.get(format!("{}/metrics", self.url)).send().await;
        res.unwrap().text().await.unwrap()
    }

    /// Wait until the subscription has counted `n` events.
    pub(crate) async fn wait_events(&self, id: &str, n: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, st) = self.get(&format!("/fhir/Subscription/{id}/$status")).await;
            let text = st.to_string();
            if text.contains(&format!(
                r#""name":"events-since-subscription-start","valueString":"{n}""#
            )) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never counted {n}: {st}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A line of `/etc/hosts` naming a test host, removed again on drop.
pub(crate) struct HostsEntry {
    name: String,
}

const HOSTS: &str = "/etc/hosts";

/// Tests run in parallel and each edits the file by reading and writing it whole: one at a
/// time, or one test's edit drops another's line.
static HOSTS_EDIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl HostsEntry {
    /// `None` where `/etc/hosts` cannot be written (not root): the caller skips.
    pub(crate) fn add(name: &str, ip: &str) -> Option<HostsEntry> {
        let entry = HostsEntry {
            name: name.to_owned(),
        };
        entry.point_to(ip).then_some(entry)
    }

    /// Point the name at `ip` (the resolver reads the file at every lookup).
    pub(crate) fn point_to(&self, ip: &str) -> bool {
        let _one = HOSTS_EDIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(text) = std::fs::read_to_string(HOSTS) else {
            return false;
        };
        let mut kept: String = text
            .lines()
            .filter(|l| !l.ends_with(&format!(" {}", self.name)))
            .map(|l| format!("{l}\n"))
            .collect();
        kept.push_str(&format!("{ip} {}\n", self.name));
        std::fs::write(HOSTS, kept).is_ok()
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        let _one = HOSTS_EDIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(text) = std::fs::read_to_string(HOSTS) {
            let kept: String = text
                .lines()
                .filter(|l| !l.ends_with(&format!(" {}", self.name)))
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = std::fs::write(HOSTS, kept);
        }
    }
}
