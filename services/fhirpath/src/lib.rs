//! FHIRPath over JSON resources.
//!
//! [`Expression::parse`] compiles an expression once (the normative N1 grammar);
//! [`Expression::evaluate`] runs it against a resource as often as needed. The evaluator
//! knows the FHIR R4 type model ([`model`]): choice elements (`Observation.value`), the FHIR
//! type of every node (`is`, `as`, `ofType`, `type()`), primitive extensions, and which paths
//! cannot exist. Dates and times keep their precision; quantities compare across UCUM units
//! ([`ucum`]). `%current`, `%previous` and any other variables come from an [`Env`].
//!
//! ```
//! use hub_fhirpath::{Env, Expression};
//! let obs = serde_json::json!({"resourceType": "Observation", "status": "final",
//!     "valueQuantity": {"value": 7.2, "unit": "mmol/L"}});
//! let e = Expression::parse("Observation.value.ofType(Quantity).value > 5").unwrap();
//! assert_eq!(e.evaluate_bool(&obs, &Env::new()).unwrap(), Some(true));
//! ```

mod arith;
pub mod ast;
mod check;
mod eval;
mod functions;
mod lexer;
pub mod model;
mod parser;
pub mod temporal;
pub mod ucum;
pub mod value;

pub use ast::{Expr, SyntaxError};
pub use eval::{Env, Limits, resource_node};
pub use value::{Collection, Node, Quantity, Value, to_json};

use eval::{Evaluator, Frame};
use serde_json::Value as Json;

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The expression cannot apply to this kind of input (unknown element, wrong type).
    #[error("{0}")]
    Semantic(String),
    /// The input made the expression fail (several items where one was expected, ...).
    #[error("{0}")]
    Execution(String),
    /// The evaluation went over its [`Limits`]: not an answer about the resource, so callers
    /// must not read it as `false`.
    #[error("evaluation budget exceeded: {0}")]
    Budget(String),
}

/// A parsed expression, ready to evaluate many times.
#[derive(Debug, Clone)]
pub struct Expression {
    source: String,
    ast: Expr,
}

impl Expression {
    pub fn parse(source: &str) -> Result<Expression, SyntaxError> {
        Ok(Expression {
            source: source.to_string(),
            ast: parser::parse(source)?,
        })
    }

    /// Checks the expression statically as it would run on a resource of type `root`:
    /// elements that cannot exist (`Observation.valueQuantity`, `(value as Period).unit`) and
    /// a leading type that is not the resource's are [`EvalError::Semantic`] errors.
    pub fn check(&self, root: &str) -> Result<(), EvalError> {
        check::check(&self.ast, root)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn ast(&self) -> &Expr {
        &self.ast
    }

    /// Evaluates against a resource (`%context`, `%resource`), or against nothing.
    pub fn evaluate<'a>(
        &'a self,
        resource: Option<&'a Json>,
        env: &Env<'a>,
    ) -> Result<Collection<'a>, EvalError> {
        let context: Collection<'a> = resource.map(|r| vec![resource_node(r)]).unwrap_or_default();
        let budget = eval::Budget::new(env.limits);
        let ev = Evaluator {
            model: model::Model::r4(),
            env,
            context: &context,
            budget: &budget,
        };
        ev.eval(
            &self.ast,
            Frame {
                this: &context,
                index: None,
                total: None,
            },
        )
    }

    /// Evaluates and reads the result as one Boolean: `None` for an empty result, an error
    /// for several items.
    pub fn evaluate_bool<'a>(
        &'a self,
        resource: &'a Json,
        env: &Env<'a>,
    ) -> Result<Option<bool>, EvalError> {
        let r = self.evaluate(Some(resource), env)?;
        eval::to_bool(&r, "the expression")
    }

    /// Evaluates and renders the result as JSON items.
    pub fn evaluate_json(&self, resource: Option<&Json>) -> Result<Vec<Json>, EvalError> {
        let env = Env::new();
        Ok(self.evaluate(resource, &env)?.iter().map(to_json).collect())
    }
}

#[cfg(test)]
mod parse_tests;
