//! SubscriptionTopic: what a topic says about when it fires and how subscribers may filter.
//!
//! Topics are accepted in the R4B/R5 `SubscriptionTopic` JSON shape (an R4 hub serves them
//! at `/SubscriptionTopic` as the Backport IG's servers do). What the hub evaluates:
//! `resourceTrigger` with `supportedInteraction`, `queryCriteria` (`previous`/`current`,
//! `resultForCreate`, `resultForDelete`, `requireBoth`) and `fhirPathCriteria` (with
//! `%previous`/`%current`); `canFilterBy` with comparators and modifiers. Anything the hub
//! could not honour (event triggers, `notificationShape` includes of resources the hub does
//! not hold) is refused with an OperationOutcome rather than accepted and ignored.

use hub_fhirpath::{Env, Expression};
use serde_json::Value;

use crate::criteria::Criteria;
use crate::event::Action;
use crate::outcome::{IssueType, OperationOutcome};
use crate::resource_types;

/// A validated topic.
#[derive(Debug, Clone)]
pub struct Topic {
    pub url: String,
    pub version: Option<String>,
    pub status: String,
    pub triggers: Vec<ResourceTrigger>,
    pub can_filter_by: Vec<FilterDef>,
}

/// One `resourceTrigger`.
#[derive(Debug, Clone)]
pub struct ResourceTrigger {
    pub resource: String,
    /// Empty means every interaction.
    pub interactions: Vec<Action>,
    pub query: Option<QueryCriteria>,
    pub fhirpath: Option<Expression>,
}

/// `resourceTrigger.queryCriteria`.
#[derive(Debug, Clone)]
pub struct QueryCriteria {
    pub previous: Option<Criteria>,
    pub current: Option<Criteria>,
    /// What the `previous` test counts as on a create (`test-passes` = true).
    pub result_for_create: bool,
    /// What the `current` test counts as on a delete.
    pub result_for_delete: bool,
    pub require_both: bool,
}

/// One `canFilterBy`.
#[derive(Debug, Clone)]
pub struct FilterDef {
    pub resource: Option<String>,
    pub parameter: String,
    pub comparators: Vec<String>,
    pub modifiers: Vec<String>,
}

fn bad(code: IssueType, msg: impl Into<String>, at: impl Into<String>) -> OperationOutcome {
    OperationOutcome::error(code, msg).at(at)
}

/// `http://hl7.org/fhir/StructureDefinition/Observation` or `Observation` → `Observation`.
pub fn resource_of(uri: &str) -> &str {
    uri.rsplit('/').next().unwrap_or(uri)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn criteria_for(resource: &str, query: &str, at: &str) -> Result<Criteria, OperationOutcome> {
    let q = query.trim();
    let full = match q.split_once('?') {
        Some((ty, _)) if !ty.is_empty() => {
            if ty != resource {
                return Err(bad(
                    IssueType::Value,
                    format!("the query names {ty} but the trigger is for {resource}"),
                    at,
                ));
            }
            q.to_owned()
        }
        Some((_, rest)) => format!("{resource}?{rest}"),
        None => format!("{resource}?{q}"),
    };
    Criteria::parse(&full).map_err(|e| e.to_outcome(at))
}

fn result_flag(v: Option<&Value>, default: bool, at: &str) -> Result<bool, OperationOutcome> {
    match v.and_then(Value::as_str) {
        None => Ok(default),
        Some("test-passes") => Ok(true),
        Some("test-fails") => Ok(false),
        Some(other) => Err(bad(
            IssueType::Value,
            format!("'{other}' is not test-passes or test-fails"),
            at,
        )),
    }
}

/// Validate a SubscriptionTopic resource.
pub fn parse(v: &Value) -> Result<Topic, OperationOutcome> {
    if v.get("resourceType").and_then(Value::as_str) != Some("SubscriptionTopic") {
        return Err(bad(
            IssueType::Invalid,
            "expected a SubscriptionTopic",
            "resourceType",
        ));
    }
    let url = v
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            bad(
                IssueType::Required,
                "SubscriptionTopic.url is required (subscriptions name the topic by it)",
                "SubscriptionTopic.url",
            )
        })?;
    let status = v.get("status").and_then(Value::as_str).ok_or_else(|| {
        bad(
            IssueType::Required,
            "SubscriptionTopic.status is required",
            "SubscriptionTopic.status",
        )
    })?;
    if !matches!(status, "draft" | "active" | "retired" | "unknown") {
        return Err(bad(
            IssueType::Value,
            format!("status '{status}' is not draft, active, retired or unknown"),
            "SubscriptionTopic.status",
        ));
    }
    if v.get("eventTrigger").is_some() {
        return Err(bad(
            IssueType::NotSupported,
            "eventTrigger is not supported: the hub sees resource changes, not business events; use resourceTrigger",
            "SubscriptionTopic.eventTrigger",
        ));
    }
    let mut triggers = Vec::new();
    let list = v
        .get("resourceTrigger")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            bad(
                IssueType::Required,
                "at least one resourceTrigger is required",
                "SubscriptionTopic.resourceTrigger",
            )
        })?;
    for (i, t) in list.iter().enumerate() {
        let at = format!("SubscriptionTopic.resourceTrigger[{i}]");
        let uri = t.get("resource").and_then(Value::as_str).ok_or_else(|| {
            bad(
                IssueType::Required,
                "resource is required",
                format!("{at}.resource"),
            )
        })?;
        let resource = resource_of(uri);
        if !resource_types::is_r4_resource_type(resource) {
            return Err(bad(
                IssueType::Value,
                format!("'{uri}' is not an R4 resource type"),
                format!("{at}.resource"),
            ));
        }
        let mut interactions = Vec::new();
        for s in strings(t.get("supportedInteraction")) {
            interactions.push(Action::parse(&s).ok_or_else(|| {
                bad(
                    IssueType::Value,
                    format!("supportedInteraction '{s}' is not create, update or delete"),
                    format!("{at}.supportedInteraction"),
                )
            })?);
        }
        let query = match t.get("queryCriteria") {
            None => None,
            Some(q) => {
                let qa = format!("{at}.queryCriteria");
                let previous = q
                    .get("previous")
                    .and_then(Value::as_str)
                    .map(|s| criteria_for(resource, s, &format!("{qa}.previous")))
                    .transpose()?;
                let current = q
                    .get("current")
                    .and_then(Value::as_str)
                    .map(|s| criteria_for(resource, s, &format!("{qa}.current")))
                    .transpose()?;
                Some(QueryCriteria {
                    previous,
                    current,
                    result_for_create: result_flag(
                        q.get("resultForCreate"),
                        true,
                        &format!("{qa}.resultForCreate"),
                    )?,
                    result_for_delete: result_flag(
                        q.get("resultForDelete"),
                        true,
                        &format!("{qa}.resultForDelete"),
                    )?,
                    require_both: q
                        .get("requireBoth")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                })
            }
        };
        let fhirpath = match t.get("fhirPathCriteria").and_then(Value::as_str) {
            None => None,
            Some(src) => {
                let e = Expression::parse(src).map_err(|e| {
                    bad(
                        IssueType::Invalid,
                        format!("fhirPathCriteria does not parse: {e}"),
                        format!("{at}.fhirPathCriteria"),
                    )
                })?;
                // a path that cannot exist on the resource would make the trigger silently
                // never fire: refuse it now, naming the element
                e.check(resource).map_err(|err| {
                    bad(
                        IssueType::Invalid,
                        format!("fhirPathCriteria cannot run on {resource}: {err}"),
                        format!("{at}.fhirPathCriteria"),
                    )
                })?;
                Some(e)
            }
        };
        triggers.push(ResourceTrigger {
            resource: resource.to_owned(),
            interactions,
            query,
            fhirpath,
        });
    }
    let mut can_filter_by = Vec::new();
    for (i, f) in v
        .get("canFilterBy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("SubscriptionTopic.canFilterBy[{i}]");
        let parameter = f
            .get("filterParameter")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad(
                    IssueType::Required,
                    "filterParameter is required",
                    format!("{at}.filterParameter"),
                )
            })?;
        let resource = f.get("resource").and_then(Value::as_str).map(resource_of);
        // the parameter must be one the matcher can evaluate on that resource
        let types: Vec<&str> = match resource {
            Some(r) => vec![r],
            None => triggers.iter().map(|t| t.resource.as_str()).collect(),
        };
        for ty in types {
            Criteria::parse(&format!("{ty}?{parameter}:missing=false")).map_err(|e| {
                bad(
                    IssueType::NotSupported,
                    format!("filterParameter '{parameter}' on {ty}: {e}"),
                    format!("{at}.filterParameter"),
                )
            })?;
        }
        can_filter_by.push(FilterDef {
            resource: resource.map(str::to_owned),
            parameter: parameter.to_owned(),
            comparators: strings(f.get("comparator")),
            modifiers: strings(f.get("modifier")),
        });
    }
    for (i, s) in v
        .get("notificationShape")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for key in ["include", "revInclude"] {
            if s.get(key)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                return Err(bad(
                    IssueType::NotSupported,
                    format!(
                        "notificationShape.{key} is not supported: the hub holds only the resources change events carry, so it cannot add related resources to a notification"
                    ),
                    format!("SubscriptionTopic.notificationShape[{i}].{key}"),
                ));
            }
        }
    }
    Ok(Topic {
        url: url.to_owned(),
        version: v.get("version").and_then(Value::as_str).map(str::to_owned),
        status: status.to_owned(),
        triggers,
        can_filter_by,
    })
}

/// Elements of SubscriptionTopic (and of its backbone elements) that repeat.
const REPEATING: &[&str] = &[
    "resourceTrigger",
    "eventTrigger",
    "canFilterBy",
    "notificationShape",
    "derivedFrom",
    "identifier",
    "contact",
    "jurisdiction",
    "useContext",
    "supportedInteraction",
    "comparator",
    "modifier",
    "include",
    "revInclude",
];

fn extension_value(ext: &Value) -> Option<Value> {
    if let Some(subs) = ext.get("extension").and_then(Value::as_array) {
        let mut obj = serde_json::Map::new();
        for sub in subs {
            let Some(name) = sub.get("url").and_then(Value::as_str) else {
                continue;
            };
            let Some(v) = extension_value(sub) else {
                continue;
            };
            put(&mut obj, name, v);
        }
        return Some(Value::Object(obj));
    }
    ext.as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .map(|(_, v)| v.clone())
}

fn put(obj: &mut serde_json::Map<String, Value>, name: &str, v: Value) {
    if !REPEATING.contains(&name) {
        obj.insert(name.to_owned(), v);
        return;
    }
    let slot = obj
        .entry(name.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = slot {
        a.push(v);
    }
}

/// The Subscriptions Backport IG's R4 representation of a topic, a `Basic` resource carrying
/// the cross-version extensions (`http://hl7.org/fhir/{4.3,5.0}/StructureDefinition/
/// extension-SubscriptionTopic.*`, or `artifact-*` for the canonical metadata), read as the
/// SubscriptionTopic it stands for. `None` when `v` is not such a Basic.
pub fn from_backport_basic(v: &Value) -> Option<Value> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Basic") {
        return None;
    }
    let mut out = serde_json::Map::new();
    out.insert(
        "resourceType".into(),
        Value::String("SubscriptionTopic".into()),
    );
    let mut found = false;
    for ext in v
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(url) = ext.get("url").and_then(Value::as_str) else {
            continue;
        };
        let name = if let Some((_, n)) = url.split_once("/extension-SubscriptionTopic.") {
            n
        } else if let Some(n) =
            url.strip_prefix("http://hl7.org/fhir/StructureDefinition/artifact-")
        {
            n
        } else {
            continue;
        };
        if let Some(val) = extension_value(ext) {
            found = true;
            put(&mut out, name, val);
        }
    }
    found.then_some(Value::Object(out))
}

impl ResourceTrigger {
    /// Whether this trigger fires for a change. `current` is absent on delete, `previous` when
    /// the change event did not carry the earlier version (a create, or a producer that does
    /// not know it).
    pub fn fires(
        &self,
        action: Action,
        resource_type: &str,
        current: Option<&Value>,
        previous: Option<&Value>,
    ) -> Result<bool, hub_fhirpath::EvalError> {
        if resource_type != self.resource {
            return Ok(false);
        }
        if !self.interactions.is_empty() && !self.interactions.contains(&action) {
            return Ok(false);
        }
        if let Some(q) = &self.query {
            let prev_ok = q.previous.as_ref().map(|c| match (action, previous) {
                (Action::Create, _) => q.result_for_create,
                (_, Some(p)) => c.matches(p),
                (_, None) => false,
            });
            let cur_ok = q.current.as_ref().map(|c| match (action, current) {
                (Action::Delete, _) => q.result_for_delete,
                (_, Some(r)) => c.matches(r),
                (_, None) => false,
            });
            let ok = match (prev_ok, cur_ok) {
                (None, None) => true,
                (Some(a), None) | (None, Some(a)) => a,
                (Some(a), Some(b)) if q.require_both => a && b,
                (Some(a), Some(b)) => a || b,
            };
            if !ok {
                return Ok(false);
            }
        }
        if let Some(e) = &self.fhirpath {
            let env = Env::new()
                .with_resource("current", current)
                .with_resource("previous", previous);
            let focus = current.or(previous);
            match e.evaluate(focus, &env) {
                Ok(r) => {
                    let truthy = matches!(r.as_slice(), [hub_fhirpath::Value::Boolean(true)])
                        || matches!(r.as_slice(), [v] if matches!(v.to_system(), hub_fhirpath::Value::Boolean(true)));
                    if !truthy {
                        return Ok(false);
                    }
                }
                // over budget says nothing about the resource: the caller quarantines
                Err(e @ hub_fhirpath::EvalError::Budget(_)) => return Err(e),
                // an expression that does not apply to this resource is not satisfied
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// One subscription filter (`backport-filter-criteria` in R4, `filterBy` in R4B/R5), checked
/// against the topic's `canFilterBy` and compiled to criteria on the trigger's resource.
#[derive(Debug, Clone)]
pub struct Filter {
    pub resource: String,
    /// The query part as written (`patient=Patient/123`), for combining filters.
    pub query: String,
    pub criteria: Criteria,
}

/// Parse R4 Backport filter criteria (`Observation?patient=Patient/123`, or
/// `patient=Patient/123` when the topic has one resource) against the topic. The dotted
/// form `Encounter.patient=Patient/123` (each parameter prefixed by the type, as the
/// Inferno Subscriptions Test Kit's sample subscriptions write it) means the same.
pub fn parse_filter(topic: &Topic, text: &str, at: &str) -> Result<Filter, OperationOutcome> {
    let (resource, query) = match text.split_once('?') {
        Some((ty, q)) if !ty.is_empty() => (ty.to_owned(), q.to_owned()),
        Some((_, q)) => (single_resource(topic, at)?, q.to_owned()),
        None => match dotted_filter(text) {
            Some(typed) => typed,
            None => (single_resource(topic, at)?, text.to_owned()),
        },
    };
    if !topic.triggers.iter().any(|t| t.resource == resource) {
        return Err(bad(
            IssueType::NotSupported,
            format!("the topic has no trigger for {resource}, so it cannot be filtered on it"),
            at,
        ));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (param, modifier) = match name.split_once(':') {
            Some((p, m)) => (p, Some(m)),
            None => (name, None),
        };
        let Some(def) = topic
            .can_filter_by
            .iter()
            .find(|d| d.parameter == param && d.resource.as_deref().is_none_or(|r| r == resource))
        else {
            let allowed: Vec<&str> = topic
                .can_filter_by
                .iter()
                .map(|d| d.parameter.as_str())
                .collect();
            return Err(bad(
                IssueType::NotSupported,
                format!(
                    "the topic does not allow filtering on '{param}' (canFilterBy: {})",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
                at,
            ));
        };
        if let Some(m) = modifier
            && !def.modifiers.iter().any(|x| x == m)
        {
            return Err(bad(
                IssueType::NotSupported,
                format!("the topic does not allow the modifier :{m} on '{param}'"),
                at,
            ));
        }
        let prefix = value.get(..2).unwrap_or("");
        if matches!(
            prefix,
            "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap"
        ) && value[2..].starts_with(|c: char| c.is_ascii_digit() || c == '-')
        {
            if !def.comparators.iter().any(|c| c == prefix) {
                return Err(bad(
                    IssueType::NotSupported,
                    format!("the topic does not allow the comparator {prefix} on '{param}'"),
                    at,
                ));
            }
        } else if !def.comparators.is_empty() && !def.comparators.iter().any(|c| c == "eq") {
            return Err(bad(
                IssueType::NotSupported,
                format!("the topic does not allow the comparator eq on '{param}'"),
                at,
            ));
        }
    }
    let criteria = Criteria::parse(&format!("{resource}?{query}")).map_err(|e| e.to_outcome(at))?;
    Ok(Filter {
        resource,
        query,
        criteria,
    })
}

/// `Encounter.patient=Patient/123&Encounter.status=finished` → (`Encounter`,
/// `patient=Patient/123&status=finished`); `None` unless every parameter carries the same
/// resource-type prefix.
fn dotted_filter(text: &str) -> Option<(String, String)> {
    let first = text.split('=').next()?;
    let (ty, _) = first.split_once('.')?;
    if !crate::resource_types::is_r4_resource_type(ty) {
        return None;
    }
    let prefix = format!("{ty}.");
    let mut query = Vec::new();
    for pair in text.split('&') {
        query.push(pair.strip_prefix(&prefix)?);
    }
    Some((ty.to_owned(), query.join("&")))
}

fn single_resource(topic: &Topic, at: &str) -> Result<String, OperationOutcome> {
    let mut types: Vec<&str> = topic.triggers.iter().map(|t| t.resource.as_str()).collect();
    types.dedup();
    match types.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => Err(bad(
            IssueType::Value,
            "the topic has several resource types: name one, like 'Observation?code=...'",
            at,
        )),
    }
}

impl Filter {
    /// Whether a change passes the filter (the current version, or the previous on delete).
    pub fn accepts(
        &self,
        resource_type: &str,
        current: Option<&Value>,
        previous: Option<&Value>,
    ) -> bool {
        if resource_type != self.resource {
            // a filter on another of the topic's resource types does not constrain this one
            return true;
        }
        current
            .or(previous)
            .is_some_and(|r| self.criteria.matches(r))
    }
}

#[cfg(test)]
mod tests;
