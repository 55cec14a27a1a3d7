//! The text reader of change events ([`RawEvent`]) against the tree reader
//! ([`ChangeEvent`]): on generated envelopes, bare resources and their mutations, both accept
//! the same input, read the same event (the resources as the same trees) and refuse the
//! same input with the same message. Deterministic (a fixed-seed generator).

use hub_fhir::ChangeEvent;
use hub_fhir::raw_event::RawEvent;
use serde_json::{Value, json};

mod common;
use common::Gen;

impl Gen {
    fn value(&mut self) -> Value {
        self.pick(&[
            json!(null),
            json!(5),
            json!(1.50),
            json!("x"),
            json!("o1"),
            json!("Observation"),
            json!("Patient"),
            json!("create"),
            json!("delete"),
            json!("2024-01-31T12:00:00Z"),
            json!("not a date"),
            json!(""),
            json!("\u{e9}\"\\"),
            json!([]),
            json!({}),
            json!({"versionId": "2", "lastUpdated": "2024-02-01T00:00:00Z"}),
            json!({"resourceType": "Observation", "id": "o1"}),
            json!({"resourceType": "Observation", "id": "o2"}),
            json!(true),
        ])
        .clone()
    }
}

fn observation(id: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "meta": {"versionId": "3", "lastUpdated": "2024-01-31T12:00:00.5+01:00"},
        "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]},
        "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 1.50, "unit": "mg"},
        "text": {"div": "<div>\u{e9} \"q\"</div>"}})
}

fn envelope() -> Value {
    json!({"id": "e-1", "tenant": "t1", "action": "update", "resourceType": "Observation",
        "resourceId": "o1", "versionId": "3", "occurredAt": "2024-01-31T12:00:00Z",
        "resource": observation("o1"), "previous": observation("o1")})
}

/// An event as compared: the hub names bare resources with a fresh id and, without
/// `meta.lastUpdated`, the time of reading.
fn comparable(mut e: ChangeEvent, hub_named: bool) -> ChangeEvent {
    if hub_named {
        e.id.clear();
        e.occurred_at.clear();
    }
    e
}

fn same(line: &str) {
    let tree = ChangeEvent::from_ndjson_line_named(line.as_bytes(), None, "caller");
    let text = RawEvent::from_ndjson_line_named(line.as_bytes(), None, "caller");
    match (tree, text) {
        (Ok((t, tn)), Ok((r, rn))) => {
            assert_eq!(tn, rn, "{line}");
            let log = r.to_json_bytes();
            let r = r.into_event().expect("the text parses as a tree");
            assert_eq!(
                comparable(t.clone(), tn),
                comparable(r.clone(), rn),
                "{line}"
            );
            if !tn {
                // the log record is the tree reader's, byte for byte
                assert_eq!(
                    serde_json::from_slice::<Value>(&log).expect("JSON"),
                    serde_json::from_slice::<Value>(&t.to_json_bytes()).expect("JSON"),
                    "{line}"
                );
            }
        }
        (Err(t), Err(r)) => assert_eq!(t, r, "{line}"),
        (t, r) => panic!(
            "the readers disagree on {line}: tree {:?}, text {:?}",
            t.map(|(e, _)| e.id),
            r.map(|(e, _)| e.head.id)
        ),
    }
}

#[test]
fn text_and_tree_readers_agree_on_generated_events() {
    let mut g = Gen(0x7ea1_0b5e_0000_0001);
    let fields = [
        "id",
        "tenant",
        "action",
        "resourceType",
        "resourceId",
        "versionId",
        "occurredAt",
        "resource",
        "previous",
        "meta",
        "status",
        "extra",
    ];
    let mut accepted = 0;
    for round in 0..20_000 {
        let mut doc = if round % 2 == 0 {
            envelope()
        } else {
            observation("o1")
        };
        for _ in 0..g.below(4) {
            let Some(obj) = doc.as_object_mut() else {
                break;
            };
            let field = (*g.pick(&fields)).to_owned();
            match g.below(4) {
                0 => {
                    obj.shift_remove(&field);
                }
                1 => {
                    obj.insert(field, g.value());
                }
                2 => {
                    // inside the resource
                    let v = g.value();
                    if let Some(r) = obj.get_mut("resource").and_then(Value::as_object_mut) {
                        r.insert(field, v);
                    } else {
                        obj.insert(field, v);
                    }
                }
                _ => doc = g.value(),
            }
        }
        let mut line = doc.to_string();
        match g.below(8) {
            // a repeated key: the last one counts
            0 => line = line.replacen('{', "{\"id\":\"first\",\"resourceType\":5,", 1),
            1 => line = format!("  {line}\t "),
            2 => {
                let mut cut = g.below(line.len() + 1);
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            3 => line.push_str(" {}"),
            // escaped surrogates, paired and not
            4 => {
                let escape = *g.pick::<&str>(&["\\ud83d\\ude00", "\\udc00", "\\uD800x"]);
                line = line.replacen("final", escape, 1);
            }
            _ => {}
        }
        if ChangeEvent::from_ndjson_line_named(line.as_bytes(), None, "caller").is_ok() {
            accepted += 1;
        }
        same(&line);
    }
    assert!(
        accepted > 2_000,
        "the generator reaches valid events ({accepted})"
    );
}

#[test]
fn hand_picked_events_read_alike() {
    for line in [
        r#"{"resourceType":"Patient","id":"p1"}"#,
        r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"}}"#,
        r#"{"resourceType":"Patient","id":"p1","meta":5}"#,
        r#"{"resourceType":"Nope","id":"p1"}"#,
        r#"{"resourceId":"p1"}"#,
        r#"{"id":"e","action":"delete","resourceType":"Patient","resourceId":"p1","occurredAt":"2024-01-01T00:00:00Z"}"#,
        r#"{"id":"e","action":"delete","resourceType":"Patient","resourceId":"p1","occurredAt":"2024-01-01T00:00:00Z","resource":null,"previous":[1]}"#,
        r#"{"id":"e","action":"create","resourceType":"Patient","resourceId":"p1","occurredAt":"2024-01-01T00:00:00Z","resource":{"resourceType":"Patient","id":"p\u0031"}}"#,
        r#"{"id":"e","tenant":null,"action":"create","resourceType":"Patient","resourceId":"p1","occurredAt":"2024-01-01T00:00:00Z"}"#,
        r#"{"id":"e","tenant":"Bad","action":"create","resourceType":"Patient","resourceId":"p1","occurredAt":"2024-01-01T00:00:00Z","resource":{"resourceType":"Patient","id":"p1"}}"#,
        r#"{"id":"e","act\u0069on":"create","resourceType":"Patient","resourceId":"p1","occurredAt":"2024-01-01T00:00:00Z","resource":{"resourceType":"Patient","id":"p1"}}"#,
        r#"{"id":"e","action":"create","resourceType":"Patient","resourceId":"p1","occurredAt":"2024-01-01T00:00:00Z","resource":{"resourceType":"Patient","id":"p1","n":123456789012345678901234567890.50}}"#,
        r#"{"resourceType":"Patient","id":"p1","name":[{"text":"\ud800"}]}"#,
        "[]",
        "42",
        "\"x\"",
        "{\"resourceType\": \"Patient\", \"id\": \"p1\"",
        "{not json \u{fffd}",
        "",
    ] {
        same(line);
    }
}

#[test]
fn the_log_record_keeps_the_resource_as_written() {
    let line = r#"{"id":"e","action":"create","resourceType":"Observation","resourceId":"o1","occurredAt":"2024-01-01T00:00:00Z","resource":{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50}}}"#;
    let (e, named) = RawEvent::from_ndjson_line_named(line.as_bytes(), None, "t").expect("valid");
    assert!(!named);
    let log = String::from_utf8(e.to_json_bytes()).expect("UTF-8");
    assert!(log.contains(r#""value":1.50"#), "{log}");
    let (tree, _) = ChangeEvent::from_ndjson_line_named(line.as_bytes(), None, "t").expect("valid");
    assert_eq!(log.as_bytes(), tree.to_json_bytes().as_slice());
    // and an event built as a tree turns into the same record
    let back = RawEvent::from_event(tree.clone()).expect("text");
    assert_eq!(back.to_json_bytes(), tree.to_json_bytes());
    // a bare resource is kept as the line's text, without the whitespace around it (read
    // once: its members and its check are one pass)
    let bare = "\t {\"resourceType\":\"Observation\",\"id\":\"o1\",\"valueQuantity\":{\"value\":1.50}} \r\n";
    for line in [bare, bare.trim()] {
        let (e, named) =
            RawEvent::from_ndjson_line_named(line.as_bytes(), None, "t").expect("valid");
        assert!(named);
        let resource = e.resource.as_ref().expect("a resource").get();
        assert_eq!(resource, bare.trim());
        let log: serde_json::Value = serde_json::from_slice(&e.to_json_bytes()).expect("JSON");
        assert_eq!(log["resource"]["valueQuantity"]["value"], 1.5);
        assert_eq!(log["resourceId"], "o1");
    }
}

#[test]
fn bytes_that_are_not_utf8_are_refused_alike() {
    for line in [
        &b"{\"resourceType\":\"Patient\",\"id\":\"p1\",\"name\":\"\xff\"}"[..],
        b"{\"resourceType\":\"Patient\",\"id\":\"p\xc3\"}",
        b"{\"id\":\"e\",\"x\xfe\":1,\"resourceId\":\"p1\"}",
        b"\xef\xbb\xbf{\"resourceType\":\"Patient\",\"id\":\"p1\"}",
    ] {
        let tree = ChangeEvent::from_ndjson_line_named(line, None, "t").map(|(e, _)| e.id);
        let text = RawEvent::from_ndjson_line_named(line, None, "t").map(|(e, _)| e.head.id);
        match (tree, text) {
            (Err(a), Err(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(line)),
            (a, b) => panic!("{}: {a:?} / {b:?}", String::from_utf8_lossy(line)),
        }
    }
}
