//! Quarantined change events: what the matcher could not process, with the reason.
//!
//! Data is never the reason the hub stops: a record that cannot be read, or whose matching
//! panicked or went over its budget, is written here (before its log position is
//! acknowledged) and the matcher moves on. Operators list, replay or drop them.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Sanitized, Store, StoreError, now};

/// Where processing gave up on a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineStage {
    /// The record is not a change event (not JSON, not a resource or envelope).
    Parse,
    /// Matching panicked or went over its budget for at least one subscription or topic.
    Match,
    /// The store refused what the event's notifications would have written.
    Store,
}

impl QuarantineStage {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineStage::Parse => "parse",
            QuarantineStage::Match => "match",
            QuarantineStage::Store => "store",
        }
    }

    fn parse(s: &str) -> Result<QuarantineStage, StoreError> {
        match s {
            "parse" => Ok(QuarantineStage::Parse),
            "match" => Ok(QuarantineStage::Match),
            "store" => Ok(QuarantineStage::Store),
            other => Err(StoreError::Corrupt(format!("quarantine stage '{other}'"))),
        }
    }
}

/// A record to quarantine. Every text a producer could have chosen (the key, what the
/// reason echoes) is [`Sanitized`]: the record is refused by nothing but its size, and the
/// bytes as read are kept whole in `payload` (a binary column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewQuarantined {
    /// The log position (`topic/partition@offset`); one row per position.
    pub source: Sanitized,
    pub tenant: Option<Sanitized>,
    pub event_id: Option<Sanitized>,
    pub record_key: Option<Sanitized>,
    /// The record exactly as read from the log.
    pub payload: Vec<u8>,
    pub stage: QuarantineStage,
    pub reason: Sanitized,
}

/// A quarantined record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub id: i64,
    pub quarantined_at: String,
    pub record: NewQuarantined,
}

const COLUMNS: &str =
    "id, source, tenant, event_id, record_key, payload, stage, reason, quarantined_at";

fn from_row(r: &AnyRow) -> Result<Quarantined, StoreError> {
    let stage: String = r.try_get(6)?;
    let text = |i: usize| -> Result<Option<Sanitized>, sqlx::Error> {
        Ok(r.try_get::<Option<String>, _>(i)?.map(Sanitized::from))
    };
    Ok(Quarantined {
        id: r.try_get(0)?,
        quarantined_at: r.try_get(8)?,
        record: NewQuarantined {
            source: Sanitized::from(r.try_get::<String, _>(1)?),
            tenant: text(2)?,
            event_id: text(3)?,
            record_key: text(4)?,
            payload: r.try_get(5)?,
            stage: QuarantineStage::parse(&stage)?,
            reason: Sanitized::from(r.try_get::<String, _>(7)?),
        },
    })
}

impl Store {
    /// Quarantine records; a position already quarantined is left as it is. All or none:
    /// a [`StoreError::Refused`] names no record, so a caller tries them one at a time.
    pub async fn quarantine(&self, records: &[NewQuarantined]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let at = now();
        let mut tx = self.pool.begin().await?;
        for q in records {
            sqlx::query(
                "INSERT INTO quarantined_events \
                 (source, tenant, event_id, record_key, payload, stage, reason, quarantined_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (source) DO NOTHING",
            )
            .bind(q.source.as_str())
            .bind(q.tenant.as_ref().map(Sanitized::as_str))
            .bind(q.event_id.as_ref().map(Sanitized::as_str))
            .bind(q.record_key.as_ref().map(Sanitized::as_str))
            .bind(q.payload.clone())
            .bind(q.stage.as_str())
            .bind(q.reason.as_str())
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Quarantined records, oldest first, after id `after`; of one tenant when given.
    pub async fn list_quarantined(
        &self,
        tenant: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Quarantined>, StoreError> {
        let rows =
            match tenant {
                Some(t) => {
                    sqlx::query(&format!(
                        "SELECT {COLUMNS} FROM quarantined_events WHERE id > $1 AND tenant = $2 \
                     ORDER BY id LIMIT $3"
                    ))
                    .bind(after)
                    .bind(t)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
                }
                None => sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM quarantined_events WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
            };
        rows.iter().map(from_row).collect()
    }

    /// One quarantined record.
    pub async fn quarantined(&self, id: i64) -> Result<Quarantined, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM quarantined_events WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => from_row(&r),
            None => Err(StoreError::NotFound),
        }
    }

    /// Remove a quarantined record (after it was replayed, or when an operator drops it).
    pub async fn release_quarantined(&self, id: i64) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM quarantined_events WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// How many records are quarantined (a gauge for `/metrics`).
    pub async fn count_quarantined(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM quarantined_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}
