//! Records a hostile or broken producer may write straight to the change topic: NUL, invalid
//! UTF-8, control characters and huge strings in every envelope field and in the key. Shared
//! by the poison tests (tests/it/poison_bytes.rs) and the fault suite (tests/faults).

use serde_json::json;

use crate::harness::{envelope, glucose};

/// What is spliced into a field: JSON escape text or raw bytes.
pub(crate) fn bad_values() -> Vec<Vec<u8>> {
    let mut huge = vec![b'x'; 200_000];
    huge.extend_from_slice(br"\u0000");
    vec![
        br"x\u0000".to_vec(),
        b"\xff\xfe\xc3".to_vec(),
        b"x\x00y".to_vec(),
        br"\u001b[2J\r\nforged\u007f\u0085\u202e".to_vec(),
        huge,
    ]
}

/// An envelope of glucose `id` with `bad` spliced into `field` (into a string's text; for
/// `resource` and `previous` into the id the resource carries; for `member` into the name
/// of an extra member).
pub(crate) fn poisoned(id: &str, field: &str, bad: &[u8]) -> Vec<u8> {
    let mark = "@@BAD@@";
    let mut e = envelope(&glucose(id), "update");
    e["id"] = json!(format!("ev-{id}"));
    e["tenant"] = json!("default");
    e["versionId"] = json!("2");
    match field {
        "resource" => e["resource"]["id"] = json!(format!("{id}{mark}")),
        "previous" => {
            e["previous"] = json!({"resourceType": "Observation", "id": format!("{id}{mark}")})
        }
        "member" => e[format!("x{mark}")] = json!(1),
        f => e[f] = json!(format!("{}{mark}", e[f].as_str().unwrap())),
    }
    let text = e.to_string();
    let at = text.find(mark).unwrap();
    let mut out = text.as_bytes()[..at].to_vec();
    out.extend_from_slice(bad);
    out.extend_from_slice(&text.as_bytes()[at + mark.len()..]);
    out
}

pub(crate) const FIELDS: [&str; 10] = [
    "id",
    "tenant",
    "action",
    "resourceType",
    "resourceId",
    "versionId",
    "occurredAt",
    "resource",
    "previous",
    "member",
];

/// Keys a producer may choose (invalid UTF-8 only where the log carries bytes).
pub(crate) fn bad_keys(bytes: bool) -> Vec<Vec<u8>> {
    let mut keys = vec![
        b"Observation/\x00k".to_vec(),
        b"\x1b[2J\r\n\x7f".to_vec(),
        vec![b'k'; 100_000],
    ];
    if bytes {
        keys.push(b"Observation/\xff\xfe".to_vec());
    }
    keys
}

/// (key, payload) records to write to the topic.
pub(crate) type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// The flood: (key, payload) records every one of which must be quarantined, then records
/// with a producer's key but a good event, which must be delivered (with the ids delivered).
pub(crate) fn flood(bytes_keys: bool) -> (Records, Records, Vec<String>) {
    let mut poison = Vec::new();
    let mut n = 0;
    for field in FIELDS {
        for bad in bad_values() {
            n += 1;
            let id = format!("pz{n}");
            poison.push((
                format!("Observation/{id}").into_bytes(),
                poisoned(&id, field, &bad),
            ));
        }
    }
    let mut good = Vec::new();
    let mut ids = Vec::new();
    for (i, key) in bad_keys(bytes_keys).into_iter().enumerate() {
        poison.push((
            key.clone(),
            poisoned(&format!("pk{i}"), "action", br"\u0000"),
        ));
        let id = format!("gk{i}");
        good.push((
            key,
            envelope(&glucose(&id), "create").to_string().into_bytes(),
        ));
        ids.push(id);
    }
    // a NUL inside the resource, escaped as JSON must: legal, stored and delivered as it is
    let mut nul = glucose("nul");
    nul["note"] = json!([{"text": "a\u{0}b"}]);
    good.push((
        b"Observation/nul".to_vec(),
        envelope(&nul, "create").to_string().into_bytes(),
    ));
    ids.push("nul".into());
    (poison, good, ids)
}
