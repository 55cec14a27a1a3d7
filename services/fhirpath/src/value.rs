//! FHIRPath values: System values and FHIR nodes (elements of a JSON resource with their type).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value as Json;

use crate::model::Model;
use crate::temporal::{TKind, Temporal};
use crate::ucum;

/// A quantity: a decimal and a unit (a UCUM code, or a calendar keyword such as `week`).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    pub value: Decimal,
    pub unit: String,
}

/// An element of a FHIR resource: its JSON (absent for a primitive that has only extensions),
/// the `_name` sibling holding a primitive's id/extensions, and its FHIR type name.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub json: Option<&'a Json>,
    pub ext: Option<&'a Json>,
    /// The FHIR type (`HumanName`, `code`, `Patient.contact`); empty when unknown.
    pub ty: &'a str,
}

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Boolean(bool),
    Integer(i64),
    Long(i64),
    Decimal(Decimal),
    String(Cow<'a, str>),
    Temporal(Temporal),
    Quantity(Quantity),
    Node(Node<'a>),
    /// What `type()` returns: a namespace and a name.
    Type {
        namespace: &'static str,
        name: Cow<'a, str>,
    },
}

/// A FHIRPath collection.
pub type Collection<'a> = Vec<Value<'a>>;

pub(crate) fn decimal_from_json(n: &serde_json::Number) -> Option<Decimal> {
    if let Some(i) = n.as_i64() {
        return Some(Decimal::from(i));
    }
    let s = n.to_string();
    Decimal::from_str(&s)
        .ok()
        .or_else(|| Decimal::from_scientific(&s).ok())
}

impl<'a> Value<'a> {
    pub fn string(s: impl Into<Cow<'a, str>>) -> Value<'a> {
        Value::String(s.into())
    }

    /// A FHIR node read as the System value it carries (primitives and Quantity); other nodes
    /// and System values are returned as they are.
    pub fn to_system(&self) -> Value<'a> {
        match self {
            Value::Node(n) => n.to_system().unwrap_or_else(|| self.clone()),
            v => v.clone(),
        }
    }

    /// The System type name of a System value, or the FHIR type of a node.
    pub fn type_name(&self) -> (&'static str, Cow<'a, str>) {
        let sys = |n: &'static str| ("System", Cow::Borrowed(n));
        match self {
            Value::Boolean(_) => sys("Boolean"),
            Value::Integer(_) => sys("Integer"),
            Value::Long(_) => sys("Long"),
            Value::Decimal(_) => sys("Decimal"),
            Value::String(_) => sys("String"),
            Value::Temporal(t) => sys(match t.kind {
                TKind::Date => "Date",
                TKind::DateTime => "DateTime",
                TKind::Time => "Time",
            }),
            Value::Quantity(_) => sys("Quantity"),
            Value::Type { .. } => sys("TypeInfo"),
            Value::Node(n) => {
                if n.ty.is_empty() {
                    match n.json {
                        Some(Json::Bool(_)) => sys("Boolean"),
                        Some(Json::Number(x)) if x.is_i64() => sys("Integer"),
                        Some(Json::Number(_)) => sys("Decimal"),
                        Some(Json::String(_)) => sys("String"),
                        _ => ("FHIR", Cow::Borrowed("Element")),
                    }
                } else {
                    ("FHIR", Cow::Borrowed(n.ty))
                }
            }
        }
    }

    /// Whether the value is of the type or a subtype of it.
    pub fn is_type(&self, model: &Model, namespace: Option<&str>, name: &str) -> bool {
        let (ns, ty) = self.type_name();
        if let Some(want) = namespace
            && want != ns
        {
            return false;
        }
        if ns == "System" {
            return ty == name || (name == "Any");
        }
        // an unqualified name that only System has (`Boolean`) does not match a FHIR node
        model.is_a(&ty, name) || (name == "Resource" && model.is_resource(&ty))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Node(Node {
                json: Some(Json::String(s)),
                ..
            }) => Some(s),
            _ => None,
        }
    }

    /// Text a string-like value shows (`toString()`); `None` for nodes that are not primitive.
    pub fn to_text(&self) -> Option<String> {
        Some(match self.to_system() {
            Value::Boolean(b) => b.to_string(),
            Value::Integer(i) | Value::Long(i) => i.to_string(),
            Value::Decimal(d) => d.to_string(),
            Value::String(s) => s.into_owned(),
            Value::Temporal(t) => t.to_fhir_text(),
            Value::Quantity(q) => quantity_text(&q),
            _ => return None,
        })
    }
}

/// A quantity as FHIRPath writes it: `5 'mg'`, `3 days`.
pub fn quantity_text_pub(q: &Quantity) -> String {
    quantity_text(q)
}

pub(crate) fn quantity_text(q: &Quantity) -> String {
    if ucum::calendar_keyword(&q.unit).is_some() {
        format!("{} {}", q.value, q.unit)
    } else {
        format!("{} '{}'", q.value, q.unit)
    }
}

impl<'a> Node<'a> {
    /// The System value of a primitive node (by its FHIR type, or by its JSON when untyped),
    /// or of a Quantity node.
    pub fn to_system(&self) -> Option<Value<'a>> {
        let json = self.json?;
        match json {
            Json::Bool(b) => Some(Value::Boolean(*b)),
            Json::Number(n) => match self.ty {
                "decimal" => decimal_from_json(n).map(Value::Decimal),
                _ => match n.as_i64() {
                    Some(i) if self.ty != "decimal" => Some(Value::Integer(i)),
                    _ => decimal_from_json(n).map(Value::Decimal),
                },
            },
            Json::String(s) => match self.ty {
                "date" | "dateTime" | "instant" => Some(
                    Temporal::parse_any(s)
                        .map(|mut t| {
                            if self.ty != "date" && t.kind == TKind::Date {
                                t.kind = TKind::DateTime;
                            }
                            Value::Temporal(t)
                        })
                        .unwrap_or(Value::String(Cow::Borrowed(s))),
                ),
                "time" => Some(
                    Temporal::parse_time(s)
                        .map(Value::Temporal)
                        .unwrap_or(Value::String(Cow::Borrowed(s))),
                ),
                _ => Some(Value::String(Cow::Borrowed(s))),
            },
            Json::Object(map)
                if matches!(
                    self.ty,
                    "Quantity"
                        | "Age"
                        | "Duration"
                        | "Distance"
                        | "Count"
                        | "SimpleQuantity"
                        | "MoneyQuantity"
                ) =>
            {
                let value = match map.get("value")? {
                    Json::Number(n) => decimal_from_json(n)?,
                    _ => return None,
                };
                let ucum_system = map
                    .get("system")
                    .and_then(Json::as_str)
                    .is_none_or(|s| s == "http://unitsofmeasure.org");
                let unit = match (map.get("code").and_then(Json::as_str), ucum_system) {
                    (Some(code), true) => code.to_string(),
                    _ => map
                        .get("unit")
                        .and_then(Json::as_str)
                        .unwrap_or("1")
                        .to_string(),
                };
                Some(Value::Quantity(Quantity { value, unit }))
            }
            _ => None,
        }
    }

    pub fn is_primitive(&self, model: &Model) -> bool {
        if self.ty.is_empty() {
            return !matches!(self.json, Some(Json::Object(_)) | Some(Json::Array(_)));
        }
        model.is_primitive(self.ty)
    }
}

/// Decimal places of a decimal (its scale).
pub(crate) fn scale(d: &Decimal) -> u32 {
    d.scale()
}

fn num(v: &Value<'_>) -> Option<Decimal> {
    match v {
        Value::Integer(i) | Value::Long(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// A quantity with calendar keywords for units below a month mapped to UCUM.
fn normalized_unit(unit: &str) -> Cow<'_, str> {
    match ucum::calendar_to_ucum(unit) {
        Some(u) => Cow::Borrowed(u),
        None => match ucum::calendar_keyword(unit) {
            Some(k) => Cow::Borrowed(k),
            None => Cow::Borrowed(unit),
        },
    }
}

/// Both quantities in the same unit, when they can be compared.
pub(crate) fn quantity_pair(a: &Quantity, b: &Quantity) -> Option<(Decimal, Decimal)> {
    let (ua, ub) = (normalized_unit(&a.unit), normalized_unit(&b.unit));
    if ua == ub {
        return Some((a.value, b.value));
    }
    let cal = |u: &str| matches!(u, "year" | "month");
    if cal(&ua) || cal(&ub) {
        if cal(&ua) && cal(&ub) {
            let months = |q: &Quantity, u: &str| {
                if u == "year" {
                    q.value.checked_mul(Decimal::from(12))
                } else {
                    Some(q.value)
                }
            };
            return Some((months(a, &ua)?, months(b, &ub)?));
        }
        return None;
    }
    let (ra, rb) = (ucum::reduce(&ua)?, ucum::reduce(&ub)?);
    if ra.dims != rb.dims {
        return None;
    }
    Some((
        a.value.checked_mul(ra.factor)?,
        b.value.checked_mul(rb.factor)?,
    ))
}

/// Equality of two single items: `Some(bool)`, or `None` when it cannot be decided.
pub(crate) fn equals(a: &Value<'_>, b: &Value<'_>) -> Option<bool> {
    if let (Value::Node(x), Value::Node(y)) = (a, b)
        && !matches!(
            x.json,
            Some(Json::String(_) | Json::Number(_) | Json::Bool(_))
        )
    {
        return Some(x.json == y.json && (x.json.is_some() || x.ext == y.ext));
    }
    let (a, b) = (a.to_system(), b.to_system());
    match (&a, &b) {
        (Value::Boolean(x), Value::Boolean(y)) => Some(x == y),
        (Value::String(x), Value::String(y)) => Some(x == y),
        (Value::Temporal(x), Value::Temporal(y)) => {
            if (x.kind == TKind::Time) != (y.kind == TKind::Time) {
                return Some(false);
            }
            x.compare(y).map(|o| o == Ordering::Equal)
        }
        (Value::Quantity(x), Value::Quantity(y)) => quantity_pair(x, y).map(|(p, q)| p == q),
        (
            Value::Type {
                namespace: n1,
                name: a,
            },
            Value::Type {
                namespace: n2,
                name: b,
            },
        ) => Some(n1 == n2 && a == b),
        (Value::Node(_), _) | (_, Value::Node(_)) => Some(false),
        _ => match (num(&a), num(&b)) {
            (Some(x), Some(y)) => Some(x == y),
            _ => Some(false),
        },
    }
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn round_to(d: Decimal, places: u32) -> Decimal {
    d.round_dp_with_strategy(places, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// Equivalence of two single items.
pub(crate) fn equivalent(a: &Value<'_>, b: &Value<'_>) -> bool {
    if let (Value::Node(x), Value::Node(y)) = (a, b)
        && !matches!(
            x.json,
            Some(Json::String(_) | Json::Number(_) | Json::Bool(_))
        )
    {
        return x.json == y.json;
    }
    let (a, b) = (a.to_system(), b.to_system());
    match (&a, &b) {
        (Value::String(x), Value::String(y)) => normalize_ws(x) == normalize_ws(y),
        (Value::Temporal(x), Value::Temporal(y)) => {
            x.precision.min(6) == y.precision.min(6) && x.compare(y) == Some(Ordering::Equal)
        }
        (Value::Quantity(x), Value::Quantity(y)) => match quantity_pair(x, y) {
            Some((p, q)) => {
                let places = scale(&p).min(scale(&q));
                round_to(p, places) == round_to(q, places)
            }
            None => false,
        },
        _ => match (num(&a), num(&b)) {
            (Some(x), Some(y)) => {
                let places = scale(&x).min(scale(&y));
                round_to(x, places) == round_to(y, places)
            }
            _ => equals(&a, &b).unwrap_or(false),
        },
    }
}

/// Ordering of two single items; `Err` when they cannot be compared at all, `Ok(None)` when
/// the answer is unknown (date-times of different precision).
pub(crate) fn compare(a: &Value<'_>, b: &Value<'_>) -> Result<Option<Ordering>, String> {
    let (a, b) = (a.to_system(), b.to_system());
    match (&a, &b) {
        (Value::String(x), Value::String(y)) => Ok(Some(x.cmp(y))),
        (Value::Temporal(x), Value::Temporal(y)) => {
            if (x.kind == TKind::Time) != (y.kind == TKind::Time) {
                return Err("a time cannot be compared with a date".into());
            }
            Ok(x.compare(y))
        }
        (Value::Quantity(x), Value::Quantity(y)) => Ok(quantity_pair(x, y).map(|(p, q)| p.cmp(&q))),
        _ => match (num(&a), num(&b)) {
            (Some(x), Some(y)) => Ok(Some(x.cmp(&y))),
            _ => Err(format!(
                "{} and {} cannot be compared",
                a.type_name().1,
                b.type_name().1
            )),
        },
    }
}

/// The JSON form of a result item (what `fhir-hub fhirpath` prints).
pub fn to_json(v: &Value<'_>) -> Json {
    match v {
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) | Value::Long(i) => Json::from(*i),
        Value::Decimal(d) => serde_json::from_str(&d.to_string()).unwrap_or(Json::Null),
        Value::String(s) => Json::String(s.to_string()),
        Value::Temporal(t) => Json::String(t.to_fhir_text()),
        Value::Quantity(q) => {
            let mut m = serde_json::Map::new();
            m.insert(
                "value".into(),
                serde_json::from_str(&q.value.to_string()).unwrap_or(Json::Null),
            );
            let unit = ucum::calendar_to_ucum(&q.unit).unwrap_or(&q.unit);
            m.insert("unit".into(), Json::String(q.unit.clone()));
            if ucum::calendar_keyword(&q.unit).is_none()
                || ucum::calendar_to_ucum(&q.unit).is_some()
            {
                m.insert(
                    "system".into(),
                    Json::String("http://unitsofmeasure.org".into()),
                );
                m.insert("code".into(), Json::String(unit.to_string()));
            }
            Json::Object(m)
        }
        Value::Node(n) => n.json.cloned().unwrap_or(Json::Null),
        Value::Type { namespace, name } => {
            serde_json::json!({ "namespace": namespace, "name": name })
        }
    }
}
