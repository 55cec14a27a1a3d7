//! FHIR search numbers: a value and the half-width its written precision implies
//! (`100` → ±0.5, `100.00` → ±0.005, `1.5e2` → ±5).

/// A number from a search value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchNumber {
    pub value: f64,
    /// Half the unit of the last written digit.
    pub half: f64,
}

impl SearchNumber {
    pub fn parse(s: &str) -> Option<SearchNumber> {
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
            None => (s, 0),
        };
        let digits = mantissa.trim_start_matches(['-', '+']);
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            || digits.matches('.').count() > 1
            || digits.starts_with('.')
            || digits.ends_with('.')
        {
            return None;
        }
        let decimals = digits
            .split_once('.')
            .map(|(_, f)| f.len() as i32)
            .unwrap_or(0);
        let value: f64 = s.parse().ok()?;
        if !value.is_finite() {
            return None;
        }
        Some(SearchNumber {
            value,
            half: 0.5 * 10f64.powi(exp.saturating_sub(decimals)),
        })
    }

    /// Whether `v` lies in the range this number stands for: `[value-half, value+half)`.
    pub fn contains(&self, v: f64) -> bool {
        // A tiny tolerance absorbs binary rounding (0.1 + 0.2 and the like).
        let eps = self.half * 1e-9;
        v >= self.value - self.half - eps && v < self.value + self.half - eps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_from_the_text() {
        let n = SearchNumber::parse("100").unwrap();
        assert!(n.contains(99.5) && n.contains(100.49) && !n.contains(100.5) && !n.contains(99.4));
        let n = SearchNumber::parse("100.00").unwrap();
        assert!(n.contains(100.004) && !n.contains(100.006));
        let n = SearchNumber::parse("1.5e2").unwrap();
        assert!(n.contains(146.0) && !n.contains(156.0));
        let n = SearchNumber::parse("-0.5").unwrap();
        assert!(n.contains(-0.54) && !n.contains(-0.56));
        for bad in ["", "abc", "1..2", ".5", "5.", "1e", "--1", "NaN", "inf"] {
            assert!(SearchNumber::parse(bad).is_none(), "{bad}");
        }
    }
}
