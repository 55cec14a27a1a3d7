//! The evaluator: walks a parsed expression over a JSON resource.

use std::borrow::Cow;
use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::Value as Json;

use crate::ast::{BinaryOp, Expr, Invocation, Literal, TypeSpecifier};
use crate::model::{Lookup, Model};
use crate::temporal::Temporal;
use crate::value::{self, Collection, Node, Quantity, Value};
use crate::{EvalError, functions};

/// Variables and settings for one evaluation.
#[derive(Debug, Default, Clone)]
pub struct Env<'a> {
    /// `%name` variables (`%current`, `%previous`, ...), besides the built-in ones.
    pub variables: HashMap<String, Collection<'a>>,
    /// What `now()`, `today()` and `timeOfDay()` return; the clock when `None`.
    pub now: Option<Temporal>,
    /// How much one evaluation may spend before it fails with [`EvalError::Budget`].
    pub limits: Limits,
}

/// The budget of one evaluation. Expressions come from topics that clients write and run on
/// every matching change event, so an evaluation must end, and end small, whatever the
/// expression and the resource: `replace('', …)` chains grow strings geometrically and
/// `descendants().repeat($this)` walks a large resource quadratically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Work units: one per node evaluated plus one per item produced or compared.
    pub max_steps: u64,
    /// Items in any one intermediate collection.
    pub max_items: usize,
    /// Bytes of any one string produced.
    pub max_string_bytes: usize,
    /// Wall-clock time for the whole evaluation.
    pub max_time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_steps: 2_000_000,
            max_items: 100_000,
            max_string_bytes: 1 << 20,
            max_time: Duration::from_millis(250),
        }
    }
}

/// What one evaluation has left of its [`Limits`].
pub(crate) struct Budget {
    limits: Limits,
    steps: Cell<u64>,
    started: Instant,
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            steps: Cell::new(0),
            started: Instant::now(),
        }
    }

    /// Spend `n` work units; the clock is read every 4,096 units.
    pub(crate) fn charge(&self, n: usize) -> R<()> {
        let before = self.steps.get();
        let after = before.saturating_add(n as u64);
        self.steps.set(after);
        if after > self.limits.max_steps {
            return Err(EvalError::Budget(format!(
                "more than {} evaluation steps",
                self.limits.max_steps
            )));
        }
        if before >> 12 != after >> 12 && self.started.elapsed() > self.limits.max_time {
            return Err(EvalError::Budget(format!(
                "evaluation took longer than {} ms",
                self.limits.max_time.as_millis()
            )));
        }
        Ok(())
    }

    /// Refuse a collection of more than `max_items`.
    pub(crate) fn items(&self, n: usize) -> R<()> {
        if n > self.limits.max_items {
            return Err(EvalError::Budget(format!(
                "a collection of more than {} items",
                self.limits.max_items
            )));
        }
        self.charge(n)
    }

    /// Refuse a string of more than `max_string_bytes`; every 64 bytes made cost a step, so
    /// many large strings run out of steps before they run out of memory.
    pub(crate) fn string(&self, bytes: usize) -> R<()> {
        if bytes > self.limits.max_string_bytes {
            return Err(EvalError::Budget(format!(
                "a string of more than {} bytes",
                self.limits.max_string_bytes
            )));
        }
        self.charge(bytes / 64)
    }
}

impl<'a> Env<'a> {
    pub fn new() -> Env<'a> {
        Env::default()
    }

    /// Sets `%name` to a resource (or leaves it empty when `None`).
    pub fn with_resource(mut self, name: &str, resource: Option<&'a Json>) -> Env<'a> {
        let coll = resource.map(|r| vec![resource_node(r)]).unwrap_or_default();
        self.variables.insert(name.to_string(), coll);
        self
    }
}

/// A node for a whole resource, typed by its `resourceType`.
pub fn resource_node(r: &Json) -> Value<'_> {
    let model = Model::r4();
    let ty = r
        .as_object()
        .and_then(|m| lookup(m, "resourceType"))
        .and_then(Json::as_str)
        .and_then(|t| model.intern(t))
        .unwrap_or("");
    Value::Node(Node {
        json: Some(r),
        ext: None,
        ty,
    })
}

/// `$this`, `$index` and `$total` of the innermost iteration.
#[derive(Clone, Copy)]
pub(crate) struct Frame<'f, 'a> {
    pub this: &'f [Value<'a>],
    pub index: Option<usize>,
    pub total: Option<&'f [Value<'a>]>,
}

pub(crate) struct Evaluator<'e, 'a> {
    pub model: &'static Model,
    pub env: &'e Env<'a>,
    /// `%context` / `%resource`.
    pub context: &'e [Value<'a>],
    pub budget: &'e Budget,
}

pub(crate) type R<T> = Result<T, EvalError>;

pub(crate) fn semantic(msg: impl Into<String>) -> EvalError {
    EvalError::Semantic(msg.into())
}

pub(crate) fn execution(msg: impl Into<String>) -> EvalError {
    EvalError::Execution(msg.into())
}

/// The single item of a collection, `None` when empty, an error when there are several.
pub(crate) fn singleton<'c, 'a>(c: &'c [Value<'a>], what: &str) -> R<Option<&'c Value<'a>>> {
    match c {
        [] => Ok(None),
        [v] => Ok(Some(v)),
        _ => Err(execution(format!(
            "{what} expects a single item, got {} items",
            c.len()
        ))),
    }
}

/// Singleton evaluation of a collection as a Boolean.
pub(crate) fn to_bool(c: &[Value<'_>], what: &str) -> R<Option<bool>> {
    match singleton(c, what)? {
        None => Ok(None),
        Some(v) => match v.to_system() {
            Value::Boolean(b) => Ok(Some(b)),
            _ => Ok(Some(true)),
        },
    }
}

fn literal<'a>(l: &'a Literal) -> R<Collection<'a>> {
    Ok(match l {
        Literal::Empty => vec![],
        Literal::Boolean(b) => vec![Value::Boolean(*b)],
        Literal::String(s) => vec![Value::String(Cow::Borrowed(s))],
        Literal::Number(n) => {
            if n.contains('.') {
                vec![Value::Decimal(
                    n.parse::<Decimal>()
                        .map_err(|e| execution(format!("number {n}: {e}")))?,
                )]
            } else {
                match n.parse::<i64>() {
                    Ok(i) if i <= i64::from(i32::MAX) => vec![Value::Integer(i)],
                    _ => vec![Value::Decimal(
                        n.parse::<Decimal>()
                            .map_err(|e| execution(format!("number {n}: {e}")))?,
                    )],
                }
            }
        }
        Literal::Long(i) => vec![Value::Long(*i)],
        Literal::Date(s) | Literal::DateTime(s) | Literal::Time(s) => {
            let t = match l {
                Literal::Time(_) => Temporal::parse_time(s),
                Literal::DateTime(_) => Temporal::parse_datetime(s),
                _ => Temporal::parse_date(s),
            }
            .ok_or_else(|| execution(format!("invalid date/time literal @{s}")))?;
            vec![Value::Temporal(t)]
        }
        Literal::Quantity { value, unit } => vec![Value::Quantity(Quantity {
            value: value
                .parse::<Decimal>()
                .map_err(|e| execution(format!("quantity {value}: {e}")))?,
            unit: unit.clone(),
        })],
    })
}

/// The type a type-specifier argument names (`Quantity`, `FHIR.Patient`, ``FHIR.`Patient` ``).
pub(crate) fn type_arg(e: &Expr) -> Option<TypeSpecifier> {
    match e {
        Expr::Invocation(Invocation::Name(n)) => Some(TypeSpecifier {
            namespace: None,
            name: n.clone(),
        }),
        Expr::Member(t, Invocation::Name(n)) => match t.as_ref() {
            Expr::Invocation(Invocation::Name(ns)) => Some(TypeSpecifier {
                namespace: Some(ns.clone()),
                name: n.clone(),
            }),
            _ => None,
        },
        _ => None,
    }
}

const SYSTEM_TYPES: &[&str] = &[
    "Boolean", "Integer", "Long", "Decimal", "String", "Date", "DateTime", "Time", "Quantity",
    "Any",
];

impl<'e, 'a> Evaluator<'e, 'a> {
    /// Checks that a type name exists in its namespace.
    pub(crate) fn check_type(&self, t: &TypeSpecifier) -> R<()> {
        let known = match t.namespace.as_deref() {
            Some("System") => SYSTEM_TYPES.contains(&t.name.as_str()),
            Some("FHIR") => self.model.get(&t.name).is_some(),
            None => SYSTEM_TYPES.contains(&t.name.as_str()) || self.model.get(&t.name).is_some(),
            Some(_) => false,
        };
        if known {
            Ok(())
        } else {
            Err(execution(format!("unknown type {}", t.name)))
        }
    }

    /// `is`: the type or a subtype. An unqualified name that the FHIR model has is a FHIR
    /// type; otherwise a System type.
    pub(crate) fn is_type(&self, v: &Value<'a>, t: &TypeSpecifier) -> bool {
        let ns = match t.namespace.as_deref() {
            Some(ns) => ns,
            None => {
                let (vns, _) = v.type_name();
                if vns == "System" && SYSTEM_TYPES.contains(&t.name.as_str()) {
                    "System"
                } else if self.model.get(&t.name).is_some() {
                    "FHIR"
                } else {
                    "System"
                }
            }
        };
        v.is_type(self.model, Some(ns), &t.name)
    }

    /// `as`/`ofType`: the exact type for primitives, the type or a subtype otherwise.
    pub(crate) fn as_type(&self, v: &Value<'a>, t: &TypeSpecifier) -> bool {
        if !self.is_type(v, t) {
            return false;
        }
        let (ns, name) = v.type_name();
        ns == "System" || !self.model.is_primitive(&name) || name == t.name
    }

    pub(crate) fn eval(&self, e: &'a Expr, f: Frame<'_, 'a>) -> R<Collection<'a>> {
        self.budget.charge(1)?;
        let out = self.eval_node(e, f)?;
        self.budget.items(out.len())?;
        for v in &out {
            if let Value::String(s) = v {
                self.budget.string(s.len())?;
            }
        }
        Ok(out)
    }

    fn eval_node(&self, e: &'a Expr, f: Frame<'_, 'a>) -> R<Collection<'a>> {
        match e {
            Expr::Literal(l) => literal(l),
            Expr::Constant(name) => self.constant(name),
            Expr::This => Ok(f.this.to_vec()),
            Expr::Index => Ok(f
                .index
                .map(|i| vec![Value::Integer(i as i64)])
                .unwrap_or_default()),
            Expr::Total => Ok(f.total.map(<[_]>::to_vec).unwrap_or_default()),
            Expr::Invocation(inv) => self.invoke(f.this, inv, f, true),
            Expr::Member(target, inv) => {
                // `%current.status`: navigate the variable in place instead of copying it
                if let Expr::Constant(name) = target.as_ref()
                    && let Some(v) = self.env.variables.get(name)
                {
                    return self.invoke(v, inv, f, false);
                }
                let focus = self.eval(target, f)?;
                self.invoke(&focus, inv, f, false)
            }
            Expr::Indexer(target, index) => {
                let focus = self.eval(target, f)?;
                let idx = self.eval(index, f)?;
                let Some(i) = singleton(&idx, "an indexer")? else {
                    return Ok(vec![]);
                };
                let i = match i.to_system() {
                    Value::Integer(i) | Value::Long(i) => i,
                    _ => return Err(execution("an index must be an integer")),
                };
                Ok(usize::try_from(i)
                    .ok()
                    .and_then(|i| focus.get(i).cloned())
                    .into_iter()
                    .collect())
            }
            Expr::Unary(op, x) => {
                let c = self.eval(x, f)?;
                if *op == '+' {
                    return Ok(c);
                }
                let Some(v) = singleton(&c, "unary minus")? else {
                    return Ok(vec![]);
                };
                Ok(vec![match v.to_system() {
                    Value::Integer(i) => Value::Integer(-i),
                    Value::Long(i) => Value::Long(-i),
                    Value::Decimal(d) => Value::Decimal(if d.is_zero() { d.abs() } else { -d }),
                    Value::Quantity(q) => Value::Quantity(Quantity {
                        value: -q.value,
                        unit: q.unit,
                    }),
                    _ => return Err(execution("unary minus applies to numbers and quantities")),
                }])
            }
            Expr::Binary(op, l, r) => self.binary(*op, l, r, f),
            Expr::Is(x, t) => {
                let c = self.eval(x, f)?;
                let _ = self.check_type(t);
                match singleton(&c, "is")? {
                    None => Ok(vec![]),
                    Some(v) => Ok(vec![Value::Boolean(self.is_type(v, t))]),
                }
            }
            Expr::As(x, t) => {
                let c = self.eval(x, f)?;
                self.check_type(t)?;
                match singleton(&c, "as")? {
                    None => Ok(vec![]),
                    Some(v) => Ok(if self.as_type(v, t) {
                        vec![v.clone()]
                    } else {
                        vec![]
                    }),
                }
            }
        }
    }

    fn constant(&self, name: &str) -> R<Collection<'a>> {
        if let Some(v) = self.env.variables.get(name) {
            return Ok(v.clone());
        }
        let s = |s: &str| Ok(vec![Value::String(Cow::Owned(s.to_string()))]);
        match name {
            "context" | "resource" | "rootResource" => Ok(self.context.to_vec()),
            "ucum" => s("http://unitsofmeasure.org"),
            "sct" => s("http://snomed.info/sct"),
            "loinc" => s("http://loinc.org"),
            _ => {
                if let Some(vs) = name.strip_prefix("vs-") {
                    s(&format!("http://hl7.org/fhir/ValueSet/{vs}"))
                } else if let Some(ext) = name.strip_prefix("ext-") {
                    s(&format!("http://hl7.org/fhir/StructureDefinition/{ext}"))
                } else {
                    Err(semantic(format!("undefined variable %{name}")))
                }
            }
        }
    }

    fn invoke(
        &self,
        focus: &[Value<'a>],
        inv: &'a Invocation,
        f: Frame<'_, 'a>,
        root: bool,
    ) -> R<Collection<'a>> {
        match inv {
            Invocation::Name(name) => {
                if root
                    && name.starts_with(|c: char| c.is_ascii_uppercase())
                    && let Some(r) = self.type_name_at_root(focus, name)?
                {
                    return Ok(r);
                }
                // an element no item's type defines is an error (`name.given1`); one that
                // only some define (after `descendants()`) is simply absent from the others
                let mut out = Vec::new();
                let mut first_err = None;
                let mut any_ok = false;
                for item in focus {
                    match self.child(item, name, &mut out) {
                        Ok(()) => any_ok = true,
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                match first_err {
                    Some(e) if !any_ok => Err(e),
                    _ => Ok(out),
                }
            }
            Invocation::Function(name, args) => functions::call(self, focus, name, args, f),
        }
    }

    /// `Patient.name` on a Patient: the leading type name selects the context.
    fn type_name_at_root(&self, focus: &[Value<'a>], name: &str) -> R<Option<Collection<'a>>> {
        if self.model.get(name).is_none() {
            return Ok(None);
        }
        let matching: Collection<'a> = focus
            .iter()
            .filter(|v| matches!(v, Value::Node(n) if self.model.is_a(n.ty, name)))
            .cloned()
            .collect();
        if matching.is_empty()
            && let Some(Value::Node(n)) = focus.first()
            && self.model.is_resource(n.ty)
            && self.model.is_resource(name)
        {
            return Err(semantic(format!(
                "the expression is about {name} but the resource is a {}",
                n.ty
            )));
        }
        Ok(Some(matching))
    }

    /// The children called `name` of one item.
    pub(crate) fn child(&self, item: &Value<'a>, name: &str, out: &mut Collection<'a>) -> R<()> {
        match item {
            Value::Node(node) => self.node_child(node, name, out),
            Value::Type { namespace, name: n } => {
                match name {
                    "namespace" => out.push(Value::String(Cow::Borrowed(namespace))),
                    "name" => out.push(Value::String(n.clone())),
                    _ => {}
                }
                Ok(())
            }
            Value::Quantity(q) => {
                match name {
                    "value" => out.push(Value::Decimal(q.value)),
                    "unit" => out.push(Value::String(Cow::Owned(q.unit.clone()))),
                    _ => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn node_child(&self, node: &Node<'a>, name: &str, out: &mut Collection<'a>) -> R<()> {
        let map = match node.json {
            Some(Json::Object(map)) => map,
            _ => {
                // a primitive: its id and extensions live in the `_name` sibling
                if let Some(Json::Object(ext)) = node.ext {
                    match name {
                        "extension" => {
                            push_values(self.model, ext.get("extension"), None, "Extension", out)
                        }
                        "id" => push_values(self.model, ext.get("id"), None, "string", out),
                        _ => {}
                    }
                }
                return Ok(());
            }
        };
        match self.model.lookup(node.ty, name) {
            Lookup::Found(el) if el.choice && map.len() <= 48 => {
                // one pass over the object's keys beats a hash lookup per possible type
                for (key, v) in map {
                    let Some(rest) = key.strip_prefix(el.name) else {
                        continue;
                    };
                    if !rest.starts_with(|c: char| c.is_ascii_uppercase()) {
                        continue;
                    }
                    if let Some(k) = el.keys.iter().find(|k| k.json == *key) {
                        let e = k.ext.as_ref().and_then(|x| map.get(x));
                        push_values(self.model, Some(v), e, k.ty, out);
                    }
                }
                // a primitive choice that has only extensions (`_valueString`)
                for (key, e) in map {
                    if let Some(rest) = key.strip_prefix('_')
                        && rest.starts_with(el.name)
                        && !map.contains_key(rest)
                        && let Some(k) = el.keys.iter().find(|k| k.json == rest)
                    {
                        push_values(self.model, None, Some(e), k.ty, out);
                    }
                }
                return Ok(());
            }
            Lookup::Found(el) => {
                for k in &el.keys {
                    let v = lookup(map, &k.json);
                    let e = k.ext.as_ref().and_then(|x| lookup(map, x));
                    if v.is_some() || e.is_some() {
                        push_values(self.model, v, e, k.ty, out);
                    }
                }
                return Ok(());
            }
            Lookup::NoElement => {
                if name == "resourceType" && self.model.is_resource(node.ty) {
                    if let Some(v) = map.get(name) {
                        push_values(self.model, Some(v), None, "", out);
                    }
                    return Ok(());
                }
                let choice =
                    self.model.all_elements(node.ty).into_iter().find(|e| {
                        e.choice && name.starts_with(e.name) && name.len() > e.name.len()
                    });
                return Err(semantic(match choice {
                    Some(e) => format!(
                        "{} has no element {name}: {}[x] is a choice, use {}.ofType({})",
                        node.ty,
                        e.name,
                        e.name,
                        &name[e.name.len()..]
                    ),
                    None => format!("{} has no element {name}", node.ty),
                }));
            }
            Lookup::UnknownType => {}
        }
        // no model for this node: plain JSON, with choice elements found by their prefix
        if map.contains_key(name) || map.contains_key(&format!("_{name}")) {
            push_values(
                self.model,
                map.get(name),
                map.get(&format!("_{name}")),
                "",
                out,
            );
        } else {
            for (k, v) in map {
                if let Some(suffix) = k.strip_prefix(name)
                    && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                {
                    let ty = self
                        .model
                        .intern(suffix)
                        .or_else(|| {
                            let mut lower = suffix.to_string();
                            lower[..1].make_ascii_lowercase();
                            self.model.intern(&lower)
                        })
                        .unwrap_or("");
                    push_values(self.model, Some(v), None, ty, out);
                }
            }
        }
        Ok(())
    }

    fn binary(
        &self,
        op: BinaryOp,
        l: &'a Expr,
        r: &'a Expr,
        f: Frame<'_, 'a>,
    ) -> R<Collection<'a>> {
        use BinaryOp as B;
        let b = |x: Option<bool>| x.map(|b| vec![Value::Boolean(b)]).unwrap_or_default();
        match op {
            B::And => {
                let a = to_bool(&self.eval(l, f)?, "and")?;
                if a == Some(false) {
                    return Ok(b(Some(false)));
                }
                let c = to_bool(&self.eval(r, f)?, "and")?;
                Ok(b(match (a, c) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }))
            }
            B::Or => {
                let a = to_bool(&self.eval(l, f)?, "or")?;
                if a == Some(true) {
                    return Ok(b(Some(true)));
                }
                let c = to_bool(&self.eval(r, f)?, "or")?;
                Ok(b(match (a, c) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }))
            }
            B::Xor => {
                let a = to_bool(&self.eval(l, f)?, "xor")?;
                let c = to_bool(&self.eval(r, f)?, "xor")?;
                Ok(b(match (a, c) {
                    (Some(x), Some(y)) => Some(x != y),
                    _ => None,
                }))
            }
            B::Implies => {
                let a = to_bool(&self.eval(l, f)?, "implies")?;
                if a == Some(false) {
                    return Ok(b(Some(true)));
                }
                let c = to_bool(&self.eval(r, f)?, "implies")?;
                Ok(b(match (a, c) {
                    (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                }))
            }
            _ => {
                let a = self.eval(l, f)?;
                let c = self.eval(r, f)?;
                self.binary_values(op, a, c)
            }
        }
    }

    pub(crate) fn binary_values(
        &self,
        op: BinaryOp,
        a: Collection<'a>,
        c: Collection<'a>,
    ) -> R<Collection<'a>> {
        use BinaryOp as B;
        let b = |x: Option<bool>| x.map(|b| vec![Value::Boolean(b)]).unwrap_or_default();
        match op {
            B::Union => Ok(union(a, c)),
            B::Eq | B::Ne => {
                if a.is_empty() || c.is_empty() {
                    return Ok(vec![]);
                }
                let eq = list_equals(&a, &c);
                Ok(b(if op == B::Eq { eq } else { eq.map(|x| !x) }))
            }
            B::Equiv | B::NotEquiv => {
                let eq = list_equivalent(&a, &c);
                Ok(b(Some(if op == B::Equiv { eq } else { !eq })))
            }
            B::Lt | B::Le | B::Gt | B::Ge => {
                let (Some(x), Some(y)) =
                    (singleton(&a, "comparison")?, singleton(&c, "comparison")?)
                else {
                    return Ok(vec![]);
                };
                let ord = value::compare(x, y).map_err(execution)?;
                Ok(b(ord.map(|o| match op {
                    B::Lt => o == Ordering::Less,
                    B::Le => o != Ordering::Greater,
                    B::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                })))
            }
            B::In | B::Contains => {
                let (item, list) = if op == B::In { (&a, &c) } else { (&c, &a) };
                let Some(x) = singleton(item, "in/contains")? else {
                    return Ok(vec![]);
                };
                Ok(b(Some(
                    list.iter().any(|y| value::equals(x, y) == Some(true)),
                )))
            }
            B::Concat => {
                let s = |c: &[Value<'a>]| -> R<String> {
                    Ok(match singleton(c, "&")? {
                        None => String::new(),
                        Some(v) => v
                            .as_str()
                            .map(str::to_string)
                            .or_else(|| v.to_text())
                            .unwrap_or_default(),
                    })
                };
                Ok(vec![Value::String(Cow::Owned(s(&a)? + &s(&c)?))])
            }
            B::Add | B::Sub | B::Mul | B::Div | B::IntDiv | B::Mod => {
                let (Some(x), Some(y)) =
                    (singleton(&a, "arithmetic")?, singleton(&c, "arithmetic")?)
                else {
                    return Ok(vec![]);
                };
                crate::arith::arith(op, &x.to_system(), &y.to_system())
            }
            B::And | B::Or | B::Xor | B::Implies => Err(execution("unreachable operator")),
        }
    }
}

/// A key lookup that scans small objects (comparing lengths before bytes) instead of
/// hashing: FHIR objects are small, and the scan touches less memory than a hash probe.
pub(crate) fn lookup<'m>(map: &'m serde_json::Map<String, Json>, key: &str) -> Option<&'m Json> {
    if map.len() > 24 {
        return map.get(key);
    }
    map.iter()
        .find(|(k, _)| k.len() == key.len() && k.as_str() == key)
        .map(|(_, v)| v)
}

/// Appends the nodes of a JSON value (one or an array), with the `_name` sibling alongside.
pub(crate) fn push_values<'a>(
    model: &'static Model,
    json: Option<&'a Json>,
    ext: Option<&'a Json>,
    ty: &'a str,
    out: &mut Collection<'a>,
) {
    let typed = |v: &'a Json| -> &'a str {
        if matches!(ty, "Resource" | "DomainResource" | "")
            && let Some(rt) = v.get("resourceType").and_then(Json::as_str)
        {
            return model.intern(rt).unwrap_or(ty);
        }
        ty
    };
    match (json, ext) {
        (Some(Json::Array(items)), ext) => {
            let exts = ext.and_then(Json::as_array);
            for (i, v) in items.iter().enumerate() {
                let e = exts.and_then(|e| e.get(i)).filter(|e| !e.is_null());
                if v.is_null() && e.is_none() {
                    continue;
                }
                out.push(Value::Node(Node {
                    json: (!v.is_null()).then_some(v),
                    ext: e,
                    ty: typed(v),
                }));
            }
        }
        (Some(Json::Null), None) | (None, None) => {}
        (Some(v), ext) => out.push(Value::Node(Node {
            json: (!v.is_null()).then_some(v),
            ext,
            ty: typed(v),
        })),
        (None, Some(Json::Array(exts))) => {
            for e in exts.iter().filter(|e| !e.is_null()) {
                out.push(Value::Node(Node {
                    json: None,
                    ext: Some(e),
                    ty,
                }));
            }
        }
        (None, Some(e)) => out.push(Value::Node(Node {
            json: None,
            ext: Some(e),
            ty,
        })),
    }
}

/// `|`: the union without duplicates, in order of first appearance.
pub(crate) fn union<'a>(a: Collection<'a>, c: Collection<'a>) -> Collection<'a> {
    let mut out: Collection<'a> = Vec::with_capacity(a.len() + c.len());
    for v in a.into_iter().chain(c) {
        if !out.iter().any(|x| value::equals(x, &v) == Some(true)) {
            out.push(v);
        }
    }
    out
}

fn list_equals(a: &[Value<'_>], c: &[Value<'_>]) -> Option<bool> {
    if a.len() != c.len() {
        return Some(false);
    }
    let mut unknown = false;
    for (x, y) in a.iter().zip(c) {
        match value::equals(x, y) {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { None } else { Some(true) }
}

fn list_equivalent(a: &[Value<'_>], c: &[Value<'_>]) -> bool {
    if a.len() != c.len() {
        return false;
    }
    let mut used = vec![false; c.len()];
    'outer: for x in a {
        for (i, y) in c.iter().enumerate() {
            if !used[i] && value::equivalent(x, y) {
                used[i] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}
