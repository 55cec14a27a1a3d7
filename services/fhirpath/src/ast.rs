//! The FHIRPath syntax tree.
//!
//! The grammar is the normative FHIRPath N1 grammar: literals (strings, numbers, longs,
//! dates, times, quantities), external constants (`%resource`), `$this`/`$index`/`$total`,
//! invocations and functions, indexers, and the operators with their precedence (postfix,
//! unary, multiplicative, additive and `&`, `is`/`as`, union, comparison, equality,
//! membership, `and`, `or`/`xor`, `implies`). Parse once, evaluate many times.

/// A literal value as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `{}`
    Empty,
    Boolean(bool),
    String(String),
    /// A decimal or integer, kept as written (its precision matters).
    Number(String),
    /// `5L`
    Long(i64),
    /// `@2019-01-01`, `@2019-01-01T10:00`, `@T10:00` (text after `@`).
    Date(String),
    DateTime(String),
    Time(String),
    /// `5 'mg'`, `3 days`
    Quantity {
        value: String,
        unit: String,
    },
}

/// A syntax tree node.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Literal),
    /// `%name`
    Constant(String),
    This,
    Index,
    Total,
    /// A name or a function call on the focus (at the start of a path).
    Invocation(Invocation),
    /// `target.invocation`
    Member(Box<Expr>, Invocation),
    /// `target[index]`
    Indexer(Box<Expr>, Box<Expr>),
    /// `+x`, `-x`
    Unary(char, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `x is Type`, `x as Type`
    Is(Box<Expr>, TypeSpecifier),
    As(Box<Expr>, TypeSpecifier),
}

/// A member name or a function call.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Name(String),
    Function(String, Vec<Expr>),
}

/// A (possibly qualified) type name: `Quantity`, `FHIR.Patient`, `System.String`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpecifier {
    pub namespace: Option<String>,
    pub name: String,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Equiv,
    Ne,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

/// Why an expression does not parse, with the byte offset where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath syntax error at {offset}: {message}")]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
}
