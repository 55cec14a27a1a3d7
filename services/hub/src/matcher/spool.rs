//! The last resort for a record the store would not take even into quarantine: a bounded
//! local file, one JSON line per record (its bytes in base64), so the matcher can move on.
//!
//! Reaching it means the database refused a quarantine row whose every text is sanitized
//! (in practice only a payload over the database's size limits). Each record parked here is
//! logged at ERROR and counted; past `matcher.spool_max_bytes` a record is dropped instead,
//! also logged at ERROR and counted: the partition never stops, and an operator sees what
//! it cost.

use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use hub_store::NewQuarantined;
use serde_json::json;

use crate::metrics::Metrics;

/// The spool file and its bound.
#[derive(Debug, Clone)]
pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
}

/// What became of a record handed to the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Written to the spool file.
    Spooled,
    /// Not written (the spool is full, or the file could not be written): lost.
    Dropped,
}

/// Name of the spool file in the data directory.
pub const SPOOL_FILE: &str = "quarantine-spool.ndjson";

impl Spool {
    pub fn new(path: PathBuf, max_bytes: u64) -> Spool {
        Spool { path, max_bytes }
    }

    /// Park `q` (the store refused it for `why`), count it and log it at ERROR.
    pub fn park(&self, q: &NewQuarantined, why: &str, metrics: &Metrics) -> Parked {
        let line = json!({
            "source": q.source.as_str(),
            "stage": q.stage.as_str(),
            "tenant": q.tenant.as_ref().map(|t| t.as_str()),
            "eventId": q.event_id.as_ref().map(|t| t.as_str()),
            "key": q.record_key.as_ref().map(|t| t.as_str()),
            "reason": q.reason.as_str(),
            "refusedBecause": hub_store::Sanitized::new(why).as_str(),
            "parkedAt": time_now(),
            "payloadBase64": base64::engine::general_purpose::STANDARD.encode(&q.payload),
        })
        .to_string();
        let outcome = self.append(&line);
        crate::metrics::RecordParked {
            source: &q.source,
            outcome: match &outcome {
                Ok(()) => Parked::Spooled,
                Err(_) => Parked::Dropped,
            },
            error: outcome.as_ref().err().map(String::as_str),
            path: &self.path,
        }
        .emit(metrics);
        match outcome {
            Ok(()) => Parked::Spooled,
            Err(_) => Parked::Dropped,
        }
    }

    fn append(&self, line: &str) -> Result<(), String> {
        let used = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let adds = line.len() as u64 + 1;
        if used.saturating_add(adds) > self.max_bytes {
            return Err(format!(
                "the spool is full ({used} of {} bytes; matcher.spool_max_bytes)",
                self.max_bytes
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("cannot open the spool: {e}"))?;
        writeln!(file, "{line}")
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("cannot write the spool: {e}"))
    }
}

fn time_now() -> String {
    hub_fhir::time_fmt::now_instant()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_store::{QuarantineStage, Sanitized};

    fn record(n: usize) -> NewQuarantined {
        NewQuarantined {
            source: Sanitized::new(&format!("t/0@{n}")),
            tenant: None,
            event_id: None,
            record_key: Some(Sanitized::new("k\0")),
            payload: vec![0, 0xff, b'{'],
            stage: QuarantineStage::Store,
            reason: Sanitized::new("refused"),
        }
    }

    #[test]
    fn parks_records_until_full_then_drops_and_counts_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPOOL_FILE);
        let spool = Spool::new(path.clone(), 700);
        let metrics = Metrics::default();
        let got: Vec<Parked> = (0..5)
            .map(|n| spool.park(&record(n), "too big\0", &metrics))
            .collect();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!lines.is_empty() && lines.len() < 5, "{text}");
        assert_eq!(
            got.iter().filter(|p| **p == Parked::Spooled).count(),
            lines.len()
        );
        assert!(got.ends_with(&[Parked::Dropped]));
        assert!(text.len() <= 700);
        assert_eq!(lines[0]["payloadBase64"], "AP97");
        assert_eq!(lines[0]["key"], "k\\u{0}");
        assert_eq!(lines[0]["refusedBecause"], "too big\\u{0}");
        let rendered = metrics.render(&[], None);
        assert!(
            rendered.contains(&format!(
                "fhir_hub_events_parked_total{{outcome=\"spooled\"}} {}",
                lines.len()
            )),
            "{rendered}"
        );
        assert!(
            rendered.contains(&format!(
                "fhir_hub_events_parked_total{{outcome=\"dropped\"}} {}",
                5 - lines.len()
            )),
            "{rendered}"
        );
    }
}
