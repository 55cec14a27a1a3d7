//! Text a producer controls, made safe to store and to log.
//!
//! Anything that writes to the changes topic chooses a record's key and bytes, and refusal
//! reasons echo what they refused. PostgreSQL's `text` refuses a NUL character (and the
//! whole transaction with it), control characters rewrite an operator's terminal or forge
//! log lines, and a megabyte of key would be stored and logged as it came. [`Sanitized`] is
//! the only way such text reaches a column of the quarantine or a log line: it can only be
//! made by cleaning.

use std::fmt;

/// Most bytes kept of one producer-controlled text; longer text is cut at a character
/// boundary and says so.
pub const MAX_SANITIZED_BYTES: usize = 2048;

/// Producer-controlled text, cleaned: valid UTF-8 (invalid sequences became U+FFFD), no
/// control characters (NUL, C0, DEL, C1) and no line or bidirectional-override
/// characters (each written as a `\u{..}` escape instead), at most [`MAX_SANITIZED_BYTES`]
/// bytes (text that was cut ends with a note of its length). Cleaning clean text changes
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Sanitized(String);

/// Characters that reorder or break text when displayed: a log line or a terminal must
/// show them as escapes.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Room kept for the note that says how much was cut.
const NOTE_ROOM: usize = 48;

/// `text` with unsafe characters escaped, cut before it passes `limit` bytes; and whether it
/// was cut.
fn clean(text: &str, limit: usize) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(limit) + 8);
    for c in text.chars() {
        let before = out.len();
        if is_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
        if out.len() > limit {
            out.truncate(before);
            return (out, true);
        }
    }
    (out, false)
}

fn cut_note(total: usize) -> String {
    format!("… (cut from {total} bytes)")
}

impl Sanitized {
    /// Clean `text`.
    pub fn new(text: &str) -> Sanitized {
        if text.len() <= MAX_SANITIZED_BYTES && !text.chars().any(is_unsafe) {
            return Sanitized(text.to_owned());
        }
        match clean(text, MAX_SANITIZED_BYTES) {
            (out, false) => Sanitized(out),
            (_, true) => {
                let (mut out, _) = clean(text, MAX_SANITIZED_BYTES - NOTE_ROOM);
                out.push_str(&cut_note(text.len()));
                Sanitized(out)
            }
        }
    }

    /// Clean bytes that should be text (a Kafka key, a payload shown as text).
    pub fn from_bytes(bytes: &[u8]) -> Sanitized {
        if bytes.len() <= MAX_SANITIZED_BYTES {
            return Sanitized::new(&String::from_utf8_lossy(bytes));
        }
        // bounded before decoding: a huge key costs no more than a short one
        let keep = MAX_SANITIZED_BYTES - NOTE_ROOM;
        let head = String::from_utf8_lossy(bytes.get(..keep).unwrap_or(bytes));
        let (mut out, _) = clean(&head, keep);
        out.push_str(&cut_note(bytes.len()));
        Sanitized(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Sanitized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Sanitized {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Sanitized {
    fn from(text: &str) -> Sanitized {
        Sanitized::new(text)
    }
}

impl From<String> for Sanitized {
    fn from(text: String) -> Sanitized {
        Sanitized::new(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_is_kept_as_it_is() {
        for t in [
            "",
            "Observation/o1",
            "not valid JSON: expected value",
            "é ü 日本",
        ] {
            assert_eq!(Sanitized::new(t).as_str(), t);
        }
    }

    #[test]
    fn nul_and_control_characters_become_escapes() {
        assert_eq!(Sanitized::new("x\0y").as_str(), "x\\u{0}y");
        assert_eq!(
            Sanitized::new("a\u{1b}[2J\n\u{7f}\u{85}\u{202e}b").as_str(),
            "a\\u{1b}[2J\\u{a}\\u{7f}\\u{85}\\u{202e}b"
        );
        assert_eq!(
            Sanitized::from_bytes(b"k\xff\x00").as_str(),
            "k\u{fffd}\\u{0}"
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_SANITIZED_BYTES);
        let s = Sanitized::new(&long);
        assert!(
            s.as_str().len() <= MAX_SANITIZED_BYTES,
            "{}",
            s.as_str().len()
        );
        assert!(s.as_str().ends_with("bytes)"), "{}", s.as_str());
        let b = Sanitized::from_bytes(&vec![0u8; 1 << 20]);
        assert!(b.as_str().len() <= MAX_SANITIZED_BYTES);
        assert!(b.as_str().contains("cut from"));
    }

    #[test]
    fn cleaning_is_idempotent_and_never_leaves_a_control_character() {
        let mut bytes: Vec<u8> = (0u8..=255).collect();
        bytes.extend_from_slice("\u{2028}\u{2066}x".as_bytes());
        bytes.extend(std::iter::repeat_n(b'\0', 5000));
        let once = Sanitized::from_bytes(&bytes);
        assert!(!once.as_str().chars().any(is_unsafe), "{once}");
        assert_eq!(Sanitized::new(once.as_str()), once);
        let cut = Sanitized::new(&"\0".repeat(MAX_SANITIZED_BYTES));
        assert!(cut.as_str().len() <= MAX_SANITIZED_BYTES, "{cut}");
        assert_eq!(Sanitized::new(cut.as_str()), cut);
    }
}
