//! Arithmetic: numbers, strings, quantities and date/time ± duration.

use std::borrow::Cow;

use rust_decimal::Decimal;

use crate::ast::BinaryOp;
use crate::eval::{R, execution};
use crate::ucum;
use crate::value::{Collection, Quantity, Value};

fn dec(v: &Value<'_>) -> Option<Decimal> {
    match v {
        Value::Integer(i) | Value::Long(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

fn int_op(op: BinaryOp, a: i64, b: i64, long: bool) -> Collection<'static> {
    use BinaryOp as B;
    let wrap = |x: Option<i64>| -> Collection<'static> {
        match x {
            Some(v) if long => vec![Value::Long(v)],
            Some(v) if i32::try_from(v).is_ok() => vec![Value::Integer(v)],
            _ => vec![],
        }
    };
    match op {
        B::Add => wrap(a.checked_add(b)),
        B::Sub => wrap(a.checked_sub(b)),
        B::Mul => wrap(a.checked_mul(b)),
        B::IntDiv => wrap(if b == 0 { None } else { a.checked_div(b) }),
        B::Mod => wrap(if b == 0 { None } else { a.checked_rem(b) }),
        B::Div => {
            if b == 0 {
                vec![]
            } else {
                Decimal::from(a)
                    .checked_div(Decimal::from(b))
                    .map(|d| vec![Value::Decimal(d.normalize())])
                    .unwrap_or_default()
            }
        }
        _ => vec![],
    }
}

fn dec_op(op: BinaryOp, a: Decimal, b: Decimal) -> R<Collection<'static>> {
    use BinaryOp as B;
    let r = match op {
        B::Add => a.checked_add(b),
        B::Sub => a.checked_sub(b),
        B::Mul => a.checked_mul(b),
        B::Div => {
            if b.is_zero() {
                None
            } else {
                a.checked_div(b)
            }
        }
        B::IntDiv => {
            if b.is_zero() {
                return Ok(vec![]);
            }
            return Ok(a
                .checked_div(b)
                .and_then(|d| i64::try_from(d.trunc()).ok())
                .map(|i| vec![Value::Integer(i)])
                .unwrap_or_default());
        }
        B::Mod => {
            if b.is_zero() {
                None
            } else {
                a.checked_rem(b)
            }
        }
        _ => None,
    };
    Ok(r.map(|d| vec![Value::Decimal(d)]).unwrap_or_default())
}

/// The calendar keyword a duration unit stands for when added to a date/time.
fn duration_unit(unit: &str) -> R<&'static str> {
    if let Some(k) = ucum::calendar_keyword(unit) {
        return Ok(k);
    }
    Ok(match unit {
        "wk" => "week",
        "d" => "day",
        "h" => "hour",
        "min" => "minute",
        "s" => "second",
        "ms" => "millisecond",
        "a" | "mo" => {
            return Err(execution(format!(
                "'{unit}' is an average duration in UCUM; use the calendar unit (year, month) to add to a date"
            )));
        }
        _ => return Err(execution(format!("'{unit}' is not a duration"))),
    })
}

fn unit_product(a: &str, b: &str, divide: bool) -> String {
    match (a, b, divide) {
        ("1", b, false) => b.to_string(),
        (a, "1", _) => a.to_string(),
        ("1", b, true) => format!("/{b}"),
        (a, b, true) if a == b => "1".to_string(),
        (a, b, false) => format!("{a}.{b}"),
        (a, b, true) => format!("{a}/{b}"),
    }
}

pub(crate) fn arith<'a>(op: BinaryOp, x: &Value<'a>, y: &Value<'a>) -> R<Collection<'a>> {
    use BinaryOp as B;
    match (x, y) {
        (Value::Integer(a), Value::Integer(b)) => Ok(int_op(op, *a, *b, false)),
        (Value::Long(a) | Value::Integer(a), Value::Long(b) | Value::Integer(b)) => {
            Ok(int_op(op, *a, *b, true))
        }
        (Value::String(a), Value::String(b)) if op == B::Add => {
            Ok(vec![Value::String(Cow::Owned(format!("{a}{b}")))])
        }
        (Value::Temporal(t), Value::Quantity(q)) if matches!(op, B::Add | B::Sub) => {
            let unit = duration_unit(&q.unit)?;
            let n =
                i64::try_from(q.value.trunc()).map_err(|_| execution("duration out of range"))?;
            let n = if op == B::Sub { -n } else { n };
            Ok(t.add(n, unit)
                .map(|t| vec![Value::Temporal(t)])
                .unwrap_or_default())
        }
        (Value::Quantity(a), Value::Quantity(b)) => match op {
            B::Add | B::Sub => {
                let (fa, fb) = match (ucum::reduce(&a.unit), ucum::reduce(&b.unit)) {
                    _ if a.unit == b.unit => (Decimal::ONE, Decimal::ONE),
                    (Some(ra), Some(rb)) if ra.dims == rb.dims => (ra.factor, rb.factor),
                    _ => return Ok(vec![]),
                };
                let v = b
                    .value
                    .checked_mul(fb)
                    .and_then(|x| x.checked_div(fa))
                    .and_then(|bv| {
                        if op == B::Add {
                            a.value.checked_add(bv)
                        } else {
                            a.value.checked_sub(bv)
                        }
                    });
                Ok(v.map(|value| {
                    vec![Value::Quantity(Quantity {
                        value,
                        unit: a.unit.clone(),
                    })]
                })
                .unwrap_or_default())
            }
            B::Mul | B::Div => {
                let v = if op == B::Mul {
                    a.value.checked_mul(b.value)
                } else if b.value.is_zero() {
                    None
                } else {
                    a.value.checked_div(b.value)
                };
                Ok(v.map(|value| {
                    vec![Value::Quantity(Quantity {
                        value,
                        unit: unit_product(&a.unit, &b.unit, op == B::Div),
                    })]
                })
                .unwrap_or_default())
            }
            _ => Err(execution("this operator does not apply to quantities")),
        },
        (Value::Quantity(a), n) if matches!(op, B::Mul | B::Div) && dec(n).is_some() => {
            let n = dec(n).unwrap_or_default();
            let v = if op == B::Mul {
                a.value.checked_mul(n)
            } else if n.is_zero() {
                None
            } else {
                a.value.checked_div(n)
            };
            Ok(v.map(|value| {
                vec![Value::Quantity(Quantity {
                    value,
                    unit: a.unit.clone(),
                })]
            })
            .unwrap_or_default())
        }
        (n, Value::Quantity(b)) if op == B::Mul && dec(n).is_some() => {
            let n = dec(n).unwrap_or_default();
            Ok(b.value
                .checked_mul(n)
                .map(|value| {
                    vec![Value::Quantity(Quantity {
                        value,
                        unit: b.unit.clone(),
                    })]
                })
                .unwrap_or_default())
        }
        (a, b) => match (dec(a), dec(b)) {
            (Some(a), Some(b)) => dec_op(op, a, b),
            _ => Err(execution(format!(
                "{} and {} cannot be combined with this operator",
                a.type_name().1,
                b.type_name().1
            ))),
        },
    }
}
