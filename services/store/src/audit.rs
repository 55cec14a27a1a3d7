//! The audit trail: append-only rows of who did or received what, served to operators as
//! FHIR `AuditEvent`s.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, now};

/// One audit row as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NewAudit {
    pub tenant: String,
    /// `change`, `credential` or `disclosure`.
    pub kind: String,
    /// FHIR AuditEvent.action: C, R, U, D or E.
    pub action: String,
    /// Who: a credential subject (`key:…`, `jwt:…`), or the subscription's endpoint owner.
    pub agent: String,
    /// What: a resource reference (`Observation/123`, `Subscription/abc`).
    pub entity: Option<String>,
    pub subscription_id: Option<String>,
    pub channel: Option<String>,
    /// FHIR AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure.
    pub outcome: String,
    pub detail: Option<String>,
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub recorded: String,
    pub audit: NewAudit,
}

/// What an audit search asks for (all optional; ANDed).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this tenant (`None`: every tenant, for operators).
    pub tenant: Option<String>,
    /// `recorded >= since` and `recorded < until` (stored instants compare as text).
    pub since: Option<String>,
    pub until: Option<String>,
    pub agent: Option<String>,
    pub entity: Option<String>,
    pub subscription_id: Option<String>,
    pub limit: i64,
}

const COLUMNS: &str =
    "id, recorded, tenant, kind, action, agent, entity, subscription_id, channel, outcome, detail";

fn from_row(r: &AnyRow) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        id: r.try_get(0)?,
        recorded: r.try_get(1)?,
        audit: NewAudit {
            tenant: r.try_get(2)?,
            kind: r.try_get(3)?,
            action: r.try_get(4)?,
            agent: r.try_get(5)?,
            entity: r.try_get(6)?,
            subscription_id: r.try_get(7)?,
            channel: r.try_get(8)?,
            outcome: r.try_get(9)?,
            detail: r.try_get(10)?,
        },
    })
}

/// Rows per multi-row INSERT (10 parameters each: 10,000 in all, under SQLite's 32,766 and
/// PostgreSQL's 65,535).
const CHUNK: usize = 1000;

impl Store {
    /// Append audit rows (one statement per 1,000).
    pub async fn audit(&self, rows: &[NewAudit]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let recorded = now();
        for chunk in rows.chunks(CHUNK) {
            let mut sql = String::from(
                "INSERT INTO audit_events (recorded, tenant, kind, action, agent, entity, \
                 subscription_id, channel, outcome, detail) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let p = crate::placeholders(self.backend, i * 10 + 1, 10);
                sql.push_str(&format!("({})", p.join(", ")));
            }
            let mut q = sqlx::query(&sql);
            for a in chunk {
                q = q
                    .bind(&recorded)
                    .bind(&a.tenant)
                    .bind(&a.kind)
                    .bind(&a.action)
                    .bind(&a.agent)
                    .bind(&a.entity)
                    .bind(&a.subscription_id)
                    .bind(&a.channel)
                    .bind(&a.outcome)
                    .bind(&a.detail);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Audit rows matching `q`, newest first.
    pub async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_events
             WHERE ($1 = '' OR tenant = $1) AND ($2 = '' OR recorded >= $2)
               AND ($3 = '' OR recorded < $3) AND ($4 = '' OR agent = $4)
               AND ($5 = '' OR entity = $5) AND ($6 = '' OR subscription_id = $6)
             ORDER BY id DESC LIMIT $7"
        ))
        .bind(q.tenant.as_deref().unwrap_or(""))
        .bind(q.since.as_deref().unwrap_or(""))
        .bind(q.until.as_deref().unwrap_or(""))
        .bind(q.agent.as_deref().unwrap_or(""))
        .bind(q.entity.as_deref().unwrap_or(""))
        .bind(q.subscription_id.as_deref().unwrap_or(""))
        .bind(q.limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }
}
