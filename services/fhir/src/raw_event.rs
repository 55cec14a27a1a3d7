//! Change events whose resources stay JSON text.
//!
//! Ingest and the matcher used to parse every event's resource into a `serde_json::Value`,
//! only to serialize it again (for the log, for the notification log). A [`RawEvent`] is
//! read by scanning: the envelope's fields and the resource's `resourceType`, `id` and `meta`
//! are read, everything else is checked as JSON and kept as the text it was. It accepts and
//! refuses exactly what [`ChangeEvent::from_ndjson_line_named`] does, with the same messages
//! (a test compares the two on generated input); [`RawEvent::into_event`] builds the trees
//! when something needs them (topic triggers, compartment checks).

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::{Action, ChangeEvent, DEFAULT_TENANT, EventError, is_event_id, not_a_resource};
use crate::json::Text;
use crate::time_fmt;

/// A validated change event with its resources as JSON text.
#[derive(Debug, Clone)]
pub struct RawEvent<'a> {
    /// Everything but the resources (its `resource` and `previous` are `None` unless
    /// [`RawEvent::with_trees`] filled them in).
    pub head: ChangeEvent,
    /// The resource after the change, as it was read.
    pub resource: Option<JsonText<'a>>,
    /// The resource before the change, when the producer sent it.
    pub previous: Option<JsonText<'a>>,
}

/// The text of one JSON value that has been checked as JSON: made only here, from text a
/// parser accepted (or wrote), so it is written into the log as it is. Unlike a
/// `&RawValue` it can be the whole of a line that was already checked while its members
/// were read, without scanning the line a second time to make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText<'a>(Cow<'a, str>);

impl JsonText<'_> {
    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl<'a> From<&'a RawValue> for JsonText<'a> {
    fn from(raw: &'a RawValue) -> Self {
        JsonText(Cow::Borrowed(raw.get()))
    }
}

impl From<Box<RawValue>> for JsonText<'static> {
    fn from(raw: Box<RawValue>) -> Self {
        JsonText(Cow::Owned(String::from(raw.get())))
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A change envelope; `names_tenant` when it has a `tenant` field.
    Envelope { names_tenant: bool },
    /// A bare FHIR resource: the hub named the event.
    Resource,
}

/// The members read in one pass over a line: an envelope's fields (the first nine), and what
/// a bare resource's event is made of (`resourceType`, `id`, `meta`).
const MEMBERS: [&str; 10] = [
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
];
const META: usize = 9;

/// The members of a JSON object named in the wanted list (of a repeated name the last, as
/// a whole parse keeps it), as text, with the place of each name's first appearance; and the
/// first member of another name, with its place.
struct Picked<'a, const N: usize> {
    values: [Option<&'a RawValue>; N],
    first_at: [Option<usize>; N],
    other: Option<(usize, String)>,
}

struct Pick<'w, const N: usize>(&'w [&'static str; N]);

impl<'de, const N: usize> Visitor<'de> for Pick<'_, N> {
    type Value = Picked<'de, N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Picked<'de, N>, A::Error> {
        let mut out = Picked {
            values: [None; N],
            first_at: [None; N],
            other: None,
        };
        let mut at = 0;
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match self.0.iter().position(|w| *w == key) {
                Some(i) => {
                    out.values[i] = Some(map.next_value::<&'de RawValue>()?);
                    out.first_at[i].get_or_insert(at);
                }
                None => {
                    if out.other.is_none() {
                        out.other = Some((at, key.into_owned()));
                    }
                    map.next_value::<IgnoredAny>()?;
                }
            }
            at += 1;
        }
        Ok(out)
    }
}

/// Pick members of `json`, which must be one JSON object (an error otherwise).
fn pick<'a, const N: usize>(
    json: &'a str,
    wanted: &[&'static str; N],
) -> serde_json::Result<Picked<'a, N>> {
    let mut de = serde_json::Deserializer::from_str(json);
    let picked = de.deserialize_map(Pick(wanted))?;
    de.end()?;
    Ok(picked)
}

/// Whether `json` holds a `\uD…` escape (half of a surrogate pair, or an unpaired one).
fn has_surrogate_escape(json: &[u8]) -> bool {
    memchr::memmem::find_iter(json, b"\\u").any(|i| matches!(json.get(i + 2), Some(b'd' | b'D')))
}

/// What JSON counts as whitespace between tokens (RFC 8259 §2).
const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

fn is_null(raw: &RawValue) -> bool {
    raw.get().trim() == "null"
}

/// A JSON string's text (`None` when the value is not a string).
fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Text<'_>>(raw.get())
        .ok()
        .map(|t| t.0)
}

fn not_json(e: serde_json::Error) -> EventError {
    EventError {
        message: format!("not valid JSON: {e}"),
        location: None,
    }
}

/// The log form of an event's head: the same fields, in the same order, as [`ChangeEvent`]'s
/// (its `resource` and `previous`, the last two, are written after it as text).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'e> {
    id: &'e str,
    tenant: &'e str,
    action: Action,
    resource_type: &'e str,
    resource_id: &'e str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<&'e str>,
    occurred_at: &'e str,
}

impl<'a> RawEvent<'a> {
    /// Read a log record or one line of NDJSON: a change envelope (in [`DEFAULT_TENANT`]
    /// when it names no tenant), or a bare FHIR resource (in `tenant`; its action
    /// `default_action`, else by its version). The error of input that is JSON but not an
    /// object is `not_object`'s.
    pub fn parse(
        json: &'a [u8],
        default_action: Option<Action>,
        tenant: &str,
        not_object: &str,
    ) -> Result<(Self, Origin), EventError> {
        // Refused input is parsed whole, for the whole parse's words (only bad input pays).
        let refused = || match serde_json::from_slice::<Value>(json) {
            Err(e) => not_json(e),
            Ok(_) => EventError {
                message: not_object.to_owned(),
                location: None,
            },
        };
        // A scan checks escapes but not that surrogate escapes pair up, which a whole parse
        // refuses: input with any `\uD...` escape (rare: writers send UTF-8) is checked whole.
        if has_surrogate_escape(json) {
            serde_json::from_slice::<Value>(json).map_err(not_json)?;
        }
        let text = std::str::from_utf8(json).map_err(|_| refused())?;
        // one pass: the line is one JSON object (all of it checked), its members read
        let picked = pick(text, &MEMBERS).map_err(|_| refused())?;
        if picked.values[4].is_some() {
            let names_tenant = picked.values[1].is_some();
            return Self::from_envelope(picked).map(|e| (e, Origin::Envelope { names_tenant }));
        }
        // a bare resource is the whole line, as text: the pick checked all of it, so it is
        // not scanned again (outer whitespace is no part of the value)
        let whole = JsonText(Cow::Borrowed(text.trim_matches(JSON_WHITESPACE)));
        Self::from_resource(whole, picked, default_action, tenant).map(|e| (e, Origin::Resource))
    }

    /// [`ChangeEvent::from_ndjson_line_named`] without building the resource's tree: an
    /// envelope that names no tenant is in `tenant`; `true` when the hub named the event.
    pub fn from_ndjson_line_named(
        line: &'a [u8],
        default_action: Option<Action>,
        tenant: &str,
    ) -> Result<(Self, bool), EventError> {
        let (mut e, origin) = Self::parse(
            line,
            default_action,
            tenant,
            "each line must be a JSON object",
        )?;
        match origin {
            Origin::Envelope { names_tenant } => {
                if !names_tenant {
                    tenant.clone_into(&mut e.head.tenant);
                }
                Ok((e, false))
            }
            Origin::Resource => Ok((e, true)),
        }
    }

    fn from_envelope(picked: Picked<'a, 10>) -> Result<Self, EventError> {
        // `meta` is no envelope field: the first unknown member is it or the first other
        let meta = picked.first_at[META].map(|at| (at, MEMBERS[META].to_owned()));
        let unknown = match (picked.other, meta) {
            (Some(o), Some(m)) => Some(if o.0 < m.0 { o } else { m }),
            (o, m) => o.or(m),
        };
        if let Some((_, key)) = unknown {
            return Err(EventError::new(
                format!("unknown field '{key}' in change event"),
                &key,
            ));
        }
        let [
            id,
            tenant,
            action,
            resource_type,
            resource_id,
            version_id,
            occurred_at,
            resource,
            previous,
            _,
        ] = picked.values;
        let field = |v: Option<&RawValue>, name: &str| -> Result<String, EventError> {
            match v {
                Some(raw) => text(raw)
                    .map(Cow::into_owned)
                    .ok_or_else(|| EventError::new(format!("'{name}' must be a string"), name)),
                None => Err(EventError::new(format!("'{name}' is required"), name)),
            }
        };
        let id = field(id, "id")?;
        if !is_event_id(&id) {
            return Err(EventError::new(
                "'id' must be 1-128 characters of [A-Za-z0-9-.:_]",
                "id",
            ));
        }
        let tenant = match tenant {
            None => DEFAULT_TENANT.to_owned(),
            Some(_) => field(tenant, "tenant")?,
        };
        let action_s = field(action, "action")?;
        let action = Action::parse(&action_s).ok_or_else(|| {
            EventError::new(
                format!("'action' must be create, update or delete, not '{action_s}'"),
                "action",
            )
        })?;
        let version_id = match version_id {
            None => None,
            Some(v) if is_null(v) => None,
            Some(_) => Some(field(version_id, "versionId")?),
        };
        let head = ChangeEvent {
            id,
            tenant,
            action,
            resource_type: field(resource_type, "resourceType")?,
            resource_id: field(resource_id, "resourceId")?,
            version_id,
            occurred_at: field(occurred_at, "occurredAt")?,
            resource: None,
            previous: None,
        };
        let resource = resource.filter(|r| !is_null(r));
        let previous = previous.filter(|r| !is_null(r));
        head.validate_head(resource.is_some())?;
        for (r, location) in [(resource, "resource"), (previous, "previous")] {
            if let Some(r) = r {
                let names =
                    pick(r.get(), &["resourceType", "id"]).map_err(|_| not_a_resource(location))?;
                let [rt, rid] = names.values;
                head.check_resource_names(
                    rt.and_then(text).as_deref(),
                    rid.and_then(text).as_deref(),
                    location,
                )?;
            }
        }
        Ok(RawEvent {
            head,
            resource: resource.map(JsonText::from),
            previous: previous.map(JsonText::from),
        })
    }

    fn from_resource(
        whole: JsonText<'a>,
        picked: Picked<'a, 10>,
        default_action: Option<Action>,
        tenant: &str,
    ) -> Result<Self, EventError> {
        let (resource_type, id, meta) = (picked.values[3], picked.values[0], picked.values[META]);
        let Some(resource_type) = resource_type.and_then(text) else {
            return Err(EventError::new(
                "the resource has no 'resourceType'",
                "resourceType",
            ));
        };
        let Some(resource_id) = id.and_then(text) else {
            return Err(EventError::new("the resource has no 'id'", "id"));
        };
        // `meta`'s two strings, picked without building its tree (a `meta` that is not an
        // object names neither, as a tree's lookups would find neither)
        let [version_id, last_updated] = meta
            .and_then(|m| pick(m.get(), &["versionId", "lastUpdated"]).ok())
            .map_or([None, None], |m| {
                m.values.map(|v| v.and_then(text).map(Cow::into_owned))
            });
        let occurred_at = last_updated.unwrap_or_else(time_fmt::now_instant);
        let action = default_action.unwrap_or(match version_id.as_deref() {
            None | Some("1") => Action::Create,
            Some(_) => Action::Update,
        });
        let head = ChangeEvent {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.to_owned(),
            action,
            resource_type: resource_type.into_owned(),
            resource_id: resource_id.into_owned(),
            version_id,
            occurred_at,
            resource: None,
            previous: None,
        };
        // a resource's own names are the event's; a deletion carries no resource
        head.validate_head(true)?;
        let resource = (action != Action::Delete).then_some(whole);
        Ok(RawEvent {
            head,
            resource,
            previous: None,
        })
    }

    /// An event built elsewhere (a Bundle entry), its trees turned into text (serialized
    /// once, not parsed again).
    pub fn from_event(mut event: ChangeEvent) -> Result<RawEvent<'static>, EventError> {
        let text = |v: Option<Value>| -> Result<Option<JsonText<'static>>, EventError> {
            v.map(|v| serde_json::to_string(&v).map(|t| JsonText(Cow::Owned(t))))
                .transpose()
                .map_err(not_json)
        };
        let resource = text(event.resource.take())?;
        let previous = text(event.previous.take())?;
        Ok(RawEvent {
            head: event,
            resource,
            previous,
        })
    }

    /// Fill in the head's `resource` and `previous` trees from the text (a tree the head
    /// has where there is no text, such as a previous version from the store, stays).
    pub fn with_trees(&mut self) -> Result<(), EventError> {
        let tree = |r: &JsonText<'_>| serde_json::from_str::<Value>(r.get()).map_err(not_json);
        if let Some(r) = &self.resource {
            self.head.resource = Some(tree(r)?);
        }
        if let Some(p) = &self.previous {
            self.head.previous = Some(tree(p)?);
        }
        Ok(())
    }

    /// The event with its trees.
    pub fn into_event(mut self) -> Result<ChangeEvent, EventError> {
        self.with_trees()?;
        Ok(self.head)
    }

    /// The log key: `Type/id`.
    pub fn key(&self) -> String {
        self.head.key()
    }

    /// Serialize for the log: the bytes [`ChangeEvent::to_json_bytes`] writes for the same
    /// event (the resources as they were read).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let h = &self.head;
        let text = |r: &Option<JsonText<'a>>| r.as_ref().map_or(0, |r| r.get().len());
        // sized once: a publish holds many records, and growing each by doubling left up to
        // half of every one unused (and the allocator zeroing fresh pages for it)
        let fields = h.id.len()
            + h.tenant.len()
            + h.resource_type.len()
            + h.resource_id.len()
            + h.version_id.as_deref().map_or(0, str::len)
            + h.occurred_at.len();
        let mut out =
            Vec::with_capacity(text(&self.resource) + text(&self.previous) + fields + 160);
        let head = serde_json::to_writer(
            &mut out,
            &Envelope {
                id: &h.id,
                tenant: &h.tenant,
                action: h.action,
                resource_type: &h.resource_type,
                resource_id: &h.resource_id,
                version_id: h.version_id.as_deref(),
                occurred_at: &h.occurred_at,
            },
        );
        if head.is_err() || out.pop() != Some(b'}') {
            return Vec::new();
        }
        // the resources last, as their text (what serializing a `RawValue` writes)
        for (name, r) in [("resource", &self.resource), ("previous", &self.previous)] {
            if let Some(r) = r {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(r.get().as_bytes());
            }
        }
        out.push(b'}');
        out
    }
}
