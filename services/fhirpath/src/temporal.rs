//! Dates, date-times and times with precision, as FHIRPath compares and computes them.

use std::cmp::Ordering;
use std::fmt::Write as _;

/// Which of the three temporal types a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TKind {
    Date,
    DateTime,
    Time,
}

/// Precision levels: 1 year, 2 month, 3 day, 4 hour, 5 minute, 6 second, 7 millisecond.
pub const YEAR: u8 = 1;
pub const MONTH: u8 = 2;
pub const DAY: u8 = 3;
pub const HOUR: u8 = 4;
pub const MINUTE: u8 = 5;
pub const SECOND: u8 = 6;
pub const MILLIS: u8 = 7;

/// A partial date, date-time or time. Fields below the precision are zero (month/day one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    pub kind: TKind,
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
    pub precision: u8,
    /// Offset from UTC in minutes, when given.
    pub tz: Option<i16>,
}

fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    if s.len() < n || !s.as_bytes()[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 (proleptic Gregorian).
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((y + i64::from(m <= 2)) as i32, m, d)
}

impl Temporal {
    fn empty(kind: TKind) -> Temporal {
        Temporal {
            kind,
            year: 0,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            millis: 0,
            precision: 0,
            tz: None,
        }
    }

    /// Parses a date (`2019`, `2019-02`, `2019-02-03`).
    pub fn parse_date(s: &str) -> Option<Temporal> {
        let (t, rest) = Self::parse_date_part(s)?;
        rest.is_empty().then_some(t)
    }

    fn parse_date_part(s: &str) -> Option<(Temporal, &str)> {
        let mut t = Temporal::empty(TKind::Date);
        let (y, mut rest) = digits(s, 4)?;
        t.year = y as i32;
        t.precision = YEAR;
        if let Some(r) = rest.strip_prefix('-') {
            let (m, r) = digits(r, 2)?;
            if !(1..=12).contains(&m) {
                return None;
            }
            t.month = m as u8;
            t.precision = MONTH;
            rest = r;
            if let Some(r) = rest.strip_prefix('-') {
                let (d, r) = digits(r, 2)?;
                if d < 1 || d > u32::from(days_in_month(t.year, t.month)) {
                    return None;
                }
                t.day = d as u8;
                t.precision = DAY;
                rest = r;
            }
        }
        Some((t, rest))
    }

    /// Parses a time of day (`14`, `14:30`, `14:30:15`, `14:30:15.123`), no zone.
    pub fn parse_time(s: &str) -> Option<Temporal> {
        let mut t = Temporal::empty(TKind::Time);
        let rest = t.parse_time_part(s)?;
        rest.is_empty().then_some(t)
    }

    fn parse_time_part<'s>(&mut self, s: &'s str) -> Option<&'s str> {
        let (h, mut rest) = digits(s, 2)?;
        if h > 23 {
            return None;
        }
        self.hour = h as u8;
        self.precision = HOUR;
        if let Some(r) = rest.strip_prefix(':') {
            let (m, r) = digits(r, 2)?;
            if m > 59 {
                return None;
            }
            self.minute = m as u8;
            self.precision = MINUTE;
            rest = r;
            if let Some(r) = rest.strip_prefix(':') {
                let (sec, r) = digits(r, 2)?;
                if sec > 59 {
                    return None;
                }
                self.second = sec as u8;
                self.precision = SECOND;
                rest = r;
                if let Some(r) = rest.strip_prefix('.') {
                    let n = r.bytes().take_while(u8::is_ascii_digit).count();
                    if n == 0 {
                        return None;
                    }
                    let frac = &r[..n];
                    let mut ms = 0u16;
                    for (i, c) in frac.bytes().take(3).enumerate() {
                        ms += u16::from(c - b'0') * [100, 10, 1][i];
                    }
                    self.millis = ms;
                    self.precision = MILLIS;
                    rest = &r[n..];
                }
            }
        }
        Some(rest)
    }

    /// Parses a date-time: a date, optionally `T` and a time, optionally a zone (`Z`, `+10:00`).
    /// `partial_t` accepts the literal forms `2015T` and `2015-02-04T`.
    pub fn parse_datetime(s: &str) -> Option<Temporal> {
        let (mut t, rest) = Self::parse_date_part(s)?;
        t.kind = TKind::DateTime;
        let Some(rest) = rest.strip_prefix('T') else {
            return rest.is_empty().then_some(t);
        };
        if rest.is_empty() {
            return Some(t);
        }
        if t.precision != DAY {
            return None;
        }
        let rest = t.parse_time_part(rest)?;
        if rest.is_empty() {
            return Some(t);
        }
        t.tz = Some(parse_zone(rest)?);
        Some(t)
    }

    /// Parses any of the three (FHIR JSON value or literal text after `@`).
    pub fn parse_any(s: &str) -> Option<Temporal> {
        if let Some(t) = s.strip_prefix('T') {
            return Self::parse_time(t);
        }
        if s.contains('T') {
            return Self::parse_datetime(s);
        }
        Self::parse_date(s)
    }

    /// The number of digits of the precision, as `precision()` reports it.
    pub fn precision_digits(&self) -> i64 {
        match self.kind {
            TKind::Time => match self.precision {
                HOUR => 2,
                MINUTE => 4,
                SECOND => 6,
                _ => 9,
            },
            _ => match self.precision {
                YEAR => 4,
                MONTH => 6,
                DAY => 8,
                HOUR => 10,
                MINUTE => 12,
                SECOND => 14,
                _ => 17,
            },
        }
    }

    fn epoch_minutes(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 1440
            + i64::from(self.hour) * 60
            + i64::from(self.minute)
    }

    fn at_epoch_minutes(&self, mins: i64) -> Temporal {
        let days = mins.div_euclid(1440);
        let rem = mins.rem_euclid(1440);
        let (y, m, d) = civil_from_days(days);
        Temporal {
            year: y,
            month: m,
            day: d,
            hour: (rem / 60) as u8,
            minute: (rem % 60) as u8,
            ..*self
        }
    }

    /// The same instant in UTC (values with hour precision or more and a zone).
    fn normalized(&self) -> Temporal {
        match self.tz {
            Some(tz) if self.kind == TKind::DateTime && self.precision >= HOUR => {
                let mut t = self.at_epoch_minutes(self.epoch_minutes() - i64::from(tz));
                t.tz = Some(0);
                t
            }
            _ => *self,
        }
    }

    fn fields(&self) -> [i64; 6] {
        [
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
            i64::from(self.hour),
            i64::from(self.minute),
            i64::from(self.second) * 1000 + i64::from(self.millis),
        ]
    }

    /// FHIRPath comparison: `None` when the answer depends on digits one side lacks.
    pub fn compare(&self, other: &Temporal) -> Option<Ordering> {
        let time = self.kind == TKind::Time;
        if time != (other.kind == TKind::Time) {
            return None;
        }
        let (a, b) = (self.normalized(), other.normalized());
        if self.kind == TKind::DateTime
            && other.kind == TKind::DateTime
            && a.precision >= HOUR
            && b.precision >= HOUR
            && a.tz.is_some() != b.tz.is_some()
        {
            return None;
        }
        let (fa, fb) = (a.fields(), b.fields());
        let lo = if time { HOUR } else { YEAR };
        let pa = a.precision.min(SECOND);
        let pb = b.precision.min(SECOND);
        for level in lo..=pa.min(pb) {
            let i = usize::from(level - 1);
            match fa[i].cmp(&fb[i]) {
                Ordering::Equal => {}
                o => return Some(o),
            }
        }
        (pa == pb).then_some(Ordering::Equal)
    }

    /// Adds `amount` of a calendar unit (`year`, `month`, `week`, `day`, `hour`, `minute`,
    /// `second`, `millisecond`); `None` for a unit this value cannot take.
    pub fn add(&self, amount: i64, unit: &str) -> Option<Temporal> {
        let mut t = *self;
        match unit {
            "year" => {
                if t.kind == TKind::Time {
                    return None;
                }
                t.year = i32::try_from(i64::from(t.year) + amount).ok()?;
                t.day = t.day.min(days_in_month(t.year, t.month));
            }
            "month" => {
                if t.kind == TKind::Time {
                    return None;
                }
                if t.precision < MONTH {
                    return t.add(amount / 12, "year");
                }
                let m = (i64::from(t.year) * 12 + i64::from(t.month) - 1).checked_add(amount)?;
                t.year = i32::try_from(m.div_euclid(12)).ok()?;
                t.month = (m.rem_euclid(12) + 1) as u8;
                t.day = t.day.min(days_in_month(t.year, t.month));
            }
            "week" => return t.add(amount.checked_mul(7)?, "day"),
            "day" => {
                if t.kind == TKind::Time {
                    return None;
                }
                if t.precision < DAY {
                    return t.add(amount / 30, "month");
                }
                let d = days_from_civil(t.year, t.month, t.day).checked_add(amount)?;
                if d.abs() > 3_000_000 {
                    // beyond the years FHIR can write (0001-9999)
                    return None;
                }
                let (y, m, dd) = civil_from_days(d);
                (t.year, t.month, t.day) = (y, m, dd);
            }
            "hour" | "minute" | "second" | "millisecond" => {
                let ms = amount.checked_mul(match unit {
                    "hour" => 3_600_000,
                    "minute" => 60_000,
                    "second" => 1000,
                    _ => 1,
                })?;
                if t.kind == TKind::Date {
                    return t.add(ms / 86_400_000, "day");
                }
                let day_ms = (((i64::from(t.hour) * 60 + i64::from(t.minute)) * 60
                    + i64::from(t.second))
                    * 1000
                    + i64::from(t.millis))
                .checked_add(ms)?;
                let days = day_ms.div_euclid(86_400_000);
                let rem = day_ms.rem_euclid(86_400_000);
                t.hour = (rem / 3_600_000) as u8;
                t.minute = (rem / 60_000 % 60) as u8;
                t.second = (rem / 1000 % 60) as u8;
                t.millis = (rem % 1000) as u16;
                if t.kind == TKind::DateTime && days != 0 {
                    let p = t.precision;
                    t.precision = DAY;
                    t = t.add(days, "day")?;
                    t.precision = p;
                }
            }
            _ => return None,
        }
        Some(t)
    }

    /// The value at a lower precision (`@2014-01-01T08` at day precision is `@2014-01-01`).
    pub fn truncated(&self, precision: u8) -> Temporal {
        let mut t = *self;
        if precision < t.precision {
            t.precision = precision;
            t.fill_below(precision, false);
            if precision < HOUR {
                if t.kind == TKind::DateTime {
                    t.kind = TKind::Date;
                }
                t.tz = None;
            }
        }
        t
    }

    /// Set every component finer than `precision` to its lowest value, or with `high` to
    /// its highest (the last day of the month, 23:59:59.999).
    fn fill_below(&mut self, precision: u8, high: bool) {
        let pick = |lo, hi| if high { hi } else { lo };
        if precision < MONTH {
            self.month = pick(1, 12);
        }
        if precision < DAY {
            self.day = pick(1, days_in_month(self.year, self.month));
        }
        if precision < HOUR {
            self.hour = pick(0, 23);
        }
        if precision < MINUTE {
            self.minute = pick(0, 59);
        }
        if precision < SECOND {
            self.second = pick(0, 59);
        }
        if precision < MILLIS {
            self.millis = if high { 999 } else { 0 };
        }
    }

    /// Text as FHIRPath literals write it, without the `@`.
    pub fn to_literal_text(&self) -> String {
        let mut s = String::new();
        if self.kind != TKind::Time {
            let _ = write!(s, "{:04}", self.year);
            if self.precision >= MONTH {
                let _ = write!(s, "-{:02}", self.month);
            }
            if self.precision >= DAY {
                let _ = write!(s, "-{:02}", self.day);
            }
            if self.kind == TKind::DateTime {
                s.push('T');
            }
        } else {
            s.push('T');
        }
        if self.precision >= HOUR {
            let _ = write!(s, "{:02}", self.hour);
            if self.precision >= MINUTE {
                let _ = write!(s, ":{:02}", self.minute);
            }
            if self.precision >= SECOND {
                let _ = write!(s, ":{:02}", self.second);
            }
            if self.precision >= MILLIS {
                let _ = write!(s, ".{:03}", self.millis);
            }
            if let Some(tz) = self.tz {
                if tz == 0 {
                    s.push('Z');
                } else {
                    let sign = if tz < 0 { '-' } else { '+' };
                    let a = tz.unsigned_abs();
                    let _ = write!(s, "{sign}{:02}:{:02}", a / 60, a % 60);
                }
            }
        }
        s
    }

    /// Text as FHIR JSON writes it (no `T` on a date-time without a time).
    pub fn to_fhir_text(&self) -> String {
        let s = self.to_literal_text();
        match self.kind {
            TKind::Time => s.trim_start_matches('T').to_string(),
            _ => s.trim_end_matches('T').to_string(),
        }
    }

    /// `lowBoundary`/`highBoundary` for a precision given in digits (4, 6, 8, 10, 12, 14, 17
    /// for dates/date-times; 2, 4, 6, 9 for times).
    pub fn boundary(&self, digits: Option<i64>, high: bool) -> Option<Temporal> {
        let target = match self.kind {
            TKind::Time => match digits.unwrap_or(9) {
                2 => HOUR,
                4 => MINUTE,
                6 => SECOND,
                9 => MILLIS,
                _ => return None,
            },
            _ => match digits.unwrap_or(if self.kind == TKind::Date { 8 } else { 17 }) {
                4 => YEAR,
                6 => MONTH,
                8 => DAY,
                10 => HOUR,
                12 => MINUTE,
                14 => SECOND,
                17 => MILLIS,
                _ => return None,
            },
        };
        let mut t = *self;
        if target <= t.precision {
            return Some(t.truncated(target));
        }
        if t.kind == TKind::Date && target > DAY {
            t.kind = TKind::DateTime;
        }
        if high {
            t.fill_below(t.precision, true);
        }
        t.precision = target;
        if t.kind == TKind::DateTime && t.tz.is_none() && target >= HOUR {
            t.tz = Some(if high { -12 * 60 } else { 14 * 60 });
        }
        Some(t)
    }
}

fn parse_zone(s: &str) -> Option<i16> {
    if s == "Z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, r) = digits(&s[1..], 2)?;
    let r = r.strip_prefix(':')?;
    let (m, r) = digits(r, 2)?;
    if !r.is_empty() || h > 14 || m > 59 {
        return None;
    }
    Some(sign * (h as i16 * 60 + m as i16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> Temporal {
        Temporal::parse_any(s).unwrap()
    }

    #[test]
    fn parse_compare_add() {
        assert_eq!(dt("2012-04-15T15:30:31").precision, SECOND);
        assert_eq!(
            dt("2012-04-15T15:00:00+02:00").compare(&dt("2012-04-15T16:00:00+03:00")),
            Some(Ordering::Equal)
        );
        assert_eq!(dt("2018-03").compare(&dt("2018-03-01")), None);
        assert_eq!(
            dt("2012-04-15T15:30:31").compare(&dt("2012-04-15T15:30:31.0")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            dt("1973-12-25").add(7, "day").unwrap().to_literal_text(),
            "1974-01-01"
        );
        assert_eq!(
            dt("1974-01-31").add(1, "month").unwrap().to_literal_text(),
            "1974-02-28"
        );
        assert_eq!(
            dt("1973-12-31T23:00:00.000+10:00")
                .add(1, "hour")
                .unwrap()
                .to_literal_text(),
            "1974-01-01T00:00:00.000+10:00"
        );
        assert!(Temporal::parse_any("2019-13").is_none());
        assert!(Temporal::parse_any("2019-02-30").is_none());
        assert_eq!(dt("T10:30").to_literal_text(), "T10:30");
    }
}
