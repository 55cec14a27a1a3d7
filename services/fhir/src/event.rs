//! The change event: the envelope every producer writes and every consumer reads.
//!
//! The JSON Schema is `schemas/change-event.schema.json`. On the log, the record key is
//! `Type/id` so that one resource's changes stay in one partition, in order.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::outcome::{IssueType, OperationOutcome};
use crate::resource_types::is_r4_resource_type;
use crate::time_fmt;

/// The tenant used when an envelope or caller names none.
pub const DEFAULT_TENANT: &str = "default";

/// What happened to the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(Self::Create),
            "update" => Some(Self::Update),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// One change to one FHIR resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeEvent {
    /// Unique id of the event; consumers deduplicate on it.
    pub id: String,
    pub tenant: String,
    pub action: Action,
    pub resource_type: String,
    pub resource_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// FHIR instant of the change.
    pub occurred_at: String,
    /// The resource after the change (absent for most deletes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Value>,
    /// The resource before the change, when the producer knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Value>,
}

/// Why an envelope or resource was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    pub message: String,
    /// Where in the envelope the problem is (`resourceType`, `resource.id`...).
    pub location: Option<String>,
}

impl EventError {
    pub(crate) fn new(message: impl Into<String>, location: &str) -> Self {
        Self {
            message: message.into(),
            location: Some(location.to_owned()),
        }
    }

    pub fn to_outcome(&self) -> OperationOutcome {
        let oo = OperationOutcome::error(IssueType::Invalid, self.message.clone());
        match &self.location {
            Some(l) => oo.at(l.clone()),
            None => oo,
        }
    }
}

/// FHIR `id`: 1-64 of `[A-Za-z0-9-.]`.
pub fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Tenant names: 1-64 of `[a-z0-9-_]`, so they are safe in topic names, paths and labels.
pub fn is_tenant_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(crate) fn is_event_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'))
}

pub(crate) fn not_a_resource(location: &str) -> EventError {
    EventError::new(
        format!("'{location}' must be a FHIR resource object"),
        location,
    )
}

/// Whether a JSON object is a change envelope rather than a bare FHIR resource: envelopes
/// always carry `resourceId`, which no FHIR resource has at the top level.
pub fn is_envelope(obj: &Map<String, Value>) -> bool {
    obj.contains_key("resourceId")
}

impl ChangeEvent {
    /// The log key: `Type/id`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.resource_type, self.resource_id)
    }

    /// Parse and validate an envelope from JSON bytes.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, EventError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EventError {
            message: format!("not valid JSON: {e}"),
            location: None,
        })?;
        Self::from_envelope_value(value)
    }

    /// Validate an envelope given as JSON.
    pub fn from_envelope_value(value: Value) -> Result<Self, EventError> {
        let Value::Object(obj) = &value else {
            return Err(EventError {
                message: "a change event must be a JSON object".into(),
                location: None,
            });
        };
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "id" | "tenant"
                    | "action"
                    | "resourceType"
                    | "resourceId"
                    | "versionId"
                    | "occurredAt"
                    | "resource"
                    | "previous"
            ) {
                return Err(EventError::new(
                    format!("unknown field '{key}' in change event"),
                    key,
                ));
            }
        }
        let field = |name: &str| -> Result<&str, EventError> {
            match obj.get(name) {
                Some(Value::String(s)) => Ok(s.as_str()),
                Some(_) => Err(EventError::new(format!("'{name}' must be a string"), name)),
                None => Err(EventError::new(format!("'{name}' is required"), name)),
            }
        };
        let id = field("id")?;
        if !is_event_id(id) {
            return Err(EventError::new(
                "'id' must be 1-128 characters of [A-Za-z0-9-.:_]",
                "id",
            ));
        }
        let tenant = match obj.get("tenant") {
            None => DEFAULT_TENANT,
            Some(_) => field("tenant")?,
        };
        let action_s = field("action")?;
        let action = Action::parse(action_s).ok_or_else(|| {
            EventError::new(
                format!("'action' must be create, update or delete, not '{action_s}'"),
                "action",
            )
        })?;
        let version_id = match obj.get("versionId") {
            None | Some(Value::Null) => None,
            Some(_) => Some(field("versionId")?.to_owned()),
        };
        let event = ChangeEvent {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            action,
            resource_type: field("resourceType")?.to_owned(),
            resource_id: field("resourceId")?.to_owned(),
            version_id,
            occurred_at: field("occurredAt")?.to_owned(),
            resource: obj.get("resource").filter(|v| !v.is_null()).cloned(),
            previous: obj.get("previous").filter(|v| !v.is_null()).cloned(),
        };
        event.validate()?;
        Ok(event)
    }

    /// Build an event from a bare FHIR resource. The version and time come from `meta` when
    /// present; the action is `create` for version 1 or no version, `update` otherwise,
    /// unless the caller says.
    pub fn from_resource(
        resource: Value,
        action: Option<Action>,
        tenant: &str,
    ) -> Result<Self, EventError> {
        let Value::Object(obj) = &resource else {
            return Err(EventError {
                message: "a FHIR resource must be a JSON object".into(),
                location: None,
            });
        };
        let resource_type = match obj.get("resourceType") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(EventError::new(
                    "the resource has no 'resourceType'",
                    "resourceType",
                ));
            }
        };
        let resource_id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(EventError::new("the resource has no 'id'", "id")),
        };
        let meta = obj.get("meta");
        let version_id = meta
            .and_then(|m| m.get("versionId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let occurred_at = meta
            .and_then(|m| m.get("lastUpdated"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(time_fmt::now_instant);
        let action = action.unwrap_or(match version_id.as_deref() {
            None | Some("1") => Action::Create,
            Some(_) => Action::Update,
        });
        let event = ChangeEvent {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.to_owned(),
            action,
            resource_type,
            resource_id,
            version_id,
            occurred_at,
            resource: if action == Action::Delete {
                None
            } else {
                Some(resource)
            },
            previous: None,
        };
        event.validate()?;
        Ok(event)
    }

    /// Check every rule of the envelope schema that serde alone cannot.
    pub fn validate(&self) -> Result<(), EventError> {
        self.validate_head(self.resource.is_some())?;
        if let Some(r) = &self.resource {
            self.check_resource(r, "resource")?;
        }
        if let Some(p) = &self.previous {
            self.check_resource(p, "previous")?;
        }
        Ok(())
    }

    /// The rules on everything but the resources' content: `has_resource` says whether the
    /// event carries its resource (required unless it is a deletion).
    pub(crate) fn validate_head(&self, has_resource: bool) -> Result<(), EventError> {
        if !is_tenant_name(&self.tenant) {
            return Err(EventError::new(
                "'tenant' must be 1-64 characters of [a-z0-9-_]",
                "tenant",
            ));
        }
        if !is_r4_resource_type(&self.resource_type) {
            return Err(EventError::new(
                format!(
                    "unknown resourceType '{}': not a FHIR R4 resource type",
                    self.resource_type
                ),
                "resourceType",
            ));
        }
        if !is_fhir_id(&self.resource_id) {
            return Err(EventError::new(
                format!(
                    "'resourceId' '{}' is not a valid FHIR id (1-64 of [A-Za-z0-9-.])",
                    self.resource_id
                ),
                "resourceId",
            ));
        }
        if let Some(v) = &self.version_id
            && !is_fhir_id(v)
        {
            return Err(EventError::new(
                format!("'versionId' '{v}' is not a valid FHIR id"),
                "versionId",
            ));
        }
        if time_fmt::parse_instant(&self.occurred_at).is_none() {
            return Err(EventError::new(
                format!(
                    "'occurredAt' '{}' is not a FHIR instant (e.g. 2024-01-31T12:00:00Z)",
                    self.occurred_at
                ),
                "occurredAt",
            ));
        }
        if !has_resource && self.action != Action::Delete {
            return Err(EventError::new(
                format!("'resource' is required for {}", self.action.as_str()),
                "resource",
            ));
        }
        Ok(())
    }

    fn check_resource(&self, r: &Value, location: &str) -> Result<(), EventError> {
        let Value::Object(obj) = r else {
            return Err(not_a_resource(location));
        };
        self.check_resource_names(
            obj.get("resourceType").and_then(Value::as_str),
            obj.get("id").and_then(Value::as_str),
            location,
        )
    }

    /// A resource's `resourceType` and `id` (when strings) must be the event's.
    pub(crate) fn check_resource_names(
        &self,
        resource_type: Option<&str>,
        id: Option<&str>,
        location: &str,
    ) -> Result<(), EventError> {
        if resource_type != Some(self.resource_type.as_str()) {
            return Err(EventError::new(
                format!(
                    "'{location}.resourceType' must equal the event's resourceType '{}'",
                    self.resource_type
                ),
                &format!("{location}.resourceType"),
            ));
        }
        if id != Some(self.resource_id.as_str()) {
            return Err(EventError::new(
                format!(
                    "'{location}.id' must equal the event's resourceId '{}'",
                    self.resource_id
                ),
                &format!("{location}.id"),
            ));
        }
        Ok(())
    }

    /// Parse one line of NDJSON input: an envelope, or a bare FHIR resource. The hub reads
    /// lines with [`crate::raw_event::RawEvent`], which keeps resources as text; this reader,
    /// which builds their trees, is the reference it is tested against (same answers, same
    /// messages).
    pub fn from_ndjson_line(
        line: &[u8],
        default_action: Option<Action>,
        tenant: &str,
    ) -> Result<Self, EventError> {
        Self::from_ndjson_line_named(line, default_action, tenant).map(|(e, _)| e)
    }

    /// [`ChangeEvent::from_ndjson_line`], saying whether the hub named the event (a bare
    /// resource: its `id` is the hub's) rather than the producer (an envelope's `id`).
    pub fn from_ndjson_line_named(
        line: &[u8],
        default_action: Option<Action>,
        tenant: &str,
    ) -> Result<(Self, bool), EventError> {
        let value: Value = serde_json::from_slice(line).map_err(|e| EventError {
            message: format!("not valid JSON: {e}"),
            location: None,
        })?;
        match &value {
            Value::Object(obj) if is_envelope(obj) => {
                // an envelope that names no tenant is in the publisher's tenant
                let names_tenant = obj.contains_key("tenant");
                Self::from_envelope_value(value).map(|mut e| {
                    if !names_tenant {
                        e.tenant = tenant.to_owned();
                    }
                    (e, false)
                })
            }
            Value::Object(_) => {
                Self::from_resource(value, default_action, tenant).map(|e| (e, true))
            }
            _ => Err(EventError {
                message: "each line must be a JSON object".into(),
                location: None,
            }),
        }
    }

    /// Serialize for the log. Serializing this struct cannot fail.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs() -> Value {
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}})
    }

    #[test]
    fn envelope_round_trip() {
        let env = json!({"id": "e1", "action": "create", "resourceType": "Observation",
            "resourceId": "o1", "occurredAt": "2024-01-01T00:00:00Z", "resource": obs()});
        let e = ChangeEvent::from_envelope_value(env).unwrap();
        assert_eq!(e.tenant, DEFAULT_TENANT);
        assert_eq!(e.key(), "Observation/o1");
        let back = ChangeEvent::from_json_bytes(&e.to_json_bytes()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn rejects_unknown_resource_type() {
        let env = json!({"id": "e1", "action": "create", "resourceType": "Observatoin",
            "resourceId": "o1", "occurredAt": "2024-01-01T00:00:00Z"});
        let err = ChangeEvent::from_envelope_value(env).unwrap_err();
        assert!(
            err.message.contains("unknown resourceType 'Observatoin'"),
            "{err}"
        );
        assert_eq!(err.location.as_deref(), Some("resourceType"));
    }

    #[test]
    fn rejects_mismatched_resource_and_bad_fields() {
        let base = json!({"id": "e1", "action": "update", "resourceType": "Observation",
            "resourceId": "o2", "occurredAt": "2024-01-01T00:00:00Z", "resource": obs()});
        let err = ChangeEvent::from_envelope_value(base.clone()).unwrap_err();
        assert_eq!(err.location.as_deref(), Some("resource.id"));

        let mut v = base.clone();
        v["resourceId"] = json!("o1");
        v["action"] = json!("upsert");
        assert!(
            ChangeEvent::from_envelope_value(v)
                .unwrap_err()
                .message
                .contains("action")
        );

        let mut v = base.clone();
        v["resourceId"] = json!("o1");
        v["occurredAt"] = json!("yesterday");
        assert!(
            ChangeEvent::from_envelope_value(v)
                .unwrap_err()
                .message
                .contains("instant")
        );

        let mut v = base;
        v["resourceId"] = json!("o1");
        v["colour"] = json!("blue");
        assert!(
            ChangeEvent::from_envelope_value(v)
                .unwrap_err()
                .message
                .contains("colour")
        );
    }

    #[test]
    fn delete_needs_no_resource_but_create_does() {
        let env = json!({"id": "e1", "action": "delete", "resourceType": "Patient",
            "resourceId": "p1", "occurredAt": "2024-01-01T00:00:00+01:00"});
        assert!(ChangeEvent::from_envelope_value(env.clone()).is_ok());
        let mut c = env;
        c["action"] = json!("create");
        assert!(ChangeEvent::from_envelope_value(c).is_err());
    }

    #[test]
    fn bare_resource_lines_become_events() {
        let line = serde_json::to_vec(&obs()).unwrap();
        let e = ChangeEvent::from_ndjson_line(&line, None, "default").unwrap();
        assert_eq!(e.action, Action::Create);
        assert_eq!(e.resource_type, "Observation");
        let mut r = obs();
        r["meta"] = json!({"versionId": "3", "lastUpdated": "2024-02-02T10:00:00Z"});
        let e = ChangeEvent::from_resource(r, None, "default").unwrap();
        assert_eq!(e.action, Action::Update);
        assert_eq!(e.occurred_at, "2024-02-02T10:00:00Z");
        assert!(ChangeEvent::from_ndjson_line(b"[1]", None, "default").is_err());
        assert!(ChangeEvent::from_ndjson_line(b"{\"id\":\"x\"}", None, "default").is_err());
    }
}

#[cfg(test)]
mod schema_tests {
    use serde_json::Value;

    const SCHEMA: &str = include_str!("../../../schemas/change-event.schema.json");

    /// The published JSON Schema and the parser agree on the fields and on what is required.
    #[test]
    fn schema_matches_the_envelope() {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        let mut props: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        props.sort_unstable();
        assert_eq!(
            props,
            vec![
                "action",
                "id",
                "occurredAt",
                "previous",
                "resource",
                "resourceId",
                "resourceType",
                "tenant",
                "versionId"
            ]
        );
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for field in &required {
            let mut env = serde_json::json!({"id": "e", "action": "delete",
                "resourceType": "Patient", "resourceId": "p", "occurredAt": "2024-01-01T00:00:00Z"});
            env.as_object_mut().unwrap().remove(*field);
            assert!(
                super::ChangeEvent::from_envelope_value(env).is_err(),
                "missing {field} must be refused"
            );
        }
    }
}
