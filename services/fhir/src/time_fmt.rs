//! FHIR `instant` formatting and parsing.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Format an instant the way FHIR `instant` wants it (RFC 3339, UTC, `Z`).
pub fn instant(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    // RFC 3339 formatting cannot fail for years 0..=9999, which `now` always is.
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Parse a FHIR `instant` (RFC 3339 with seconds and a zone).
pub fn parse_instant(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// The current instant, formatted.
pub fn now_instant() -> String {
    instant(OffsetDateTime::now_utc())
}
