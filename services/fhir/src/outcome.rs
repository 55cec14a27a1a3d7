//! OperationOutcome: the one shape every error (and some informational answers) takes.

use serde_json::{Value, json};

/// The FHIR `IssueType` codes this hub uses (a subset of the value set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    NotSupported,
    NotFound,
    Deleted,
    Conflict,
    Processing,
    TooCostly,
    Exception,
    Transient,
    Informational,
    Security,
    Forbidden,
    Throttled,
    TooLong,
}

impl IssueType {
    /// The code as written in FHIR JSON.
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::NotSupported => "not-supported",
            Self::NotFound => "not-found",
            Self::Deleted => "deleted",
            Self::Conflict => "conflict",
            Self::Processing => "processing",
            Self::TooCostly => "too-costly",
            Self::Exception => "exception",
            Self::Transient => "transient",
            Self::Informational => "informational",
            Self::Security => "security",
            Self::Forbidden => "forbidden",
            Self::Throttled => "throttled",
            Self::TooLong => "too-long",
        }
    }
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: &'static str,
    pub code: IssueType,
    pub diagnostics: String,
    /// FHIRPath-ish locations of the problem (`Subscription.criteria`, `line 3`...).
    pub expression: Vec<String>,
}

/// A FHIR OperationOutcome under construction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperationOutcome {
    pub issues: Vec<Issue>,
}

impl OperationOutcome {
    /// An outcome with a single `error` issue.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            issues: vec![Issue {
                severity: "error",
                code,
                diagnostics: diagnostics.into(),
                expression: Vec::new(),
            }],
        }
    }

    /// An outcome with a single `information` issue.
    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self {
            issues: vec![Issue {
                severity: "information",
                code: IssueType::Informational,
                diagnostics: diagnostics.into(),
                expression: Vec::new(),
            }],
        }
    }

    /// Attach a location to the last issue.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Some(issue) = self.issues.last_mut() {
            issue.expression.push(expression.into());
        }
        self
    }

    /// The diagnostics of every issue, joined: handy for logs and CLI output.
    pub fn summary(&self) -> String {
        self.issues
            .iter()
            .map(|i| i.diagnostics.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The FHIR JSON form.
    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = self
            .issues
            .iter()
            .map(|i| {
                let mut v = json!({
                    "severity": i.severity,
                    "code": i.code.code(),
                    "diagnostics": i.diagnostics,
                });
                if !i.expression.is_empty() {
                    v["expression"] = json!(i.expression);
                }
                v
            })
            .collect();
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fhir_json() {
        let oo = OperationOutcome::error(IssueType::NotSupported, "no chains")
            .at("Subscription.criteria");
        let v = oo.to_json();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["code"], "not-supported");
        assert_eq!(v["issue"][0]["expression"][0], "Subscription.criteria");
    }
}
