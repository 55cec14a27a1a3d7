//! Notification bundles in the Subscriptions R5 Backport IG's R4 form: a `history` Bundle
//! whose first entry is a `Parameters` with the backport-subscription-status-r4 profile,
//! followed by the focus resources (full-resource) or their references (id-only).

use serde_json::{Value, json};

use crate::subscription::{Content, FhirVersion};

pub const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
pub const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";

/// The status part of a notification.
#[derive(Debug, Clone)]
pub struct StatusInfo<'a> {
    /// The FHIR base URL (`https://hub.example.org/fhir`).
    pub base: &'a str,
    pub subscription_id: &'a str,
    /// The topic canonical; `None` for an R4 criteria subscription.
    pub topic: Option<&'a str>,
    pub status: &'a str,
    /// handshake, heartbeat, event-notification, query-status or query-event.
    pub kind: &'a str,
    pub events_since_start: i64,
    pub error: Option<&'a str>,
}

/// One event in a notification.
#[derive(Debug, Clone)]
pub struct EventInfo<'a> {
    pub number: i64,
    pub timestamp: &'a str,
    pub focus_type: &'a str,
    pub focus_id: &'a str,
    pub action: &'a str,
    /// The resource JSON, as logged (absent for a deletion).
    pub resource: Option<&'a str>,
    /// The reader may not see this event's focus: it is shown with its number and timestamp
    /// only, as `empty` content shows every event, so the reader's numbering has no gap.
    pub withheld: bool,
}

impl EventInfo<'_> {
    /// Whether the event shows its focus at `content`.
    fn shows_focus(&self, content: Content) -> bool {
        content != Content::Empty && !self.withheld
    }
}

/// The backport-subscription-status-r4 Parameters.
pub fn status_parameters(s: &StatusInfo<'_>, events: &[EventInfo<'_>], content: Content) -> Value {
    let mut parameter = vec![json!({
        "name": "subscription",
        "valueReference": {"reference": format!("{}/Subscription/{}", s.base, s.subscription_id)}
    })];
    // the IG: the topic SHOULD NOT be present with `empty` payloads (it can say more than
    // the subscriber may see), SHOULD be with full-resource, MAY with id-only
    if let Some(t) = s.topic.filter(|_| content != Content::Empty) {
        parameter.push(json!({"name": "topic", "valueCanonical": t}));
    }
    parameter.push(json!({"name": "status", "valueCode": s.status}));
    parameter.push(json!({"name": "type", "valueCode": s.kind}));
    parameter.push(json!({
        "name": "events-since-subscription-start",
        "valueString": s.events_since_start.to_string()
    }));
    for e in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": e.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": e.timestamp}),
        ];
        if e.shows_focus(content) {
            part.push(json!({
                "name": "focus",
                "valueReference": {"reference": format!("{}/{}/{}", s.base, e.focus_type, e.focus_id)}
            }));
        }
        // `json!` copies an interpolated Value through the serializer: set it by move
        let mut event = json!({"name": "notification-event"});
        event["part"] = Value::Array(part);
        parameter.push(event);
    }
    if let Some(err) = s.error {
        parameter.push(json!({"name": "error", "valueCodeableConcept": {"text": err}}));
    }
    let mut p = json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [STATUS_PROFILE]},
    });
    p["parameter"] = Value::Array(parameter);
    p
}

/// An R4B or R5 SubscriptionStatus (the two differ only in the Bundle around them here:
/// R4B carries int64 counters as strings, R5 as integer64, which JSON also writes as
/// strings).
pub fn subscription_status(
    s: &StatusInfo<'_>,
    events: &[EventInfo<'_>],
    content: Content,
) -> Value {
    let mut st = json!({
        "resourceType": "SubscriptionStatus",
        "id": uuid::Uuid::new_v4().to_string(),
        "status": s.status,
        "type": s.kind,
        "eventsSinceSubscriptionStart": s.events_since_start.to_string(),
        "subscription": {"reference": format!("{}/Subscription/{}", s.base, s.subscription_id)},
    });
    if let Some(t) = s.topic.filter(|_| content != Content::Empty) {
        st["topic"] = json!(t);
    }
    if !events.is_empty() {
        st["notificationEvent"] = Value::Array(
            events
                .iter()
                .map(|e| {
                    let mut n = json!({"eventNumber": e.number.to_string(), "timestamp": e.timestamp});
                    if e.shows_focus(content) {
                        n["focus"] = json!({"reference": format!("{}/{}/{}", s.base, e.focus_type, e.focus_id)});
                    }
                    n
                })
                .collect(),
        );
    }
    if let Some(err) = s.error {
        st["error"] = json!([{"text": err}]);
    }
    st
}

/// The notification bundle in the shape of the subscription's FHIR version.
pub fn bundle_for(
    version: FhirVersion,
    s: &StatusInfo<'_>,
    events: &[EventInfo<'_>],
    content: Content,
) -> Value {
    if version == FhirVersion::R4 {
        return bundle(s, events, content);
    }
    let status = subscription_status(s, events, content);
    let kind = if version == FhirVersion::R5 {
        "subscription-notification"
    } else {
        "history"
    };
    assemble(s, status, events, content, kind, None)
}

/// [`bundle_for`] as JSON text: the R4 shape written straight to text ([`bundle_text`]),
/// the others serialized from their tree.
pub fn bundle_text_for(
    version: FhirVersion,
    s: &StatusInfo<'_>,
    events: &[EventInfo<'_>],
    content: Content,
) -> String {
    if version == FhirVersion::R4 {
        bundle_text(s, events, content)
    } else {
        bundle_for(version, s, events, content).to_string()
    }
}

/// The Bundle around a status resource: the status first, then the focus entries.
fn assemble(
    s: &StatusInfo<'_>,
    status: Value,
    events: &[EventInfo<'_>],
    content: Content,
    bundle_type: &str,
    profile: Option<&str>,
) -> Value {
    let op = if s.kind == "query-event" {
        "$events"
    } else {
        "$status"
    };
    // Values are moved into place: `json!` would copy them through the serializer (a
    // full resource, the whole status), which was a sixth of a stream replay's CPU
    let mut first = serde_json::Map::new();
    first.insert(
        "fullUrl".into(),
        Value::String(format!(
            "urn:uuid:{}",
            status["id"].as_str().unwrap_or_default()
        )),
    );
    first.insert("resource".into(), status);
    first.insert(
        "request".into(),
        json!({"method": "GET", "url": format!("{}/Subscription/{}/{op}", s.base, s.subscription_id)}),
    );
    first.insert("response".into(), json!({"status": "200"}));
    let mut entries = vec![Value::Object(first)];
    entries.extend(focus_entries(s, events, content));
    let mut b = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": bundle_type,
        "timestamp": crate::time_fmt::now_instant(),
    });
    b["entry"] = Value::Array(entries);
    if let Some(p) = profile {
        b["meta"] = json!({"profile": [p]});
    }
    b
}

fn focus_entries(s: &StatusInfo<'_>, events: &[EventInfo<'_>], content: Content) -> Vec<Value> {
    let mut out = Vec::new();
    if content == Content::Empty {
        return out;
    }
    for e in events.iter().filter(|e| e.shows_focus(content)) {
        let url = format!("{}/{}/{}", s.base, e.focus_type, e.focus_id);
        let (method, code) = match e.action {
            "create" => ("POST", "201"),
            "delete" => ("DELETE", "200"),
            _ => ("PUT", "200"),
        };
        let mut entry = json!({
            "fullUrl": url,
            "request": {"method": method, "url": format!("{}/{}", e.focus_type, e.focus_id)},
            "response": {"status": code},
        });
        if content == Content::FullResource
            && let Some(r) = e
                .resource
                .and_then(|r| serde_json::from_str::<Value>(r).ok())
        {
            entry["resource"] = r;
        }
        out.push(entry);
    }
    out
}

/// The whole notification bundle (R4 Backport form).
pub fn bundle(s: &StatusInfo<'_>, events: &[EventInfo<'_>], content: Content) -> Value {
    let status = status_parameters(s, events, content);
    assemble(
        s,
        status,
        events,
        content,
        "history",
        Some(NOTIFICATION_PROFILE),
    )
}

/// JSON text written piece by piece: what [`bundle_text`] builds.
struct Text(Vec<u8>);

impl Text {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A JSON string, escaped.
    fn string(&mut self, s: &str) {
        // writing into a Vec cannot fail
        let _ = serde_json::to_writer(&mut self.0, s);
    }

    /// `"key":"value",` without the comma when `last`.
    fn field(&mut self, key: &str, value: &str) {
        self.string(key);
        self.raw(":");
        self.string(value);
    }

    /// `{"name":"<name>","<kind>":"<value>"}`
    fn param(&mut self, name: &str, kind: &str, value: &str) {
        self.raw("{");
        self.field("name", name);
        self.raw(",");
        self.field(kind, value);
        self.raw("}");
    }

    /// `{"name":"<name>","valueReference":{"reference":"<reference>"}}`
    fn reference_param(&mut self, name: &str, reference: &str) {
        self.raw("{");
        self.field("name", name);
        self.raw(",\"valueReference\":{");
        self.field("reference", reference);
        self.raw("}}");
    }
}

/// The R4 Backport notification bundle of [`bundle`] written straight to JSON text, without
/// building a `Value` tree first: the same document (ids and the timestamp aside, which are
/// new on every rendering either way), at a fraction of the cost. A focus resource is
/// embedded as the text it was logged in, as long as it is JSON.
pub fn bundle_text(s: &StatusInfo<'_>, events: &[EventInfo<'_>], content: Content) -> String {
    let mut t = Text(Vec::with_capacity(1024 + events.len() * 512));
    let status_id = uuid::Uuid::new_v4().to_string();
    t.raw("{");
    t.field("resourceType", "Bundle");
    t.raw(",");
    t.field("id", &uuid::Uuid::new_v4().to_string());
    t.raw(",");
    t.field("type", "history");
    t.raw(",");
    t.field("timestamp", &crate::time_fmt::now_instant());
    t.raw(",\"entry\":[{");
    // the status entry
    t.field("fullUrl", &format!("urn:uuid:{status_id}"));
    t.raw(",\"resource\":{");
    t.field("resourceType", "Parameters");
    t.raw(",");
    t.field("id", &status_id);
    t.raw(",\"meta\":{\"profile\":[");
    t.string(STATUS_PROFILE);
    t.raw("]},\"parameter\":[");
    t.reference_param(
        "subscription",
        &format!("{}/Subscription/{}", s.base, s.subscription_id),
    );
    if let Some(topic) = s.topic.filter(|_| content != Content::Empty) {
        t.raw(",");
        t.param("topic", "valueCanonical", topic);
    }
    t.raw(",");
    t.param("status", "valueCode", s.status);
    t.raw(",");
    t.param("type", "valueCode", s.kind);
    t.raw(",");
    t.param(
        "events-since-subscription-start",
        "valueString",
        &s.events_since_start.to_string(),
    );
    for e in events {
        t.raw(",{");
        t.field("name", "notification-event");
        t.raw(",\"part\":[");
        t.param("event-number", "valueString", &e.number.to_string());
        t.raw(",");
        t.param("timestamp", "valueInstant", e.timestamp);
        if e.shows_focus(content) {
            t.raw(",");
            t.reference_param(
                "focus",
                &format!("{}/{}/{}", s.base, e.focus_type, e.focus_id),
            );
        }
        t.raw("]}");
    }
    if let Some(err) = s.error {
        t.raw(",{");
        t.field("name", "error");
        t.raw(",\"valueCodeableConcept\":{");
        t.field("text", err);
        t.raw("}}");
    }
    let op = if s.kind == "query-event" {
        "$events"
    } else {
        "$status"
    };
    t.raw("]},\"request\":{");
    t.field("method", "GET");
    t.raw(",");
    t.field(
        "url",
        &format!("{}/Subscription/{}/{op}", s.base, s.subscription_id),
    );
    t.raw("},\"response\":{");
    t.field("status", "200");
    t.raw("}}");
    // the focus entries
    if content != Content::Empty {
        for e in events.iter().filter(|e| e.shows_focus(content)) {
            let (method, code) = match e.action {
                "create" => ("POST", "201"),
                "delete" => ("DELETE", "200"),
                _ => ("PUT", "200"),
            };
            t.raw(",{");
            t.field(
                "fullUrl",
                &format!("{}/{}/{}", s.base, e.focus_type, e.focus_id),
            );
            t.raw(",\"request\":{");
            t.field("method", method);
            t.raw(",");
            t.field("url", &format!("{}/{}", e.focus_type, e.focus_id));
            t.raw("},\"response\":{");
            t.field("status", code);
            t.raw("}");
            if content == Content::FullResource
                && let Some(r) = e
                    .resource
                    .filter(|r| serde_json::from_str::<serde::de::IgnoredAny>(r).is_ok())
            {
                t.raw(",\"resource\":");
                t.raw(r.trim());
            }
            t.raw("}");
        }
    }
    t.raw("],\"meta\":{\"profile\":[");
    t.string(NOTIFICATION_PROFILE);
    t.raw("]}}");
    match String::from_utf8(t.0) {
        Ok(text) => text,
        // every piece is a str: not reachable, and the tree is always right
        Err(_) => bundle(s, events, content).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(kind: &'static str) -> StatusInfo<'static> {
        StatusInfo {
            base: "https://hub.example.org/fhir",
            subscription_id: "s1",
            topic: Some("http://example.org/topic"),
            status: "active",
            kind,
            events_since_start: 3,
            error: None,
        }
    }

    fn event() -> EventInfo<'static> {
        EventInfo {
            number: 3,
            timestamp: "2024-01-01T00:00:00Z",
            focus_type: "Observation",
            focus_id: "o1",
            action: "update",
            resource: Some(r#"{"resourceType":"Observation","id":"o1","status":"final"}"#),
            withheld: false,
        }
    }

    /// An event its reader may not see keeps its number and timestamp and shows nothing of
    /// its focus, in every shape, beside one the reader may see.
    #[test]
    fn a_withheld_event_shows_its_number_only() {
        let hidden = EventInfo {
            number: 4,
            focus_id: "secret1",
            withheld: true,
            ..event()
        };
        for version in [FhirVersion::R4, FhirVersion::R4B, FhirVersion::R5] {
            let b = bundle_for(
                version,
                &status("event-notification"),
                &[event(), hidden.clone()],
                Content::FullResource,
            );
            let text = b.to_string();
            assert!(!text.contains("secret1"), "{version:?}: {text}");
            assert!(
                text.contains("\"4\""),
                "{version:?}: the number stays: {text}"
            );
            assert_eq!(b["entry"].as_array().map(Vec::len), Some(2), "{version:?}");
        }
    }

    /// The IG's rules for the R4 notification shape (backport-subscription-notification-r4
    /// and backport-subscription-status-r4), checked on every content level.
    #[test]
    fn bundles_follow_the_backport_r4_profiles() {
        for content in [Content::Empty, Content::IdOnly, Content::FullResource] {
            let b = bundle(&status("event-notification"), &[event()], content);
            assert_eq!(b["type"], "history");
            let entries = b["entry"].as_array().unwrap();
            let p = &entries[0]["resource"];
            assert_eq!(p["resourceType"], "Parameters");
            assert_eq!(p["meta"]["profile"][0], STATUS_PROFILE);
            let names: Vec<&str> = p["parameter"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["name"].as_str().unwrap())
                .collect();
            // subscription, status, type are required (1..1)
            for required in ["subscription", "status", "type"] {
                assert_eq!(
                    names.iter().filter(|n| **n == required).count(),
                    1,
                    "{required}"
                );
            }
            // the topic: SHOULD NOT with empty, SHOULD with full-resource (MAY with id-only)
            let topics = names.iter().filter(|n| **n == "topic").count();
            assert_eq!(
                topics,
                usize::from(content != Content::Empty),
                "{content:?}"
            );
            assert!(
                entries[0]["fullUrl"]
                    .as_str()
                    .unwrap()
                    .starts_with("urn:uuid:")
            );
            assert_eq!(entries[0]["request"]["method"], "GET");
            let ev = p["parameter"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == "notification-event")
                .unwrap();
            assert_eq!(ev["part"][0]["name"], "event-number");
            assert_eq!(ev["part"][0]["valueString"], "3");
            let has_focus = ev["part"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == "focus");
            match content {
                Content::Empty => {
                    assert!(!has_focus);
                    assert_eq!(entries.len(), 1, "empty carries no resource entries");
                }
                Content::IdOnly => {
                    assert!(has_focus);
                    assert_eq!(entries.len(), 2);
                    assert!(entries[1].get("resource").is_none());
                    assert_eq!(
                        entries[1]["fullUrl"],
                        "https://hub.example.org/fhir/Observation/o1"
                    );
                }
                Content::FullResource => {
                    assert_eq!(entries[1]["resource"]["status"], "final");
                }
            }
        }
        let hs = bundle(&status("handshake"), &[], Content::IdOnly);
        assert_eq!(hs["entry"].as_array().unwrap().len(), 1);
    }

    /// Ids and the timestamp are new on every rendering: blanked for comparing.
    fn stable(mut b: Value) -> Value {
        b["id"] = Value::Null;
        b["timestamp"] = Value::Null;
        if let Some(first) = b["entry"].get_mut(0) {
            first["fullUrl"] = Value::Null;
            first["resource"]["id"] = Value::Null;
        }
        b
    }

    #[test]
    fn the_text_bundle_is_the_tree_bundle() {
        let deleted = EventInfo {
            number: 4,
            action: "delete",
            resource: None,
            ..event()
        };
        let created = EventInfo {
            number: 5,
            action: "create",
            focus_id: "o\"2\u{e9}",
            resource: Some(
                r#" {"resourceType":"Observation","id":"o2","valueQuantity":{"value":1.50}} "#,
            ),
            ..event()
        };
        let broken = EventInfo {
            number: 6,
            resource: Some("{not json"),
            ..event()
        };
        let hidden = EventInfo {
            number: 7,
            withheld: true,
            ..event()
        };
        let all = [event(), deleted, created, broken, hidden];
        for kind in [
            "handshake",
            "heartbeat",
            "event-notification",
            "query-event",
        ] {
            for content in [Content::Empty, Content::IdOnly, Content::FullResource] {
                for (topic, error) in [
                    (Some("http://example.org/topic"), None),
                    (None, Some("endpoint said \"no\"")),
                ] {
                    let s = StatusInfo {
                        topic,
                        error,
                        ..status(kind)
                    };
                    for n in [0, 1, all.len()] {
                        let events = &all[..n];
                        let text = bundle_text(&s, events, content);
                        let parsed: Value =
                            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
                        assert_eq!(
                            stable(parsed),
                            stable(bundle(&s, events, content)),
                            "{kind} {content:?} {n} events"
                        );
                    }
                }
            }
        }
        // a decimal keeps its digits, as logged
        let text = bundle_text(
            &status("event-notification"),
            &all[2..3],
            Content::FullResource,
        );
        assert!(text.contains("\"value\":1.50"), "{text}");
    }
}
