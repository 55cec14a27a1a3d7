//! The retry schedule: the wait before each attempt of one notification, in the spirit of
//! Standard Webhooks (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h),
//! with jitter, and `Retry-After` honoured on 429 and 503.

use std::time::Duration;

use rand::Rng;

/// The longest `Retry-After` the hub will honour.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parse `500ms`, `5s`, `5m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 5s or 2h"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => return Err(format!("'{s}': unit must be ms, s, m, h or d")),
    })
}

/// Waits before attempts 1, 2, ... of a notification; when they run out, the hub gives up
/// on the subscription (status off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl Schedule {
    pub fn parse(items: &[String]) -> Result<Schedule, String> {
        if items.is_empty() {
            return Err("delivery.retry_schedule needs at least one entry".into());
        }
        items
            .iter()
            .map(|s| parse_duration(s))
            .collect::<Result<_, _>>()
            .map(Schedule)
    }

    /// The wait before attempt `attempt` (0-based), or `None` when the schedule is spent.
    /// Jitter of +/-10% spreads retries of many subscriptions; a server's `Retry-After`
    /// lengthens the wait, never shortens it.
    pub fn wait(&self, attempt: usize, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.0.get(attempt)?;
        let jittered = if base.is_zero() {
            base
        } else {
            base.mul_f64(rand::rng().random_range(0.9..1.1))
        };
        Some(match retry_after {
            Some(ra) => jittered.max(ra.min(MAX_RETRY_AFTER)),
            None => jittered,
        })
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let t = time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc2822)
        .ok()?;
    let delta = t - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs(delta.whole_seconds().max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_schedule() {
        let items: Vec<String> = [
            "0s", "5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let s = Schedule::parse(&items).unwrap();
        assert_eq!(s.0.len(), 10);
        assert_eq!(s.wait(0, None), Some(Duration::ZERO));
        let w = s.wait(2, None).unwrap();
        assert!(w >= Duration::from_secs(270) && w <= Duration::from_secs(330));
        assert_eq!(s.wait(10, None), None);
        assert!(s.wait(1, Some(Duration::from_secs(60))).unwrap() >= Duration::from_secs(60));
        assert!(Schedule::parse(&["5x".to_owned()]).is_err());
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }
}
