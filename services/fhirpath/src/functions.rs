//! The function library: existence, filtering, subsetting, combining, conversion, strings,
//! math, tree navigation, utility, types, and the FHIR additions (`extension`, `hasValue`,
//! `getValue`, `conformsTo`, boundaries).

use std::borrow::Cow;
use std::cmp::Ordering;

use base64::Engine as _;
use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use serde_json::Value as Json;

use crate::ast::Expr;
use crate::eval::{Evaluator, Frame, R, execution, semantic, singleton, to_bool, type_arg, union};
use crate::temporal::{TKind, Temporal};
use crate::value::{self, Collection, Quantity, Value};

fn arity(name: &str, args: &[Expr], min: usize, max: usize) -> R<()> {
    if args.len() < min || args.len() > max {
        return Err(semantic(format!(
            "{name}() takes {} argument(s), got {}",
            if min == max {
                min.to_string()
            } else {
                format!("{min} to {max}")
            },
            args.len()
        )));
    }
    Ok(())
}

fn bools<'a>(b: bool) -> Collection<'a> {
    vec![Value::Boolean(b)]
}

fn string_of<'a>(s: impl Into<String>) -> Collection<'a> {
    vec![Value::String(Cow::Owned(s.into()))]
}

/// The single string the function applies to; an error for a non-string item.
fn input_string<'c>(focus: &'c [Value<'_>], name: &str) -> R<Option<Cow<'c, str>>> {
    match singleton(focus, name)? {
        None => Ok(None),
        Some(v) => match v.to_system() {
            Value::String(_) => Ok(v.as_str().map(Cow::Borrowed)),
            _ => Err(semantic(format!("{name}() applies to strings"))),
        },
    }
}

impl<'e, 'a> Evaluator<'e, 'a> {
    fn arg(&self, args: &'a [Expr], i: usize, f: Frame<'_, 'a>) -> R<Collection<'a>> {
        match args.get(i) {
            Some(e) => self.eval(e, f),
            None => Ok(vec![]),
        }
    }

    fn string_arg(
        &self,
        args: &'a [Expr],
        i: usize,
        f: Frame<'_, 'a>,
        name: &str,
    ) -> R<Option<String>> {
        let c = self.arg(args, i, f)?;
        Ok(match singleton(&c, name)? {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| execution(format!("{name}() expects a string argument")))?,
            ),
        })
    }

    fn int_arg(&self, args: &'a [Expr], i: usize, f: Frame<'_, 'a>, name: &str) -> R<Option<i64>> {
        let c = self.arg(args, i, f)?;
        Ok(match singleton(&c, name)? {
            None => None,
            Some(v) => match v.to_system() {
                Value::Integer(i) | Value::Long(i) => Some(i),
                _ => return Err(execution(format!("{name}() expects an integer argument"))),
            },
        })
    }

    /// Evaluates `e` once per item with `$this`/`$index` set.
    fn each(
        &self,
        focus: &[Value<'a>],
        e: &'a Expr,
        f: Frame<'_, 'a>,
        mut each: impl FnMut(usize, &Value<'a>, Collection<'a>) -> R<bool>,
    ) -> R<()> {
        for (i, item) in focus.iter().enumerate() {
            let this = std::slice::from_ref(item);
            let r = self.eval(
                e,
                Frame {
                    this,
                    index: Some(i),
                    total: f.total,
                },
            )?;
            if !each(i, item, r)? {
                break;
            }
        }
        Ok(())
    }
}

/// Calls the function `name` on `focus`.
pub(crate) fn call<'a>(
    ev: &Evaluator<'_, 'a>,
    focus: &[Value<'a>],
    name: &str,
    args: &'a [Expr],
    f: Frame<'_, 'a>,
) -> R<Collection<'a>> {
    match name {
        // existence
        "empty" => {
            arity(name, args, 0, 0)?;
            Ok(bools(focus.is_empty()))
        }
        "exists" => {
            arity(name, args, 0, 1)?;
            match args.first() {
                None => Ok(bools(!focus.is_empty())),
                Some(e) => {
                    let mut found = false;
                    ev.each(focus, e, f, |_, _, r| {
                        found = to_bool(&r, "exists")? == Some(true);
                        Ok(!found)
                    })?;
                    Ok(bools(found))
                }
            }
        }
        "all" => {
            arity(name, args, 1, 1)?;
            let mut all = true;
            ev.each(focus, &args[0], f, |_, _, r| {
                all = to_bool(&r, "all")? == Some(true);
                Ok(all)
            })?;
            Ok(bools(all))
        }
        "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
            arity(name, args, 0, 0)?;
            let mut vals = Vec::with_capacity(focus.len());
            for v in focus {
                match v.to_system() {
                    Value::Boolean(b) => vals.push(b),
                    _ => return Err(execution(format!("{name}() applies to booleans"))),
                }
            }
            Ok(bools(match name {
                "allTrue" => vals.iter().all(|b| *b),
                "anyTrue" => vals.iter().any(|b| *b),
                "allFalse" => vals.iter().all(|b| !*b),
                _ => vals.iter().any(|b| !*b),
            }))
        }
        "subsetOf" | "supersetOf" => {
            arity(name, args, 1, 1)?;
            let other = ev.eval(&args[0], f)?;
            let (sub, sup) = if name == "subsetOf" {
                (focus, other.as_slice())
            } else {
                (other.as_slice(), focus)
            };
            Ok(bools(sub.iter().all(|x| {
                sup.iter().any(|y| value::equals(x, y) == Some(true))
            })))
        }
        "count" => {
            arity(name, args, 0, 0)?;
            Ok(vec![Value::Integer(focus.len() as i64)])
        }
        "distinct" => {
            arity(name, args, 0, 0)?;
            Ok(union(focus.to_vec(), vec![]))
        }
        "isDistinct" => {
            arity(name, args, 0, 0)?;
            Ok(bools(union(focus.to_vec(), vec![]).len() == focus.len()))
        }
        // filtering and projection
        "where" => {
            arity(name, args, 1, 1)?;
            let mut out = Vec::new();
            ev.each(focus, &args[0], f, |_, item, r| {
                if to_bool(&r, "where")? == Some(true) {
                    out.push(item.clone());
                }
                Ok(true)
            })?;
            Ok(out)
        }
        "select" => {
            arity(name, args, 1, 1)?;
            let mut out = Vec::new();
            ev.each(focus, &args[0], f, |_, _, r| {
                out.extend(r);
                Ok(true)
            })?;
            Ok(out)
        }
        "repeat" => {
            arity(name, args, 1, 1)?;
            let mut out: Collection<'a> = Vec::new();
            let mut frontier = focus.to_vec();
            while !frontier.is_empty() {
                let mut next = Vec::new();
                ev.each(&frontier, &args[0], f, |_, _, r| {
                    for v in r {
                        // the membership test is linear: charge for it
                        ev.budget.charge(out.len())?;
                        if !out.iter().any(|x| value::equals(x, &v) == Some(true)) {
                            out.push(v.clone());
                            next.push(v);
                        }
                    }
                    Ok(true)
                })?;
                frontier = next;
            }
            Ok(out)
        }
        "ofType" => {
            arity(name, args, 1, 1)?;
            let t = type_arg(&args[0]).ok_or_else(|| semantic("ofType() takes a type name"))?;
            ev.check_type(&t)?;
            Ok(focus
                .iter()
                .filter(|v| ev.as_type(v, &t))
                .cloned()
                .collect())
        }
        // subsetting
        "single" => {
            arity(name, args, 0, 0)?;
            Ok(singleton(focus, "single")?.cloned().into_iter().collect())
        }
        "first" => Ok(focus.first().cloned().into_iter().collect()),
        "last" => Ok(focus.last().cloned().into_iter().collect()),
        "tail" => Ok(focus.iter().skip(1).cloned().collect()),
        "skip" | "take" => {
            arity(name, args, 1, 1)?;
            let n = ev.int_arg(args, 0, f, name)?.unwrap_or(0).max(0) as usize;
            Ok(if name == "skip" {
                focus.iter().skip(n).cloned().collect()
            } else {
                focus.iter().take(n).cloned().collect()
            })
        }
        "intersect" | "exclude" => {
            arity(name, args, 1, 1)?;
            let other = ev.eval(&args[0], f)?;
            let keep = name == "intersect";
            let picked: Collection<'a> = focus
                .iter()
                .filter(|x| other.iter().any(|y| value::equals(x, y) == Some(true)) == keep)
                .cloned()
                .collect();
            Ok(if keep { union(picked, vec![]) } else { picked })
        }
        // combining
        "union" => {
            arity(name, args, 1, 1)?;
            let other = ev.eval(&args[0], f)?;
            Ok(union(focus.to_vec(), other))
        }
        "combine" => {
            arity(name, args, 1, 1)?;
            let other = ev.eval(&args[0], f)?;
            let mut out = focus.to_vec();
            out.extend(other);
            Ok(out)
        }
        // utility
        "iif" => {
            arity(name, args, 2, 3)?;
            if focus.len() > 1 {
                return Err(execution("iif() applies to at most one item"));
            }
            let this = if focus.is_empty() { f.this } else { focus };
            let inner = Frame { this, ..f };
            let c = ev.eval(&args[0], inner)?;
            let cond = match singleton(&c, "iif")? {
                None => false,
                Some(v) => match v.to_system() {
                    Value::Boolean(b) => b,
                    _ => return Err(semantic("the criterion of iif() must be a boolean")),
                },
            };
            if cond {
                ev.eval(&args[1], inner)
            } else {
                ev.arg(args, 2, inner)
            }
        }
        "trace" => {
            arity(name, args, 1, 2)?;
            Ok(focus.to_vec())
        }
        "defineVariable" => Err(semantic("defineVariable() is not supported")),
        "now" | "today" | "timeOfDay" => {
            arity(name, args, 0, 0)?;
            let now = ev.env.now.unwrap_or_else(clock);
            Ok(vec![Value::Temporal(match name {
                "now" => now,
                "today" => now.truncated(crate::temporal::DAY),
                _ => Temporal {
                    kind: TKind::Time,
                    tz: None,
                    ..now
                },
            })])
        }
        "not" => {
            arity(name, args, 0, 0)?;
            Ok(to_bool(focus, "not")?
                .map(|b| bools(!b))
                .unwrap_or_default())
        }
        // types
        "is" | "as" => {
            arity(name, args, 1, 1)?;
            let t = type_arg(&args[0]).ok_or_else(|| semantic("is()/as() take a type name"))?;
            if name == "as" {
                ev.check_type(&t)?;
            }
            match singleton(focus, name)? {
                None => Ok(vec![]),
                Some(v) if name == "is" => Ok(bools(ev.is_type(v, &t))),
                Some(v) => Ok(if ev.as_type(v, &t) {
                    vec![v.clone()]
                } else {
                    vec![]
                }),
            }
        }
        "type" => {
            arity(name, args, 0, 0)?;
            Ok(focus
                .iter()
                .map(|v| {
                    let (namespace, name) = v.type_name();
                    Value::Type { namespace, name }
                })
                .collect())
        }
        // conversions
        "toBoolean" | "convertsToBoolean" => convert(focus, name, to_boolean),
        "toInteger" | "convertsToInteger" => convert(focus, name, to_integer),
        "toLong" | "convertsToLong" => convert(focus, name, |v| match to_integer(v) {
            Some(Value::Integer(i)) => Some(Value::Long(i)),
            other => other,
        }),
        "toDecimal" | "convertsToDecimal" => convert(focus, name, to_decimal),
        "toString" | "convertsToString" => convert(focus, name, |v| {
            v.to_text().map(|s| Value::String(Cow::Owned(s)))
        }),
        "toDate" | "convertsToDate" => convert(focus, name, |v| to_temporal(v, TKind::Date)),
        "toDateTime" | "convertsToDateTime" => {
            convert(focus, name, |v| to_temporal(v, TKind::DateTime))
        }
        "toTime" | "convertsToTime" => convert(focus, name, |v| to_temporal(v, TKind::Time)),
        "toQuantity" | "convertsToQuantity" => {
            arity(name, args, 0, 1)?;
            let unit = ev.string_arg(args, 0, f, name)?;
            convert(focus, name, |v| {
                let q = to_quantity(v)?;
                match &unit {
                    None => Some(q),
                    Some(u) => match &q {
                        Value::Quantity(qq) => {
                            let target = Quantity {
                                value: Decimal::ONE,
                                unit: u.clone(),
                            };
                            let (a, one) = value::quantity_pair(qq, &target)?;
                            Some(Value::Quantity(Quantity {
                                value: a.checked_div(one)?,
                                unit: u.clone(),
                            }))
                        }
                        _ => None,
                    },
                }
            })
        }
        // strings
        "indexOf" | "lastIndexOf" => {
            let Some(s) = input_string(focus, name)? else {
                return Ok(vec![]);
            };
            let Some(sub) = ev.string_arg(args, 0, f, name)? else {
                return Ok(vec![]);
            };
            let pos = if name == "indexOf" {
                s.find(&sub)
            } else {
                s.rfind(&sub)
            };
            Ok(vec![Value::Integer(
                pos.map(|p| s[..p].chars().count() as i64).unwrap_or(-1),
            )])
        }
        "substring" => {
            arity(name, args, 1, 2)?;
            let Some(s) = input_string(focus, name)? else {
                return Ok(vec![]);
            };
            let Some(start) = ev.int_arg(args, 0, f, name)? else {
                return Ok(vec![]);
            };
            let chars: Vec<char> = s.chars().collect();
            if start < 0 || start as usize >= chars.len() {
                return Ok(vec![]);
            }
            let len = match args.get(1) {
                Some(_) => match ev.int_arg(args, 1, f, name)? {
                    Some(l) => l.max(0) as usize,
                    None => chars.len(),
                },
                None => chars.len(),
            };
            let start = start as usize;
            let end = start.saturating_add(len).min(chars.len());
            Ok(string_of(chars[start..end].iter().collect::<String>()))
        }
        "startsWith" | "endsWith" | "contains" => {
            arity(name, args, 1, 1)?;
            let Some(s) = input_string(focus, name)? else {
                return Ok(vec![]);
            };
            let Some(sub) = ev.string_arg(args, 0, f, name)? else {
                return Ok(vec![]);
            };
            Ok(bools(match name {
                "startsWith" => s.starts_with(&sub),
                "endsWith" => s.ends_with(&sub),
                _ => s.contains(&sub),
            }))
        }
        "upper" | "lower" | "trim" | "toChars" | "length" => {
            let Some(s) = input_string(focus, name)? else {
                return Ok(vec![]);
            };
            Ok(match name {
                "upper" => string_of(s.to_uppercase()),
                "lower" => string_of(s.to_lowercase()),
                "trim" => string_of(s.trim()),
                "length" => vec![Value::Integer(s.chars().count() as i64)],
                _ => s
                    .chars()
                    .map(|c| Value::String(Cow::Owned(c.to_string())))
                    .collect(),
            })
        }
        "replace" => {
            arity(name, args, 2, 2)?;
            let Some(s) = input_string(focus, name)? else {
                return Ok(vec![]);
            };
            let (Some(pat), Some(rep)) = (
                ev.string_arg(args, 0, f, name)?,
                ev.string_arg(args, 1, f, name)?,
            ) else {
                return Ok(vec![]);
            };
            // size the result before building it: replace('', …) chains grow geometrically
            let hits = if pat.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(pat.as_str()).count()
            };
            ev.budget
                .string(s.len().saturating_add(hits.saturating_mul(rep.len())))?;
            Ok(string_of(if pat.is_empty() {
                // an empty pattern goes around every character
                let mut out = rep.clone();
                for c in s.chars() {
                    out.push(c);
                    out.push_str(&rep);
                }
                out
            } else {
                s.replace(&pat, &rep)
            }))
        }
        "matches" | "matchesFull" | "replaceMatches" => {
            let Some(s) = input_string(focus, name)? else {
                return Ok(vec![]);
            };
            let Some(pat) = ev.string_arg(args, 0, f, name)? else {
                return Ok(vec![]);
            };
            let pattern = if name == "matchesFull" {
                format!("(?s)^(?:{pat})$")
            } else {
                format!("(?s){pat}")
            };
            let re = regex::Regex::new(&pattern)
                .map_err(|e| execution(format!("invalid regular expression: {e}")))?;
            if name == "replaceMatches" {
                let Some(rep) = ev.string_arg(args, 1, f, name)? else {
                    return Ok(vec![]);
                };
                if pat.is_empty() {
                    return Ok(string_of(s.into_owned()));
                }
                // `$1` in the replacement may copy up to the whole input per match
                let per_hit = rep
                    .len()
                    .saturating_add(if rep.contains('$') { s.len() } else { 0 });
                let hits = re.find_iter(&s).count();
                ev.budget
                    .string(s.len().saturating_add(hits.saturating_mul(per_hit)))?;
                return Ok(string_of(re.replace_all(&s, rep.as_str()).into_owned()));
            }
            Ok(bools(re.is_match(&s)))
        }
        "split" => {
            let Some(s) = input_string(focus, name)? else {
                return Ok(vec![]);
            };
            let Some(sep) = ev.string_arg(args, 0, f, name)? else {
                return Ok(vec![]);
            };
            Ok(s.split(sep.as_str())
                .map(|p| Value::String(Cow::Owned(p.to_string())))
                .collect())
        }
        "join" => {
            let sep = ev.string_arg(args, 0, f, name)?.unwrap_or_default();
            let parts: Vec<&str> = focus.iter().filter_map(Value::as_str).collect();
            let total = parts.iter().fold(0usize, |n, p| {
                n.saturating_add(p.len()).saturating_add(sep.len())
            });
            ev.budget.string(total)?;
            Ok(string_of(parts.join(&sep)))
        }
        "encode" | "decode" | "escape" | "unescape" => {
            let Some(s) = input_string(focus, name)? else {
                return Ok(vec![]);
            };
            let Some(format) = ev.string_arg(args, 0, f, name)? else {
                return Ok(vec![]);
            };
            Ok(codec(name, &s, &format)?.map(string_of).unwrap_or_default())
        }
        // math
        "abs" | "ceiling" | "exp" | "floor" | "ln" | "sqrt" | "truncate" => {
            let Some(v) = singleton(focus, name)? else {
                return Ok(vec![]);
            };
            math1(name, &v.to_system())
        }
        "log" | "power" | "round" => {
            let Some(v) = singleton(focus, name)? else {
                return Ok(vec![]);
            };
            let arg = ev.arg(args, 0, f)?;
            let a = singleton(&arg, name)?.map(Value::to_system);
            math2(name, &v.to_system(), a.as_ref(), args.is_empty())
        }
        // tree navigation
        "children" | "descendants" => {
            arity(name, args, 0, 0)?;
            let mut out = Vec::new();
            let mut frontier = focus.to_vec();
            loop {
                let mut next = Vec::new();
                for v in &frontier {
                    children(v, &mut next);
                }
                if next.is_empty() {
                    break;
                }
                ev.budget.items(out.len() + next.len())?;
                out.extend(next.iter().cloned());
                if name == "children" {
                    break;
                }
                frontier = next;
            }
            Ok(out)
        }
        // aggregates and ordering
        "aggregate" => {
            arity(name, args, 1, 2)?;
            let mut total = ev.arg(args, 1, f)?;
            for (i, item) in focus.iter().enumerate() {
                total = ev.eval(
                    &args[0],
                    Frame {
                        this: std::slice::from_ref(item),
                        index: Some(i),
                        total: Some(&total),
                    },
                )?;
            }
            Ok(total)
        }
        "sort" => sort(ev, focus, args, f),
        // FHIR additions
        "extension" => {
            arity(name, args, 1, 1)?;
            let Some(url) = ev.string_arg(args, 0, f, name)? else {
                return Ok(vec![]);
            };
            let mut exts = Vec::new();
            for v in focus {
                ev.child(v, "extension", &mut exts)?;
            }
            Ok(exts
                .into_iter()
                .filter(|e| match e {
                    Value::Node(n) => {
                        n.json.and_then(|j| j.get("url")).and_then(Json::as_str) == Some(&url)
                    }
                    _ => false,
                })
                .collect())
        }
        "hasValue" => Ok(bools(match focus {
            [Value::Node(n)] => {
                n.json.is_some() && !matches!(n.json, Some(Json::Object(_) | Json::Array(_)))
            }
            [v] => !matches!(v, Value::Node(_)),
            _ => false,
        })),
        "getValue" => Ok(match focus {
            [Value::Node(n)] if n.json.is_some() => n.to_system().into_iter().collect(),
            _ => vec![],
        }),
        "conformsTo" => {
            let Some(url) = ev.string_arg(args, 0, f, name)? else {
                return Ok(vec![]);
            };
            let Some(ty) = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") else {
                return Err(execution(format!("unknown profile {url}")));
            };
            if ev.model.get(ty).is_none() {
                return Err(execution(format!("unknown profile {url}")));
            }
            Ok(focus
                .iter()
                .map(|v| Value::Boolean(matches!(v, Value::Node(n) if ev.model.is_a(n.ty, ty))))
                .collect())
        }
        "memberOf" | "subsumes" | "subsumedBy" | "resolve" | "htmlChecks" | "expand"
        | "validateVS" | "translate" | "hasTemplateIdOf" => Err(execution(format!(
            "{name}() needs a terminology server or other resources, which this engine does not consult"
        ))),
        "lowBoundary" | "highBoundary" => {
            arity(name, args, 0, 1)?;
            let Some(v) = singleton(focus, name)? else {
                return Ok(vec![]);
            };
            let digits = ev.int_arg(args, 0, f, name)?;
            boundary(&v.to_system(), digits, name == "highBoundary")
        }
        "precision" => {
            let Some(v) = singleton(focus, name)? else {
                return Ok(vec![]);
            };
            Ok(match v.to_system() {
                Value::Decimal(d) => vec![Value::Integer(i64::from(d.scale()))],
                Value::Integer(_) => vec![Value::Integer(0)],
                Value::Temporal(t) => vec![Value::Integer(t.precision_digits())],
                _ => vec![],
            })
        }
        "comparable" => {
            let Some(v) = singleton(focus, name)? else {
                return Ok(vec![]);
            };
            let other = ev.arg(args, 0, f)?;
            let Some(o) = singleton(&other, name)? else {
                return Ok(vec![]);
            };
            Ok(match (v.to_system(), o.to_system()) {
                (Value::Quantity(a), Value::Quantity(b)) => {
                    bools(value::quantity_pair(&a, &b).is_some())
                }
                _ => vec![],
            })
        }
        _ => Err(semantic(format!("unknown function {name}()"))),
    }
}

fn clock() -> Temporal {
    let now = time::OffsetDateTime::now_utc();
    Temporal {
        kind: TKind::DateTime,
        year: now.year(),
        month: u8::from(now.month()),
        day: now.day(),
        hour: now.hour(),
        minute: now.minute(),
        second: now.second(),
        millis: now.millisecond(),
        precision: crate::temporal::MILLIS,
        tz: Some(0),
    }
}

fn convert<'a>(
    focus: &[Value<'a>],
    name: &str,
    f: impl Fn(&Value<'a>) -> Option<Value<'a>>,
) -> R<Collection<'a>> {
    let Some(v) = singleton(focus, name)? else {
        return Ok(vec![]);
    };
    let r = f(v);
    if name.starts_with("convertsTo") {
        Ok(bools(r.is_some()))
    } else {
        Ok(r.into_iter().collect())
    }
}

fn to_boolean<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    Some(Value::Boolean(match v.to_system() {
        Value::Boolean(b) => b,
        Value::Integer(1) | Value::Long(1) => true,
        Value::Integer(0) | Value::Long(0) => false,
        Value::Decimal(d) if d == Decimal::ONE => true,
        Value::Decimal(d) if d.is_zero() => false,
        Value::String(s) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => true,
            "false" | "f" | "no" | "n" | "0" | "0.0" => false,
            _ => return None,
        },
        _ => return None,
    }))
}

fn to_integer<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    Some(Value::Integer(match v.to_system() {
        Value::Integer(i) | Value::Long(i) => i,
        Value::Boolean(b) => i64::from(b),
        Value::String(s) => {
            let t = s.strip_prefix(['+', '-']).unwrap_or(&s);
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()?
        }
        _ => return None,
    }))
}

fn to_decimal<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    Some(Value::Decimal(match v.to_system() {
        Value::Integer(i) | Value::Long(i) => Decimal::from(i),
        Value::Decimal(d) => d,
        Value::Boolean(b) => Decimal::from(i64::from(b)),
        Value::String(s) => {
            let t = s.strip_prefix(['+', '-']).unwrap_or(&s);
            let (int, frac) = t.split_once('.').unwrap_or((t, "0"));
            if int.is_empty()
                || frac.is_empty()
                || !int.bytes().all(|b| b.is_ascii_digit())
                || !frac.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            s.parse().ok()?
        }
        _ => return None,
    }))
}

fn to_temporal<'a>(v: &Value<'a>, kind: TKind) -> Option<Value<'a>> {
    let t = match v.to_system() {
        Value::Temporal(t) => t,
        Value::String(s) => match kind {
            TKind::Time => Temporal::parse_time(&s)?,
            TKind::Date => Temporal::parse_date(&s).or_else(|| Temporal::parse_datetime(&s))?,
            TKind::DateTime => Temporal::parse_datetime(&s)?,
        },
        _ => return None,
    };
    match (kind, t.kind) {
        (TKind::Time, TKind::Time) => Some(Value::Temporal(t)),
        (TKind::Time, _) | (_, TKind::Time) => None,
        (TKind::Date, _) => Some(Value::Temporal(Temporal {
            kind: TKind::Date,
            ..t.truncated(crate::temporal::DAY)
        })),
        (TKind::DateTime, _) => Some(Value::Temporal(Temporal {
            kind: TKind::DateTime,
            ..t
        })),
    }
}

fn to_quantity<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    Some(Value::Quantity(match v.to_system() {
        Value::Quantity(q) => q,
        Value::Integer(i) | Value::Long(i) => Quantity {
            value: Decimal::from(i),
            unit: "1".into(),
        },
        Value::Decimal(d) => Quantity {
            value: d,
            unit: "1".into(),
        },
        Value::Boolean(b) => Quantity {
            value: Decimal::from(i64::from(b)),
            unit: "1".into(),
        },
        Value::String(s) => parse_quantity(&s)?,
        _ => return None,
    }))
}

/// `'5 mg'`-style strings: a number, then optionally a quoted UCUM unit or a calendar word.
fn parse_quantity(s: &str) -> Option<Quantity> {
    let s = s.trim();
    let (num, rest) = match s.find(' ') {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let value = match to_decimal(&Value::String(Cow::Borrowed(num)))? {
        Value::Decimal(d) => d,
        _ => return None,
    };
    let unit = if rest.is_empty() {
        "1".to_string()
    } else if let Some(u) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        u.to_string()
    } else if crate::ucum::calendar_keyword(rest).is_some() {
        rest.to_string()
    } else {
        return None;
    };
    Some(Quantity { value, unit })
}

fn codec(name: &str, s: &str, format: &str) -> R<Option<String>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE;
    Ok(match (name, format) {
        ("encode", "base64") => Some(b64.encode(s)),
        ("encode", "urlbase64") => Some(url.encode(s)),
        ("encode", "hex") => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
        ("decode", "base64") => b64.decode(s).ok().and_then(|b| String::from_utf8(b).ok()),
        ("decode", "urlbase64") => url.decode(s).ok().and_then(|b| String::from_utf8(b).ok()),
        ("decode", "hex") => {
            if !s.len().is_multiple_of(2) {
                return Ok(None);
            }
            let bytes: Option<Vec<u8>> = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect();
            bytes.and_then(|b| String::from_utf8(b).ok())
        }
        ("escape", "html") => Some(
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;"),
        ),
        ("unescape", "html") => Some(
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        ),
        ("escape", "json") => Some(s.replace('\\', "\\\\").replace('"', "\\\"")),
        ("unescape", "json") => Some(s.replace("\\\"", "\"").replace("\\\\", "\\")),
        _ => {
            return Err(execution(format!(
                "{name}() does not know the format {format}"
            )));
        }
    })
}

fn math1<'a>(name: &str, v: &Value<'a>) -> R<Collection<'a>> {
    let d = match v {
        Value::Integer(i) | Value::Long(i) => {
            match name {
                "abs" => return Ok(vec![Value::Integer(i.abs())]),
                "ceiling" | "floor" | "truncate" => return Ok(vec![Value::Integer(*i)]),
                _ => {}
            }
            Decimal::from(*i)
        }
        Value::Decimal(d) => *d,
        Value::Quantity(q) if name == "abs" => {
            return Ok(vec![Value::Quantity(Quantity {
                value: q.value.abs(),
                unit: q.unit.clone(),
            })]);
        }
        _ => return Err(execution(format!("{name}() applies to numbers"))),
    };
    let int = |d: Decimal| -> Collection<'a> {
        d.to_i64()
            .map(|i| vec![Value::Integer(i)])
            .unwrap_or_default()
    };
    Ok(match name {
        "abs" => vec![Value::Decimal(d.abs())],
        "ceiling" => int(d.ceil()),
        "floor" => int(d.floor()),
        "truncate" => int(d.trunc()),
        "exp" => float(d, f64::exp),
        "ln" => float(d, f64::ln),
        _ => float(d, f64::sqrt),
    })
}

/// A function computed in binary floating point, back to a decimal (empty when undefined).
fn float<'a>(d: Decimal, f: impl Fn(f64) -> f64) -> Collection<'a> {
    d.to_f64()
        .map(f)
        .filter(|x| x.is_finite())
        .and_then(Decimal::from_f64)
        .map(|x| vec![Value::Decimal(x)])
        .unwrap_or_default()
}

fn math2<'a>(
    name: &str,
    v: &Value<'a>,
    arg: Option<&Value<'a>>,
    no_arg: bool,
) -> R<Collection<'a>> {
    let num = |v: &Value<'_>| -> Option<Decimal> {
        match v {
            Value::Integer(i) | Value::Long(i) => Some(Decimal::from(*i)),
            Value::Decimal(d) => Some(*d),
            _ => None,
        }
    };
    let d = num(v).ok_or_else(|| execution(format!("{name}() applies to numbers")))?;
    match name {
        "round" => {
            let places = match arg {
                None if no_arg => 0,
                None => return Ok(vec![]),
                Some(a) => match a {
                    Value::Integer(i) if *i >= 0 => *i as u32,
                    _ => return Err(execution("round() takes a non-negative integer")),
                },
            };
            Ok(vec![Value::Decimal(d.round_dp_with_strategy(
                places,
                rust_decimal::RoundingStrategy::MidpointAwayFromZero,
            ))])
        }
        "log" => {
            let Some(base) = arg.and_then(num) else {
                return Ok(vec![]);
            };
            if d <= Decimal::ZERO || base <= Decimal::ZERO || base == Decimal::ONE {
                return Ok(vec![]);
            }
            Ok(float(d, |x| {
                x.ln() / base.to_f64().unwrap_or(f64::NAN).ln()
            }))
        }
        _ => {
            let Some(e) = arg else {
                return Ok(vec![]);
            };
            if let (Value::Integer(b), Value::Integer(x)) = (v, e)
                && *x >= 0
            {
                return Ok(u32::try_from(*x)
                    .ok()
                    .and_then(|x| b.checked_pow(x))
                    .map(|r| vec![Value::Integer(r)])
                    .unwrap_or_default());
            }
            let e = num(e).ok_or_else(|| execution("power() takes a number"))?;
            if d < Decimal::ZERO && e.fract() != Decimal::ZERO {
                return Ok(vec![]);
            }
            let r = d
                .to_f64()
                .zip(e.to_f64())
                .map(|(a, b)| a.powf(b))
                .and_then(Decimal::from_f64);
            Ok(r.map(|r| vec![Value::Decimal(r)]).unwrap_or_default())
        }
    }
}

fn boundary<'a>(v: &Value<'a>, digits: Option<i64>, high: bool) -> R<Collection<'a>> {
    let dec_bound = |d: Decimal, scale: u32| -> Option<Decimal> {
        let p = u32::try_from(digits.unwrap_or(8)).ok()?;
        if p > 28 {
            return None;
        }
        let half = Decimal::try_new(5, scale + 1).ok()?;
        let b = if high {
            d.checked_add(half)?
        } else {
            d.checked_sub(half)?
        };
        let step = Decimal::new(1, p);
        let r = if b.abs() < step {
            // below the resolution asked for: zero, keeping the side's sign
            let mut z = Decimal::new(0, p);
            z.set_sign_negative(b.is_sign_negative() && !high);
            z
        } else {
            let mut r = if high {
                b.round_dp_with_strategy(p, rust_decimal::RoundingStrategy::ToPositiveInfinity)
            } else {
                b.round_dp_with_strategy(p, rust_decimal::RoundingStrategy::ToNegativeInfinity)
            };
            r.rescale(p);
            r
        };
        Some(r)
    };
    Ok(match v {
        Value::Decimal(d) => dec_bound(*d, d.scale())
            .map(Value::Decimal)
            .into_iter()
            .collect(),
        Value::Integer(i) | Value::Long(i) => dec_bound(Decimal::from(*i), 0)
            .map(Value::Decimal)
            .into_iter()
            .collect(),
        Value::Quantity(q) => dec_bound(q.value, q.value.scale())
            .map(|value| {
                Value::Quantity(Quantity {
                    value,
                    unit: q.unit.clone(),
                })
            })
            .into_iter()
            .collect(),
        Value::Temporal(t) => t
            .boundary(digits, high)
            .map(Value::Temporal)
            .into_iter()
            .collect(),
        _ => vec![],
    })
}

/// The direct children of a node, in document order.
fn children<'a>(v: &Value<'a>, out: &mut Collection<'a>) {
    let model = crate::model::Model::r4();
    let Value::Node(n) = v else {
        return;
    };
    let Some(Json::Object(map)) = n.json else {
        return;
    };
    for (k, child) in map {
        if k.starts_with('_') || k == "resourceType" {
            continue;
        }
        let mut ty: &'a str = "";
        if let Some(el) = model.element(n.ty, k) {
            ty = el.types.first().copied().unwrap_or("");
        } else if !n.ty.is_empty() {
            for el in model.all_elements(n.ty) {
                if el.choice && k.starts_with(el.name) {
                    ty = el
                        .types
                        .iter()
                        .find(|t| crate::model::choice_key(el.name, t) == *k)
                        .copied()
                        .unwrap_or(ty);
                }
            }
        }
        crate::eval::push_values(model, Some(child), map.get(&format!("_{k}")), ty, out);
    }
}

/// Sort keys of one item: each key's value (if any) and whether it sorts descending.
type SortKeys<'a> = Vec<(Option<Value<'a>>, bool)>;

fn sort<'a>(
    ev: &Evaluator<'_, 'a>,
    focus: &[Value<'a>],
    args: &'a [Expr],
    f: Frame<'_, 'a>,
) -> R<Collection<'a>> {
    // keys per item; a leading unary minus sorts that key descending
    let mut keyed: Vec<(SortKeys<'a>, Value<'a>)> = Vec::new();
    for (i, item) in focus.iter().enumerate() {
        let frame = Frame {
            this: std::slice::from_ref(item),
            index: Some(i),
            total: f.total,
        };
        let mut keys = Vec::new();
        if args.is_empty() {
            keys.push((Some(item.clone()), false));
        }
        for a in args {
            let (e, desc) = match a {
                Expr::Unary('-', inner) => (inner.as_ref(), true),
                e => (e, false),
            };
            let r = ev.eval(e, frame)?;
            keys.push((singleton(&r, "sort")?.cloned(), desc));
        }
        keyed.push((keys, item.clone()));
    }
    let mut err = None;
    keyed.sort_by(|(a, _), (b, _)| {
        for ((x, desc), (y, _)) in a.iter().zip(b) {
            // an item without the key comes first, whichever the direction
            let o = match (x, y) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(x), Some(y)) => match value::compare(x, y) {
                    Ok(o) => o.unwrap_or(Ordering::Equal),
                    Err(e) => {
                        err = Some(e);
                        Ordering::Equal
                    }
                },
            };
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    if let Some(e) = err {
        return Err(execution(e));
    }
    Ok(keyed.into_iter().map(|(_, v)| v).collect())
}
