//! `fhir-hub fhirpath`: evaluate an expression offline, the way topic criteria are evaluated.

use std::path::Path;

use anyhow::Context;
use hub_fhir::{IssueType, OperationOutcome};
use hub_fhirpath::{Env, EvalError, Expression};
use serde_json::Value;

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin().lock()).context("reading stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Returns the exit code and what to print: the result as a JSON array, or an
/// OperationOutcome (exit code 2) when the expression does not parse or evaluate.
pub fn run(
    expression: &str,
    resource: Option<&Path>,
    previous: Option<&Path>,
) -> anyhow::Result<(i32, Value)> {
    let expr = match Expression::parse(expression) {
        Ok(e) => e,
        Err(e) => {
            let oo = OperationOutcome::error(IssueType::Invalid, format!("{e}")).at(expression);
            return Ok((2, oo.to_json()));
        }
    };
    let resource = resource.map(read_json).transpose()?;
    let previous = previous.map(read_json).transpose()?;
    let env = Env::new()
        .with_resource("current", resource.as_ref())
        .with_resource("previous", previous.as_ref());
    match expr.evaluate(resource.as_ref(), &env) {
        Ok(items) => Ok((
            0,
            Value::Array(items.iter().map(hub_fhirpath::to_json).collect()),
        )),
        Err(e) => {
            let kind = match e {
                EvalError::Semantic(_) => IssueType::Invalid,
                EvalError::Execution(_) => IssueType::Processing,
                EvalError::Budget(_) => IssueType::TooCostly,
            };
            Ok((
                2,
                OperationOutcome::error(kind, e.to_string())
                    .at(expression)
                    .to_json(),
            ))
        }
    }
}
