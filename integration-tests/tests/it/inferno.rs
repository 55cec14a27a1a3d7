//! The Inferno Subscriptions Test Kit's R4 server suite (`subscriptions_r5_backport_r4_server`,
//! kit v0.12.1, Subscriptions R5 Backport IG 1.1.0), ported to drive the real binary the way
//! the kit drives a server: Inferno acts as the client, creates subscriptions from its
//! sample resources, receives notifications on its own rest-hook endpoint (answering 200,
//! tagging each request by its notification type and subscription), then verifies.
//!
//! Every check carries the id of the kit test it comes from (`subscriptions_r4_server_…`) or,
//! for what the kit leaves to a human or does not cover, the IG requirement it comes from
//! (`hl7.fhir.uv.subscriptions_1.1.0@N`, the kit's requirement numbering). The kit reports
//! errors and warnings; a warning there is an IG SHOULD, and this port fails on both (the
//! hub follows the SHOULDs; docs/conformance.md lists where it does not and why).
//!
//! The kit validates with the HL7 Java validator and the IG package; neither is served by a
//! registry this project reaches, so resources are validated by the `fhir.resources` models
//! (R4B models for R4, see `python/validate_bundle.py`), by the R4 resource type list, and
//! by the IG profiles' and R4 Bundle/Parameters invariants, written out below.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, require_external};

const IG: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const SUBSCRIPTION_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
const SERVER_CAPABILITIES: &str = "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4";
const TOPIC_CANONICAL_EXT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical";
const TOPIC: &str = "http://example.org/topics/patient-admission";
/// The kit's notification access token (its `access_token` input).
const ACCESS_TOKEN: &str = "SAMPLE_TOKEN";

// ---------------------------------------------------------------------------------------
// The report: the kit's add_message('error' | 'warning', …), failing on either.

struct Report {
    findings: Vec<String>,
    /// Resources to validate with `fhir.resources` at the end, with where they came from.
    resources: Vec<(String, Value)>,
    python: String,
}

impl Report {
    fn new(python: &str) -> Report {
        Report {
            findings: Vec::new(),
            resources: Vec::new(),
            python: python.to_owned(),
        }
    }

    fn error(&mut self, test: &str, msg: impl std::fmt::Display) {
        self.findings.push(format!("error   [{test}] {msg}"));
    }

    fn warning(&mut self, test: &str, msg: impl std::fmt::Display) {
        self.findings.push(format!("warning [{test}] {msg}"));
    }

    fn check(&mut self, test: &str, ok: bool, msg: impl std::fmt::Display) {
        if !ok {
            self.error(test, msg);
        }
    }

    /// The kit's `assert_valid_resource`: the R4 checks written here now, the model
    /// validation in one Python run at the end.
    fn validate(&mut self, test: &str, what: &str, resource: &Value) {
        r4_only(self, test, resource, "");
        match resource["resourceType"].as_str() {
            Some("Bundle") => bundle_invariants(self, test, resource),
            Some("Parameters") => parameters_invariants(self, test, resource),
            _ => {}
        }
        self.resources
            .push((format!("{test}: {what}"), resource.clone()));
    }

    /// Validate what was collected, then fail with every finding.
    fn finish(mut self) {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, (_, r)) in self.resources.iter().enumerate() {
            let f = dir.path().join(format!("{i}.json"));
            std::fs::write(&f, r.to_string()).unwrap();
            files.push(f);
        }
        if !files.is_empty() {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/validate_bundle.py");
            // one file at a time would cost a Python start each; the script stops at the
            // first invalid file, so run again past it to report every one
            let mut from = 0;
            while from < files.len() {
                let out = std::process::Command::new(&self.python)
                    .arg(script)
                    .arg("R4")
                    .args(&files[from..])
                    .output()
                    .unwrap();
                let valid = String::from_utf8_lossy(&out.stdout).lines().count();
                if out.status.success() {
                    break;
                }
                let bad = from + valid;
                let (what, r) = &self.resources[bad.min(self.resources.len() - 1)];
                self.findings.push(format!(
                    "error   [{what}] not a valid R4 resource (fhir.resources): {}\n{r}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                from = bad + 1;
            }
        }
        assert!(
            self.findings.is_empty(),
            "the ported Inferno checks found:\n{}",
            self.findings.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Structural checks the HL7 validator would make (R4 core invariants and the IG profiles).

/// Resource types must be R4's; R4 has no integer64.
fn r4_only(r: &mut Report, test: &str, v: &Value, path: &str) {
    match v {
        Value::Object(map) => {
            if let Some(t) = map.get("resourceType").and_then(Value::as_str)
                && !hub_fhir::resource_types::is_r4_resource_type(t)
            {
                r.error(test, format!("{path}: '{t}' is not an R4 resource type"));
            }
            for (k, child) in map {
                if k.starts_with("valueInteger64") {
                    r.error(test, format!("{path}.{k}: R4 has no integer64"));
                }
                r4_only(r, test, child, &format!("{path}.{k}"));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                r4_only(r, test, item, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// R4 Bundle invariants bdl-1..bdl-4, bdl-7, bdl-8, and fullUrl/id agreement.
fn bundle_invariants(r: &mut Report, test: &str, b: &Value) {
    let ty = b["type"].as_str().unwrap_or("");
    if b.get("total").is_some() && !matches!(ty, "searchset" | "history") {
        r.error(
            test,
            format!("bdl-1: total only in searchset or history, not {ty}"),
        );
    }
    let mut full_urls = Vec::new();
    for (i, e) in b["entry"].as_array().into_iter().flatten().enumerate() {
        if e.get("search").is_some() && ty != "searchset" {
            r.error(
                test,
                format!("bdl-2: entry[{i}].search only in a searchset, not {ty}"),
            );
        }
        let request_allowed = matches!(ty, "batch" | "transaction" | "history");
        if e.get("request").is_some() != request_allowed {
            r.error(
                test,
                format!("bdl-3: entry[{i}].request is mandatory for batch/transaction/history and otherwise prohibited ({ty})"),
            );
        }
        let response_allowed = matches!(ty, "batch-response" | "transaction-response" | "history");
        if e.get("response").is_some() != response_allowed {
            r.error(
                test,
                format!("bdl-4: entry[{i}].response is mandatory for batch-response/transaction-response/history and otherwise prohibited ({ty})"),
            );
        }
        if let Some(url) = e["fullUrl"].as_str() {
            if url.contains("/_history/") {
                r.error(
                    test,
                    format!("bdl-8: entry[{i}].fullUrl is version specific: {url}"),
                );
            }
            if let (Some(rt), Some(id)) = (
                e["resource"]["resourceType"].as_str(),
                e["resource"]["id"].as_str(),
            ) {
                let agrees = if url.starts_with("urn:uuid:") {
                    url == format!("urn:uuid:{id}")
                } else {
                    url.ends_with(&format!("/{rt}/{id}"))
                };
                if !agrees {
                    r.error(
                        test,
                        format!("entry[{i}].fullUrl {url} does not name {rt}/{id}"),
                    );
                }
            }
            full_urls.push(url.to_owned());
        }
        if let Some(res) = e.get("resource")
            && res["resourceType"] == "Parameters"
        {
            parameters_invariants(r, test, res);
        }
    }
    if ty != "history" {
        let mut sorted = full_urls.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != full_urls.len() {
            r.error(test, "bdl-7: fullUrl must be unique in a bundle");
        }
    }
}

/// R4 Parameters inv-1: a parameter has exactly one of value[x], resource and part; and
/// Parameters is a Resource, so it has no extension.
fn parameters_invariants(r: &mut Report, test: &str, p: &Value) {
    if p.get("extension").is_some() || p.get("modifierExtension").is_some() {
        r.error(
            test,
            "Parameters is not a DomainResource: it cannot have extension",
        );
    }
    fn each(r: &mut Report, test: &str, params: &Value, path: &str) {
        for (i, x) in params.as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}[{i}]");
            if x["name"].as_str().is_none_or(str::is_empty) {
                r.error(test, format!("{at}: a parameter needs a name"));
            }
            let values = x
                .as_object()
                .map(|o| o.keys().filter(|k| k.starts_with("value")).count())
                .unwrap_or(0);
            let resource = usize::from(x.get("resource").is_some());
            let part = x.get("part").is_some();
            let ok = if part {
                values == 0 && resource == 0
            } else {
                values + resource == 1
            };
            if !ok {
                r.error(
                    test,
                    format!("inv-1: {at} needs exactly one of value[x], resource, part"),
                );
            }
            if part {
                each(r, test, &x["part"], &format!("{at}.part"));
            }
        }
    }
    each(r, test, &p["parameter"], "Parameters.parameter");
}

fn params<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
    p["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == name)
        .collect()
}

fn parts<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
    p["part"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == name)
        .collect()
}

/// The backport-subscription-status-r4 profile: cardinalities and types of its slices.
fn status_profile(r: &mut Report, test: &str, p: &Value) {
    if p["resourceType"] != "Parameters" {
        r.error(
            test,
            format!(
                "Unexpected resource type: Expected `Parameters`. Got `{}`",
                p["resourceType"]
            ),
        );
        return;
    }
    let one = |r: &mut Report, name: &str, value: &str, min: usize| {
        let found = params(p, name);
        if found.len() < min || found.len() > 1 {
            r.error(
                test,
                format!(
                    "backport-subscription-status-r4: parameter '{name}' is {min}..1, found {}",
                    found.len()
                ),
            );
        }
        for f in found {
            if f.get(value).is_none() {
                r.error(
                    test,
                    format!(
                        "backport-subscription-status-r4: parameter '{name}' must be {value}: {f}"
                    ),
                );
            }
        }
    };
    one(r, "subscription", "valueReference", 1);
    one(r, "topic", "valueCanonical", 0);
    one(r, "status", "valueCode", 1);
    one(r, "type", "valueCode", 1);
    one(r, "events-since-subscription-start", "valueString", 0);
    if let Some(s) = params(p, "status")
        .first()
        .and_then(|s| s["valueCode"].as_str())
        && !matches!(
            s,
            "requested" | "active" | "error" | "off" | "entered-in-error"
        )
    {
        r.error(test, format!("status '{s}' is not in subscription-status"));
    }
    if let Some(t) = params(p, "type")
        .first()
        .and_then(|s| s["valueCode"].as_str())
        && !matches!(
            t,
            "handshake" | "heartbeat" | "event-notification" | "query-status" | "query-event"
        )
    {
        r.error(
            test,
            format!("type '{t}' is not in subscription-notification-type"),
        );
    }
    for ev in params(p, "notification-event") {
        let numbers = parts(ev, "event-number");
        if numbers.len() != 1 || numbers[0]["valueString"].as_str().is_none() {
            r.error(
                test,
                format!("notification-event needs one event-number (valueString): {ev}"),
            );
        }
        for (name, value, max) in [
            ("timestamp", "valueInstant", 1),
            ("focus", "valueReference", 1),
            ("additional-context", "valueReference", usize::MAX),
        ] {
            let found = parts(ev, name);
            if found.len() > max || found.iter().any(|x| x.get(value).is_none()) {
                r.error(
                    test,
                    format!("notification-event part '{name}' must be {value} (max {max}): {ev}"),
                );
            }
        }
    }
    for e in params(p, "error") {
        if e.get("valueCodeableConcept").is_none() {
            r.error(
                test,
                format!("parameter 'error' must be valueCodeableConcept: {e}"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Ports of lib/subscriptions_test_kit/common/notification_conformance_verification.rb.

/// `notification_verification`: a history Bundle whose first entry is the status, with
/// request and response on every entry, of the expected type (and status).
fn notification_verification(
    r: &mut Report,
    test: &str,
    body: &[u8],
    kind: &str,
    subscription_id: Option<&str>,
    status: Option<&str>,
) -> Option<Value> {
    let Ok(bundle) = serde_json::from_slice::<Value>(body) else {
        r.error(test, "Invalid JSON");
        return None;
    };
    if bundle["resourceType"] != "Bundle" {
        r.error(
            test,
            format!(
                "Unexpected resource type: expected Bundle, got {}",
                bundle["resourceType"]
            ),
        );
        return None;
    }
    r.validate(test, kind, &bundle);
    if bundle["type"] != "history" {
        r.error(
            test,
            format!(
                "Notification should be a history Bundle, instead was {}",
                bundle["type"]
            ),
        );
    }
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let Some(first) = entries.first() else {
        r.error(test, "Notification Bundle is empty.");
        return None;
    };
    // check_history_bundle_request_response
    for (i, e) in entries.iter().enumerate() {
        if e.get("request").is_none() {
            r.error(test, format!("The `entry.request` field is mandatory for history Bundles, but was not included in entry {}", i + 1));
        }
        if e.get("response").is_none() {
            r.error(test, format!("The `entry.response` field is mandatory for history Bundles, but was not included in entry {}", i + 1));
        }
    }
    let url = first["request"]["url"].as_str().unwrap_or("");
    // the kit's rule is for notifications; an `$events` answer (query-event) names `$events`
    let op = if kind == "query-event" {
        "$events"
    } else {
        "$status"
    };
    let status_request_ok = match subscription_id {
        Some(id) => url.ends_with(&format!("Subscription/{id}/{op}")),
        None => url.contains("Subscription/") && url.ends_with(&format!("/{op}")),
    };
    if !status_request_ok {
        r.error(test, format!("The SubscriptionStatus `request` SHALL be filled out to match a request to the {op} operation (was {url})"));
    }
    let p = &first["resource"];
    status_profile(r, test, p);
    let ty = params(p, "type").first().map(|t| t["valueCode"].clone());
    if ty != Some(json!(kind)) {
        r.error(
            test,
            format!("The Subscription resource should have its `type` set to '{kind}', was {ty:?}"),
        );
    }
    if let Some(want) = status {
        let st = params(p, "status").first().map(|t| t["valueCode"].clone());
        if st != Some(json!(want)) {
            r.error(
                test,
                format!(
                    "The Subscription resource should have its `status` set to '{want}', was {st:?}"
                ),
            );
        }
    }
    Some(bundle)
}

fn status_of(bundle: &Value) -> &Value {
    &bundle["entry"][0]["resource"]
}

fn other_entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|e| e.iter().skip(1).cloned().collect())
        .unwrap_or_default()
}

/// `empty_event_notification_verification`.
fn empty_event_notification_verification(r: &mut Report, test: &str, bundle: &Value) {
    let p = status_of(bundle);
    if !params(p, "topic").is_empty() {
        r.warning(test, "Parameters.parameter:topic.value[x]: This value SHOULD NOT be present when using empty payloads");
    }
    if !other_entries(bundle).is_empty() {
        r.error(test, "When the content type is empty, notification bundles SHALL not contain Bundle.entry elements other than the SubscriptionStatus for the notification.");
    }
    let events = params(p, "notification-event");
    if events.is_empty() {
        r.error(test, "Events are required for empty notifications, but the SubscriptionStatus does not contain event-notifications");
    }
    if events
        .iter()
        .any(|e| !parts(e, "focus").is_empty() || !parts(e, "additional-context").is_empty())
    {
        r.error(test, "When populating the SubscriptionStatus.notificationEvent structure for an event notification with an empty payload, a server SHALL NOT include references to resources");
    }
}

fn entry_for_reference(entries: &[Value], reference: &str) -> bool {
    entries.iter().any(|e| {
        if reference.starts_with("urn:") {
            e["fullUrl"] == reference
        } else {
            match (
                e["resource"]["resourceType"].as_str(),
                e["resource"]["id"].as_str(),
            ) {
                (Some(t), Some(id)) => reference.contains(&format!("{t}/{id}")),
                _ => false,
            }
        }
    })
}

/// `full_resource_event_notification_verification`.
fn full_resource_event_notification_verification(r: &mut Report, test: &str, bundle: &Value) {
    let p = status_of(bundle);
    if params(p, "topic").is_empty() {
        r.warning(test, "Parameters.parameter:topic.value[x]: This value SHOULD be present when using full-resource payloads");
    }
    let entries = other_entries(bundle);
    let events = params(p, "notification-event");
    if events.is_empty() {
        r.error(test, "The notification event parameter must be present in `full-resource` notification bundles.");
    }
    for ev in events {
        match parts(ev, "focus").first() {
            None => r.error(test, "When the content type is `full-resource`, notification bundles SHALL include references to the appropriate focus resources in the SubscriptionStatus.notificationEvent.focus element"),
            Some(f) => {
                let reference = f["valueReference"]["reference"].as_str().unwrap_or("");
                if !entry_for_reference(&entries, reference) {
                    r.error(test, format!("The Notification Bundle does not include a resource entry for the reference found in SubscriptionStatus.notificationEvent.focus with id {reference}"));
                }
            }
        }
        for ac in parts(ev, "additional-context") {
            let reference = ac["valueReference"]["reference"].as_str().unwrap_or("");
            if !entry_for_reference(&entries, reference) {
                r.error(test, format!("The Notification Bundle does not include a resource entry for the reference found in SubscriptionStatus.notificationEvent.additional-context with id {reference}"));
            }
        }
    }
    // verify_full_resource_notification_bundle_entries: each resource valid (with the
    // bundle, by the Python run)
    for e in &entries {
        if e.get("resource").is_none() {
            r.error(test, "Each Bundle.entry for a full-resource notification SHALL contain a relevant resource in the entry.resource element");
        }
    }
}

/// `id_only_event_notification_verification`.
fn id_only_event_notification_verification(
    r: &mut Report,
    test: &str,
    bundle: &Value,
    resource_type: &str,
) {
    let p = status_of(bundle);
    let events = params(p, "notification-event");
    if events.is_empty() {
        r.error(
            test,
            "The notification event parameter must be present in `id-only` notification bundles.",
        );
    }
    for ev in events {
        match parts(ev, "focus").first() {
            None => {
                r.error(test, "When the content type is `id-only`, notification bundles SHALL include references to the appropriate focus resources in the SubscriptionStatus.notificationEvent.focus element");
                break;
            }
            Some(f) => {
                let reference = f["valueReference"]["reference"].as_str().unwrap_or("");
                if !reference.contains(resource_type) {
                    r.error(test, format!("The SubscriptionStatus.notificationEvent.focus should include a reference to a {resource_type} resource, the resource type the Subscription is focused on"));
                    break;
                }
            }
        }
    }
    for e in other_entries(bundle) {
        if e.get("resource").is_some() {
            r.error(
                test,
                "Each Bundle.entry for id-only notification SHALL not contain the `resource` field",
            );
        }
        if e["fullUrl"].as_str().is_none_or(str::is_empty) {
            r.error(test, "Each Bundle.entry for id-only notification SHALL contain a relevant resource URL in the fullUrl");
        }
    }
}

/// `notification_header_verification`: the content type matches channel.payload
/// (requirement @26) and every channel.header is sent as given (@27).
fn notification_header_verification(
    r: &mut Report,
    test: &str,
    headers: &[(String, String)],
    subscription: &Value,
) {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if let Some(mime) = subscription["channel"]["payload"].as_str() {
        match header("content-type") {
            None => r.error(test, format!("Content type header not sent, subscription requested {mime}")),
            Some(ct) if !ct.starts_with(mime) => r.error(test, format!("Content type of request does not match the Subscription MIME type. Expected {mime}, received {ct}")),
            Some(_) => {}
        }
    }
    for h in subscription["channel"]["header"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let h = h.as_str().unwrap_or("");
        let (name, value) = h.split_once(": ").unwrap_or((h, ""));
        match header(name) {
            None => r.error(test, format!("Requested header not sent: {h}")),
            Some(v) if v != value => r.error(test, format!("Requested value for header {name} does not match the request sent. Expected {value}, received {v}")),
            Some(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Ports of subscription_conformance_verification.rb (the kit checks its own input
// Subscription before sending it) and of the backport-subscription profile.

fn is_cross_version(url: &str) -> bool {
    url.strip_prefix("http://hl7.org/fhir/")
        .and_then(|rest| rest.split_once("/StructureDefinition/extension-Subscription."))
        .is_some_and(|(v, _)| {
            v.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn cross_version_extension_check(r: &mut Report, test: &str, v: &Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "extension" {
                    for e in child.as_array().into_iter().flatten() {
                        let url = e["url"].as_str().unwrap_or("");
                        if is_cross_version(url) {
                            r.warning(test, format!("Cross-version extensions SHOULD NOT be used on R4 subscriptions to describe any elements also described by this guide, but found the {url} extension on the Subscription resource"));
                        }
                    }
                }
                cross_version_extension_check(r, test, child);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| cross_version_extension_check(r, test, i)),
        _ => {}
    }
}

fn channel_ext<'a>(s: &'a Value, name: &str) -> Vec<&'a Value> {
    s["channel"]["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == format!("{IG}{name}"))
        .collect()
}

/// `subscription_verification` with the backport-subscription profile's rules.
fn subscription_verification(r: &mut Report, test: &str, s: &Value) {
    if s["channel"]["type"] != "rest-hook" {
        r.error(test, format!("The `type` element on the Subscription resource must be set to `rest-hook`, the {} channel type is unsupported.", s["channel"]["type"]));
    }
    let criteria = s["criteria"].as_str().unwrap_or("");
    let url_ok = (criteria.starts_with("http://") || criteria.starts_with("https://"))
        && criteria.split('/').nth(2).is_some_and(|h| !h.is_empty());
    if !url_ok {
        r.error(test, "The `criteria` element SHALL be populated and contain the canonical URL for the Subscription Topic.");
    }
    // backport-subscription: payload 1..1 with its content extension 1..1
    if s["channel"]["payload"].as_str().is_none() {
        r.error(test, "backport-subscription: channel.payload is 1..1");
    }
    let content: Vec<&Value> = s["channel"]["_payload"]["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == format!("{IG}backport-payload-content"))
        .collect();
    if content.len() != 1
        || !matches!(
            content[0]["valueCode"].as_str(),
            Some("empty" | "id-only" | "full-resource")
        )
    {
        r.error(test, "backport-subscription: channel.payload needs one backport-payload-content (empty, id-only or full-resource)");
    }
    for (name, value) in [
        ("backport-heartbeat-period", "valueUnsignedInt"),
        ("backport-timeout", "valueUnsignedInt"),
        ("backport-max-count", "valuePositiveInt"),
    ] {
        let found = channel_ext(s, name);
        if found.len() > 1 || found.iter().any(|e| e.get(value).is_none()) {
            r.error(
                test,
                format!("backport-subscription: {name} is 0..1 {value}"),
            );
        }
    }
    for f in s["_criteria"]["extension"].as_array().into_iter().flatten() {
        if f["url"] == format!("{IG}backport-filter-criteria")
            && f["valueString"].as_str().is_none()
        {
            r.error(test, "backport-filter-criteria is a valueString");
        }
    }
    cross_version_extension_check(r, test, s);
}

// ---------------------------------------------------------------------------------------
// Inferno's notification endpoint (lib/subscriptions_test_kit/endpoints/
// subscription_rest_hook_endpoint.rb): records every request, tagged with the notification
// type and subscription id read from the body, and answers 200 (or what the test sets).

#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    kind: Option<String>,
    subscription: Option<String>,
}

#[derive(Clone)]
struct EndpointState {
    requests: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
}

struct KitEndpoint {
    url: String,
    state: EndpointState,
}

async fn notification_listener(
    State(s): State<EndpointState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = parsed["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["resource"]["resourceType"] == "Parameters")
        .map(|e| e["resource"].clone())
        .unwrap_or(Value::Null);
    let kind = params(&status, "type")
        .first()
        .and_then(|t| t["valueCode"].as_str())
        .map(str::to_owned);
    let subscription = params(&status, "subscription")
        .first()
        .and_then(|t| t["valueReference"]["reference"].as_str())
        .and_then(|r| r.rsplit('/').next())
        .map(str::to_owned);
    s.requests.lock().unwrap().push(Received {
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.to_vec(),
        kind,
        subscription,
    });
    StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
}

impl KitEndpoint {
    async fn start() -> KitEndpoint {
        let state = EndpointState {
            requests: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
        };
        let app = Router::new()
            .fallback(notification_listener)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        KitEndpoint {
            url: format!(
                "http://{addr}/custom/subscriptions_r5_backport_r4_server/subscription/channel/notification_listener"
            ),
            state,
        }
    }

    /// `load_tagged_requests(kind, subscription)`.
    fn tagged(&self, kind: &str, subscription: &str) -> Vec<Received> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|x| {
                x.kind.as_deref() == Some(kind) && x.subscription.as_deref() == Some(subscription)
            })
            .cloned()
            .collect()
    }

    /// Wait until `n` requests of `kind` arrived for `subscription` (the kit waits for the
    /// tester to click "done"; here the test waits up to 30 s).
    async fn wait_for(&self, kind: &str, subscription: &str, n: usize) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.tagged(kind, subscription);
            if got.len() >= n || std::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The kit's inputs: its sample subscriptions (docs/samples/Subscription_*.json) with our
// topic, a future `end` (the samples' 2020 end has passed: such a subscription never fires)
// and Inferno's endpoint; the topic they name.

fn topic() -> Value {
    json!({
        "resourceType": "SubscriptionTopic",
        "url": TOPIC,
        "status": "active",
        "title": "Patient admission",
        "resourceTrigger": [{
            "resource": "http://hl7.org/fhir/StructureDefinition/Encounter",
            "supportedInteraction": ["create", "update"],
            "queryCriteria": {"current": "status=in-progress", "resultForCreate": "test-passes", "requireBoth": false}
        }],
        "canFilterBy": [{"resource": "Encounter", "filterParameter": "patient"}]
    })
}

fn sample_subscription(endpoint: &str, content: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "meta": {"profile": [SUBSCRIPTION_PROFILE]},
        "status": "requested",
        "end": "2099-12-31T12:00:00Z",
        "reason": "R4 Topic-Based Workflow Subscription for Patient Admission",
        "criteria": TOPIC,
        "_criteria": {"extension": [{
            "url": format!("{IG}backport-filter-criteria"),
            "valueString": "Encounter.patient=Patient/123"
        }]},
        "channel": {
            "extension": [
                {"url": format!("{IG}backport-timeout"), "valueUnsignedInt": 60},
                {"url": format!("{IG}backport-max-count"), "valuePositiveInt": 20}
            ],
            "type": "rest-hook",
            "header": [format!("Authorization: Bearer {ACCESS_TOKEN}")],
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{
                "url": format!("{IG}backport-payload-content"),
                "valueCode": content
            }]}
        }
    })
}

fn encounter(id: &str, patient: &str) -> Value {
    json!({
        "resourceType": "Encounter", "id": id, "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": patient}
    })
}

async fn admit(hub: &Hub, id: &str, patient: &str) {
    let e = crate::harness::envelope(&encounter(id, patient), "create");
    let (c, b) = hub.post_json("/events", &e).await;
    assert_eq!(c, 202, "{b}");
}

async fn create_topic(hub: &Hub) {
    let (c, t) = hub.post_json("/fhir/SubscriptionTopic", &topic()).await;
    assert_eq!(c, 201, "{t}");
}

// ---------------------------------------------------------------------------------------
// The suite.

/// Groups 1 (workflow: interaction and interaction verification), 2 (capability
/// statement), 3 (event notification at each content level), 4 (handshake and heartbeat)
/// and 5 ($status) of the kit, in its order, against one hub; plus the IG's type-level
/// `$status` (repeated and comma-separated `id`) and `$events`.
#[tokio::test]
async fn inferno_r4_server_suite_workflow_and_verification() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let mut r = Report::new(&python);
    let hub = Hub::start(HubEnv::default()).await;
    create_topic(&hub).await;
    let inferno = KitEndpoint::start().await;

    // -- subscriptions_r4_server_subscription_conformance: the inputs conform
    let mut inputs = Vec::new();
    for content in ["empty", "id-only", "full-resource"] {
        let mut s = sample_subscription(&inferno.url, content);
        if content == "id-only" {
            // one subscription asks for heartbeats, one for plain application/json, which
            // the kit also accepts as the notification content type
            s["channel"]["extension"].as_array_mut().unwrap().push(
                json!({"url": format!("{IG}backport-heartbeat-period"), "valueUnsignedInt": 1}),
            );
        }
        if content == "empty" {
            s["channel"]["payload"] = json!("application/json");
        }
        subscription_verification(
            &mut r,
            "subscriptions_r4_server_subscription_conformance",
            &s,
        );
        inputs.push((content, s));
    }

    // -- subscriptions_r4_server_notification_delivery: create (201), then wait for
    // handshake, heartbeat and event-notification requests
    let mut created = Vec::new();
    for (content, s) in &inputs {
        let (c, body) = hub.post_json("/fhir/Subscription", s).await;
        assert_eq!(
            c, 201,
            "subscriptions_r4_server_notification_delivery: {body}"
        );
        created.push((*content, body));
    }
    for (_, s) in &created {
        hub.wait_status(s["id"].as_str().unwrap(), "active").await;
    }
    admit(&hub, "enc-1", "Patient/123").await;
    admit(&hub, "enc-2", "Patient/999").await; // filtered out

    // -- subscriptions_r4_server_creation_response_conformance
    for (_, s) in &created {
        let test = "subscriptions_r4_server_creation_response_conformance";
        r.check(
            test,
            s["resourceType"] == "Subscription",
            format!("Not a Subscription: {s}"),
        );
        r.check(
            test,
            s["channel"]["type"] == "rest-hook" && s["status"] == "requested",
            format!(
                "Expected Subscription.status to be 'requested', but was {}",
                s["status"]
            ),
        );
    }

    for (content, s) in &created {
        let id = s["id"].as_str().unwrap();
        let events = inferno.wait_for("event-notification", id, 1).await;
        // -- subscriptions_r4_server_notification_presence
        r.check(
            "subscriptions_r4_server_notification_presence",
            !events.is_empty(),
            format!("No notifications were received from the server related to Subscription {id}."),
        );
        // -- subscriptions_r4_server_notification_conformance, then the content level's
        // own test (subscriptions_r4_server_{empty,id_only,full_resource}_conformance)
        for e in &events {
            let test = "subscriptions_r4_server_notification_conformance";
            let Some(bundle) = notification_verification(
                &mut r,
                test,
                &e.body,
                "event-notification",
                Some(id),
                Some("active"),
            ) else {
                continue;
            };
            notification_header_verification(&mut r, test, &e.headers, s);
            match *content {
                "empty" => empty_event_notification_verification(
                    &mut r,
                    "subscriptions_r4_server_empty_conformance",
                    &bundle,
                ),
                "id-only" => id_only_event_notification_verification(
                    &mut r,
                    "subscriptions_r4_server_id_only_conformance",
                    &bundle,
                    "Encounter",
                ),
                _ => full_resource_event_notification_verification(
                    &mut r,
                    "subscriptions_r4_server_full_resource_conformance",
                    &bundle,
                ),
            }
        }
        // the filter held: one admission for Patient/123, none for Patient/999
        r.check(
            "hl7.fhir.uv.subscriptions_1.1.0@62",
            events.len() == 1,
            format!("filter Encounter.patient=Patient/123: expected 1 event-notification for {id}, got {}", events.len()),
        );
    }

    // -- subscriptions_r4_server_handshake_conformance: one per rest-hook subscription,
    // status requested
    for (_, s) in &created {
        let id = s["id"].as_str().unwrap();
        let handshakes = inferno.tagged("handshake", id);
        r.check(
            "subscriptions_r4_server_handshake_conformance",
            !handshakes.is_empty(),
            format!("Did not receive a handshake notification for rest-hook subscription {id}"),
        );
        for h in &handshakes {
            notification_verification(
                &mut r,
                "subscriptions_r4_server_handshake_conformance",
                &h.body,
                "handshake",
                Some(id),
                Some("requested"),
            );
        }
    }

    // -- subscriptions_r4_server_heartbeat_conformance: heartbeats only where a
    // heartbeatPeriod was asked for
    for (_, s) in &created {
        let id = s["id"].as_str().unwrap();
        let wants = !channel_ext(s, "backport-heartbeat-period").is_empty();
        let beats = if wants {
            inferno.wait_for("heartbeat", id, 1).await
        } else {
            inferno.tagged("heartbeat", id)
        };
        let test = "subscriptions_r4_server_heartbeat_conformance";
        if wants {
            r.check(
                test,
                !beats.is_empty(),
                format!("No Heartbeat notifications received for {id}, which asked for them"),
            );
        } else {
            r.check(test, beats.is_empty(), format!("If `heartbeatPeriod` field is not present in the Subscription, heartbeat should not be sent ({id})"));
        }
        for b in &beats {
            notification_verification(&mut r, test, &b.body, "heartbeat", Some(id), None);
        }
    }

    // -- subscriptions_r4_server_cs_conformance and subscriptions_r4_server_topic_discovery
    let (c, cs) = hub.get("/fhir/metadata").await;
    let test = "subscriptions_r4_server_cs_conformance";
    r.check(test, c == 200, format!("GET metadata answered {c}"));
    r.check(
        test,
        cs["resourceType"] == "CapabilityStatement",
        "not a CapabilityStatement",
    );
    r.validate(test, "CapabilityStatement", &cs);
    let server = cs["rest"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["mode"] == "server");
    r.check(
        test,
        server.is_some(),
        "Capability Statement missing entry in `rest` with a `mode` set to 'server'",
    );
    let resources = server.map(|s| s["resource"].clone()).unwrap_or(Value::Null);
    for res in resources.as_array().into_iter().flatten() {
        let t = res["type"].as_str().unwrap_or("");
        r.check(
            test,
            hub_fhir::resource_types::is_r4_resource_type(t),
            format!("rest.resource.type '{t}' is not an R4 resource type"),
        );
    }
    let sub_cap = resources
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["type"] == "Subscription")
        .cloned()
        .unwrap_or(Value::Null);
    r.check(
        test,
        !sub_cap.is_null(),
        "Capability Statement missing `Subscription` resource in `rest` field",
    );
    let profiles = sub_cap["supportedProfile"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !profiles.iter().any(|p| p == SUBSCRIPTION_PROFILE) {
        r.warning(test, "Subscription resource should declare support for the Backport Subscription Profile by including its official URL");
    }
    // the IG (requirement @57): SHOULD instantiate the R4 server CapabilityStatement
    if !cs["instantiates"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| i == SERVER_CAPABILITIES)
    {
        r.warning(
            "hl7.fhir.uv.subscriptions_1.1.0@57",
            "CapabilityStatement.instantiates should name backport-subscription-server-r4",
        );
    }
    // the IG (@47): $status SHALL be supported
    let ops: Vec<&str> = sub_cap["operation"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str())
        .collect();
    r.check(
        "hl7.fhir.uv.subscriptions_1.1.0@47",
        ops.contains(&"status"),
        "the CapabilityStatement does not declare $status",
    );
    let test = "subscriptions_r4_server_topic_discovery";
    let topics: Vec<&str> = sub_cap["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == TOPIC_CANONICAL_EXT)
        .filter_map(|e| e["valueCanonical"].as_str())
        .collect();
    r.check(test, !topics.is_empty(), "The server SHOULD support topic discovery via the CapabilityStatement SubscriptionTopic Canonical extension");
    for (_, s) in &created {
        let criteria = s["criteria"].as_str().unwrap_or("");
        r.check(test, topics.contains(&criteria), format!("The SubscriptionTopic Canonical extension should include the Subscription Topic URLs found in Subscription.criteria: {criteria}"));
    }

    // -- subscriptions_r4_server_status_invocation: the first created subscription
    let first = created[0].1["id"].as_str().unwrap().to_owned();
    status_invocation(
        &mut r,
        &hub,
        &format!("/fhir/Subscription/{first}/$status"),
        &[&first],
        Some("active"),
    )
    .await;

    // -- the IG's type-level $status (requirement @47, OperationDefinition
    // backport-subscription-status: `id` 0..*, here repeated and comma-separated)
    let ids: Vec<String> = created
        .iter()
        .map(|(_, s)| s["id"].as_str().unwrap().to_owned())
        .collect();
    let (a, b, c3) = (&ids[0], &ids[1], &ids[2]);
    status_invocation(
        &mut r,
        &hub,
        &format!("/fhir/Subscription/$status?id={a},{b}&id={c3}"),
        &[a, b, c3],
        None,
    )
    .await;
    status_invocation(
        &mut r,
        &hub,
        &format!("/fhir/Subscription/$status?id={b}"),
        &[b],
        None,
    )
    .await;

    // -- the IG's $events (requirement @83, OperationDefinition backport-subscription-events)
    let full = created
        .iter()
        .find(|(c, _)| *c == "full-resource")
        .unwrap()
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (c, ev) = hub
        .get(&format!(
            "/fhir/Subscription/{full}/$events?eventsSinceNumber=1&eventsUntilNumber=1"
        ))
        .await;
    let test = "hl7.fhir.uv.subscriptions_1.1.0@83";
    r.check(test, c == 200, format!("$events answered {c}: {ev}"));
    if let Some(bundle) = notification_verification(
        &mut r,
        test,
        ev.to_string().as_bytes(),
        "query-event",
        Some(&full),
        Some("active"),
    ) {
        let numbers: Vec<Value> = params(status_of(&bundle), "notification-event")
            .iter()
            .map(|e| {
                parts(e, "event-number")
                    .first()
                    .map(|n| n["valueString"].clone())
                    .unwrap_or_default()
            })
            .collect();
        r.check(
            test,
            numbers == [json!("1")],
            format!("$events 1..1 gave event numbers {numbers:?}"),
        );
        full_resource_event_notification_verification(&mut r, test, &bundle);
    }
    r.finish();
}

/// `perform_subscription_status_test`: a searchset Bundle holding, for each id, a valid
/// backport-subscription-status-r4 Parameters that references it.
async fn status_invocation(
    r: &mut Report,
    hub: &Hub,
    path: &str,
    ids: &[&String],
    status: Option<&str>,
) {
    let test = "subscriptions_r4_server_status_invocation";
    let (c, bundle) = hub.get(path).await;
    r.check(test, c == 200, format!("{path} answered {c}"));
    r.check(
        test,
        bundle["resourceType"] == "Bundle",
        format!("{path}: not a Bundle"),
    );
    if bundle["type"] != "searchset" {
        r.error(
            test,
            format!(
                "Bundle returned from $status operation should be type 'searchset', was {}",
                bundle["type"]
            ),
        );
    }
    r.validate(test, path, &bundle);
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    r.check(
        test,
        entries.len() == ids.len(),
        format!("{path}: {} entries for {} ids", entries.len(), ids.len()),
    );
    for id in ids {
        let entry = entries.iter().find(|e| {
            e["resource"]["resourceType"] == "Parameters"
                && params(&e["resource"], "subscription")
                    .first()
                    .and_then(|s| s["valueReference"]["reference"].as_str())
                    .is_some_and(|s| s.rsplit('/').next() == Some(id.as_str()))
        });
        let Some(entry) = entry else {
            r.error(
                test,
                format!("No Subscription status with id {id} returned from $status operation"),
            );
            continue;
        };
        status_profile(r, test, &entry["resource"]);
        if let Some(want) = status {
            let got = params(&entry["resource"], "status")
                .first()
                .map(|s| s["valueCode"].clone());
            r.check(
                test,
                got == Some(json!(want)),
                format!(
                    "The Subscription resource should have its `status` set to {want}, was {got:?}"
                ),
            );
        }
    }
}

/// Group 6: the kit's rejection tests, with the inputs a tester gives for this hub. The
/// kit passes a test when the server answers anything but 201, or 201 with the
/// unsupported value changed.
#[tokio::test]
async fn inferno_r4_server_suite_subscription_rejection() {
    let hub = Hub::start(HubEnv::default()).await;
    create_topic(&hub).await;
    // the endpoint must resolve (the hub checks it at create): Inferno's, on loopback
    let inferno = KitEndpoint::start().await;
    let base = sample_subscription(&inferno.url, "id-only");
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "subscriptions_r4_server_reject_subscription_topic",
            Box::new(|s| s["criteria"] = json!("http://example.org/topics/not-on-this-server")),
        ),
        (
            "subscriptions_r4_server_reject_subscription_filter",
            Box::new(|s| {
                s["_criteria"] = json!({"extension": [{"url": format!("{IG}backport-filter-criteria"), "valueString": "Encounter?class=IMP"}]});
            }),
        ),
        (
            "subscriptions_r4_server_reject_subscription_channel_type",
            Box::new(|s| s["channel"]["type"] = json!("email")),
        ),
        (
            "subscriptions_r4_server_reject_subscription_payload_type",
            Box::new(|s| s["channel"]["payload"] = json!("application/fhir+xml")),
        ),
        (
            "subscriptions_r4_server_reject_subscription_channel_payload_combo",
            Box::new(|s| {
                s["channel"]["type"] = json!("message");
                s["channel"]["payload"] = json!("application/fhir+json");
            }),
        ),
        (
            "subscriptions_r4_server_reject_subscription_channel_endpoint",
            Box::new(|s| s["channel"]["endpoint"] = json!("ftp://inferno.example.org/listener")),
        ),
        // an endpoint the hub must never call (cloud metadata): the IG's "valid for the
        // channel" (requirement @11) as the hub's egress policy reads it
        (
            "hl7.fhir.uv.subscriptions_1.1.0@11",
            Box::new(|s| {
                s["channel"]["endpoint"] = json!("http://169.254.169.254/latest/meta-data")
            }),
        ),
        (
            "subscriptions_r4_server_reject_subscription_cross_version_extension",
            Box::new(|s| {
                s["_criteria"] = json!({"extension": [{
                    "url": "http://hl7.org/fhir/5.0/subscriptions-backport/StructureDefinition/backport-filter-criteria",
                    "valueString": "Encounter.patient=Patient/123"}]});
            }),
        ),
        (
            // the IG (@60): an unsupported channel named by backport-channel-type
            "hl7.fhir.uv.subscriptions_1.1.0@60",
            Box::new(|s| {
                s["channel"]["_type"] = json!({"extension": [{"url": format!("{IG}backport-channel-type"),
                    "valueCoding": {"system": "http://hl7.org/fhir/uv/subscriptions-backport/CodeSystem/backport-channel-type-codes", "code": "zulip"}}]});
            }),
        ),
        (
            // the IG (@66): a content level the server does not support
            "hl7.fhir.uv.subscriptions_1.1.0@66",
            Box::new(|s| {
                s["channel"]["_payload"]["extension"][0]["valueCode"] = json!("everything")
            }),
        ),
        (
            // the IG (@90): a notification FHIR version the server cannot produce
            "hl7.fhir.uv.subscriptions_1.1.0@90",
            Box::new(|s| s["channel"]["payload"] = json!("application/fhir+json; fhirVersion=3.0")),
        ),
    ];
    let mut failures = Vec::new();
    for (test, mutate) in &cases {
        let mut s = base.clone();
        mutate(&mut s);
        let (c, body) = hub.post_json("/fhir/Subscription", &s).await;
        if c == 201 {
            failures.push(format!("[{test}] Sending a Subscription with an unsupported value should be rejected; got 201 {body}"));
            continue;
        }
        // the hub's own promise: a clear OperationOutcome that points at the element
        let ok = body["resourceType"] == "OperationOutcome"
            && body["issue"][0]["severity"] == "error"
            && body["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty());
        if !ok || !(400..500).contains(&c) {
            failures.push(format!(
                "[{test}] refused with {c} but without a clear OperationOutcome: {body}"
            ));
        }
    }
    // and the unmodified input is accepted (so each refusal is about its one change)
    let (c, body) = hub.post_json("/fhir/Subscription", &base).await;
    if c != 201 {
        failures.push(format!(
            "the kit's sample subscription itself was refused: {c} {body}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The IG's handshake rules (requirements @20, @21, @29, @30, @31): a handshake the
/// endpoint refuses sets `error` at once, whatever the retry schedule; the subscription
/// keeps being retried and becomes active when the endpoint accepts.
#[tokio::test]
async fn inferno_r4_server_suite_refused_handshake_sets_error() {
    // a schedule that would take an hour to reach the hub's error threshold
    let hub = Hub::start(
        HubEnv::default().var("HUB_DELIVERY__RETRY_SCHEDULE", r#"["0s","2s","2s","1h"]"#),
    )
    .await;
    create_topic(&hub).await;
    let inferno = KitEndpoint::start().await;
    inferno.state.status.store(500, Ordering::SeqCst);
    let (c, s) = hub
        .post_json(
            "/fhir/Subscription",
            &sample_subscription(&inferno.url, "id-only"),
        )
        .await;
    assert_eq!(c, 201, "{s}");
    assert_eq!(
        s["status"], "requested",
        "@29: rest-hook subscriptions start requested"
    );
    let id = s["id"].as_str().unwrap();
    let errored = hub.wait_status(id, "error").await;
    assert!(
        errored["error"].as_str().is_some_and(|e| e.contains("500")),
        "the reason is kept: {errored}"
    );
    // $status answers in error, with the reason (@79: continue to respond to $status)
    let (_, st) = hub.get(&format!("/fhir/Subscription/{id}/$status")).await;
    let p = &st["entry"][0]["resource"];
    assert_eq!(params(p, "status")[0]["valueCode"], "error", "{st}");
    assert!(!params(p, "error").is_empty(), "{st}");
    // the endpoint recovers: the next handshake attempt succeeds and the subscription is active
    inferno.state.status.store(200, Ordering::SeqCst);
    hub.wait_status(id, "active").await;
    let handshakes = inferno.tagged("handshake", id);
    assert!(
        handshakes.len() >= 2,
        "refused, then accepted: {}",
        handshakes.len()
    );
}

/// The IG's websocket channel (channels.html#websockets; $get-ws-binding-token): the
/// kit's R4 server suite drives rest-hook only, so this is the IG's flow. A token and the
/// websocket-url from the operation, `bind-with-token`, a handshake bundle, then
/// event-notification bundles that pass the same checks as rest-hook ones.
#[tokio::test]
async fn inferno_r4_server_suite_websocket_binding_flow() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let mut r = Report::new(&python);
    let hub = Hub::start(HubEnv::default()).await;
    create_topic(&hub).await;
    let mut s = sample_subscription("", "id-only");
    s["channel"] = json!({"type": "websocket", "payload": "application/fhir+json",
        "_payload": s["channel"]["_payload"].clone()});
    let (c, s) = hub.post_json("/fhir/Subscription", &s).await;
    assert_eq!(c, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let (c, p) = hub
        .get(&format!("/fhir/Subscription/{id}/$get-ws-binding-token"))
        .await;
    let test = "hl7.fhir.uv.subscriptions_1.1.0 websockets";
    assert_eq!(c, 200, "{p}");
    r.validate(test, "$get-ws-binding-token", &p);
    let value = |name: &str, key: &str| {
        params(&p, name)
            .first()
            .and_then(|x| x[key].as_str())
            .map(str::to_owned)
    };
    let token = value("token", "valueString").expect("token");
    let url = value("websocket-url", "valueUrl").expect("websocket-url");
    r.check(
        test,
        value("expiration", "valueDateTime").is_some(),
        format!("no expiration: {p}"),
    );
    r.check(
        test,
        value("subscription", "valueString").is_some_and(|x| x.contains(&id)),
        format!("the subscription is named: {p}"),
    );

    let client = crate::harness::PyClient::start(&python, "ws_client.py", &[&url, &token, "2"]);
    let hs = client.next("handshake");
    notification_verification(
        &mut r,
        test,
        hs.to_string().as_bytes(),
        "handshake",
        Some(&id),
        None,
    );
    admit(&hub, "ws-1", "Patient/123").await;
    let ev = client.next("event-notification");
    if let Some(b) = notification_verification(
        &mut r,
        test,
        ev.to_string().as_bytes(),
        "event-notification",
        Some(&id),
        Some("active"),
    ) {
        id_only_event_notification_verification(&mut r, test, &b, "Encounter");
    }
    client.finish();
    r.finish();
}
