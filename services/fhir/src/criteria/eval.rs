//! Evaluating clauses against a resource.

use crate::json::Json;

use super::{Clause, Modifier, Prefix, QueryValue, fold};
use crate::datetime::{self, Range};
use crate::decimal::SearchNumber;
use crate::path::Path;

impl Clause {
    /// Whether the resource satisfies this clause.
    pub fn matches<J: Json>(&self, resource: &J, now: i64) -> bool {
        let Ok(paths) = &self.param.paths else {
            return false;
        };
        let nodes = eval_all(paths, resource);
        if self.modifier == Some(Modifier::Missing) {
            return self.values.iter().any(|v| match v {
                QueryValue::Missing(m) => *m == nodes.is_empty(),
                _ => false,
            });
        }
        let any = self.values.iter().any(|v| match v {
            QueryValue::Composite(parts) => nodes
                .iter()
                .any(|root| self.composite_matches(parts, *root, now)),
            v => nodes
                .iter()
                .any(|n| value_matches(v, self.modifier.as_ref(), *n, now)),
        });
        if self.modifier == Some(Modifier::Not) {
            !any
        } else {
            any
        }
    }

    /// Every component must match within the same root node.
    fn composite_matches<J: Json>(&self, parts: &[QueryValue], root: &J, now: i64) -> bool {
        parts.iter().zip(&self.param.components).all(|(v, comp)| {
            let Ok(paths) = &comp.paths else { return false };
            eval_all(paths, root)
                .iter()
                .any(|n| value_matches(v, None, *n, now))
        })
    }
}

pub(crate) fn eval_all<'a, J: Json>(paths: &[Path], node: &'a J) -> Vec<&'a J> {
    match paths {
        [one] => one.eval(node),
        many => many.iter().flat_map(|p| p.eval(node)).collect(),
    }
}

fn value_matches<J: Json>(v: &QueryValue, modifier: Option<&Modifier>, node: &J, now: i64) -> bool {
    match v {
        QueryValue::Token { system, code } => {
            token_matches(system.as_deref(), code.as_deref(), node)
        }
        QueryValue::OfType {
            system,
            code,
            value,
        } => of_type_matches(system, code, value, node),
        QueryValue::Text(t) => text_matches(t, modifier, node),
        QueryValue::Reference {
            rtype,
            id,
            absolute,
        } => reference_matches(rtype.as_deref(), id, absolute.as_deref(), node),
        QueryValue::RefIdentifier { system, value } => node
            .get("identifier")
            .is_some_and(|i| token_matches(system.as_deref(), value.as_deref(), i)),
        QueryValue::Str(s) => string_matches(s, modifier, node),
        QueryValue::Uri(u) => uri_matches(u, modifier, node),
        QueryValue::Date { prefix, range } => {
            date_range(node).is_some_and(|t| compare_ranges(*prefix, range, &t, now))
        }
        QueryValue::Number { prefix, n } => {
            number_of(node).is_some_and(|x| compare_number(*prefix, n, x))
        }
        QueryValue::Quantity {
            prefix,
            n,
            system,
            code,
        } => quantity_matches(*prefix, n, system.as_deref(), code.as_deref(), node),
        QueryValue::Composite(_) | QueryValue::Missing(_) => false,
    }
}

/// Call `f` with each (system, code) pair a token node offers until it returns `true`;
/// whether it did. Nothing is collected: the index probes every token of every resource.
pub(crate) fn any_token_pair<'a, J: Json, F: FnMut(Option<&'a str>, &'a str) -> bool>(
    node: &'a J,
    f: &mut F,
) -> bool {
    if let Some(s) = node.as_str() {
        return f(None, s);
    }
    if let Some(b) = node.as_bool() {
        return f(None, if b { "true" } else { "false" });
    }
    if !node.is_object() {
        return false;
    }
    if let Some(codings) = node.get("coding").and_then(J::as_array) {
        return codings.iter().any(|c| any_token_pair(c, f));
    }
    let sys = node.get("system").and_then(J::as_str);
    if let Some(c) = node.get("code").and_then(J::as_str) {
        return f(sys, c); // Coding, Quantity
    }
    if let Some(v) = node.get("value").and_then(J::as_str) {
        return f(sys, v); // Identifier, ContactPoint
    }
    false
}

fn token_matches<J: Json>(system: Option<&str>, code: Option<&str>, node: &J) -> bool {
    any_token_pair(node, &mut |ns, nc| match (system, code) {
        (None, Some(c)) => nc == c,
        (Some(""), Some(c)) => ns.is_none() && nc == c,
        (Some(s), Some(c)) => ns == Some(s) && nc == c,
        (Some(s), None) => ns == Some(s),
        (None, None) => false,
    })
}

fn of_type_matches<J: Json>(system: &str, code: &str, value: &str, node: &J) -> bool {
    node.get("value").and_then(J::as_str) == Some(value)
        && node
            .get("type")
            .is_some_and(|t| token_matches(Some(system), Some(code), t))
}

/// `:text` matches the text of a CodeableConcept or the display of its codings;
/// `:code-text` the code itself; both case- and accent-insensitive, starts-with.
fn text_matches<J: Json>(t: &str, modifier: Option<&Modifier>, node: &J) -> bool {
    if modifier == Some(&Modifier::CodeText) {
        return any_token_pair(node, &mut |_, c| fold(c).starts_with(t));
    }
    let mut texts: Vec<&str> = Vec::new();
    if let Some(s) = node.get("text").and_then(J::as_str) {
        texts.push(s);
    }
    if let Some(s) = node.get("display").and_then(J::as_str) {
        texts.push(s);
    }
    if let Some(cs) = node.get("coding").and_then(J::as_array) {
        texts.extend(
            cs.iter()
                .filter_map(|c| c.get("display").and_then(J::as_str)),
        );
    }
    if let Some(ty) = node
        .get("type")
        .and_then(|t| t.get("text"))
        .and_then(J::as_str)
    {
        texts.push(ty); // Identifier.type.text
    }
    texts.iter().any(|s| fold(s).starts_with(t))
}

/// The (type, id) a reference node points to, when it is a literal relative or absolute
/// reference (`#contained` and `urn:` references have none).
pub(crate) fn reference_target<J: Json>(node: &J) -> Option<(Option<&str>, &str)> {
    let reference = match node.as_str() {
        Some(s) => s,
        None => node.get("reference").and_then(J::as_str)?,
    };
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let without_history = crate::path::before_history(reference);
    let mut parts = without_history.rsplit('/');
    let id = parts.next().filter(|s| !s.is_empty())?;
    let rtype = parts
        .next()
        .or_else(|| node.get("type").and_then(J::as_str));
    Some((rtype, id))
}

fn reference_matches<J: Json>(
    rtype: Option<&str>,
    id: &str,
    absolute: Option<&str>,
    node: &J,
) -> bool {
    if let Some(abs) = absolute {
        let reference = node
            .as_str()
            .or_else(|| node.get("reference").and_then(J::as_str));
        return reference == Some(abs);
    }
    reference_target(node).is_some_and(|(t, i)| i == id && rtype.is_none_or(|q| t == Some(q)))
}

fn string_matches<J: Json>(q: &str, modifier: Option<&Modifier>, node: &J) -> bool {
    if let Some(s) = node.as_str() {
        return match modifier {
            Some(Modifier::Exact) => s == q,
            Some(Modifier::Contains) => fold(s).contains(q),
            _ => fold(s).starts_with(q),
        };
    }
    if let Some(items) = node.as_array() {
        return items.iter().any(|v| string_matches(q, modifier, v));
    }
    // HumanName, Address and similar: any of their string parts.
    node.members()
        .filter(|(k, _)| !matches!(*k, "use" | "period" | "extension" | "id" | "type"))
        .any(|(_, v)| string_matches(q, modifier, v))
}

fn uri_matches<J: Json>(u: &str, modifier: Option<&Modifier>, node: &J) -> bool {
    let Some(s) = node.as_str() else { return false };
    match modifier {
        // The target is the search URI or lies below it.
        Some(Modifier::Below) => {
            s == u || (s.starts_with(u) && (u.ends_with('/') || s[u.len()..].starts_with('/')))
        }
        // The target is the search URI or lies above it.
        Some(Modifier::Above) => {
            u == s || (u.starts_with(s) && (s.ends_with('/') || u[s.len()..].starts_with('/')))
        }
        _ => s == u,
    }
}

/// The range a date-like node covers: a date/dateTime/instant string, a Period, or a
/// Timing's events.
pub(crate) fn date_range<J: Json>(node: &J) -> Option<Range> {
    if let Some(s) = node.as_str() {
        return datetime::parse(s);
    }
    if !node.is_object() {
        return None;
    }
    if node.contains_key("start") || node.contains_key("end") {
        let lo = node
            .get("start")
            .and_then(J::as_str)
            .and_then(datetime::parse);
        let hi = node
            .get("end")
            .and_then(J::as_str)
            .and_then(datetime::parse);
        return Some(Range {
            lo: lo.map_or(i64::MIN, |r| r.lo),
            hi: hi.map_or(i64::MAX, |r| r.hi),
        });
    }
    let events: Vec<Range> = node
        .get("event")?
        .as_array()?
        .iter()
        .filter_map(|e| e.as_str().and_then(datetime::parse))
        .collect();
    let lo = events.iter().map(|r| r.lo).min()?;
    let hi = events.iter().map(|r| r.hi).max()?;
    Some(Range { lo, hi })
}

/// FHIR prefix semantics on ranges: the search range against the target's range.
pub(crate) fn compare_ranges(prefix: Prefix, s: &Range, t: &Range, now: i64) -> bool {
    match prefix {
        Prefix::Eq => s.contains(t),
        Prefix::Ne => !s.contains(t),
        Prefix::Gt => t.hi > s.hi,
        Prefix::Lt => t.lo < s.lo,
        Prefix::Ge => t.hi > s.hi || s.contains(t),
        Prefix::Le => t.lo < s.lo || s.contains(t),
        Prefix::Sa => t.lo >= s.hi,
        Prefix::Eb => t.hi <= s.lo,
        Prefix::Ap => {
            // Approximately: within 10% of the distance between the value and now.
            let gap = (now.saturating_sub(s.lo)).unsigned_abs() / 10;
            let gap = i64::try_from(gap).unwrap_or(i64::MAX);
            let widened = Range {
                lo: s.lo.saturating_sub(gap),
                hi: s.hi.saturating_add(gap),
            };
            widened.overlaps(t)
        }
    }
}

/// A node's number: a JSON number, or a string holding one (lenient towards producers that
/// quote decimals). NaN and infinities (`"NaN"`, `1e400`) are not numbers FHIR can carry.
pub(crate) fn number_of<J: Json>(node: &J) -> Option<f64> {
    match node.as_str() {
        Some(s) => s.parse().ok().filter(|x: &f64| x.is_finite()),
        None => node.as_number(),
    }
}

/// Numbers in resources are taken at face value; the search value's precision sets `eq`.
pub(crate) fn compare_number(prefix: Prefix, n: &SearchNumber, x: f64) -> bool {
    match prefix {
        Prefix::Eq => n.contains(x),
        Prefix::Ne => !n.contains(x),
        Prefix::Gt => x > n.value,
        Prefix::Lt => x < n.value,
        Prefix::Ge => x >= n.value,
        Prefix::Le => x <= n.value,
        Prefix::Ap => (x - n.value).abs() <= (n.value.abs() * 0.1).max(n.half),
        Prefix::Sa | Prefix::Eb => false,
    }
}

fn quantity_matches<J: Json>(
    prefix: Prefix,
    n: &SearchNumber,
    system: Option<&str>,
    code: Option<&str>,
    node: &J,
) -> bool {
    let Some(value) = node.get("value").and_then(number_of) else {
        return false;
    };
    let node_system = node.get("system").and_then(J::as_str);
    let node_code = node.get("code").and_then(J::as_str);
    let unit_ok = match (system, code) {
        (None, None) => true,
        (Some(s), None) => node_system == Some(s),
        (Some(s), Some(c)) => node_system == Some(s) && node_code == Some(c),
        // No system: the code may match the code or the human unit.
        (None, Some(c)) => node_code == Some(c) || node.get("unit").and_then(J::as_str) == Some(c),
    };
    unit_ok && compare_number(prefix, n, value)
}
