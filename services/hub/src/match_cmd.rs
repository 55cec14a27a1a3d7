//! `fhir-hub match`: try criteria offline. Reads NDJSON FHIR resources (or change
//! envelopes), prints `Type/id` of each resource the criteria match, one per line.

use std::io::{BufRead, BufReader, Read, Write};

use anyhow::Context;
use hub_fhir::Criteria;
use serde_json::Value;

/// What a run saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MatchStats {
    pub read: usize,
    pub matched: usize,
    pub bad_lines: usize,
}

/// Parse the criteria, or the OperationOutcome explaining why not.
pub fn parse_criteria(criteria: &str) -> Result<Criteria, hub_fhir::OperationOutcome> {
    Criteria::parse(criteria).map_err(|e| e.to_outcome("criteria"))
}

/// Match every line of `input`, writing `Type/id` of matches to `out` and problems to `err`.
pub fn run(
    criteria: &Criteria,
    input: impl Read,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<MatchStats> {
    let now = hub_fhir::datetime::now_micros();
    let mut stats = MatchStats::default();
    for (i, line) in BufReader::new(input).split(b'\n').enumerate() {
        let line = line.context("reading input")?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        stats.read += 1;
        let value: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => {
                stats.bad_lines += 1;
                writeln!(err, "line {}: not valid JSON: {e}", i + 1)?;
                continue;
            }
        };
        // An envelope is matched on the resource it carries.
        let resource = match value.get("resourceId") {
            Some(_) => value.get("resource").cloned().unwrap_or(Value::Null),
            None => value,
        };
        if criteria.matches_at(&resource, now) {
            stats.matched += 1;
            let t = resource
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let id = resource.get("id").and_then(Value::as_str).unwrap_or("?");
            writeln!(out, "{t}/{id}")?;
        }
    }
    out.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_matches_and_reports_bad_lines() {
        let c = parse_criteria("Observation?code=http://loinc.org|2345-7").unwrap();
        let input = concat!(
            r#"{"resourceType":"Observation","id":"a","code":{"coding":[{"system":"http://loinc.org","code":"2345-7"}]}}"#,
            "\n",
            r#"{"resourceType":"Observation","id":"b","code":{"coding":[{"system":"http://loinc.org","code":"1"}]}}"#,
            "\n",
            "not json\n",
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let stats = run(&c, input.as_bytes(), &mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "Observation/a\n");
        assert_eq!(
            stats,
            MatchStats {
                read: 3,
                matched: 1,
                bad_lines: 1
            }
        );
        assert!(String::from_utf8(err).unwrap().starts_with("line 3"));
        assert!(parse_criteria("Observation?code:in=http://x").is_err());
    }
}
