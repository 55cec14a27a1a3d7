//! A precedence-climbing parser over the tokens.

use crate::ast::{BinaryOp, Expr, Invocation, Literal, SyntaxError, TypeSpecifier};
use crate::lexer::{Tok, Token, tokenize};

/// The most tokens an expression may have: it bounds the depth of the tree, so evaluating
/// (and dropping) it cannot exhaust a thread's stack. Real expressions have a few dozen.
pub(crate) const MAX_TOKENS: usize = 512;
/// The deepest nesting of parentheses, unary signs and function arguments.
const MAX_NESTING: usize = 64;
/// The deepest syntax tree (a path of 100 steps, 100 chained operators): evaluation recurses
/// along it, and real expressions stay far below.
const MAX_DEPTH: usize = 100;

/// The depth of a tree; only called on trees already known to be at most `MAX_DEPTH` deep
/// below the new node, so the recursion is bounded.
fn depth(e: &Expr) -> usize {
    1 + match e {
        Expr::Member(t, inv) => depth(t).max(invocation_depth(inv)),
        Expr::Indexer(t, i) => depth(t).max(depth(i)),
        Expr::Unary(_, x) | Expr::Is(x, _) | Expr::As(x, _) => depth(x),
        Expr::Binary(_, l, r) => depth(l).max(depth(r)),
        Expr::Invocation(inv) => invocation_depth(inv),
        Expr::Literal(_) | Expr::Constant(_) | Expr::This | Expr::Index | Expr::Total => 0,
    }
}

fn invocation_depth(inv: &Invocation) -> usize {
    match inv {
        Invocation::Function(_, args) => args.iter().map(depth).max().unwrap_or(0),
        Invocation::Name(_) => 0,
    }
}

/// Parse a FHIRPath expression.
pub(crate) fn parse(src: &str) -> Result<Expr, SyntaxError> {
    let tokens = tokenize(src)?;
    if tokens.len() > MAX_TOKENS {
        return Err(SyntaxError {
            offset: tokens[MAX_TOKENS].offset,
            message: format!("the expression is longer than {MAX_TOKENS} tokens"),
        });
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        nesting: 0,
    };
    let e = p.expression(0)?;
    match &p.peek().tok {
        Tok::End => Ok(e),
        other => Err(p.error(format!("unexpected {other:?} after the expression"))),
    }
}

const DURATION_UNITS: &[&str] = &[
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    nesting: usize,
}

/// Binding power of infix operators (higher binds tighter), per the FHIRPath precedence.
fn infix(tok: &Tok) -> Option<(u8, Option<BinaryOp>)> {
    use BinaryOp as B;
    let (bp, op) = match tok {
        Tok::Sym("*") => (9, Some(B::Mul)),
        Tok::Sym("/") => (9, Some(B::Div)),
        Tok::Ident(s) if s == "div" => (9, Some(B::IntDiv)),
        Tok::Ident(s) if s == "mod" => (9, Some(B::Mod)),
        Tok::Sym("+") => (8, Some(B::Add)),
        Tok::Sym("-") => (8, Some(B::Sub)),
        Tok::Sym("&") => (8, Some(B::Concat)),
        Tok::Ident(s) if s == "is" || s == "as" => (7, None),
        Tok::Sym("|") => (6, Some(B::Union)),
        Tok::Sym("<") => (5, Some(B::Lt)),
        Tok::Sym("<=") => (5, Some(B::Le)),
        Tok::Sym(">") => (5, Some(B::Gt)),
        Tok::Sym(">=") => (5, Some(B::Ge)),
        Tok::Sym("=") => (4, Some(B::Eq)),
        Tok::Sym("~") => (4, Some(B::Equiv)),
        Tok::Sym("!=") => (4, Some(B::Ne)),
        Tok::Sym("!~") => (4, Some(B::NotEquiv)),
        Tok::Ident(s) if s == "in" => (3, Some(B::In)),
        Tok::Ident(s) if s == "contains" => (3, Some(B::Contains)),
        Tok::Ident(s) if s == "and" => (2, Some(B::And)),
        Tok::Ident(s) if s == "or" => (1, Some(B::Or)),
        Tok::Ident(s) if s == "xor" => (1, Some(B::Xor)),
        Tok::Ident(s) if s == "implies" => (0, Some(B::Implies)),
        _ => return None,
    };
    Some((bp, op))
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            offset: self.peek().offset,
            message: message.into(),
        }
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), SyntaxError> {
        if self.peek().tok == Tok::Sym(sym) {
            self.next();
            Ok(())
        } else {
            Err(self.error(format!("expected '{sym}'")))
        }
    }

    /// Operators binding at least as tightly as `min`; left-associative.
    fn expression(&mut self, min: u8) -> Result<Expr, SyntaxError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(self.error(format!("nested more than {MAX_NESTING} levels deep")));
        }
        let r = self.expression_inner(min);
        self.nesting -= 1;
        let e = r?;
        self.check_depth(&e)?;
        Ok(e)
    }

    fn expression_inner(&mut self, min: u8) -> Result<Expr, SyntaxError> {
        let mut left = self.unary()?;
        while let Some((bp, op)) = infix(&self.peek().tok) {
            self.check_depth(&left)?;
            if bp < min {
                break;
            }
            let tok = self.next();
            left = match op {
                Some(op) => {
                    let right = self.expression(bp + 1)?;
                    Expr::Binary(op, Box::new(left), Box::new(right))
                }
                None => {
                    let ts = self.type_specifier()?;
                    match tok.tok {
                        Tok::Ident(s) if s == "is" => Expr::Is(Box::new(left), ts),
                        _ => Expr::As(Box::new(left), ts),
                    }
                }
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        match self.peek().tok {
            Tok::Sym("+") | Tok::Sym("-") => {
                let sign = if self.next().tok == Tok::Sym("-") {
                    '-'
                } else {
                    '+'
                };
                self.nesting += 1;
                if self.nesting > MAX_NESTING {
                    return Err(self.error(format!("nested more than {MAX_NESTING} levels deep")));
                }
                let operand = self.unary();
                self.nesting -= 1;
                Ok(Expr::Unary(sign, Box::new(operand?)))
            }
            _ => self.postfix(),
        }
    }

    fn check_depth(&self, e: &Expr) -> Result<(), SyntaxError> {
        if depth(e) > MAX_DEPTH {
            return Err(self.error(format!(
                "the expression is more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(())
    }

    fn postfix(&mut self) -> Result<Expr, SyntaxError> {
        let mut e = self.term()?;
        loop {
            self.check_depth(&e)?;
            match self.peek().tok {
                Tok::Sym(".") => {
                    self.next();
                    let inv = self.invocation()?;
                    e = Expr::Member(Box::new(e), inv);
                }
                Tok::Sym("[") => {
                    self.next();
                    let index = self.expression(0)?;
                    self.expect("]")?;
                    e = Expr::Indexer(Box::new(e), Box::new(index));
                }
                _ => return Ok(e),
            }
        }
    }

    fn identifier(&mut self) -> Result<String, SyntaxError> {
        match self.next().tok {
            Tok::Ident(s) | Tok::Delimited(s) => Ok(s),
            other => Err(self.error(format!("expected a name, found {other:?}"))),
        }
    }

    fn invocation(&mut self) -> Result<Invocation, SyntaxError> {
        let name = match self.peek().tok.clone() {
            Tok::Special(s) => {
                self.next();
                return Ok(Invocation::Name(s));
            }
            _ => self.identifier()?,
        };
        if self.peek().tok == Tok::Sym("(") {
            self.next();
            let mut args = Vec::new();
            if self.peek().tok != Tok::Sym(")") {
                loop {
                    args.push(self.expression(0)?);
                    if self.peek().tok == Tok::Sym(",") {
                        self.next();
                    } else {
                        break;
                    }
                }
            }
            self.expect(")")?;
            Ok(Invocation::Function(name, args))
        } else {
            Ok(Invocation::Name(name))
        }
    }

    fn type_specifier(&mut self) -> Result<TypeSpecifier, SyntaxError> {
        let first = self.identifier()?;
        if self.peek().tok == Tok::Sym(".") {
            self.next();
            let name = self.identifier()?;
            Ok(TypeSpecifier {
                namespace: Some(first),
                name,
            })
        } else {
            Ok(TypeSpecifier {
                namespace: None,
                name: first,
            })
        }
    }

    fn term(&mut self) -> Result<Expr, SyntaxError> {
        let tok = self.peek().tok.clone();
        Ok(match tok {
            Tok::Sym("(") => {
                self.next();
                let e = self.expression(0)?;
                self.expect(")")?;
                e
            }
            Tok::Sym("{") => {
                self.next();
                self.expect("}")?;
                Expr::Literal(Literal::Empty)
            }
            Tok::Str(s) => {
                self.next();
                Expr::Literal(Literal::String(s))
            }
            Tok::Long(n) => {
                self.next();
                Expr::Literal(Literal::Long(n))
            }
            Tok::Number(n) => {
                self.next();
                // A number followed by a unit is a quantity.
                match self.peek().tok.clone() {
                    Tok::Str(unit) => {
                        self.next();
                        Expr::Literal(Literal::Quantity { value: n, unit })
                    }
                    Tok::Ident(unit) if DURATION_UNITS.contains(&unit.as_str()) => {
                        self.next();
                        Expr::Literal(Literal::Quantity { value: n, unit })
                    }
                    _ => Expr::Literal(Literal::Number(n)),
                }
            }
            Tok::At(text) => {
                self.next();
                Expr::Literal(if let Some(t) = text.strip_prefix('T') {
                    Literal::Time(t.to_owned())
                } else if text.contains('T') {
                    Literal::DateTime(text)
                } else {
                    Literal::Date(text)
                })
            }
            Tok::Constant(name) => {
                self.next();
                Expr::Constant(name)
            }
            Tok::Special(s) => {
                self.next();
                match s.as_str() {
                    "$this" => Expr::This,
                    "$index" => Expr::Index,
                    _ => Expr::Total,
                }
            }
            Tok::Ident(s) if s == "true" || s == "false" => {
                self.next();
                Expr::Literal(Literal::Boolean(s == "true"))
            }
            Tok::Ident(_) | Tok::Delimited(_) => Expr::Invocation(self.invocation()?),
            other => return Err(self.error(format!("expected an expression, found {other:?}"))),
        })
    }
}
