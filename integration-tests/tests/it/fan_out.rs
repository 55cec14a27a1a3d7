//! Peak memory of the hub process for one large fan-out batch: many subscriptions that all
//! match every event of a batch. A measurement, not a pass/fail test (it takes minutes), so
//! it is ignored unless asked for:
//!
//! `cargo test -p integration-tests --test it fan_out -- --ignored --nocapture`
//!
//! `FHIR_HUB_FAN_OUT_SUBSCRIPTIONS` (10,000) subscriptions, `FHIR_HUB_FAN_OUT_EVENTS` (500)
//! events in one batch; `FHIR_HUB_FAN_OUT_CHUNK` sets
//! `matcher.max_notifications_per_transaction` (a huge value logs a batch in one
//! transaction, as the hub did before the bound). It prints the process's VmHWM (peak
//! resident memory) before the batch and once all its notifications are logged.
//!
//! Measured on the debug build, SQLite, 10,000 subscriptions × 100 events (1,000,000
//! notifications): a batch in one transaction peaked at 1,004,856 kB (from 70,580 kB before
//! the batch); in transactions of 10,000 notifications at 114,652 kB (from 70,576 kB). The
//! full 500-event batch (5,000,000 notification rows): in one
//! transaction 4,761,656 kB (from 73,816 kB), in transactions of 10,000 114,844 kB (from
//! 78,228 kB).

use std::time::{Duration, Instant};

use futures::StreamExt;
use hub_log::EventLog;
use serde_json::json;

use crate::harness::{Hub, HubEnv, envelope, glucose};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A line of `/proc/<pid>/status` in kB (`VmHWM`, `VmRSS`).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn logged(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("fhir_hub_notifications_logged_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement taking minutes: run it by name with --ignored --nocapture"]
async fn fan_out_batch_peak_memory() {
    let subs = env_or("FHIR_HUB_FAN_OUT_SUBSCRIPTIONS", 10_000);
    let events = env_or("FHIR_HUB_FAN_OUT_EVENTS", 500);
    // no delivery role: the subscriptions stay `requested`, are matched, and nothing is sent
    let mut env = HubEnv::default()
        .arg("--roles")
        .arg("api,matcher")
        .var("HUB_MATCHER__BATCH_SIZE", &events.to_string());
    if let Ok(chunk) = std::env::var("FHIR_HUB_FAN_OUT_CHUNK") {
        env = env.var("HUB_MATCHER__MAX_NOTIFICATIONS_PER_TRANSACTION", &chunk);
    }
    let hub = Hub::start(env).await;
    let pid = hub.child.id();
    let started = Instant::now();
    let subscription = json!({"resourceType": "Subscription", "status": "requested",
        "reason": "fan-out", "criteria": "Observation?code=http://loinc.org|2345-7",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}});
    let created = futures::stream::iter(0..subs)
        .map(|_| hub.post_json("/fhir/Subscription", &subscription))
        .buffer_unordered(8)
        .filter(|(status, _)| std::future::ready(*status == 201))
        .count()
        .await;
    assert_eq!(created, subs);
    eprintln!("{subs} subscriptions created in {:?}", started.elapsed());

    let log = hub_log::embedded::EmbeddedLog::open(&hub.data_dir.path().join("log.db"))
        .await
        .unwrap();
    let records: Vec<hub_log::Record> = (0..events)
        .map(|i| {
            let id = format!("f{i}");
            hub_log::Record {
                key: format!("Observation/{id}"),
                payload: envelope(&glucose(&id), "create").to_string().into_bytes(),
            }
        })
        .collect();
    let hwm_before = proc_kb(pid, "VmHWM");
    let started = Instant::now();
    log.publish("fhir.changes", &records).await.unwrap();
    let want = (subs * events) as u64;
    loop {
        let got = logged(&hub.metrics().await);
        if got >= want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "{got} of {want} notifications logged after an hour"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let hwm_after = proc_kb(pid, "VmHWM");
    println!(
        "fan-out {subs} subscriptions x {events} events = {want} notifications in {:?}: \
         VmHWM {hwm_before} kB before the batch, {hwm_after} kB after (VmRSS now {} kB)",
        started.elapsed(),
        proc_kb(pid, "VmRSS")
    );
}
