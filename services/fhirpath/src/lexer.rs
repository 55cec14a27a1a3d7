//! Tokens of FHIRPath source text.

use crate::ast::SyntaxError;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    /// A `backtick` identifier: never a keyword.
    Delimited(String),
    Str(String),
    Number(String),
    Long(i64),
    /// Text after `@`: a date, dateTime or time literal.
    At(String),
    /// `%name`, `%'name'` or `` %`name` ``
    Constant(String),
    /// `$this`, `$index`, `$total`
    Special(String),
    Sym(&'static str),
    End,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub tok: Tok,
    pub offset: usize,
}

const SYMBOLS: &[&str] = &[
    "<=", ">=", "!=", "!~", "(", ")", "[", "]", "{", "}", ".", ",", "+", "-", "*", "/", "&", "|",
    "<", ">", "=", "~",
];

fn err(offset: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        offset,
        message: message.into(),
    }
}

/// Read a quoted string or identifier body starting after the opening `quote`; returns the
/// unescaped text and the index after the closing quote.
fn quoted(src: &str, start: usize, quote: char) -> Result<(String, usize), SyntaxError> {
    let mut out = String::new();
    let mut chars = src[start..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, start + i + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'f')) => out.push('\u{c}'),
                Some((j, 'u')) => {
                    let hex = src
                        .get(start + j + 1..start + j + 5)
                        .ok_or_else(|| err(start + j, "incomplete \\u escape"))?;
                    let code = u32::from_str_radix(hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| err(start + j, format!("bad \\u escape '{hex}'")))?;
                    out.push(code);
                    for _ in 0..4 {
                        chars.next();
                    }
                }
                Some((_, c @ ('\'' | '"' | '`' | '\\' | '/'))) => out.push(c),
                Some((j, c)) => return Err(err(start + j, format!("unknown escape '\\{c}'"))),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(err(start, format!("unterminated {quote}")))
}

/// Digits `n` long at `i`?
fn digits(b: &[u8], i: usize, n: usize) -> bool {
    i + n <= b.len() && b[i..i + n].iter().all(u8::is_ascii_digit)
}

/// `hh[:mm[:ss[.fff]]]` from `i`; the end.
fn time_end(b: &[u8], mut i: usize) -> usize {
    if !digits(b, i, 2) {
        return i;
    }
    i += 2;
    if b.get(i) == Some(&b':') && digits(b, i + 1, 2) {
        i += 3;
        if b.get(i) == Some(&b':') && digits(b, i + 1, 2) {
            i += 3;
            if b.get(i) == Some(&b'.') && digits(b, i + 1, 1) {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
    }
    i
}

/// The end of a date, dateTime or time literal whose text starts at `i` (after `@`), per the
/// grammar's DATE / DATETIME / TIME rules, so `@2015.is(Date)` stops before `.is`.
fn date_time_end(b: &[u8], mut i: usize) -> usize {
    if b.get(i) == Some(&b'T') {
        return time_end(b, i + 1);
    }
    if !digits(b, i, 4) {
        return i;
    }
    i += 4;
    for _ in 0..2 {
        if b.get(i) == Some(&b'-') && digits(b, i + 1, 2) {
            i += 3;
        } else {
            break;
        }
    }
    if b.get(i) != Some(&b'T') {
        return i;
    }
    i += 1;
    let t = time_end(b, i);
    if t == i {
        return i; // `@2015T`: a dateTime to the year
    }
    i = t;
    match b.get(i) {
        Some(b'Z') => i + 1,
        Some(b'+' | b'-')
            if digits(b, i + 1, 2) && b.get(i + 3) == Some(&b':') && digits(b, i + 4, 2) =>
        {
            i + 6
        }
        _ => i,
    }
}

pub(super) fn tokenize(src: &str) -> Result<Vec<Token>, SyntaxError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if src[i..].starts_with("//") {
            i = src[i..].find('\n').map_or(bytes.len(), |n| i + n);
            continue;
        }
        if src[i..].starts_with("/*") {
            let end = src[i + 2..]
                .find("*/")
                .ok_or_else(|| err(i, "unterminated comment"))?;
            i += end + 4;
            continue;
        }
        let start = i;
        let tok = if c == b'\'' {
            let (s, next) = quoted(src, i + 1, '\'')?;
            i = next;
            Tok::Str(s)
        } else if c == b'`' {
            let (s, next) = quoted(src, i + 1, '`')?;
            i = next;
            Tok::Delimited(s)
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j + 1 < bytes.len() && bytes[j] == b'.' && bytes[j + 1].is_ascii_digit() {
                j += 1;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                i = j;
                Tok::Number(src[start..j].to_owned())
            } else if j < bytes.len() && bytes[j] == b'L' {
                let n = src[start..j]
                    .parse()
                    .map_err(|_| err(start, "long literal out of range"))?;
                i = j + 1;
                Tok::Long(n)
            } else {
                i = j;
                Tok::Number(src[start..j].to_owned())
            }
        } else if c == b'@' {
            let j = date_time_end(bytes, i + 1);
            if j == i + 1 {
                return Err(err(i, "'@' must start a date, dateTime or time"));
            }
            i = j;
            Tok::At(src[start + 1..j].to_owned())
        } else if c == b'%' {
            match bytes.get(i + 1) {
                Some(b'\'') => {
                    let (s, next) = quoted(src, i + 2, '\'')?;
                    i = next;
                    Tok::Constant(s)
                }
                Some(b'`') => {
                    let (s, next) = quoted(src, i + 2, '`')?;
                    i = next;
                    Tok::Constant(s)
                }
                _ => {
                    let mut j = i + 1;
                    while j < bytes.len()
                        && (bytes[j].is_ascii_alphanumeric()
                            || bytes[j] == b'_'
                            || bytes[j] == b'-')
                    {
                        j += 1;
                    }
                    if j == i + 1 {
                        return Err(err(i, "'%' must name a constant"));
                    }
                    i = j;
                    Tok::Constant(src[start + 1..j].to_owned())
                }
            }
        } else if c == b'$' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j].is_ascii_alphabetic() {
                j += 1;
            }
            let name = &src[start..j];
            if !matches!(name, "$this" | "$index" | "$total") {
                return Err(err(i, format!("unknown special variable '{name}'")));
            }
            i = j;
            Tok::Special(name.to_owned())
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            i = j;
            Tok::Ident(src[start..j].to_owned())
        } else if let Some(sym) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) {
            i += sym.len();
            Tok::Sym(sym)
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(err(i, format!("unexpected character '{ch}'")));
        };
        out.push(Token { tok, offset: start });
    }
    out.push(Token {
        tok: Tok::End,
        offset: bytes.len(),
    });
    Ok(out)
}
