//! A compiled subset of FHIRPath: the simple navigation paths that search-parameter
//! definitions use (`Observation.code`, `Observation.subject.where(resolve() is Patient)`,
//! `(Observation.value as Quantity)`, `Patient.telecom.where(system='phone')`).
//!
//! Each expression is compiled once into [`Path`] steps and then evaluated over
//! any [`Json`] tree (`serde_json::Value` or the lighter [`crate::json::Node`]) without allocation
//! beyond the result vector. Expressions outside
//! the subset fail to compile and the parameter is reported as unsupported; the full
//! FHIRPath engine is its own module later.

use crate::json::Json;

/// One navigation step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An element by name; for choice elements (`value[x]`) any `valueXxx` key matches.
    Field(String),
    /// A choice element restricted to one type: `value as Quantity` → `valueQuantity`.
    Choice(String),
    /// `where(resolve() is Type)`: keep references that point to that type.
    RefType(String),
    /// `where(field='literal')`.
    FieldEquals(String, String),
}

/// A compiled path, rooted at a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub steps: Vec<Step>,
}

/// Split at a separator that is outside parentheses and quotes.
pub(crate) fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut in_quote = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '\'' => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote => depth -= 1,
            c if c == sep && depth == 0 && !in_quote => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn strip_parens(s: &str) -> &str {
    let mut t = s.trim();
    // Strip only when the first '(' closes at the very end: `(a) | (b)` stays as it is.
    while t.starts_with('(') && t.ends_with(')') {
        let mut depth = 0i32;
        let mut closes_at_end = true;
        for (i, c) in t.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 && i + 1 < t.len() {
                closes_at_end = false;
                break;
            }
        }
        if !closes_at_end {
            break;
        }
        t = t[1..t.len() - 1].trim();
    }
    t
}

/// Byte index of the ')' that closes the '(' at index 0.
fn matching_paren(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

impl Path {
    /// Compile an expression relative to an element (composite components: `code`,
    /// `value.ofType(Quantity) | value.ofType(Period)`), one path per alternative.
    pub fn compile_relative(expr: &str) -> Result<Vec<Path>, String> {
        split_top_level(expr, '|')
            .into_iter()
            .map(|alt| Path::compile(&format!("Self.{}", alt.trim()), "Self"))
            .collect()
    }

    /// Compile one alternative of a search-parameter expression, rooted at `root`
    /// (the resource type, or `Resource`/`DomainResource`). Returns why when the
    /// expression is outside the supported subset.
    pub fn compile(expr: &str, root: &str) -> Result<Path, String> {
        let expr = strip_parens(expr);
        // `(Observation.value as CodeableConcept).text`: a parenthesised head, then a path.
        if expr.starts_with('(')
            && let Some(close) = matching_paren(expr)
            && let Some(rest) = expr[close + 1..].strip_prefix('.')
        {
            let mut head = Path::compile(&expr[..=close], root)?;
            let tail = Path::compile(&format!("Self.{rest}"), "Self")?;
            head.steps.extend(tail.steps);
            return Ok(head);
        }
        // `X.y as T` (operator form) applies to the whole left side.
        let (body, as_type) = match expr.rsplit_once(" as ") {
            Some((l, t)) if is_ident(t.trim()) => (strip_parens(l), Some(t.trim())),
            _ => (expr, None),
        };
        let segments = split_top_level(body, '.');
        let mut it = segments.iter().map(|s| s.trim());
        match it.next() {
            Some(first) if first == root => {}
            other => return Err(format!("expression does not start at {root}: {other:?}")),
        }
        let mut steps = Vec::new();
        for seg in it {
            if is_ident(seg) {
                steps.push(Step::Field(seg.to_owned()));
                continue;
            }
            let Some((func, rest)) = seg.split_once('(') else {
                return Err(format!("unsupported path segment '{seg}'"));
            };
            let arg = rest.strip_suffix(')').unwrap_or(rest).trim();
            match func {
                "as" | "ofType" if is_ident(arg) => match steps.pop() {
                    Some(Step::Field(f)) => {
                        steps.push(Step::Choice(format!("{f}{}", capitalize(arg))))
                    }
                    _ => return Err(format!("'{func}({arg})' must follow an element")),
                },
                "where" => {
                    if let Some(t) = arg.strip_prefix("resolve() is ")
                        && is_ident(t.trim())
                    {
                        steps.push(Step::RefType(t.trim().to_owned()));
                        continue;
                    }
                    match arg.split_once('=') {
                        Some((f, v))
                            if is_ident(f.trim())
                                && v.trim().starts_with('\'')
                                && v.trim().ends_with('\'')
                                && v.trim().len() >= 2 =>
                        {
                            let v = v.trim();
                            steps.push(Step::FieldEquals(
                                f.trim().to_owned(),
                                v[1..v.len() - 1].to_owned(),
                            ));
                        }
                        _ => return Err(format!("unsupported filter 'where({arg})'")),
                    }
                }
                _ => return Err(format!("unsupported function '{func}()'")),
            }
        }
        if let Some(t) = as_type {
            match steps.pop() {
                Some(Step::Field(f)) => steps.push(Step::Choice(format!("{f}{}", capitalize(t)))),
                _ => return Err(format!("'as {t}' must follow an element")),
            }
        }
        // No steps: the resource itself (composite parameters rooted at the resource).
        Ok(Path { steps })
    }

    /// Evaluate over a resource: every node the path reaches, arrays flattened.
    pub fn eval<'a, J: Json>(&self, resource: &'a J) -> Vec<&'a J> {
        let mut nodes: Vec<&'a J> = vec![resource];
        for step in &self.steps {
            let mut next = Vec::new();
            for node in nodes {
                match step {
                    Step::Field(name) => {
                        if !node.is_object() {
                            continue;
                        }
                        match node.get(name) {
                            Some(v) => push_flat(&mut next, v),
                            None => {
                                // A choice element: `effective` reaches `effectiveDateTime`.
                                for (k, v) in node.members() {
                                    if k.len() > name.len()
                                        && k.starts_with(name.as_str())
                                        && k.as_bytes()[name.len()].is_ascii_uppercase()
                                    {
                                        push_flat(&mut next, v);
                                    }
                                }
                            }
                        }
                    }
                    Step::Choice(key) => {
                        if let Some(v) = node.get(key) {
                            push_flat(&mut next, v);
                        }
                    }
                    Step::RefType(t) => {
                        if reference_type(node) == Some(t.as_str()) {
                            next.push(node);
                        }
                    }
                    Step::FieldEquals(f, v) => {
                        if node.get(f).and_then(J::as_str) == Some(v.as_str()) {
                            next.push(node);
                        }
                    }
                }
            }
            nodes = next;
            if nodes.is_empty() {
                break;
            }
        }
        nodes
    }
}

fn push_flat<'a, J: Json>(out: &mut Vec<&'a J>, v: &'a J) {
    if let Some(items) = v.as_array() {
        out.extend(items.iter());
    } else if !v.is_null() {
        out.push(v);
    }
}

/// A reference without its version: what comes before the first `/_history/`
/// (`Patient/1/_history/2` → `Patient/1`). Found by looking at each `/`, not with a
/// substring searcher: this runs for every reference of every resource matched.
pub(crate) fn before_history(reference: &str) -> &str {
    let bytes = reference.as_bytes();
    let mut from = 0;
    while let Some(off) = bytes[from..].iter().position(|b| *b == b'/') {
        let at = from + off;
        if bytes[at..].starts_with(b"/_history/") {
            return &reference[..at];
        }
        from = at + 1;
    }
    reference
}

/// The resource type a Reference points to: from `Reference.type`, or the `Type/id` tail of
/// `Reference.reference`.
pub fn reference_type<J: Json>(node: &J) -> Option<&str> {
    if let Some(t) = node.get("type").and_then(J::as_str) {
        return Some(t);
    }
    let r = node.get("reference").and_then(J::as_str)?;
    let r = before_history(r);
    let mut parts = r.rsplit('/');
    let _id = parts.next()?;
    parts.next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_version_is_cut_at_the_first_history_segment() {
        for r in [
            "Patient/1",
            "Patient/1/_history/2",
            "http://x/fhir/Patient/1/_history/2",
            "a/_history/b/_history/c",
            "/_history/",
            "_history/x",
            "Patient/1/_history",
            "",
            "é/_history/ü",
        ] {
            assert_eq!(
                before_history(r),
                r.split("/_history/").next().unwrap_or(r),
                "{r}"
            );
        }
    }

    #[test]
    fn compiles_definition_shapes() {
        let p = Path::compile(
            "Observation.subject.where(resolve() is Patient)",
            "Observation",
        )
        .unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::Field("subject".into()),
                Step::RefType("Patient".into())
            ]
        );
        let p = Path::compile("(Observation.value as Quantity)", "Observation").unwrap();
        assert_eq!(p.steps, vec![Step::Choice("valueQuantity".into())]);
        let p = Path::compile(
            "(MedicationRequest.medication.ofType(CodeableConcept))",
            "MedicationRequest",
        )
        .unwrap();
        assert_eq!(
            p.steps,
            vec![Step::Choice("medicationCodeableConcept".into())]
        );
        let p = Path::compile("Patient.telecom.where(system='phone')", "Patient").unwrap();
        assert_eq!(
            p.steps[1],
            Step::FieldEquals("system".into(), "phone".into())
        );
        assert!(
            Path::compile(
                "Patient.deceased.exists() and Patient.deceased != false",
                "Patient"
            )
            .is_err()
        );
        assert!(Path::compile("Observation.code", "Patient").is_err());
    }

    #[test]
    fn evaluates_with_arrays_choices_and_reference_types() {
        let r = json!({"resourceType": "Observation",
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-01-01",
            "category": [{"coding": [{"code": "a"}]}, {"coding": [{"code": "b"}, {"code": "c"}]}]});
        let codes = Path::compile("Observation.category.coding.code", "Observation").unwrap();
        assert_eq!(codes.eval(&r).len(), 3);
        let eff = Path::compile("Observation.effective", "Observation").unwrap();
        assert_eq!(eff.eval(&r), vec![&json!("2024-01-01")]);
        let pat = Path::compile(
            "Observation.subject.where(resolve() is Patient)",
            "Observation",
        )
        .unwrap();
        assert_eq!(pat.eval(&r).len(), 1);
        let grp = Path::compile(
            "Observation.subject.where(resolve() is Group)",
            "Observation",
        )
        .unwrap();
        assert!(grp.eval(&r).is_empty());
    }
}
