//! FHIR date, dateTime and instant values as ranges of microseconds since the epoch (UTC),
//! following the precision they are written with: `2024` is the whole year,
//! `2024-03-01T10:00Z` the whole minute. Search prefixes compare these ranges.

/// A half-open range `[lo, hi)` in microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lo: i64,
    pub hi: i64,
}

impl Range {
    /// Everything (an open Period end, for example).
    pub const ALL: Range = Range {
        lo: i64::MIN,
        hi: i64::MAX,
    };

    pub fn contains(&self, other: &Range) -> bool {
        self.lo <= other.lo && other.hi <= self.hi
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.lo < other.hi && other.lo < self.hi
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse a FHIR date, dateTime or instant into the range its precision covers. Times without
/// a zone are taken as UTC.
pub fn parse(s: &str) -> Option<Range> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let y = parts.next().filter(|p| p.len() == 4).and_then(num)?;
    let m = match parts.next() {
        Some(p) => Some(num(p).filter(|m| p.len() == 2 && (1..=12).contains(m))?),
        None => None,
    };
    let d = match parts.next() {
        Some(p) => {
            let d = num(p).filter(|_| p.len() == 2)?;
            if d < 1 || d > days_in_month(y, m?) {
                return None;
            }
            Some(d)
        }
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    let (Some(m), Some(d)) = (m, d) else {
        if time.is_some() {
            return None;
        }
        let (lo_m, hi) = match m {
            None => (1, days_from_civil(y + 1, 1, 1)),
            Some(12) => (12, days_from_civil(y + 1, 1, 1)),
            Some(m) => (m, days_from_civil(y, m + 1, 1)),
        };
        return Some(Range {
            lo: days_from_civil(y, lo_m, 1) * MICROS_PER_DAY,
            hi: hi * MICROS_PER_DAY,
        });
    };
    let day = days_from_civil(y, m, d) * MICROS_PER_DAY;
    let Some(time) = time else {
        return Some(Range {
            lo: day,
            hi: day + MICROS_PER_DAY,
        });
    };
    // hh:mm[:ss[.fff]] then Z or ±hh:mm
    let (clock, offset_us) = split_zone(time)?;
    let mut cp = clock.split(':');
    let hh = cp.next().filter(|p| p.len() == 2).and_then(num)?;
    let mm = cp.next().filter(|p| p.len() == 2).and_then(num)?;
    let (ss, frac, unit) = match cp.next() {
        None => (0, 0, 60_000_000),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let ss = num(whole).filter(|_| whole.len() == 2)?;
            if frac.is_empty() {
                (ss, 0, 1_000_000)
            } else {
                // all ASCII digits first, so the cut below falls between characters
                if !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let digits = frac.len().min(6);
                let f = num(&frac[..digits])? * 10i64.pow(6 - digits as u32);
                (ss, f, 10i64.pow(6 - digits as u32))
            }
        }
    };
    if cp.next().is_some() || hh > 24 || mm > 59 || ss > 60 {
        return None;
    }
    let lo = day + ((hh * 60 + mm) * 60 + ss) * 1_000_000 + frac - offset_us;
    Some(Range { lo, hi: lo + unit })
}

fn split_zone(t: &str) -> Option<(&str, i64)> {
    if let Some(c) = t.strip_suffix('Z') {
        return Some((c, 0));
    }
    if let Some(pos) = t.rfind(['+', '-']) {
        let (clock, zone) = t.split_at(pos);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let minutes = num(h)? * 60 + num(m)?;
        return Some((clock, sign * minutes * 60_000_000));
    }
    Some((t, 0))
}

/// The current time in microseconds.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn precision_sets_the_range() {
        let y = r("2024");
        assert_eq!(y.hi - y.lo, 366 * MICROS_PER_DAY);
        let m = r("2024-02");
        assert_eq!(m.hi - m.lo, 29 * MICROS_PER_DAY);
        assert_eq!(r("2023-12").hi, r("2024").lo);
        let d = r("2024-03-01");
        assert_eq!(d.hi - d.lo, MICROS_PER_DAY);
        assert_eq!(r("1970-01-01").lo, 0);
        let minute = r("2024-03-01T10:00Z");
        assert_eq!(minute.hi - minute.lo, 60_000_000);
        let sec = r("2024-03-01T10:00:05Z");
        assert_eq!(sec.hi - sec.lo, 1_000_000);
        let ms = r("2024-03-01T10:00:05.123Z");
        assert_eq!(ms.hi - ms.lo, 1_000);
        assert!(y.contains(&m) && m.contains(&r("2024-02-29")));
    }

    #[test]
    fn zones_are_normalised() {
        assert_eq!(
            r("2024-03-01T10:00:00+02:00").lo,
            r("2024-03-01T08:00:00Z").lo
        );
        assert_eq!(
            r("2024-03-01T10:00:00-05:00").lo,
            r("2024-03-01T15:00:00Z").lo
        );
        assert_eq!(r("2024-03-01T10:00:00").lo, r("2024-03-01T10:00:00Z").lo);
    }

    #[test]
    fn invalid_dates_are_refused() {
        for s in [
            "24",
            "2024-13",
            "2023-02-29",
            "2024-1-01",
            "2024-03-01T25",
            "yesterday",
            "2024-03-01T10:00:00+0200",
        ] {
            assert!(parse(s).is_none(), "{s}");
        }
        assert!(parse("1900-01-01").unwrap().lo < 0);
    }

    #[test]
    fn multibyte_and_oversized_parts_are_refused_not_panics() {
        for s in [
            "2024-01-01T10:00:00.12345é",
            "2024-01-01T10:00:00.é",
            "2024-01-01T10:00:00.1234567é89",
            "2024-01-01T10:00:00+99999999999999999:00",
            "2024-01-01T10:00:00+é:00",
            "2024-é1-01",
            "é024",
        ] {
            assert!(parse(s).is_none(), "{s}");
        }
    }
}
