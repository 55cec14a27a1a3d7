//! Where a reader starts, the same on every stream channel: earliest retained, latest, at an
//! event number, after the last number it has, or at a time; and what happens when the asked
//! position was purged by retention (the reset policy, Kafka's `auto.offset.reset`) or lies
//! beyond the head (always refused: the events in between would be skipped for good).
//!
//! Each channel only says it its own way (`channels/{sse,websocket,grpc}.rs`); the table in
//! `docs/channels/semantics.md` puts them side by side.

use hub_store::StoreError;

use crate::model::Subscription;
use crate::state::Hub;

/// A reader's asked start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The first event still in the log.
    Earliest,
    /// Only events logged from now on.
    Latest,
    /// From this event number on (the first one wanted, 1 or more).
    From(i64),
    /// After this event number (the last one the reader has: `Last-Event-ID`, a websocket
    /// resume, a committed offset).
    After(i64),
    /// The first event logged in this second or after it: the instant's UTC second as
    /// `YYYY-MM-DDTHH:MM:SS`, a text lower bound of every stored time of that second (stored
    /// times carry a fraction of varying width and `Z`, and `.` sorts before `Z`, so a bound
    /// with a fraction or a `Z` would skip events of its own second). Inclusive to the
    /// second: a reader may get events up to a second older than it asked, never miss one.
    LoggedAt(String),
}

impl Start {
    /// The `from` grammar shared by SSE's `?from=` and the websocket bind's `from=`:
    /// `earliest`, `latest`, an event number (1 or more: the first wanted) or an RFC 3339
    /// instant (the first event logged then or later).
    pub fn parse_from(text: &str) -> Result<Start, String> {
        let t = text.trim();
        match t {
            "earliest" => return Ok(Start::Earliest),
            "latest" => return Ok(Start::Latest),
            _ => {}
        }
        if let Ok(n) = t.parse::<i64>() {
            return if n >= 1 {
                Ok(Start::From(n))
            } else {
                Err(format!(
                    "from '{t}' must be 'earliest', 'latest', an event number (1 or more) or an RFC 3339 instant"
                ))
            };
        }
        Start::at_time(t)
    }

    /// A start at an RFC 3339 instant.
    pub fn at_time(text: &str) -> Result<Start, String> {
        use time::format_description::well_known::Rfc3339;
        let t = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
            format!(
                "'{text}' must be 'earliest', 'latest', an event number (1 or more) or an RFC 3339 instant"
            )
        })?;
        let t = t.to_offset(time::UtcOffset::UTC);
        let second = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        Ok(Start::LoggedAt(second))
    }
}

/// What a start does when the events after the asked position were purged by retention
/// (or, for a named consumer, when it has no committed position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Continue from the first event still in the log, and say so.
    Earliest,
    /// Continue with the events logged from now on, and say so.
    Latest,
    /// Refuse the start.
    Fail,
}

/// A subscription's log as a start is resolved against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The first event number still in the log (the head + 1 when none is).
    pub first: i64,
    /// The subscription's count: the last event number generated.
    pub head: i64,
}

/// A start refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The reader has (or wants) numbers the subscription has not generated: resuming there
    /// would skip the events in between for good.
    BeyondHead { after: i64, bounds: Bounds },
    /// The events after `after` were purged and the policy says fail.
    Purged { after: i64, bounds: Bounds },
}

impl Refused {
    /// The log's bounds when the start was refused.
    pub fn bounds(&self) -> Bounds {
        match self {
            Refused::BeyondHead { bounds, .. } | Refused::Purged { bounds, .. } => *bounds,
        }
    }

    /// A machine-readable reason (gRPC `ErrorInfo.reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::BeyondHead { .. } => "BEYOND_HEAD",
            Refused::Purged { .. } => "HISTORY_GONE",
        }
    }

    /// What happened, for a person.
    pub fn message(&self, id: &str) -> String {
        match *self {
            Refused::BeyondHead { after, bounds } => format!(
                "Subscription/{id}: position {after} is beyond the head ({}); the first event still available is {}",
                bounds.head, bounds.first
            ),
            Refused::Purged { after, bounds } => format!(
                "Subscription/{id}: events after {after} were purged by retention; the first still available is {} (head {})",
                bounds.first, bounds.head
            ),
        }
    }
}

/// A start resolved to a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The stream starts after this event number.
    pub after: i64,
    /// `Some((asked, after))` when the asked position's following events were purged and
    /// the reset policy moved it: the reader must be told.
    pub reset: Option<(i64, i64)>,
    /// The log's bounds at the start.
    pub bounds: Bounds,
}

/// The log's bounds: the count read from the store (a cached subscription may lag behind a
/// number the reader already received), and the first event retained.
pub async fn bounds(hub: &Hub, sub: &Subscription) -> Result<Bounds, StoreError> {
    let fresh = hub.store.get_subscription(sub.tenant(), sub.id()).await?;
    let head = match fresh {
        Some(row) if row.log_key == sub.log_key => {
            row.events_since_start.max(sub.events_since_start)
        }
        _ => sub.events_since_start,
    };
    let first = hub
        .store
        .first_retained(sub.log_key)
        .await?
        .map_or(head + 1, |f| f.min(head + 1));
    Ok(Bounds { first, head })
}

/// Where `start` puts a reader of `sub`, with `on_purged` when the events after the asked
/// position are gone.
pub async fn resolve(
    hub: &Hub,
    sub: &Subscription,
    start: &Start,
    on_purged: Reset,
) -> Result<Result<Resolved, Refused>, StoreError> {
    let bounds = bounds(hub, sub).await?;
    let after = match start {
        Start::Earliest => bounds.first - 1,
        Start::Latest => bounds.head,
        Start::From(n) => n.saturating_sub(1).max(0),
        Start::After(n) => (*n).max(0),
        Start::LoggedAt(t) => match hub.store.first_logged_since(sub.log_key, t).await? {
            Some(n) => n - 1,
            None => bounds.head,
        },
    };
    Ok(place(after, bounds, on_purged))
}

/// The rules of [`resolve`] once the asked position and the bounds are known.
pub fn place(after: i64, bounds: Bounds, on_purged: Reset) -> Result<Resolved, Refused> {
    if after > bounds.head {
        return Err(Refused::BeyondHead { after, bounds });
    }
    if after + 1 >= bounds.first {
        return Ok(Resolved {
            after,
            reset: None,
            bounds,
        });
    }
    let moved = match on_purged {
        Reset::Earliest => bounds.first - 1,
        Reset::Latest => bounds.head,
        Reset::Fail => return Err(Refused::Purged { after, bounds }),
    };
    Ok(Resolved {
        after: moved,
        reset: Some((after, moved)),
        bounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { first: 6, head: 9 };

    #[test]
    fn positions_within_the_log_are_kept() {
        for after in [5, 7, 9] {
            assert_eq!(place(after, B, Reset::Fail).map(|r| r.after), Ok(after));
        }
    }

    #[test]
    fn beyond_the_head_is_refused_whatever_the_policy() {
        for reset in [Reset::Earliest, Reset::Latest, Reset::Fail] {
            assert_eq!(
                place(10, B, reset),
                Err(Refused::BeyondHead {
                    after: 10,
                    bounds: B
                })
            );
        }
    }

    #[test]
    fn purged_positions_follow_the_policy() {
        assert_eq!(
            place(2, B, Reset::Earliest).map(|r| (r.after, r.reset)),
            Ok((5, Some((2, 5))))
        );
        assert_eq!(
            place(2, B, Reset::Latest).map(|r| (r.after, r.reset)),
            Ok((9, Some((2, 9))))
        );
        assert_eq!(
            place(2, B, Reset::Fail),
            Err(Refused::Purged {
                after: 2,
                bounds: B
            })
        );
        // an empty log whose events were all purged
        let gone = Bounds { first: 10, head: 9 };
        assert_eq!(place(0, gone, Reset::Earliest).map(|r| r.after), Ok(9));
    }

    #[test]
    fn the_from_grammar() {
        assert_eq!(Start::parse_from("earliest"), Ok(Start::Earliest));
        assert_eq!(Start::parse_from("latest"), Ok(Start::Latest));
        assert_eq!(Start::parse_from("7"), Ok(Start::From(7)));
        assert_eq!(
            Start::parse_from("2026-01-02T03:04:05+01:00"),
            Ok(Start::LoggedAt("2026-01-02T02:04:05".into()))
        );
        assert_eq!(
            Start::parse_from("2026-01-02T03:04:05.75Z"),
            Ok(Start::LoggedAt("2026-01-02T03:04:05".into()))
        );
        assert!(Start::parse_from("0").is_err());
        assert!(Start::parse_from("-3").is_err());
        assert!(Start::parse_from("yesterday").is_err());
    }

    /// The bound compares below every stored time of its second and above every earlier
    /// one, whatever their fractions (as stored: `time`'s RFC 3339, fraction trimmed). Before,
    /// `…:05Z` sorted above `…:05.5Z`: an event logged half a second after the asked instant
    /// was skipped.
    #[test]
    fn a_start_at_a_time_never_skips_an_event_of_its_second() {
        let Ok(Start::LoggedAt(bound)) = Start::at_time("2026-01-02T03:04:05Z") else {
            panic!("a start at a time");
        };
        for stored in [
            "2026-01-02T03:04:05Z",
            "2026-01-02T03:04:05.5Z",
            "2026-01-02T03:04:05.000000001Z",
            "2026-01-02T03:04:05.999999999Z",
            "2026-01-02T03:04:06.1Z",
        ] {
            assert!(stored >= bound.as_str(), "{stored} would be skipped");
        }
        for earlier in ["2026-01-02T03:04:04.999Z", "2026-01-02T03:04:04Z"] {
            assert!(earlier < bound.as_str(), "{earlier} would be included");
        }
    }
}
