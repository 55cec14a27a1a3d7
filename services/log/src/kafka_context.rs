//! librdkafka's own log lines and error callbacks, into `tracing`, without the flood.
//!
//! librdkafka reports a broker it cannot reach (refused connection, a certificate it does not
//! trust, a failed SASL handshake) on every reconnect: every 50–100 ms at first, twice each
//! time (its log line and the error callback). A hub pointed at a misconfigured broker wrote
//! dozens of ERROR lines a second until the fault was fixed, burying everything else.
//!
//! Here each distinct message is logged the first time, then at most once per
//! [`REPEAT_WINDOW`], saying how many times it came in between. Messages that differ only in
//! numbers (milliseconds, counts, ports) are one message.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

/// How long a message already logged is held back.
pub(crate) const REPEAT_WINDOW: Duration = Duration::from_secs(30);
/// Distinct messages remembered; past this the oldest are forgotten (and logged again).
const REMEMBERED: usize = 256;

/// What to do with one message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Say {
    /// Log it; it came `held` more times since it was last logged.
    Log { held: u64 },
    /// Hold it back.
    Hold,
}

struct Seen {
    logged_at: Instant,
    held: u64,
}

/// Which messages were logged when, by their shape (the text with its numbers taken out).
#[derive(Default)]
pub(crate) struct Repeats {
    seen: HashMap<String, Seen>,
}

/// `text` with every run of digits made one `#` and what is in parentheses left out:
/// librdkafka ends a message with "(after 3ms in state SSL_HANDSHAKE)" or "(after 41ms …,
/// 1 identical error(s) suppressed)", and those are one message.
fn shape(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(512));
    let mut in_digits = false;
    let mut depth = 0u32;
    for c in text.chars().take(512) {
        match c {
            '(' => depth = depth.saturating_add(1),
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > 0 || matches!(c, '(' | ')') {
            continue;
        }
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

impl Repeats {
    /// Decide for `text` arriving at `now`.
    pub(crate) fn admit(&mut self, text: &str, now: Instant) -> Say {
        let key = shape(text);
        if let Some(seen) = self.seen.get_mut(&key) {
            if now.saturating_duration_since(seen.logged_at) < REPEAT_WINDOW {
                seen.held = seen.held.saturating_add(1);
                return Say::Hold;
            }
            let held = seen.held;
            *seen = Seen {
                logged_at: now,
                held: 0,
            };
            return Say::Log { held };
        }
        if self.seen.len() >= REMEMBERED {
            // forget what was logged longest ago (a shape that never repeats in a window
            // costs nothing to forget; one that does is logged once more)
            if let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, s)| s.logged_at)
                .map(|(k, _)| k.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(
            key,
            Seen {
                logged_at: now,
                held: 0,
            },
        );
        Say::Log { held: 0 }
    }
}

/// What the process's Kafka clients logged: one for all of them, since a broker that
/// cannot be reached is reported by each client (producer, consumers, admin) alike.
static REPEATS: LazyLock<Mutex<Repeats>> = LazyLock::new(Mutex::default);

/// The context of every Kafka client the hub makes.
pub(crate) struct HubContext;

impl HubContext {
    fn admit(&self, text: &str) -> Say {
        match REPEATS.lock() {
            Ok(mut r) => r.admit(text, Instant::now()),
            // a poisoned lock only loses the holding back
            Err(_) => Say::Log { held: 0 },
        }
    }
}

impl ClientContext for HubContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let text = format!("{fac} {log_message}");
        let Say::Log { held } = self.admit(&text) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", repeated = held, "librdkafka: {text}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", repeated = held, "librdkafka: {text}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", repeated = held, "librdkafka: {text}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", repeated = held, "librdkafka: {text}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        if let Say::Log { held } = self.admit(&text) {
            tracing::error!(target: "librdkafka", repeated = held, "librdkafka: {text}");
        }
    }
}

impl ConsumerContext for HubContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_logged_once_per_window_with_the_count_held_back() {
        let mut r = Repeats::default();
        let t0 = Instant::now();
        let msg = |ms: u32| {
            format!(
                "FAIL ssl://b:9093/bootstrap: SSL handshake failed (after {ms}ms in state SSL_HANDSHAKE)"
            )
        };
        assert_eq!(r.admit(&msg(3), t0), Say::Log { held: 0 });
        // reconnects every 50 ms for the whole window: held, whatever the timing figures
        let mut at = t0;
        let mut held = 0;
        while at < t0 + REPEAT_WINDOW - Duration::from_millis(50) {
            at += Duration::from_millis(50);
            assert_eq!(r.admit(&msg(held % 97), at), Say::Hold);
            held += 1;
        }
        assert_eq!(
            r.admit(&msg(5), t0 + REPEAT_WINDOW),
            Say::Log {
                held: u64::from(held)
            }
        );
        // and the count starts again
        assert_eq!(r.admit(&msg(7), t0 + REPEAT_WINDOW), Say::Hold);
        assert_eq!(
            r.admit(&msg(7), t0 + REPEAT_WINDOW * 2),
            Say::Log { held: 1 }
        );
    }

    #[test]
    fn different_messages_are_each_logged() {
        let mut r = Repeats::default();
        let t0 = Instant::now();
        assert_eq!(r.admit("connection refused", t0), Say::Log { held: 0 });
        assert_eq!(
            r.admit("certificate verify failed", t0),
            Say::Log { held: 0 }
        );
        assert_eq!(r.admit("connection refused", t0), Say::Hold);
        // numbers are not what makes messages different; words are
        assert_eq!(r.admit("broker 1 down", t0), Say::Log { held: 0 });
        assert_eq!(r.admit("broker 22 down", t0), Say::Hold);
        assert_eq!(r.admit("broker 2 up", t0), Say::Log { held: 0 });
    }

    #[test]
    fn memory_is_bounded_by_distinct_shapes_and_the_oldest_goes_first() {
        let mut r = Repeats::default();
        let t0 = Instant::now();
        // shapes differ by words, not numbers: make them distinct with letters
        let word = |i: usize| {
            let mut s = String::new();
            let mut n = i;
            loop {
                s.push(char::from(b'a' + (n % 26) as u8));
                n /= 26;
                if n == 0 {
                    break;
                }
            }
            s
        };
        for i in 0..REMEMBERED * 4 {
            let at = t0 + Duration::from_millis(i as u64);
            assert_eq!(r.admit(&word(i), at), Say::Log { held: 0 });
            assert!(r.seen.len() <= REMEMBERED);
        }
        // the newest is still held back; the first was forgotten and is logged again
        let late = t0 + Duration::from_millis((REMEMBERED * 4) as u64);
        assert_eq!(r.admit(&word(REMEMBERED * 4 - 1), late), Say::Hold);
        assert_eq!(r.admit(&word(0), late), Say::Log { held: 0 });
    }

    #[test]
    fn long_or_odd_text_is_shaped_without_panicking() {
        let mut r = Repeats::default();
        let t0 = Instant::now();
        let long = "é9".repeat(10_000);
        assert_eq!(r.admit(&long, t0), Say::Log { held: 0 });
        assert_eq!(r.admit(&"é1".repeat(10_000), t0), Say::Hold);
        assert_eq!(r.admit("", t0), Say::Log { held: 0 });
        assert_eq!(shape("a12b3c"), "a#b#c");
        assert_eq!(
            shape("failed (after 3ms, 1 identical error(s) suppressed)"),
            "failed "
        );
        assert_eq!(shape("a) b (c (d) e"), "a b ");
        // the same failure, reported without and then with librdkafka's own count
        assert_eq!(
            r.admit(
                "SSL handshake failed (after 5ms in state SSL_HANDSHAKE)",
                t0
            ),
            Say::Log { held: 0 }
        );
        assert_eq!(
            r.admit(
                "SSL handshake failed (after 4ms in state SSL_HANDSHAKE, 1 identical error(s) suppressed)",
                t0
            ),
            Say::Hold
        );
        assert_eq!(shape("x\u{0}1"), "x\u{0}#");
    }
}
