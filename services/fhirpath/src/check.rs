//! A static check of an expression against the type it will run on: paths that cannot exist
//! (`Observation.valueQuantity`, `name.given1`, `(value as Period).unit`) are reported before
//! any resource is seen. Types are followed through navigation, `as`/`ofType`, `extension()`
//! and the functions that keep their input's type; where the type becomes unknown (a
//! computed value, `resolve()`), checking of that branch stops rather than guessing.

use crate::EvalError;
use crate::ast::{Expr, Invocation};
use crate::eval::type_arg;
use crate::model::{Lookup, Model};

/// Possible FHIR types of a collection; `None` when unknown.
type Types = Option<Vec<&'static str>>;

struct Checker<'m> {
    model: &'m Model,
    root: Vec<&'static str>,
}

fn semantic(msg: String) -> EvalError {
    EvalError::Semantic(msg)
}

/// Functions whose result has the type of their input.
const SAME_TYPE: &[&str] = &[
    "where",
    "first",
    "last",
    "tail",
    "skip",
    "take",
    "single",
    "distinct",
    "trace",
    "exclude",
    "intersect",
    "union",
    "combine",
    "repeat",
    "sort",
];

/// Functions whose arguments are evaluated per input item (`$this` is an item).
const ITERATING: &[&str] = &[
    "where",
    "select",
    "exists",
    "all",
    "repeat",
    "sort",
    "aggregate",
    "trace",
    "iif",
];

impl Checker<'_> {
    fn name_step(
        &self,
        input: &[&'static str],
        name: &str,
        root: bool,
    ) -> Result<Types, EvalError> {
        if root
            && name.starts_with(|c: char| c.is_ascii_uppercase())
            && self.model.get(name).is_some()
        {
            let ty = self.model.intern(name).unwrap_or("");
            if !input.is_empty()
                && !input.iter().any(|t| self.model.is_a(t, name))
                && self.model.is_resource(name)
                && input.iter().all(|t| self.model.is_resource(t))
            {
                return Err(semantic(format!(
                    "the expression is about {name} but runs on {}",
                    input.join(" or ")
                )));
            }
            return Ok(Some(vec![ty]));
        }
        let mut out = Vec::new();
        let mut known = false;
        for ty in input {
            match self.model.lookup(ty, name) {
                Lookup::Found(el) => {
                    known = true;
                    for k in &el.keys {
                        if !out.contains(&k.ty) {
                            out.push(k.ty);
                        }
                    }
                }
                Lookup::NoElement => {}
                Lookup::UnknownType => return Ok(None),
            }
        }
        if known {
            // element types that name abstract Resource are resolved at run time
            if out
                .iter()
                .any(|t| matches!(*t, "Resource" | "DomainResource"))
            {
                return Ok(None);
            }
            return Ok(Some(out));
        }
        if input.is_empty() {
            return Ok(None);
        }
        let choice = input.iter().find_map(|ty| {
            self.model
                .all_elements(ty)
                .into_iter()
                .find(|e| e.choice && name.starts_with(e.name) && name.len() > e.name.len())
                .map(|e| (ty, e.name))
        });
        Err(semantic(match choice {
            Some((ty, base)) => format!(
                "{ty} has no element {name}: {base}[x] is a choice, use {base}.ofType({})",
                &name[base.len()..]
            ),
            None => format!("{} has no element {name}", input.join(" or ")),
        }))
    }

    fn invoke(
        &self,
        input: &Types,
        inv: &Invocation,
        ctx: &Types,
        root: bool,
    ) -> Result<Types, EvalError> {
        match inv {
            Invocation::Name(n) => match input {
                Some(tys) => self.name_step(tys, n, root),
                None => Ok(None),
            },
            Invocation::Function(name, args) => {
                let arg_ctx = if ITERATING.contains(&name.as_str()) {
                    input
                } else {
                    ctx
                };
                for a in args {
                    // a type argument is a name, not a path
                    if matches!(name.as_str(), "ofType" | "as" | "is") {
                        continue;
                    }
                    self.types(a, arg_ctx)?;
                }
                Ok(match name.as_str() {
                    "ofType" | "as" => args
                        .first()
                        .and_then(type_arg)
                        .filter(|t| t.namespace.as_deref() != Some("System"))
                        .and_then(|t| self.model.intern(&t.name))
                        .map(|t| vec![t]),
                    "extension" => self.model.intern("Extension").map(|t| vec![t]),
                    n if SAME_TYPE.contains(&n) => input.clone(),
                    _ => None,
                })
            }
        }
    }

    /// The possible types of `e` evaluated with `$this` of type `ctx`.
    fn types(&self, e: &Expr, ctx: &Types) -> Result<Types, EvalError> {
        match e {
            Expr::Invocation(inv) => self.invoke(ctx, inv, ctx, true),
            Expr::Member(target, inv) => {
                let t = self.types(target, ctx)?;
                self.invoke(&t, inv, ctx, false)
            }
            Expr::Constant(name) => Ok(match name.as_str() {
                "resource" | "context" | "rootResource" | "current" | "previous" => {
                    Some(self.root.clone())
                }
                _ => None,
            }),
            Expr::This => Ok(ctx.clone()),
            Expr::Indexer(t, i) => {
                self.types(i, ctx)?;
                self.types(t, ctx)
            }
            Expr::Unary(_, x) => {
                self.types(x, ctx)?;
                Ok(None)
            }
            Expr::Binary(op, l, r) => {
                let lt = self.types(l, ctx)?;
                let rt = self.types(r, ctx)?;
                Ok(match op {
                    crate::ast::BinaryOp::Union => match (lt, rt) {
                        (Some(mut a), Some(b)) => {
                            for t in b {
                                if !a.contains(&t) {
                                    a.push(t);
                                }
                            }
                            Some(a)
                        }
                        _ => None,
                    },
                    _ => None,
                })
            }
            Expr::Is(x, _) => {
                self.types(x, ctx)?;
                Ok(None)
            }
            Expr::As(x, t) => {
                self.types(x, ctx)?;
                Ok(if t.namespace.as_deref() == Some("System") {
                    None
                } else {
                    self.model.intern(&t.name).map(|t| vec![t])
                })
            }
            Expr::Literal(_) | Expr::Index | Expr::Total => Ok(None),
        }
    }
}

/// Checks `e` as it would run on a resource of type `root` (also the type of `%resource`,
/// `%current` and `%previous`).
pub(crate) fn check(e: &Expr, root: &str) -> Result<(), EvalError> {
    let model = Model::r4();
    let Some(root) = model.intern(root) else {
        return Ok(());
    };
    let c = Checker {
        model,
        root: vec![root],
    };
    c.types(e, &Some(vec![root])).map(|_| ())
}
