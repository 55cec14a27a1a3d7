//! Turning a FHIR Bundle (history, transaction or batch) into change events.
//!
//! The hub is not a FHIR server: it does not store these resources, it only turns each
//! entry into the change it describes. Every entry is checked before anything is returned,
//! so a rejected bundle publishes nothing.

use serde_json::Value;

use crate::event::{Action, ChangeEvent, EventError};
use crate::outcome::{IssueType, OperationOutcome};
use crate::time_fmt;

/// The events a bundle describes, and how many read-only entries (GET/HEAD) it skipped.
#[derive(Debug)]
pub struct BundleEvents {
    pub events: Vec<ChangeEvent>,
    pub skipped_reads: usize,
}

/// Convert a Bundle into change events, or explain (naming the entry) why not.
pub fn events_from_bundle(bundle: &Value, tenant: &str) -> Result<BundleEvents, OperationOutcome> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(OperationOutcome::error(
            IssueType::Invalid,
            "POST /fhir expects a Bundle resource",
        )
        .at("resourceType"));
    }
    let kind = bundle.get("type").and_then(Value::as_str).unwrap_or("");
    if !matches!(kind, "history" | "transaction" | "batch") {
        return Err(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "Bundle.type '{kind}' is not accepted: send a history, transaction or batch bundle"
            ),
        )
        .at("Bundle.type"));
    }
    let entries = match bundle.get("entry") {
        None => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => {
            return Err(OperationOutcome::error(
                IssueType::Structure,
                "Bundle.entry must be an array",
            )
            .at("Bundle.entry"));
        }
    };
    let mut events = Vec::with_capacity(entries.len());
    let mut skipped_reads = 0;
    for (i, entry) in entries.iter().enumerate() {
        let loc = format!("Bundle.entry[{i}]");
        let fail = |code: IssueType, msg: String| {
            OperationOutcome::error(code, format!("{loc}: {msg}")).at(loc.clone())
        };
        let method = entry
            .pointer("/request/method")
            .and_then(Value::as_str)
            .ok_or_else(|| fail(IssueType::Required, "request.method is required".into()))?;
        let url = entry
            .pointer("/request/url")
            .and_then(Value::as_str)
            .unwrap_or("");
        let action = match method {
            "GET" | "HEAD" => {
                skipped_reads += 1;
                continue;
            }
            "POST" => Action::Create,
            "PUT" => Action::Update,
            "DELETE" => Action::Delete,
            "PATCH" => {
                return Err(fail(
                    IssueType::NotSupported,
                    "PATCH entries carry a patch, not the resource; send the patched resource with PUT".into(),
                ));
            }
            other => {
                return Err(fail(
                    IssueType::Value,
                    format!("request.method '{other}' is not an HTTP method FHIR allows"),
                ));
            }
        };
        if url.contains('?') {
            return Err(fail(
                IssueType::NotSupported,
                format!("conditional request '{url}' needs the resources the hub does not hold"),
            ));
        }
        let event = if action == Action::Delete {
            let (rtype, rid) = type_and_id_from_url(url).ok_or_else(|| {
                fail(
                    IssueType::Value,
                    format!("DELETE request.url '{url}' must be Type/id"),
                )
            })?;
            let version_id = etag_version(entry);
            let occurred_at = entry
                .pointer("/response/lastModified")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(time_fmt::now_instant);
            let e = ChangeEvent {
                id: uuid::Uuid::now_v7().to_string(),
                tenant: tenant.to_owned(),
                action,
                resource_type: rtype.to_owned(),
                resource_id: rid.to_owned(),
                version_id,
                occurred_at,
                resource: None,
                previous: None,
            };
            e.validate().map_err(|e| entry_error(&loc, e))?;
            e
        } else {
            let mut resource = entry
                .get("resource")
                .cloned()
                .ok_or_else(|| fail(IssueType::Required, format!("{method} needs a resource")))?;
            if resource.get("id").is_none() {
                // A POST entry in a transaction may leave the id to the server; the fullUrl
                // (urn:uuid:...) or the request url is then the only identity there is.
                let from_url = if action == Action::Update {
                    type_and_id_from_url(url).map(|(_, id)| id.to_owned())
                } else {
                    None
                };
                let from_full = entry
                    .get("fullUrl")
                    .and_then(Value::as_str)
                    .and_then(|f| f.strip_prefix("urn:uuid:"))
                    .map(str::to_owned);
                match from_url.or(from_full) {
                    Some(id) => resource["id"] = Value::String(id),
                    None => {
                        return Err(fail(
                            IssueType::Required,
                            "the resource has no id, and no urn:uuid fullUrl gives one".into(),
                        ));
                    }
                }
            }
            let mut e = ChangeEvent::from_resource(resource, Some(action), tenant)
                .map_err(|e| entry_error(&loc, e))?;
            if e.version_id.is_none() {
                e.version_id = etag_version(entry);
            }
            if let Some(lm) = entry
                .pointer("/response/lastModified")
                .and_then(Value::as_str)
                && e.resource
                    .as_ref()
                    .and_then(|r| r.pointer("/meta/lastUpdated"))
                    .is_none()
            {
                lm.clone_into(&mut e.occurred_at);
            }
            e.validate().map_err(|e| entry_error(&loc, e))?;
            e
        };
        events.push(event);
    }
    Ok(BundleEvents {
        events,
        skipped_reads,
    })
}

fn entry_error(loc: &str, e: EventError) -> OperationOutcome {
    OperationOutcome::error(IssueType::Invalid, format!("{loc}: {}", e.message)).at(loc.to_owned())
}

/// `W/"3"` in `response.etag` → `3`.
fn etag_version(entry: &Value) -> Option<String> {
    let etag = entry.pointer("/response/etag").and_then(Value::as_str)?;
    let v = etag.trim_start_matches("W/").trim_matches('"');
    (!v.is_empty()).then(|| v.to_owned())
}

/// `Patient/1`, `Patient/1/_history/2` or `http://x/fhir/Patient/1` → (`Patient`, `1`).
pub fn type_and_id_from_url(url: &str) -> Option<(&str, &str)> {
    let path = url.split('?').next().unwrap_or(url);
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = parts.len();
    if n >= 4 && parts[n - 2] == "_history" {
        return Some((parts[n - 4], parts[n - 3]));
    }
    if n >= 2 {
        return Some((parts[n - 2], parts[n - 1]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transaction_entries_become_events() {
        let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": {"resourceType": "Observation", "status": "final"},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Patient", "id": "p1"},
             "request": {"method": "PUT", "url": "Patient/p1"}},
            {"request": {"method": "DELETE", "url": "Encounter/e9"}},
            {"request": {"method": "GET", "url": "Patient/p1"}}
        ]});
        let out = events_from_bundle(&b, "default").unwrap();
        assert_eq!(out.skipped_reads, 1);
        let e = &out.events;
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].action, Action::Create);
        assert_eq!(e[0].resource_id, "61ebe359-bfdc-4613-8bf2-c5e300945f0a");
        assert_eq!(e[1].action, Action::Update);
        assert_eq!(e[2].action, Action::Delete);
        assert_eq!(e[2].key(), "Encounter/e9");
    }

    #[test]
    fn history_uses_etag_and_last_modified() {
        let b = json!({"resourceType": "Bundle", "type": "history", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1"},
             "request": {"method": "PUT", "url": "Patient/p1"},
             "response": {"status": "200", "etag": "W/\"4\"", "lastModified": "2024-03-01T00:00:00Z"}}
        ]});
        let out = events_from_bundle(&b, "default").unwrap();
        assert_eq!(out.events[0].version_id.as_deref(), Some("4"));
        assert_eq!(out.events[0].occurred_at, "2024-03-01T00:00:00Z");
    }

    #[test]
    fn one_bad_entry_rejects_the_whole_bundle_naming_it() {
        let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1"},
             "request": {"method": "PUT", "url": "Patient/p1"}},
            {"resource": {"resourceType": "Pateint", "id": "p2"},
             "request": {"method": "PUT", "url": "Pateint/p2"}}
        ]});
        let oo = events_from_bundle(&b, "default").unwrap_err();
        assert!(oo.summary().contains("Bundle.entry[1]"), "{}", oo.summary());
        assert!(oo.summary().contains("Pateint"));
        let b = json!({"resourceType": "Bundle", "type": "searchset"});
        assert_eq!(
            events_from_bundle(&b, "default").unwrap_err().issues[0].code,
            IssueType::NotSupported
        );
    }

    #[test]
    fn urls() {
        assert_eq!(type_and_id_from_url("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            type_and_id_from_url("http://h/fhir/Patient/1/_history/3"),
            Some(("Patient", "1"))
        );
        assert_eq!(type_and_id_from_url("Patient"), None);
    }
}
