//! Subscription criteria: `Type?param[:modifier]=[prefix]value[,value]&...`, parsed against
//! the search-parameter registry and evaluated in memory with FHIR search semantics.
//!
//! A comma separates alternatives (OR); a repeated parameter adds a condition (AND). Every
//! parameter type is handled (token, reference, string, uri, date, number, quantity,
//! composite) with the modifiers and prefixes the specification defines for it. What needs
//! other resources or a terminology server (chains, `_has`, `:in`, `:above`/`:below` on
//! codes...) is refused with a [`CriteriaError`] naming the parameter: never ignored.

use std::sync::Arc;

use crate::datetime::{self, Range};
use crate::decimal::SearchNumber;
use crate::json::Json;
use crate::outcome::{IssueType, OperationOutcome};
use crate::registry::{ParamType, Registry, SearchParam};
use crate::resource_types::is_r4_resource_type;

pub(crate) mod eval;
#[cfg(test)]
mod tests;
mod text;

pub(crate) use eval::{any_token_pair, compare_ranges, date_range, reference_target};
pub use text::fold;
use text::{percent_decode, split_unescaped, unescape};

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

/// A modifier the matcher evaluates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    Missing,
    Not,
    Exact,
    Contains,
    Text,
    CodeText,
    OfType,
    Identifier,
    /// `:[Type]` on a reference.
    Type(String),
    Above,
    Below,
}

/// Comparison prefixes of date, number and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    fn split(v: &str) -> (Prefix, &str) {
        let p = match v.get(..2) {
            Some("eq") => Prefix::Eq,
            Some("ne") => Prefix::Ne,
            Some("gt") => Prefix::Gt,
            Some("lt") => Prefix::Lt,
            Some("ge") => Prefix::Ge,
            Some("le") => Prefix::Le,
            Some("sa") => Prefix::Sa,
            Some("eb") => Prefix::Eb,
            Some("ap") => Prefix::Ap,
            _ => return (Prefix::Eq, v),
        };
        (p, &v[2..])
    }
}

/// One value of a clause, decoded and typed.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    /// `[system]|[code]`: `system` None means no `|`; `Some("")` means `|code`.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// `:of-type`: identifier type `system|code` and identifier value.
    OfType {
        system: String,
        code: String,
        value: String,
    },
    /// `:text` / `:code-text`, folded.
    Text(String),
    /// `Type/id`, a bare id, or an absolute URL.
    Reference {
        rtype: Option<String>,
        id: String,
        absolute: Option<String>,
    },
    /// `:identifier` on a reference.
    RefIdentifier {
        system: Option<String>,
        value: Option<String>,
    },
    /// Folded, unless `:exact`.
    Str(String),
    Uri(String),
    Date {
        prefix: Prefix,
        range: Range,
    },
    Number {
        prefix: Prefix,
        n: SearchNumber,
    },
    Quantity {
        prefix: Prefix,
        n: SearchNumber,
        system: Option<String>,
        code: Option<String>,
    },
    /// One value per component of the composite parameter, in its order.
    Composite(Vec<QueryValue>),
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
    ("_type", "criteria already name one resource type"),
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
        // Criteria live as long as their subscription, by the hundred thousand: no slack.
        clauses.shrink_to_fit();
        Ok(Criteria {
            resource_type: rtype.to_owned(),
            clauses,
        })
    }

    /// Whether `resource` (of any type) satisfies every clause, now.
    pub fn matches<J: Json>(&self, resource: &J) -> bool {
        self.matches_at(resource, datetime::now_micros())
    }

    /// As [`matches`](Self::matches), with the clock given (`ap` on dates depends on it).
    pub fn matches_at<J: Json>(&self, resource: &J, now_micros: i64) -> bool {
        if resource.get("resourceType").and_then(J::as_str) != Some(self.resource_type.as_str()) {
            return false;
        }
        self.clauses.iter().all(|c| c.matches(resource, now_micros))
    }
}

fn not_supported(param: &str, reason: impl Into<String>) -> CriteriaError {
    CriteriaError::NotSupported {
        param: param.to_owned(),
        reason: reason.into(),
    }
}

fn parse_modifier(name: &str, m: &str, param: &SearchParam) -> Result<Modifier, CriteriaError> {
    use ParamType as T;
    let kind = param.kind;
    let refuse = |why: &str| Err(not_supported(name, why.to_owned()));
    match (m, kind) {
        ("missing", _) => Ok(Modifier::Missing),
        ("not", T::Token) => Ok(Modifier::Not),
        ("text", T::Token) => Ok(Modifier::Text),
        ("code-text", T::Token) => Ok(Modifier::CodeText),
        ("of-type", T::Token) => Ok(Modifier::OfType),
        ("exact", T::String) => Ok(Modifier::Exact),
        ("contains", T::String) => Ok(Modifier::Contains),
        ("identifier", T::Reference) => Ok(Modifier::Identifier),
        ("above", T::Uri) => Ok(Modifier::Above),
        ("below", T::Uri) => Ok(Modifier::Below),
        ("in" | "not-in", T::Token) => {
            refuse("':in'/':not-in' need a ValueSet expansion the hub does not hold")
        }
        ("above" | "below", T::Token) => {
            refuse("':above'/':below' on codes need a terminology server")
        }
        ("above" | "below", T::Reference) => {
            refuse("hierarchy search on references needs other resources")
        }
        (t, T::Reference) if is_r4_resource_type(t) => {
            if !param.targets.is_empty() && !param.targets.iter().any(|x| x == t) {
                return Err(CriteriaError::Invalid(format!(
                    "'{name}': {t} is not a target of this parameter (allowed: {})",
                    param.targets.join(", ")
                )));
            }
            Ok(Modifier::Type(t.to_owned()))
        }
        (m, kind) => refuse(&format!(
            "modifier ':{m}' is not defined for {} parameters",
            kind.as_str()
        )),
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
    if param.kind == ParamType::Special {
        return Err(not_supported(
            name,
            "special parameters need server-specific logic",
        ));
    }
    let modifier = modifier_s
        .map(|m| parse_modifier(name, m, param))
        .transpose()?;
    if param.kind == ParamType::Composite {
        for c in &param.components {
            if let Err(why) = &c.paths {
                return Err(not_supported(
                    name,
                    format!("component '{}': {why}", c.expression),
                ));
            }
        }
    }
    let mut values = Vec::new();
    for v in split_unescaped(raw, ',') {
        if v.is_empty() {
            return Err(CriteriaError::Invalid(format!(
                "'{name}' has an empty value"
            )));
        }
        let value = if modifier == Some(Modifier::Missing) {
            match v.as_str() {
                "true" => QueryValue::Missing(true),
                "false" => QueryValue::Missing(false),
                _ => {
                    return Err(CriteriaError::Invalid(format!(
                        "'{name}' takes true or false, not '{v}'"
                    )));
                }
            }
        } else if param.kind == ParamType::Composite {
            let parts = split_unescaped(&v, '$');
            if parts.len() != param.components.len() {
                return Err(CriteriaError::Invalid(format!(
                    "'{name}' needs {} '$'-separated parts, got '{v}'",
                    param.components.len()
                )));
            }
            let mut comps = Vec::new();
            for (part, comp) in parts.iter().zip(&param.components) {
                let Some((kind, _)) = registry.by_url(&comp.definition) else {
                    return Err(not_supported(
                        name,
                        format!("unknown component {}", comp.definition),
                    ));
                };
                comps.push(parse_value(name, *kind, None, part, &param.targets)?);
            }
            QueryValue::Composite(comps)
        } else {
            parse_value(name, param.kind, modifier.as_ref(), &v, &param.targets)?
        };
        values.push(value);
    }
    values.shrink_to_fit();
    Ok(Clause {
        param: Arc::clone(param),
        modifier,
        values,
    })
}

fn parse_value(
    name: &str,
    kind: ParamType,
    modifier: Option<&Modifier>,
    v: &str,
    targets: &[String],
) -> Result<QueryValue, CriteriaError> {
    let invalid = |what: &str| CriteriaError::Invalid(format!("'{name}' value '{v}' {what}"));
    Ok(match kind {
        ParamType::Token => match modifier {
            Some(Modifier::Text | Modifier::CodeText) => QueryValue::Text(fold(&unescape(v))),
            Some(Modifier::OfType) => match split_unescaped(v, '|').as_slice() {
                [s, c, val] if !c.is_empty() && !val.is_empty() => QueryValue::OfType {
                    system: unescape(s),
                    code: unescape(c),
                    value: unescape(val),
                },
                _ => return Err(invalid("must be type-system|type-code|value for :of-type")),
            },
            _ => match split_unescaped(v, '|').as_slice() {
                [code] => QueryValue::Token {
                    system: None,
                    code: Some(unescape(code)),
                },
                [sys, code] => QueryValue::Token {
                    system: Some(unescape(sys)),
                    code: (!code.is_empty()).then(|| unescape(code)),
                },
                _ => return Err(invalid("has more than one unescaped '|'")),
            },
        },
        ParamType::Reference => match modifier {
            Some(Modifier::Identifier) => match split_unescaped(v, '|').as_slice() {
                [val] => QueryValue::RefIdentifier {
                    system: None,
                    value: Some(unescape(val)),
                },
                [s, val] => QueryValue::RefIdentifier {
                    system: Some(unescape(s)),
                    value: (!val.is_empty()).then(|| unescape(val)),
                },
                _ => return Err(invalid("has more than one unescaped '|'")),
            },
            Some(Modifier::Type(t)) => {
                if v.contains('/') {
                    return Err(invalid("must be a bare id with a :Type modifier"));
                }
                QueryValue::Reference {
                    rtype: Some(t.clone()),
                    id: unescape(v),
                    absolute: None,
                }
            }
            _ => parse_reference(name, &unescape(v), targets)?,
        },
        ParamType::String if modifier == Some(&Modifier::Exact) => QueryValue::Str(unescape(v)),
        ParamType::String => QueryValue::Str(fold(&unescape(v))),
        ParamType::Uri => QueryValue::Uri(unescape(v)),
        ParamType::Date => {
            let (prefix, rest) = Prefix::split(v);
            let range = datetime::parse(rest)
                .ok_or_else(|| invalid("is not a FHIR date, dateTime or instant"))?;
            QueryValue::Date { prefix, range }
        }
        ParamType::Number | ParamType::Quantity => {
            let (prefix, rest) = Prefix::split(v);
            if matches!(prefix, Prefix::Sa | Prefix::Eb) {
                return Err(not_supported(
                    name,
                    "prefixes sa and eb apply to ranges (dates), not to numbers",
                ));
            }
            let parts = split_unescaped(rest, '|');
            let n = SearchNumber::parse(&parts[0]).ok_or_else(|| invalid("is not a number"))?;
            if kind == ParamType::Number {
                if parts.len() != 1 {
                    return Err(invalid("is a number parameter and takes no unit"));
                }
                QueryValue::Number { prefix, n }
            } else {
                let (system, code) = match parts.as_slice() {
                    [_] => (None, None),
                    [_, s, c] => (
                        (!s.is_empty()).then(|| unescape(s)),
                        (!c.is_empty()).then(|| unescape(c)),
                    ),
                    _ => return Err(invalid("must be [prefix]number[|system|code]")),
                };
                QueryValue::Quantity {
                    prefix,
                    n,
                    system,
                    code,
                }
            }
        }
        ParamType::Composite | ParamType::Special => {
            return Err(not_supported(
                name,
                "nested composite or special components",
            ));
        }
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
