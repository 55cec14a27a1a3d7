//! The browser path: CORS on the endpoints a web page needs (`$stream`,
//! `$get-ws-binding-token`), binding tokens renewed with themselves, and the example dashboard
//! (`docs/examples/dashboard.html`) in headless Chromium, served from an origin of its own,
//! reading an SSE subscription through a hub restart without a gap.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::disclosure::{create, hub, publish, websocket_topic_subscription};
use crate::harness::{Hub, HubEnv, PyClient, free_port, require_external};
use crate::security::{admin_key, call};
use crate::stream_credentials::binding_token;
use crate::streams::hub_channel;
use crate::topics::param;

const SCOPES: &str = "system/Subscription.cruds system/Observation.rs";

/// `method path` with `headers` (a browser's `Origin`, a preflight's `Access-Control-*`):
/// the status and the headers. A stream's body is not read.
async fn raw(
    hub: &Hub,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap) {
    let mut req = hub.http.request(method, format!("{}{path}", hub.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.headers().clone())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The answer's `Vary`, all of its values.
fn vary(h: &reqwest::header::HeaderMap) -> String {
    h.get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase()
}

/// A preflight as a browser sends it.
fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", headers),
    ]
}

/// Before: a preflight on `$stream` fell to the router-wide 405 and the token endpoint sent
/// no CORS header at all, so no page could read either across origins.
#[tokio::test]
async fn preflights_are_answered_on_the_browser_endpoints_for_allowed_origins_only() {
    let page = "http://dashboard.test:8000";
    let (hub, admin) = hub(HubEnv::default().var(
        "HUB_CORS__ALLOWED_ORIGINS",
        &format!("[\"{page}\", \"https://other.test\"]"),
    ))
    .await;
    let (_, reader) = admin_key(&hub, &admin, json!({ "scopes": SCOPES })).await;
    let sse = create(&hub, &reader, &hub_channel("sse", "full-resource")).await;
    let stream = format!("/fhir/Subscription/{sse}/$stream");
    let tokens = format!("/fhir/Subscription/{sse}/$get-ws-binding-token");

    for (path, method, asked) in [
        (stream.as_str(), "GET", "authorization,last-event-id"),
        (tokens.as_str(), "POST", "authorization,content-type"),
    ] {
        let (s, h) = raw(&hub, Method::OPTIONS, path, &preflight(page, method, asked)).await;
        assert!((200..300).contains(&s), "preflight on {path}: {s}");
        assert_eq!(header(&h, "access-control-allow-origin"), page, "{path}");
        let allowed = header(&h, "access-control-allow-headers").to_ascii_lowercase();
        for name in ["authorization", "last-event-id", "content-type"] {
            assert!(allowed.contains(name), "{path}: {allowed}");
        }
        assert!(
            header(&h, "access-control-allow-methods").contains(method),
            "{path}"
        );
        assert!(vary(&h).contains("origin"), "{path}: {h:?}");
        assert!(
            h.get("access-control-allow-credentials").is_none(),
            "never with credentials"
        );
        // a page of another origin is not allowed
        let (_, h) = raw(
            &hub,
            Method::OPTIONS,
            path,
            &preflight("http://evil.test", method, asked),
        )
        .await;
        assert!(h.get("access-control-allow-origin").is_none(), "{path}");
    }

    // the answers themselves carry the page's origin (and say they vary by it)
    let with_key = format!("Bearer {reader}");
    let (s, h) = raw(
        &hub,
        Method::POST,
        &tokens,
        &[("origin", page), ("authorization", &with_key)],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), page);
    assert!(vary(&h).contains("origin"), "{h:?}");
    let token = binding_token(&hub, &reader, &sse).await;
    let (s, h) = raw(
        &hub,
        Method::GET,
        &format!("{stream}?token={token}"),
        &[("origin", page)],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), page);
    // a refusal too, so that the page can tell it from a network failure
    let (s, h) = raw(
        &hub,
        Method::GET,
        &format!("{stream}?token=nope"),
        &[("origin", page)],
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(header(&h, "access-control-allow-origin"), page);
    let (_, h) = raw(
        &hub,
        Method::GET,
        &stream,
        &[("origin", "http://evil.test")],
    )
    .await;
    assert!(h.get("access-control-allow-origin").is_none());

    // no other endpoint answers across origins
    let (s, h) = raw(
        &hub,
        Method::OPTIONS,
        "/fhir/Subscription",
        &preflight(page, "POST", "authorization"),
    )
    .await;
    assert_eq!(s, 405);
    assert!(h.get("access-control-allow-origin").is_none());
    // other methods on the browser endpoints keep the API's 405
    let (s, _) = raw(&hub, Method::DELETE, &stream, &[]).await;
    assert_eq!(s, 405);
}

#[tokio::test]
async fn no_origin_is_allowed_by_default() {
    let (hub, admin) = hub(HubEnv::default()).await;
    let (_, reader) = admin_key(&hub, &admin, json!({ "scopes": SCOPES })).await;
    let sse = create(&hub, &reader, &hub_channel("sse", "full-resource")).await;
    for path in [
        format!("/fhir/Subscription/{sse}/$stream"),
        format!("/fhir/Subscription/{sse}/$get-ws-binding-token"),
    ] {
        let (_, h) = raw(
            &hub,
            Method::OPTIONS,
            &path,
            &preflight("http://dashboard.test", "GET", "authorization"),
        )
        .await;
        assert!(h.get("access-control-allow-origin").is_none(), "{path}");
    }
    // nor on an answer
    let token = binding_token(&hub, &reader, &sse).await;
    let (s, h) = raw(
        &hub,
        Method::GET,
        &format!("/fhir/Subscription/{sse}/$stream?token={token}"),
        &[("origin", "http://dashboard.test")],
    )
    .await;
    assert_eq!(s, 200);
    assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
}

/// `$get-ws-binding-token?token=T`: the next token of T's holder.
async fn renew(hub: &Hub, sub: &str, token: &str) -> (u16, Value) {
    let (s, _, p) = call(
        hub,
        Method::POST,
        &format!("/fhir/Subscription/{sub}/$get-ws-binding-token?token={token}"),
        None,
        None,
    )
    .await;
    (s, p)
}

fn token_of(p: &Value) -> String {
    param(p, "token").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Before: a binding token lasted 10 minutes and nothing renewed it, so a browser's
/// `EventSource` reconnecting after that was refused (401) for good.
#[tokio::test]
async fn binding_tokens_renew_with_themselves_and_expired_ones_are_refused() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let ttl: u64 = 4;
    let (hub, admin) =
        hub(HubEnv::default().var("HUB_AUTH__BINDING_TOKEN_TTL_SECS", &ttl.to_string())).await;
    let (reader_id, reader) = admin_key(&hub, &admin, json!({ "scopes": SCOPES })).await;
    let sse = create(&hub, &reader, &hub_channel("sse", "full-resource")).await;
    let first = binding_token(&hub, &reader, &sse).await;
    let stream = |t: &str| format!("/fhir/Subscription/{sse}/$stream?token={t}");

    // renewed every second, a token chain outlives each of its tokens
    let mut current = first.clone();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(ttl + 2) {
        let (s, p) = renew(&hub, &sse, &current).await;
        assert_eq!(s, 200, "renewal with a live token: {p}");
        let next = token_of(&p);
        assert_ne!(next, current, "a fresh token each time");
        // renewal rotates: the token renewed is used up, for streams and renewals alike
        // (found by review: a copy of an SSE URL's token renewed itself for ever beside the
        // page's own chain)
        let (s, _) = raw(&hub, Method::GET, &stream(&current), &[]).await;
        assert_eq!(s, 401, "a renewed token still streams");
        let (s, p) = renew(&hub, &sse, &current).await;
        assert_eq!(s, 401, "a renewed token renewed again: {p}");
        current = next;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // the first token: refused, renewal included
    let (s, p) = renew(&hub, &sse, &first).await;
    assert_eq!(s, 401, "{p}");
    // the newest one streams
    let (s, _) = raw(&hub, Method::GET, &stream(&current), &[]).await;
    assert_eq!(s, 200);
    // a token renews only its own subscription, and renewing is audited
    let other = create(&hub, &reader, &hub_channel("sse", "full-resource")).await;
    let (s, _) = renew(&hub, &other, &current).await;
    assert_eq!(s, 401);
    let (_, _, trail) = call(
        &hub,
        Method::GET,
        &format!("/fhir/AuditEvent?agent=key:{reader_id}&_count=1000"),
        Some(&admin),
        None,
    )
    .await;
    assert!(
        trail["entry"].as_array().unwrap().iter().any(|e| {
            e["resource"]["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.contains("binding token renewed"))
        }),
        "{trail}"
    );

    // a websocket token renews too (before its single bind uses it up), and the renewed one
    // binds
    let ws = create(&hub, &reader, &websocket_topic_subscription()).await;
    let spare = binding_token(&hub, &reader, &ws).await;
    let (s, p) = renew(&hub, &ws, &spare).await;
    assert_eq!(s, 200, "{p}");
    let ws_url = format!(
        "{}/fhir/$subscription-ws",
        hub.url.replacen("http", "ws", 1)
    );
    let w = PyClient::start(&python, "ws_client.py", &[&ws_url, &token_of(&p), "1"]);
    let m = w.next("handshake");
    assert!(m.to_string().contains("handshake"), "{m}");

    // no renewal outlives the credential behind it
    let (s, _, _) = call(
        &hub,
        Method::DELETE,
        &format!("/admin/keys/{reader_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert!(s == 200 || s == 204);
    let (s, p) = renew(&hub, &sse, &current).await;
    assert_eq!(s, 401, "{p}");
    assert!(p.to_string().contains("revoked"), "{p}");
    // the tokens travelled in query strings: the hub logged none of them
    let log = std::fs::read_to_string(hub.data_dir.path().join("hub.log")).unwrap();
    for t in [&first, &current, &spare] {
        assert!(!log.contains(t.as_str()), "a binding token in the hub log");
    }
}

/// The page in headless Chromium, driven by `python/browser_dashboard.py`, whose report is
/// the page's `window.dashboard` as JSON lines. Stopped (Chromium and chromedriver with it)
/// by closing its stdin.
struct Dashboard {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Dashboard {
    fn open(python: &str, chromedriver: &str, port: u16, page: &str) -> Dashboard {
        let examples = format!("{}/../docs/examples", env!("CARGO_MANIFEST_DIR"));
        let script = format!("{}/python/browser_dashboard.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(python)
            .arg(script)
            .args([chromedriver, &examples, &port.to_string(), page])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Dashboard { child, lines }
    }

    /// The page's state once `done` holds for it (a generous deadline as a hang guard).
    async fn until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.lines.try_recv() {
                Ok(line) => {
                    let state: Value = serde_json::from_str(&line).unwrap();
                    assert!(state.get("driver_error").is_none(), "{state}");
                    if done(&state) {
                        return state;
                    }
                    last = state;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the browser driver ended ({e}) waiting for {what}: {last}"),
            }
        }
        panic!("the page never showed {what}: {last}");
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `chromedriver` (Debian's `chromium-driver`): `FHIR_HUB_CHROMEDRIVER`, else on the PATH.
fn chromedriver() -> Option<String> {
    if let Ok(p) = std::env::var("FHIR_HUB_CHROMEDRIVER")
        && !p.is_empty()
    {
        return Some(p);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("chromedriver"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("FHIR_HUB_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "chromedriver is missing (apt-get install chromium chromium-driver) but FHIR_HUB_REQUIRE_EXTERNAL=1"
        );
        eprintln!("skipping: no chromedriver");
    }
    found.map(|p| p.display().to_string())
}

fn numbers(state: &Value) -> Vec<i64> {
    state["events"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// The example dashboard, served from another origin than the hub's, in headless Chromium:
/// it shows notifications as they arrive, keeps renewing the binding token it was handed (by
/// its backend: the credential never reaches the browser), and when the hub restarts after
/// that first token expired, reconnects with a renewed one and shows every event 1..6 with
/// no gap and no duplicate.
#[tokio::test]
async fn the_example_dashboard_reads_across_origins_and_resumes_without_loss() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let Some(chromedriver) = chromedriver() else {
        return;
    };
    let page_port = free_port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let listen = format!("127.0.0.1:{}", free_port());
    // a lifetime short enough to pass within the test, long enough for a restart between
    // two renewals (the page renews a third of the way in)
    let env = HubEnv::default()
        .listen(&listen)
        .var("HUB_CORS__ALLOWED_ORIGINS", &format!("[\"{origin}\"]"))
        .var("HUB_AUTH__BINDING_TOKEN_TTL_SECS", "15");
    let (hub, admin) = hub(env.clone()).await;
    let (_, reader) = admin_key(&hub, &admin, json!({ "scopes": SCOPES })).await;
    let sse = create(&hub, &reader, &hub_channel("sse", "full-resource")).await;
    let first = binding_token(&hub, &reader, &sse).await;
    let page = format!(
        "dashboard.html#hub={}/fhir&subscription={sse}&token={first}",
        hub.url
    );
    let dash = Dashboard::open(&python, &chromedriver, page_port, &page);
    dash.until("a live stream", |s| s["status"] == "live").await;

    publish(&hub, &admin, "a", &["p1", "p1", "p1"]).await;
    let s = dash.until("events 1..3", |s| numbers(s) == [1, 2, 3]).await;
    assert_eq!(s["errors"], json!([]), "{s}");

    // the token the page was handed expires; the page has renewed it meanwhile
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, _) = raw(
            &hub,
            Method::GET,
            &format!("/fhir/Subscription/{sse}/$stream?token={first}"),
            &[],
        )
        .await;
        if st == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the first token never expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = dash
        .until("a renewed token", |s| s["renewals"].as_i64() >= Some(1))
        .await;
    assert_eq!(s["status"], "live", "{s}");
    // restart just after the page's next renewal: the whole lifetime is left to get through
    // the restart on a loaded machine
    let renewed = s["renewals"].as_i64();
    dash.until("the next renewal", |s| s["renewals"].as_i64() > renewed)
        .await;

    // disconnect: the hub stops and starts again on the same address and data
    let s = restart_and_resume(hub, env, &admin, &dash).await;
    assert_eq!(s["gaps"], json!([]), "{s}");
}

/// The page asks for its first token with a credential (`Authorization`, so Chromium sends a
/// real preflight first): from an allowed origin it goes live and shows the notification;
/// from an origin the hub does not list, Chromium refuses the page the answer.
#[tokio::test]
async fn the_example_dashboard_asks_with_a_credential_only_from_an_allowed_origin() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let Some(chromedriver) = chromedriver() else {
        return;
    };
    let page_port = free_port();
    let (hub, admin) = hub(HubEnv::default().var(
        "HUB_CORS__ALLOWED_ORIGINS",
        &format!("[\"http://127.0.0.1:{page_port}\"]"),
    ))
    .await;
    let (_, reader) = admin_key(&hub, &admin, json!({ "scopes": SCOPES })).await;
    let sse = create(&hub, &reader, &hub_channel("sse", "full-resource")).await;
    let page = format!(
        "dashboard.html#hub={}/fhir&subscription={sse}&key={reader}",
        hub.url
    );
    let dash = Dashboard::open(&python, &chromedriver, page_port, &page);
    dash.until("a live stream", |s| s["status"] == "live").await;
    publish(&hub, &admin, "a", &["p1"]).await;
    dash.until("event 1", |s| numbers(s) == [1]).await;
    drop(dash);

    // the same page from another origin
    let other = Dashboard::open(&python, &chromedriver, free_port(), &page);
    let s = other
        .until("a refusal", |s| {
            s["status"]
                .as_str()
                .is_some_and(|t| t.starts_with("cannot reach the hub"))
        })
        .await;
    assert!(numbers(&s).is_empty(), "{s}");
}

/// The same page on a websocket subscription: it renews before each bind (a bind uses its
/// token up), binds with `bind-with-token: <token> <last>` after a hub restart, and shows
/// events 1..6 with no gap and no duplicate.
#[tokio::test]
async fn the_example_dashboard_reads_a_websocket_subscription_and_resumes_without_loss() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let Some(chromedriver) = chromedriver() else {
        return;
    };
    let page_port = free_port();
    let listen = format!("127.0.0.1:{}", free_port());
    let env = HubEnv::default()
        .listen(&listen)
        .var(
            "HUB_CORS__ALLOWED_ORIGINS",
            &format!("[\"http://127.0.0.1:{page_port}\"]"),
        )
        .var("HUB_AUTH__BINDING_TOKEN_TTL_SECS", "15");
    let (hub, admin) = hub(env.clone()).await;
    let (_, reader) = admin_key(&hub, &admin, json!({ "scopes": SCOPES })).await;
    let ws = create(&hub, &reader, &websocket_topic_subscription()).await;
    let first = binding_token(&hub, &reader, &ws).await;
    let page = format!(
        "dashboard.html#hub={}/fhir&subscription={ws}&channel=websocket&token={first}",
        hub.url
    );
    let dash = Dashboard::open(&python, &chromedriver, page_port, &page);
    dash.until("a live socket", |s| s["status"] == "live").await;
    publish(&hub, &admin, "a", &["p1", "p1", "p1"]).await;
    let s = dash.until("events 1..3", |s| numbers(s) == [1, 2, 3]).await;
    assert_eq!(s["errors"], json!([]), "{s}");
    // the bind used the first token up; the page holds a renewed one, and renews it on
    let renewed = s["renewals"].as_i64();
    assert!(renewed >= Some(1), "{s}");
    dash.until("the next renewal", |s| s["renewals"].as_i64() > renewed)
        .await;

    restart_and_resume(hub, env, &admin, &dash).await;
}

/// Stop the hub and start it again on the same address and data (the page's disconnect),
/// publish three more events, and see the page show 1..6 with no gap or duplicate, having
/// reconnected by position (after 3), live again; the page's last state.
async fn restart_and_resume(mut hub: Hub, env: HubEnv, admin: &str, dash: &Dashboard) -> Value {
    hub.terminate();
    let dir = std::mem::replace(&mut hub.data_dir, tempfile::tempdir().unwrap());
    drop(hub);
    let hub = Hub::start_in(env.var("HUB_AUTH__MODE", "required"), dir).await;
    publish(&hub, admin, "b", &["p1", "p1", "p1"]).await;
    let s = dash.until("events 1..6", |s| numbers(s).len() >= 6).await;
    assert_eq!(numbers(&s), [1, 2, 3, 4, 5, 6], "no gap, no duplicate: {s}");
    assert!(s["reconnects"].as_i64() >= Some(1), "{s}");
    // it came back by position, not live
    assert_eq!(
        s["resumedAfter"].as_array().unwrap().last(),
        Some(&json!(3)),
        "{s}"
    );
    assert_eq!(s["status"], "live", "{s}");
    s
}
