//! Every disclosure is authorized for its reader (`channels::disclosure`): a reader × channel
//! matrix over `$events`, SSE, the websocket (Backport and classic R4 protocols) and gRPC
//! `Subscribe`/`Consume`, read by the real Python clients. Stream credentials (revocation,
//! binding tokens) are in `stream_credentials`.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, PyClient, require_external};
use crate::security::{admin_key, call, cli_key};
use crate::streams::hub_channel;
use crate::topics::{event, obs, param, subscription, topic};

/// The events every test publishes: event number n is about `PATIENTS[n - 1]`.
const PATIENTS: [&str; 4] = ["p1", "p2", "p3", "p9"];

/// A hub in `required` mode with an all-powerful operator key (topics, publishing, audit).
pub(crate) async fn hub(env: HubEnv) -> (Hub, String) {
    let dir = tempfile::tempdir().unwrap();
    let admin = cli_key(
        dir.path(),
        "default",
        "hub/admin hub/publish system/*.cruds",
    );
    let hub = Hub::start_in(env.var("HUB_AUTH__MODE", "required"), dir).await;
    let (s, _, t) = call(
        &hub,
        Method::POST,
        "/fhir/SubscriptionTopic",
        Some(&admin),
        Some(&topic()),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    (hub, admin)
}

/// Create `body` as `owner`; its id.
pub(crate) async fn create(hub: &Hub, owner: &str, body: &Value) -> String {
    let (s, _, b) = call(
        hub,
        Method::POST,
        "/fhir/Subscription",
        Some(owner),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().unwrap().to_owned()
}

pub(crate) fn websocket_topic_subscription() -> Value {
    let mut s = subscription("unused", Some("full-resource"), None);
    s["channel"] = json!({"type": "websocket", "payload": "application/fhir+json",
        "_payload": s["channel"]["_payload"].clone()});
    s
}

fn classic_websocket_subscription() -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "classic",
           "criteria": "Observation?code=http://loinc.org|2345-7",
           "channel": {"type": "websocket"}})
}

/// Publish the final lab results `{prefix}1..` of `patients`, in order.
pub(crate) async fn publish(hub: &Hub, admin: &str, prefix: &str, patients: &[&str]) {
    for (i, p) in patients.iter().enumerate() {
        let o = obs(
            &format!("{prefix}{}", i + 1),
            "final",
            &format!("Patient/{p}"),
        );
        let (s, _, b) = call(
            hub,
            Method::POST,
            "/events",
            Some(admin),
            Some(&event("create", &o, None)),
        )
        .await;
        assert_eq!(s, 202, "{b}");
    }
}

/// Wait until `id` counted `n` events.
async fn wait_count(hub: &Hub, admin: &str, id: &str, n: i64) {
    for _ in 0..300 {
        let (_, _, st) = call(
            hub,
            Method::GET,
            &format!("/fhir/Subscription/{id}/$status"),
            Some(admin),
            None,
        )
        .await;
        let status = &st["entry"][0]["resource"];
        if param(status, "events-since-subscription-start")
            .is_some_and(|p| p["valueString"].as_str() == Some(n.to_string().as_str()))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Subscription/{id} never counted {n} events");
}

/// What a notification bundle shows: per event, its number and its focus (None: withheld or
/// empty), and the ids of the resources it carries.
fn shown(bundle: &Value) -> (Vec<(i64, Option<String>)>, Vec<String>) {
    let status = &bundle["entry"][0]["resource"];
    let events = status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|e| {
            let parts = e["part"].as_array().unwrap();
            let number = parts.iter().find(|p| p["name"] == "event-number").unwrap()["valueString"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let focus = parts.iter().find(|p| p["name"] == "focus").map(|p| {
                p["valueReference"]["reference"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            });
            (number, focus)
        })
        .collect();
    let resources = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    (events, resources)
}

/// A reader of the matrix: its scopes, its patient context, the event numbers its grant
/// reaches (`None`: it may read none of the subscriptions' resource types: refused).
struct Reader {
    name: &'static str,
    scopes: &'static str,
    patient: Option<&'static str>,
    sees: Option<&'static [i64]>,
}

const READERS: [Reader; 6] = [
    Reader {
        name: "no resource scope",
        scopes: "system/Subscription.rs",
        patient: None,
        sees: None,
    },
    Reader {
        name: "another resource type",
        scopes: "system/Subscription.rs system/Encounter.rs",
        patient: None,
        sees: None,
    },
    Reader {
        // SMART v2 user/: what the user may see; without a patient context, nothing
        name: "a user/ scope without a patient context",
        scopes: "system/Subscription.rs user/Observation.rs",
        patient: None,
        sees: None,
    },
    Reader {
        name: "another patient",
        scopes: "system/Subscription.rs patient/Observation.rs",
        patient: Some("p9"),
        sees: Some(&[4]),
    },
    Reader {
        name: "the same patient",
        scopes: "system/Subscription.rs patient/Observation.rs",
        patient: Some("p1"),
        sees: Some(&[1]),
    },
    Reader {
        name: "full scope",
        scopes: "system/Subscription.rs system/Observation.rs",
        patient: None,
        sees: Some(&[1, 2, 3, 4]),
    },
];

/// A bundle of events 1..=4 (or one event) as `sees` allows: every number present, the
/// focus of exactly the events seen, and their resources at full-resource.
fn assert_allowed(what: &str, bundle: &Value, numbers: &[i64], sees: &[i64], prefix: &str) {
    assert_shown(what, bundle, numbers, sees, prefix, true);
}

fn assert_shown(
    what: &str,
    bundle: &Value,
    numbers: &[i64],
    sees: &[i64],
    prefix: &str,
    full: bool,
) {
    let (events, resources) = shown(bundle);
    assert_eq!(
        events.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        numbers,
        "{what}: every event number, gap-free"
    );
    for (n, focus) in &events {
        assert_eq!(
            focus.is_some(),
            sees.contains(n),
            "{what}: event {n} focus {focus:?}"
        );
    }
    let expected: Vec<String> = numbers
        .iter()
        .filter(|n| full && sees.contains(n))
        .map(|n| format!("{prefix}{n}"))
        .collect();
    assert_eq!(resources, expected, "{what}: the resources carried");
}

/// The disclosure rows of `sub`: (agent, channel, entity).
pub(crate) async fn disclosed(
    hub: &Hub,
    admin: &str,
    sub: &str,
) -> BTreeSet<(String, String, String)> {
    let (s, _, b) = call(
        hub,
        Method::GET,
        &format!("/fhir/AuditEvent?subscription={sub}&_count=1000"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["type"]["code"] == "110106")
        .map(|r| {
            let agent = r["agent"][0]["who"]["identifier"]["value"]
                .as_str()
                .unwrap()
                .to_owned();
            let entity = r["entity"][0]["what"]["reference"]
                .as_str()
                .unwrap()
                .to_owned();
            let channel = r["entity"][1]["detail"][0]["valueString"]
                .as_str()
                .unwrap()
                .to_owned();
            (agent, channel, entity)
        })
        .collect()
}

/// The audit rows a reader that sees `sees` leaves on `channels`.
fn rows(
    agent: &str,
    channels: &[&str],
    sees: &[i64],
    prefix: &str,
) -> Vec<(String, String, String)> {
    channels
        .iter()
        .flat_map(|c| {
            sees.iter().map(move |n| {
                (
                    agent.to_owned(),
                    (*c).to_owned(),
                    format!("Observation/{prefix}{n}"),
                )
            })
        })
        .collect()
}

#[tokio::test]
async fn every_disclosure_is_what_the_readers_grant_allows() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let (hub, admin) = hub(HubEnv::default()).await;
    let (_, owner) = admin_key(
        &hub,
        &admin,
        json!({"scopes": "system/Subscription.cruds system/Observation.rs"}),
    )
    .await;
    let sse = create(&hub, &owner, &hub_channel("sse", "full-resource")).await;
    let id_only = create(&hub, &owner, &hub_channel("sse", "id-only")).await;
    let ws = create(&hub, &owner, &websocket_topic_subscription()).await;
    let grpc = create(&hub, &owner, &hub_channel("grpc", "full-resource")).await;
    let classic = create(&hub, &owner, &classic_websocket_subscription()).await;
    let mut keys = Vec::new();
    for r in &READERS {
        let mut body = json!({"scopes": r.scopes, "name": r.name});
        if let Some(p) = r.patient {
            body["patient"] = json!(p);
        }
        keys.push(admin_key(&hub, &admin, body).await);
    }
    let ws_url = format!(
        "{}/fhir/$subscription-ws",
        hub.url.replacen("http", "ws", 1)
    );
    let target = hub.grpc_url.trim_start_matches("http://").to_owned();

    // the classic R4 protocol pings live events only: bind before publishing
    let mut classic_clients = Vec::new();
    for (r, (_, key)) in READERS.iter().zip(&keys) {
        let count = r.sees.map_or(2, |s| 1 + s.len()).to_string();
        let c = PyClient::start_with(
            &python,
            "ws_client.py",
            &[&ws_url, &format!("classic:{classic}"), &count],
            &[("FHIR_HUB_TOKEN", key)],
        );
        let first = c.next("classic bind");
        match r.sees {
            Some(_) => assert_eq!(first["text"], format!("bound {classic}"), "{}", r.name),
            None => {
                assert!(
                    first["text"].as_str().unwrap().starts_with("error "),
                    "{}: {first}",
                    r.name
                );
                let closed = c.next("classic refusal closes");
                assert_eq!(closed["closed"], 1008, "{}: {closed}", r.name);
            }
        }
        classic_clients.push(c);
    }
    publish(&hub, &admin, "m", &PATIENTS).await;
    for id in [&sse, &id_only, &ws, &grpc, &classic] {
        wait_count(&hub, &admin, id, 4).await;
    }

    for (r, (key_id, key)) in READERS.iter().zip(&keys) {
        let who = r.name;
        let events = |id: &str, q: &str| {
            let path = format!("/fhir/Subscription/{id}/$events{q}");
            let hub = &hub;
            async move { call(hub, Method::GET, &path, Some(key), None).await }
        };
        let Some(sees) = r.sees else {
            // refused at connect, on every channel, with a 403 / PERMISSION_DENIED
            assert_eq!(events(&sse, "").await.0, 403, "{who}: $events");
            let (s, _, _) = call(
                &hub,
                Method::GET,
                &format!("/fhir/Subscription/{sse}/$stream?from=1"),
                Some(key),
                None,
            )
            .await;
            assert_eq!(s, 403, "{who}: SSE");
            let (s, _, _) = call(
                &hub,
                Method::GET,
                &format!("/fhir/Subscription/{ws}/$get-ws-binding-token"),
                Some(key),
                None,
            )
            .await;
            assert_eq!(s, 403, "{who}: websocket binding token");
            for args in [
                vec![target.as_str(), "subscribe", grpc.as_str(), "1", "4"],
                vec![
                    target.as_str(),
                    "consume",
                    key_id.as_str(),
                    grpc.as_str(),
                    "4",
                ],
            ] {
                let g = PyClient::start_with(
                    &python,
                    "grpc_client.py",
                    &args,
                    &[("FHIR_HUB_TOKEN", key)],
                );
                assert_eq!(
                    g.next("gRPC refusal")["error"],
                    "PERMISSION_DENIED",
                    "{who}: {args:?}"
                );
            }
            continue;
        };

        // REST $events, at the subscription's level and below it, never above it
        let (s, _, b) = events(&sse, "").await;
        assert_eq!(s, 200, "{who}: {b}");
        assert_allowed(&format!("{who} $events"), &b, &[1, 2, 3, 4], sees, "m");
        let (s, _, b) = events(&sse, "?content=id-only").await;
        assert_eq!(s, 200, "{who}: {b}");
        assert_shown(
            &format!("{who} $events id-only"),
            &b,
            &[1, 2, 3, 4],
            sees,
            "m",
            false,
        );
        assert_eq!(
            events(&id_only, "?content=full-resource").await.0,
            403,
            "{who}: $events may not raise an id-only subscription's content"
        );

        // SSE, from the first event
        let c = PyClient::start_with(
            &python,
            "sse_client.py",
            &[
                &format!("{}/fhir/Subscription/{sse}/$stream?from=1", hub.url),
                "5",
            ],
            &[("FHIR_HUB_TOKEN", key)],
        );
        assert_eq!(c.next("SSE handshake")["event"], "handshake", "{who}");
        for n in 1..=4 {
            let e = c.next("SSE notification");
            assert_eq!(e["id"], n.to_string(), "{who}: {e}");
            let bundle: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
            assert_allowed(&format!("{who} SSE"), &bundle, &[n], sees, "m");
        }

        // the websocket (Backport IG), resuming from before the first event
        let (s, _, p) = call(
            &hub,
            Method::GET,
            &format!("/fhir/Subscription/{ws}/$get-ws-binding-token"),
            Some(key),
            None,
        )
        .await;
        assert_eq!(s, 200, "{who}: {p}");
        let token = param(&p, "token").unwrap()["valueString"].as_str().unwrap();
        let c = PyClient::start(&python, "ws_client.py", &[&ws_url, token, "5", "0"]);
        assert_eq!(
            param(&c.next("ws handshake")["entry"][0]["resource"], "type").unwrap()["valueCode"],
            "handshake"
        );
        for n in 1..=4 {
            let bundle = c.next("ws notification");
            assert_allowed(&format!("{who} websocket"), &bundle, &[n], sees, "m");
        }

        // the classic websocket: one ping per event seen, none for the others
        let c = &classic_clients[READERS.iter().position(|x| x.name == who).unwrap()];
        for _ in sees {
            assert_eq!(
                c.next("classic ping")["text"],
                format!("ping {classic}"),
                "{who}"
            );
        }

        // gRPC Subscribe and Consume
        for args in [
            vec![target.as_str(), "subscribe", grpc.as_str(), "1", "4"],
            vec![
                target.as_str(),
                "consume",
                key_id.as_str(),
                grpc.as_str(),
                "4",
            ],
        ] {
            let g =
                PyClient::start_with(&python, "grpc_client.py", &args, &[("FHIR_HUB_TOKEN", key)]);
            for n in 1..=4 {
                let m = g.next("gRPC notification");
                assert_eq!(m["event_number"], n, "{who} {args:?}: {m}");
                let focus = sees.contains(&n);
                assert_eq!(m["focus_id"] != "", focus, "{who} {args:?}: {m}");
                assert_allowed(&format!("{who} gRPC"), &m["bundle"], &[n], sees, "m");
            }
        }
    }

    // each disclosure row names its reader, for exactly what that reader was shown
    let agent = |i: usize| format!("key:{}", keys[i].0);
    let mut want_sse = BTreeSet::new();
    let mut want_ws = BTreeSet::new();
    let mut want_classic = BTreeSet::new();
    let mut want_grpc = BTreeSet::new();
    for (i, r) in READERS.iter().enumerate() {
        let Some(sees) = r.sees else { continue };
        want_sse.extend(rows(&agent(i), &["$events", "sse"], sees, "m"));
        want_ws.extend(rows(&agent(i), &["websocket"], sees, "m"));
        want_classic.extend(rows(&agent(i), &["websocket"], sees, "m"));
        want_grpc.extend(rows(&agent(i), &["grpc"], sees, "m"));
    }
    assert_eq!(disclosed(&hub, &admin, &sse).await, want_sse);
    assert_eq!(disclosed(&hub, &admin, &ws).await, want_ws);
    assert_eq!(disclosed(&hub, &admin, &classic).await, want_classic);
    assert_eq!(disclosed(&hub, &admin, &grpc).await, want_grpc);
}
