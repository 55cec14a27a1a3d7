//! Topic matching at scale: one "lab result became final" topic with 100,000 subscriptions,
//! each filtering on its own patient (the EHR-per-patient pattern), over Synthea
//! Observations. The subscribers' filters are indexed like R4 criteria; the same events are
//! also matched by evaluating every subscriber's filter (what the index replaces), on a
//! sample, in the same run.
//!
//! Run: `taskset -c 0 cargo bench -p fhir-hub --bench topics` (needs the Synthea data set:
//! `FHIR_HUB_SYNTHEA` or ../shared/data beside the repository).

use std::io::{BufRead, BufReader};
use std::time::Instant;

use fhir_hub::matcher::topic_index::TopicIndex;
use hub_fhir::ChangeEvent;
use hub_store::{SubscriptionRow, SubscriptionWrite, TopicRow};
use serde_json::{Value, json};
use time::OffsetDateTime;

const SUBSCRIPTIONS: usize = 100_000;
const URL: &str = "http://example.org/topics/lab-final";

#[path = "../../fhir/benches/synthea/mod.rs"]
mod synthea;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(data) = synthea::full() else {
        return Ok(());
    };
    let mut events = Vec::new();
    let mut patients = Vec::new();
    for line in BufReader::new(flate2::read::GzDecoder::new(std::fs::File::open(&data)?)).lines() {
        let line = line?;
        if line.starts_with("{\"resourceType\":\"Patient\"") {
            let v: Value = serde_json::from_str(&line)?;
            patients.push(format!("Patient/{}", v["id"].as_str().unwrap_or("")));
        }
        if line.starts_with("{\"resourceType\":\"Observation\"") && events.len() < 20_000 {
            let v: Value = serde_json::from_str(&line)?;
            events.push(ChangeEvent::from_resource(v, None, "default")?);
        }
    }
    let topic = json!({
        "resourceType": "SubscriptionTopic", "url": URL, "status": "active",
        "resourceTrigger": [{"resource": "Observation", "supportedInteraction": ["create", "update"],
            "queryCriteria": {"current": "status=final"},
            "fhirPathCriteria": "%current.category.coding.where(code = 'laboratory').exists()"}],
        "canFilterBy": [{"resource": "Observation", "filterParameter": "patient"}]
    });
    let topics = vec![TopicRow {
        tenant: "default".into(),
        id: "lab".into(),
        url: URL.into(),
        version_id: 1,
        last_updated: "2024-01-01T00:00:00Z".into(),
        resource: topic.to_string(),
    }];
    let sub = |i: usize| {
        // the real patients first, then synthetic ones
        let patient = patients
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("Patient/synthetic-{i}"));
        let resource = json!({
            "resourceType": "Subscription", "status": "active", "reason": "bench", "criteria": URL,
            "_criteria": {"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
                                         "valueString": format!("Observation?patient={patient}")}]},
            "channel": {"type": "rest-hook", "endpoint": "https://example.org/hook", "payload": "application/fhir+json"}
        });
        SubscriptionRow {
            tenant: "default".into(),
            id: format!("s{i}"),
            version_id: 1,
            last_updated: "2024-01-01T00:00:00Z".into(),
            events_since_start: 0,
            error: None,
            log_key: hub_store::LogKey::for_tests(i as i64 + 1),
            write: SubscriptionWrite {
                status: "active".into(),
                criteria: URL.into(),
                channel_type: "rest-hook".into(),
                endpoint: "https://example.org/hook".into(),
                resource: resource.to_string(),
                secret: None,
                client_certificate: None,
                owner: None,
            },
        }
    };
    let rows: Vec<SubscriptionRow> = (0..SUBSCRIPTIONS).map(sub).collect();
    let t = Instant::now();
    let subs = fhir_hub::model::Catalog::default().read_all(rows.clone());
    let index = TopicIndex::build(&topics, &subs);
    let build = t.elapsed();
    println!(
        "topic index: {} subscriptions built in {:.2} s; {} events",
        index.len(),
        build.as_secs_f64(),
        events.len()
    );

    let now = OffsetDateTime::now_utc();
    let t = Instant::now();
    let mut matched = 0usize;
    for e in &events {
        let mut out = Vec::new();
        index.matches(e, now, now, &mut out, &mut Vec::new());
        matched += out.len();
    }
    let secs = t.elapsed().as_secs_f64();
    let indexed_rate = events.len() as f64 / secs;
    println!(
        "indexed: {indexed_rate:.0} events/s ({matched} notifications, {:.2} per event)",
        matched as f64 / events.len() as f64
    );

    // what the index replaces: every subscriber's filter on every fired event
    let filters: Vec<hub_fhir::topic::Filter> = rows
        .iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_str(&r.resource).ok()?;
            let f = v
                .pointer("/_criteria/extension/0/valueString")?
                .as_str()?
                .to_owned();
            let topic = hub_fhir::topic::parse(&topics[0].resource.parse::<Value>().ok()?).ok()?;
            hub_fhir::topic::parse_filter(&topic, &f, "f").ok()
        })
        .collect();
    let parsed = hub_fhir::topic::parse(&topic).map_err(|oo| oo.summary())?;
    let sample = &events[..200];
    let t = Instant::now();
    let mut linear_matched = 0usize;
    for e in sample {
        let fired = parsed.triggers.iter().any(|tr| {
            tr.fires(
                e.action,
                &e.resource_type,
                e.resource.as_ref(),
                e.previous.as_ref(),
            ) == Ok(true)
        });
        if fired {
            linear_matched += filters
                .iter()
                .filter(|f| f.accepts(&e.resource_type, e.resource.as_ref(), None))
                .count();
        }
    }
    let linear_rate = sample.len() as f64 / t.elapsed().as_secs_f64();
    let mut check = 0usize;
    for e in sample {
        let mut out = Vec::new();
        index.matches(e, now, now, &mut out, &mut Vec::new());
        check += out.len();
    }
    println!(
        "linear (every filter, first {} events): {linear_rate:.0} events/s ({linear_matched} notifications; indexed found {check})",
        sample.len()
    );
    println!("indexed / linear: {:.0}x", indexed_rate / linear_rate);
    Ok(())
}
