//! The part of UCUM that quantity comparison and arithmetic need: metric prefixes, the base
//! and common customary units, products, quotients and exponents (`mg/dL`, `m2`, `kg.m-2`).
//! Units it does not know compare only with the identical unit.

use rust_decimal::Decimal;
use std::str::FromStr;

/// Exponents over the base dimensions: length, mass, time, amount, temperature, current,
/// luminous intensity.
pub type Dims = [i8; 7];

/// A unit reduced to a factor times base units.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    pub factor: Decimal,
    pub dims: Dims,
}

const L: usize = 0;
const M: usize = 1;
const T: usize = 2;
const N: usize = 3;
const K: usize = 4;
const A: usize = 5;
const C: usize = 6;

fn atom(name: &str) -> Option<(&'static str, Dims, bool)> {
    let mut d = [0i8; 7];
    // (factor relative to the base unit, dimensions, whether metric prefixes apply)
    let (f, metric) = match name {
        "m" => {
            d[L] = 1;
            ("1", true)
        }
        "g" => {
            d[M] = 1;
            ("1", true)
        }
        "s" => {
            d[T] = 1;
            ("1", true)
        }
        "mol" => {
            d[N] = 1;
            ("602213670000000000000000", true)
        }
        "K" => {
            d[K] = 1;
            ("1", true)
        }
        "A" => {
            d[A] = 1;
            ("1", true)
        }
        "cd" => {
            d[C] = 1;
            ("1", true)
        }
        "L" | "l" => {
            d[L] = 3;
            ("0.001", true)
        }
        "min" => {
            d[T] = 1;
            ("60", false)
        }
        "h" => {
            d[T] = 1;
            ("3600", false)
        }
        "d" => {
            d[T] = 1;
            ("86400", false)
        }
        "wk" => {
            d[T] = 1;
            ("604800", false)
        }
        "a" => {
            d[T] = 1;
            ("31557600", false)
        }
        "mo" => {
            d[T] = 1;
            ("2629800", false)
        }
        "[in_i]" => {
            d[L] = 1;
            ("0.0254", false)
        }
        "[ft_i]" => {
            d[L] = 1;
            ("0.3048", false)
        }
        "[yd_i]" => {
            d[L] = 1;
            ("0.9144", false)
        }
        "[mi_i]" => {
            d[L] = 1;
            ("1609.344", false)
        }
        "[lb_av]" => {
            d[M] = 1;
            ("453.59237", false)
        }
        "[oz_av]" => {
            d[M] = 1;
            ("28.349523125", false)
        }
        "[foz_us]" => {
            d[L] = 3;
            ("0.0000295735295625", false)
        }
        "%" => ("0.01", false),
        "[ppm]" => ("0.000001", false),
        "1" => ("1", false),
        "mm[Hg]" => {
            d[M] = 1;
            d[L] = -1;
            d[T] = -2;
            ("133322.387415", false)
        }
        "Pa" => {
            d[M] = 1;
            d[L] = -1;
            d[T] = -2;
            ("1000", true)
        }
        "eq" => {
            d[N] = 1;
            ("602213670000000000000000", true)
        }
        "[iU]" | "[IU]" | "U" | "{beats}" | "/min" => return None,
        _ => return None,
    };
    Some((f, d, metric))
}

fn prefix(p: &str) -> Option<&'static str> {
    Some(match p {
        "Y" => "1000000000000000000000000",
        "Z" => "1000000000000000000000",
        "E" => "1000000000000000000",
        "P" => "1000000000000000",
        "T" => "1000000000000",
        "G" => "1000000000",
        "M" => "1000000",
        "k" => "1000",
        "h" => "100",
        "da" => "10",
        "d" => "0.1",
        "c" => "0.01",
        "m" => "0.001",
        "u" => "0.000001",
        "n" => "0.000000001",
        "p" => "0.000000000001",
        "f" => "0.000000000000001",
        _ => return None,
    })
}

fn dec(s: &str) -> Option<Decimal> {
    Decimal::from_str(s).ok()
}

fn pow(f: Decimal, e: i32) -> Option<Decimal> {
    let mut r = Decimal::ONE;
    for _ in 0..e.unsigned_abs() {
        r = r.checked_mul(f)?;
    }
    if e < 0 {
        Decimal::ONE.checked_div(r)
    } else {
        Some(r)
    }
}

/// One component: an optional prefix, an atom and an optional exponent (`cm2`, `s-1`, `10`).
fn component(s: &str) -> Option<Reduced> {
    if s.is_empty() {
        return None;
    }
    if s.starts_with('{') && s.ends_with('}') {
        return Some(Reduced {
            factor: Decimal::ONE,
            dims: [0; 7],
        });
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Reduced {
            factor: dec(s)?,
            dims: [0; 7],
        });
    }
    // split a trailing exponent (digits, optionally signed), unless the whole is an atom
    let (body, exp) = if atom(s).is_some() {
        (s, 1)
    } else {
        let digits = s.bytes().rev().take_while(|b| b.is_ascii_digit()).count();
        let mut cut = s.len() - digits;
        if digits > 0 && cut > 0 && matches!(s.as_bytes()[cut - 1], b'-' | b'+') {
            cut -= 1;
        }
        if digits == 0 {
            (s, 1)
        } else {
            (&s[..cut], s[cut..].parse::<i32>().ok()?)
        }
    };
    let (f, dims) = if let Some((f, d, _)) = atom(body) {
        (dec(f)?, d)
    } else {
        let mut found = None;
        for plen in [1, 2] {
            // `get`: a prefix length that falls inside a multi-byte character is no prefix
            if body.len() > plen
                && let Some(p) = body.get(..plen).and_then(prefix)
                && let Some((f, d, true)) = body.get(plen..).and_then(atom)
            {
                found = Some((dec(p)?.checked_mul(dec(f)?)?, d));
                break;
            }
        }
        found?
    };
    let mut d = [0i8; 7];
    for (i, v) in dims.iter().enumerate() {
        d[i] = v.checked_mul(i8::try_from(exp).ok()?)?;
    }
    Some(Reduced {
        factor: pow(f, exp)?,
        dims: d,
    })
}

/// Reduces a UCUM unit expression (`mg/dL`, `kg.m-2`, `/min`) to a factor and dimensions.
pub fn reduce(unit: &str) -> Option<Reduced> {
    let mut out = Reduced {
        factor: Decimal::ONE,
        dims: [0; 7],
    };
    let mut rest = unit;
    let mut divide = false;
    if let Some(r) = rest.strip_prefix('/') {
        rest = r;
        divide = true;
    }
    loop {
        let end = rest.find(['.', '/']).unwrap_or(rest.len());
        // `.` inside a bracketed atom is not an operator
        let end = match rest.find('[') {
            Some(b) if b < end => rest[b..].find(']').map_or(rest.len(), |c| {
                let after = b + c + 1;
                after + rest[after..].find(['.', '/']).unwrap_or(rest.len() - after)
            }),
            _ => end,
        };
        let c = component(&rest[..end])?;
        if divide {
            out.factor = out.factor.checked_div(c.factor)?;
            for i in 0..7 {
                out.dims[i] -= c.dims[i];
            }
        } else {
            out.factor = out.factor.checked_mul(c.factor)?;
            for i in 0..7 {
                out.dims[i] += c.dims[i];
            }
        }
        if end >= rest.len() {
            break;
        }
        divide = rest.as_bytes()[end] == b'/';
        rest = &rest[end + 1..];
    }
    Some(out)
}

/// The UCUM code for a calendar duration keyword (`week` → `wk`); years and months have none
/// that is equal (UCUM `a` and `mo` are averages).
pub fn calendar_to_ucum(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "week" | "weeks" => "wk",
        "day" | "days" => "d",
        "hour" | "hours" => "h",
        "minute" | "minutes" => "min",
        "second" | "seconds" => "s",
        "millisecond" | "milliseconds" => "ms",
        _ => return None,
    })
}

/// The singular calendar keyword of a unit (`days` → `day`, `'wk'` → `week`), if it is one.
pub fn calendar_keyword(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "year" | "years" => "year",
        "month" | "months" => "month",
        "week" | "weeks" => "week",
        "day" | "days" => "day",
        "hour" | "hours" => "hour",
        "minute" | "minutes" => "minute",
        "second" | "seconds" => "second",
        "millisecond" | "milliseconds" => "millisecond",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_common_units() {
        let mg = reduce("mg").unwrap();
        let g = reduce("g").unwrap();
        assert_eq!(mg.dims, g.dims);
        assert_eq!(mg.factor, dec("0.001").unwrap());
        assert_eq!(reduce("m2").unwrap().dims[L], 2);
        assert_eq!(reduce("cm").unwrap().factor, dec("0.01").unwrap());
        let mgdl = reduce("mg/dL").unwrap();
        assert_eq!(mgdl.dims, [-3, 1, 0, 0, 0, 0, 0]);
        assert_eq!(reduce("kg.m-2").unwrap().dims, [-2, 1, 0, 0, 0, 0, 0]);
        assert_eq!(reduce("[lb_av]").unwrap().dims[M], 1);
        assert_eq!(reduce("/min").unwrap().dims[T], -1);
        assert!(reduce("furlong").is_none());
        assert_eq!(reduce("1").unwrap().dims, [0; 7]);
    }
}
