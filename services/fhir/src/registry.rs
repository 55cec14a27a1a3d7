//! The search-parameter registry, built once from the official FHIR R4 definitions
//! (`schemas/fhir/r4/search-parameters.json`, vendored from the specification, CC0).
//!
//! Each parameter's expression is sliced to the resource type at hand (the shared
//! definitions list one alternative per type, `AllergyIntolerance.code | Condition.code |
//! ...`) and compiled once into [`Path`]s.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use crate::path::{Path, split_top_level};
use crate::resource_types::R4_RESOURCE_TYPES;

const R4_DEFINITIONS: &str = include_str!("../../../schemas/fhir/r4/search-parameters.json");

/// The FHIR search parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Date => "date",
            Self::String => "string",
            Self::Token => "token",
            Self::Reference => "reference",
            Self::Composite => "composite",
            Self::Quantity => "quantity",
            Self::Uri => "uri",
            Self::Special => "special",
        }
    }
}

/// One search parameter as it applies to one resource type.
#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamType,
    /// The expression alternatives that apply to this resource type.
    pub expression: String,
    /// The compiled paths, or why the expression is outside the supported subset.
    pub paths: Result<Vec<Path>, String>,
    /// Resource types a reference parameter may point to.
    pub targets: Vec<String>,
    /// Components of a composite parameter.
    pub components: Vec<Component>,
}

/// One component of a composite parameter.
#[derive(Debug)]
pub struct Component {
    /// The canonical URL of the component's own search parameter.
    pub definition: String,
    pub expression: String,
    /// Paths relative to each node the composite's own expression selects.
    pub paths: Result<Vec<Path>, String>,
}

#[derive(Deserialize)]
struct Bundle {
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    resource: Definition,
}

#[derive(Deserialize)]
struct Definition {
    url: String,
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    kind: ParamType,
    #[serde(default)]
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<ComponentDef>,
}

#[derive(Deserialize)]
struct ComponentDef {
    definition: String,
    expression: String,
}

/// Search parameters by resource type and code.
#[derive(Debug, Default)]
pub struct Registry {
    by_type: HashMap<String, HashMap<String, Arc<SearchParam>>>,
    /// Type and code of each canonical URL (composite components refer to these).
    by_url: HashMap<String, (ParamType, String)>,
}

/// Non-resource types for which `DomainResource` parameters do not apply.
const NOT_DOMAIN_RESOURCES: &[&str] = &["Binary", "Bundle", "Parameters"];

impl Registry {
    /// The FHIR R4 registry, parsed and compiled on first use.
    pub fn r4() -> &'static Registry {
        static R4: OnceLock<Registry> = OnceLock::new();
        R4.get_or_init(|| {
            // The vendored file is part of the build; a parse failure is a build defect
            // that the registry tests catch, so an empty registry is never shipped.
            Registry::from_bundle_json(R4_DEFINITIONS).unwrap_or_default()
        })
    }

    /// Build from a FHIR Bundle of SearchParameter resources.
    pub fn from_bundle_json(json: &str) -> Result<Registry, serde_json::Error> {
        let bundle: Bundle = serde_json::from_str(json)?;
        let mut reg = Registry::default();
        for Entry { resource: def } in bundle.entry {
            let expr = def.expression.clone().unwrap_or_default();
            for base in &def.base {
                let types: Vec<&str> = match base.as_str() {
                    "Resource" => R4_RESOURCE_TYPES.to_vec(),
                    "DomainResource" => R4_RESOURCE_TYPES
                        .iter()
                        .copied()
                        .filter(|t| !NOT_DOMAIN_RESOURCES.contains(t))
                        .collect(),
                    t => vec![t],
                };
                let root = match base.as_str() {
                    "Resource" | "DomainResource" => base.as_str(),
                    t => t,
                };
                let sliced = slice_expression(&expr, root);
                let paths = if sliced.is_empty() {
                    Err(format!("no FHIRPath expression for {root}"))
                } else {
                    sliced
                        .iter()
                        .map(|alt| Path::compile(alt, root))
                        .collect::<Result<Vec<_>, _>>()
                };
                let param = Arc::new(SearchParam {
                    code: def.code.clone(),
                    url: def.url.clone(),
                    kind: def.kind,
                    expression: sliced.join(" | "),
                    paths,
                    targets: def.target.clone(),
                    components: def
                        .component
                        .iter()
                        .map(|c| Component {
                            definition: c.definition.clone(),
                            expression: c.expression.clone(),
                            paths: Path::compile_relative(&c.expression),
                        })
                        .collect(),
                });
                reg.by_url
                    .insert(def.url.clone(), (def.kind, def.code.clone()));
                for t in types {
                    reg.by_type
                        .entry(t.to_owned())
                        .or_default()
                        .insert(def.code.clone(), Arc::clone(&param));
                }
            }
        }
        Ok(reg)
    }

    /// The parameter `code` for `resource_type`.
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&Arc<SearchParam>> {
        self.by_type.get(resource_type)?.get(code)
    }

    /// The type and code of the parameter with canonical `url`.
    pub fn by_url(&self, url: &str) -> Option<&(ParamType, String)> {
        self.by_url.get(url)
    }

    /// All parameters that apply to `resource_type`, in code order.
    pub fn params_for(&self, resource_type: &str) -> Vec<&Arc<SearchParam>> {
        let mut v: Vec<_> = self
            .by_type
            .get(resource_type)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.code.cmp(&b.code));
        v
    }

    /// How many (type, parameter) pairs the registry holds.
    pub fn len(&self) -> usize {
        self.by_type.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}

/// The alternatives of `expr` that start at `root`.
fn slice_expression<'a>(expr: &'a str, root: &str) -> Vec<&'a str> {
    split_top_level(expr, '|')
        .into_iter()
        .map(str::trim)
        .filter(|alt| {
            let a = alt.trim_start_matches('(').trim_start();
            a.strip_prefix(root).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with(' ')
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::Step;

    #[test]
    fn r4_registry_loads_and_slices() {
        let reg = Registry::r4();
        assert!(reg.len() > 3000, "only {} params", reg.len());
        let code = reg.get("Observation", "code").unwrap();
        assert_eq!(code.kind, ParamType::Token);
        assert_eq!(code.expression, "Observation.code");
        let patient = reg.get("Observation", "patient").unwrap();
        assert_eq!(
            patient.paths.as_ref().unwrap()[0].steps,
            vec![
                Step::Field("subject".into()),
                Step::RefType("Patient".into())
            ]
        );
        let id = reg.get("Observation", "_id").unwrap();
        assert_eq!(
            id.paths.as_ref().unwrap()[0].steps,
            vec![Step::Field("id".into())]
        );
        assert!(reg.get("Binary", "_id").is_some());
        assert!(reg.get("Observation", "nonsense").is_none());
    }
}

#[cfg(test)]
mod coverage {
    use super::*;

    /// How many (type, parameter) pairs compile; the rest are refused by name at create.
    #[test]
    fn most_definitions_compile() {
        let reg = Registry::r4();
        let mut total = 0;
        let mut failed = Vec::new();
        for (t, params) in &reg.by_type {
            for p in params.values() {
                if matches!(p.code.as_str(), "_content" | "_query" | "_text") {
                    continue; // refused on purpose: full text and named queries
                }
                total += 1;
                let comps_ok = p.components.iter().all(|c| c.paths.is_ok());
                if p.paths.is_err() || !comps_ok || p.kind == ParamType::Special {
                    failed.push(format!("{t}.{}", p.code));
                }
            }
        }
        failed.sort();
        eprintln!(
            "{} of {total} (type, parameter) pairs compile; refused: {failed:?}",
            total - failed.len()
        );
        assert!(
            failed.len() <= 10,
            "{} of {total} refused: {failed:?}",
            failed.len()
        );
    }
}
