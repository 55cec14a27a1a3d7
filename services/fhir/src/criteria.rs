//! Subscription criteria: `Type?param[:modifier]=value[,value]&...`, parsed against the
//! search-parameter registry and evaluated in memory.
//!
//! Semantics follow FHIR R4 search: a comma separates alternatives (OR), a repeated
//! parameter adds a condition (AND). What this version cannot evaluate exactly is refused
//! with a [`CriteriaError`] naming the parameter; nothing is silently ignored.
//!
//! Supported now: token, reference, string and uri parameters whose definition is a simple
//! path, with the modifiers `:missing`, `:not` (token), `:exact` and `:contains` (string).

use std::sync::Arc;

use serde_json::Value;

use crate::outcome::{IssueType, OperationOutcome};
use crate::registry::{ParamType, Registry, SearchParam};
use crate::resource_types::is_r4_resource_type;

/// Why criteria were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CriteriaError {
    #[error("invalid criteria: {0}")]
    Invalid(String),
    #[error("unsupported criteria parameter '{param}': {reason}")]
    NotSupported { param: String, reason: String },
}

impl CriteriaError {
    pub fn to_outcome(&self, location: &str) -> OperationOutcome {
        let code = match self {
            Self::Invalid(_) => IssueType::Invalid,
            Self::NotSupported { .. } => IssueType::NotSupported,
        };
        OperationOutcome::error(code, self.to_string()).at(location.to_owned())
    }
}

/// A modifier the matcher understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    Missing,
    Not,
    Exact,
    Contains,
}

/// One value of a clause, already decoded and typed.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    /// `[system]|[code]`: `system` None means no `|` was given; `Some("")` means `|code`.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// A reference: `Type/id`, a bare `id`, or an absolute URL.
    Reference {
        rtype: Option<String>,
        id: String,
        absolute: Option<String>,
    },
    /// A string, already folded (lower case, accents removed) unless `:exact`.
    Str(String),
    Uri(String),
    Missing(bool),
}

/// One `param=value,value` condition.
#[derive(Debug, Clone)]
pub struct Clause {
    pub param: Arc<SearchParam>,
    pub modifier: Option<Modifier>,
    pub values: Vec<QueryValue>,
}

/// Parsed criteria for one resource type.
#[derive(Debug, Clone)]
pub struct Criteria {
    pub resource_type: String,
    pub clauses: Vec<Clause>,
}

/// Underscore parameters that are result controls or need the database.
const REFUSED_SPECIAL: &[(&str, &str)] = &[
    (
        "_has",
        "reverse chaining needs other resources the hub does not hold",
    ),
    (
        "_include",
        "includes shape search results; a subscription matches single resources",
    ),
    (
        "_revinclude",
        "includes shape search results; a subscription matches single resources",
    ),
    ("_sort", "sorting does not apply to matching one resource"),
    ("_count", "paging does not apply to matching one resource"),
    ("_summary", "result shaping does not apply to matching"),
    ("_elements", "result shaping does not apply to matching"),
    ("_total", "result shaping does not apply to matching"),
    ("_contained", "contained-resource search is not supported"),
    (
        "_containedType",
        "contained-resource search is not supported",
    ),
    ("_text", "narrative text search needs a full-text index"),
    ("_content", "full-text search needs a full-text index"),
    (
        "_list",
        "list membership needs other resources the hub does not hold",
    ),
    ("_query", "named queries are not supported"),
    ("_filter", "the _filter syntax is not supported"),
    ("_format", "the format does not apply to matching"),
];

impl Criteria {
    /// Parse criteria against the FHIR R4 registry.
    pub fn parse(criteria: &str) -> Result<Criteria, CriteriaError> {
        Self::parse_with(criteria, Registry::r4())
    }

    pub fn parse_with(criteria: &str, registry: &Registry) -> Result<Criteria, CriteriaError> {
        let criteria = criteria.trim();
        if criteria.is_empty() {
            return Err(CriteriaError::Invalid("criteria are empty".into()));
        }
        let (rtype, query) = criteria.split_once('?').unwrap_or((criteria, ""));
        if rtype.contains('/') || rtype.contains(':') {
            return Err(CriteriaError::Invalid(format!(
                "criteria must start with a resource type, like 'Observation?code=...', not '{rtype}'"
            )));
        }
        if !is_r4_resource_type(rtype) {
            return Err(CriteriaError::Invalid(format!(
                "unknown resource type '{rtype}' in criteria"
            )));
        }
        let mut clauses = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').ok_or_else(|| {
                CriteriaError::Invalid(format!("parameter '{pair}' has no '=value'"))
            })?;
            let name = percent_decode(name)?;
            let raw = percent_decode(raw)?;
            clauses.push(parse_clause(rtype, &name, &raw, registry)?);
        }
        Ok(Criteria {
            resource_type: rtype.to_owned(),
            clauses,
        })
    }

    /// Whether `resource` (of any type) satisfies every clause.
    pub fn matches(&self, resource: &Value) -> bool {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource_type.as_str())
        {
            return false;
        }
        self.clauses.iter().all(|c| c.matches(resource))
    }
}

fn not_supported(param: &str, reason: impl Into<String>) -> CriteriaError {
    CriteriaError::NotSupported {
        param: param.to_owned(),
        reason: reason.into(),
    }
}

fn parse_clause(
    rtype: &str,
    name: &str,
    raw: &str,
    registry: &Registry,
) -> Result<Clause, CriteriaError> {
    let (code, modifier_s) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if let Some((_, why)) = REFUSED_SPECIAL.iter().find(|(n, _)| *n == code) {
        return Err(not_supported(name, *why));
    }
    if code.contains('.') {
        return Err(not_supported(
            name,
            "chained parameters need other resources the hub does not hold",
        ));
    }
    let param = registry.get(rtype, code).ok_or_else(|| {
        CriteriaError::Invalid(format!("'{code}' is not a search parameter of {rtype}"))
    })?;
    if let Err(why) = &param.paths {
        return Err(not_supported(
            name,
            format!(
                "its definition '{}' cannot be evaluated yet ({why})",
                param.expression
            ),
        ));
    }
    let kind = param.kind;
    // `:missing` only asks whether the element is there, so it works for every type.
    if modifier_s != Some("missing")
        && !matches!(
            kind,
            ParamType::Token | ParamType::Reference | ParamType::String | ParamType::Uri
        )
    {
        return Err(not_supported(
            name,
            format!("{} parameters are not supported yet", kind.as_str()),
        ));
    }
    let modifier = match modifier_s {
        None => None,
        Some("missing") => Some(Modifier::Missing),
        Some("not") if kind == ParamType::Token => Some(Modifier::Not),
        Some("exact") if kind == ParamType::String => Some(Modifier::Exact),
        Some("contains") if kind == ParamType::String => Some(Modifier::Contains),
        Some(m) => {
            return Err(not_supported(
                name,
                format!(
                    "modifier ':{m}' is not supported on {} parameters",
                    kind.as_str()
                ),
            ));
        }
    };
    let mut values = Vec::new();
    for v in split_unescaped(raw, ',') {
        if v.is_empty() {
            return Err(CriteriaError::Invalid(format!(
                "'{name}' has an empty value"
            )));
        }
        values.push(if modifier == Some(Modifier::Missing) {
            match v.as_str() {
                "true" => QueryValue::Missing(true),
                "false" => QueryValue::Missing(false),
                _ => {
                    return Err(CriteriaError::Invalid(format!(
                        "'{name}' takes true or false, not '{v}'"
                    )));
                }
            }
        } else {
            match kind {
                ParamType::Token => {
                    let parts = split_unescaped(&v, '|');
                    match parts.as_slice() {
                        [code] => QueryValue::Token {
                            system: None,
                            code: Some(unescape(code)),
                        },
                        [sys, code] => QueryValue::Token {
                            system: Some(unescape(sys)),
                            code: (!code.is_empty()).then(|| unescape(code)),
                        },
                        _ => {
                            return Err(CriteriaError::Invalid(format!(
                                "'{name}' value '{v}' has more than one unescaped '|'"
                            )));
                        }
                    }
                }
                ParamType::Reference => parse_reference(name, &unescape(&v), &param.targets)?,
                ParamType::String if modifier == Some(Modifier::Exact) => {
                    QueryValue::Str(unescape(&v))
                }
                ParamType::String => QueryValue::Str(fold(&unescape(&v))),
                _ => QueryValue::Uri(unescape(&v)),
            }
        });
    }
    Ok(Clause {
        param: Arc::clone(param),
        modifier,
        values,
    })
}

fn parse_reference(name: &str, v: &str, targets: &[String]) -> Result<QueryValue, CriteriaError> {
    if v.starts_with("http://") || v.starts_with("https://") || v.starts_with("urn:") {
        return Ok(QueryValue::Reference {
            rtype: None,
            id: String::new(),
            absolute: Some(v.to_owned()),
        });
    }
    match v.split('/').collect::<Vec<_>>().as_slice() {
        [id] => Ok(QueryValue::Reference {
            rtype: None,
            id: (*id).to_owned(),
            absolute: None,
        }),
        [t, id] => {
            if !targets.is_empty() && !targets.iter().any(|x| x == t) {
                return Err(CriteriaError::Invalid(format!(
                    "'{name}' cannot refer to {t} (allowed: {})",
                    targets.join(", ")
                )));
            }
            Ok(QueryValue::Reference {
                rtype: Some((*t).to_owned()),
                id: (*id).to_owned(),
                absolute: None,
            })
        }
        _ => Err(CriteriaError::Invalid(format!(
            "'{name}' value '{v}' is not Type/id, an id or an absolute URL"
        ))),
    }
}

impl Clause {
    /// Whether the resource satisfies this clause.
    pub fn matches(&self, resource: &Value) -> bool {
        let Ok(paths) = &self.param.paths else {
            return false;
        };
        let nodes: Vec<&Value> = paths.iter().flat_map(|p| p.eval(resource)).collect();
        if self.modifier == Some(Modifier::Missing) {
            return self.values.iter().any(|v| match v {
                QueryValue::Missing(m) => *m == nodes.is_empty(),
                _ => false,
            });
        }
        let any = self
            .values
            .iter()
            .any(|v| nodes.iter().any(|n| self.value_matches(v, n)));
        if self.modifier == Some(Modifier::Not) {
            !any
        } else {
            any
        }
    }

    fn value_matches(&self, v: &QueryValue, node: &Value) -> bool {
        match v {
            QueryValue::Token { system, code } => {
                token_matches(system.as_deref(), code.as_deref(), node)
            }
            QueryValue::Reference {
                rtype,
                id,
                absolute,
            } => reference_matches(rtype.as_deref(), id, absolute.as_deref(), node),
            QueryValue::Str(s) => string_matches(s, self.modifier, node),
            QueryValue::Uri(u) => node.as_str() == Some(u.as_str()),
            QueryValue::Missing(_) => false,
        }
    }
}

fn token_matches(system: Option<&str>, code: Option<&str>, node: &Value) -> bool {
    let check = |node_sys: Option<&str>, node_code: Option<&str>| -> bool {
        match (system, code) {
            (None, Some(c)) => node_code == Some(c),
            (Some(""), Some(c)) => node_sys.is_none() && node_code == Some(c),
            (Some(s), Some(c)) => node_sys == Some(s) && node_code == Some(c),
            (Some(s), None) => node_sys == Some(s),
            (None, None) => false,
        }
    };
    match node {
        // code, id, uri, string: the system is implicit, so only a system-less query matches.
        Value::String(s) => check(None, Some(s)),
        Value::Bool(b) => check(None, Some(if *b { "true" } else { "false" })),
        Value::Object(obj) => {
            if let Some(Value::Array(codings)) = obj.get("coding") {
                return codings.iter().any(|c| token_matches(system, code, c));
            }
            let sys = obj.get("system").and_then(Value::as_str);
            if let Some(c) = obj.get("code").and_then(Value::as_str) {
                return check(sys, Some(c)); // Coding
            }
            if let Some(v) = obj.get("value").and_then(Value::as_str) {
                return check(sys, Some(v)); // Identifier, ContactPoint
            }
            false
        }
        _ => false,
    }
}

fn reference_matches(rtype: Option<&str>, id: &str, absolute: Option<&str>, node: &Value) -> bool {
    let reference = match node {
        Value::String(s) => s.as_str(), // canonical / uri
        Value::Object(obj) => match obj.get("reference").and_then(Value::as_str) {
            Some(r) => r,
            None => return false,
        },
        _ => return false,
    };
    if let Some(abs) = absolute {
        return reference == abs;
    }
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return false;
    }
    let without_history = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = without_history.rsplit('/');
    let node_id = parts.next().unwrap_or("");
    let node_type = parts
        .next()
        .or_else(|| node.get("type").and_then(Value::as_str));
    node_id == id && rtype.is_none_or(|t| node_type == Some(t))
}

fn string_matches(q: &str, modifier: Option<Modifier>, node: &Value) -> bool {
    match node {
        Value::String(s) => match modifier {
            Some(Modifier::Exact) => s == q,
            Some(Modifier::Contains) => fold(s).contains(q),
            _ => fold(s).starts_with(q),
        },
        // HumanName, Address and similar: any of their string parts.
        Value::Object(obj) => obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "use" | "period" | "extension" | "id"))
            .any(|(_, v)| string_matches(q, modifier, v)),
        Value::Array(items) => items.iter().any(|v| string_matches(q, modifier, v)),
        _ => false,
    }
}

/// Lower-case and strip the common Latin accents, as FHIR string search asks.
pub fn fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => 'a',
            'ç' | 'ć' | 'č' => 'c',
            'ď' => 'd',
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' => 'i',
            'ñ' | 'ń' | 'ň' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => 'o',
            'ř' => 'r',
            'ś' | 'š' | 'ş' => 's',
            'ť' => 't',
            'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => 'u',
            'ý' | 'ÿ' => 'y',
            'ź' | 'ż' | 'ž' => 'z',
            c => c,
        })
        .collect()
}

/// Split on `sep` where it is not escaped with a backslash; escapes are kept for [`unescape`].
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            if let Some(last) = out.last_mut() {
                last.push('\\');
                last.push(c);
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    if escaped && let Some(last) = out.last_mut() {
        last.push('\\');
    }
    out
}

/// Resolve `\,` `\|` `\$` `\\`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Decode `%XX` escapes (a `+` stays a `+`: it is meaningful in dates and codes).
fn percent_decode(s: &str) -> Result<String, CriteriaError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => {
                    return Err(CriteriaError::Invalid(format!(
                        "bad percent-encoding in '{s}'"
                    )));
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| CriteriaError::Invalid(format!("'{s}' does not decode to UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs() -> Value {
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}], "text": "Glucose"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "subject": {"reference": "Patient/p1"},
            "identifier": [{"system": "urn:lab", "value": "A,1"}],
            "meta": {"tag": [{"system": "urn:t", "code": "x"}], "source": "urn:src"}})
    }

    fn m(c: &str) -> bool {
        Criteria::parse(c)
            .unwrap_or_else(|e| panic!("{c}: {e}"))
            .matches(&obs())
    }

    #[test]
    fn tokens() {
        assert!(m("Observation?code=http://loinc.org|2345-7"));
        assert!(m("Observation?code=2345-7"));
        assert!(m("Observation?code=http://loinc.org|"));
        assert!(!m("Observation?code=|2345-7"), "|code means no system");
        assert!(!m("Observation?code=http://snomed.info/sct|2345-7"));
        assert!(m("Observation?code=1,2345-7"), "comma is OR");
        assert!(m("Observation?status=final"));
        assert!(
            !m("Observation?status=final&status=amended"),
            "repeat is AND"
        );
        assert!(m("Observation?status:not=amended"));
        assert!(!m("Observation?status:not=final"));
        assert!(m("Observation?identifier=urn:lab|A\\,1"), "escaped comma");
        assert!(m("Observation?_id=o1"));
        assert!(m("Observation?_tag=urn:t|x"));
        assert!(m("Observation?category=laboratory&patient=Patient/p1"));
    }

    #[test]
    fn references() {
        assert!(m("Observation?patient=Patient/p1"));
        assert!(m("Observation?patient=p1"));
        assert!(m("Observation?subject=Patient/p1"));
        assert!(!m("Observation?subject=Group/p1"));
        assert!(!m("Observation?patient=p2"));
        let mut abs = obs();
        abs["subject"] = json!({"reference": "http://ehr.example/fhir/Patient/p1/_history/2"});
        assert!(
            Criteria::parse("Observation?patient=Patient/p1")
                .unwrap()
                .matches(&abs)
        );
    }

    #[test]
    fn strings_uri_and_missing() {
        let p = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Müller", "given": ["Zoë"]}]});
        let c = |q: &str| Criteria::parse(q).unwrap().matches(&p);
        assert!(c("Patient?family=mul"));
        assert!(c("Patient?name=zoe"));
        assert!(!c("Patient?family:exact=mul"));
        assert!(c("Patient?family:exact=Müller"));
        assert!(c("Patient?family:contains=ll"));
        assert!(c("Patient?birthdate:missing=true"));
        assert!(!c("Patient?name:missing=true"));
        assert!(m("Observation?_source=urn:src"));
    }

    #[test]
    fn refusals_name_the_parameter() {
        for (c, param) in [
            ("Observation?subject.name=x", "subject.name"),
            (
                "Observation?_has:Observation:patient:code=1",
                "_has:Observation:patient:code",
            ),
            ("Observation?date=ge2024-01-01", "date"),
            ("Observation?value-quantity=5", "value-quantity"),
            ("Observation?code:in=http://vs", "code:in"),
        ] {
            match Criteria::parse(c) {
                Err(CriteriaError::NotSupported { param: p, .. }) => assert_eq!(p, param, "{c}"),
                other => panic!("{c}: {other:?}"),
            }
        }
        assert!(matches!(
            Criteria::parse("Observation?foo=1"),
            Err(CriteriaError::Invalid(_))
        ));
        assert!(matches!(
            Criteria::parse("Observaton?code=1"),
            Err(CriteriaError::Invalid(_))
        ));
        assert!(matches!(
            Criteria::parse("Observation?patient=Device/1"),
            Err(CriteriaError::Invalid(_))
        ));
    }

    #[test]
    fn other_types_never_match() {
        let c = Criteria::parse("Observation?code=2345-7").unwrap();
        assert!(!c.matches(&json!({"resourceType": "Condition", "code": obs()["code"]})));
        assert!(Criteria::parse("Observation").unwrap().matches(&obs()));
    }
}
