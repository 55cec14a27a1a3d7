//! Which keys sealed the secrets at rest (by fingerprint), so a hub with the wrong key is
//! refused at start.

use std::collections::HashMap;

use sqlx::Row;

use crate::{Store, StoreError, now};

impl Store {
    /// The recorded sealing keys: key id → fingerprint.
    pub async fn sealing_keys(&self) -> Result<HashMap<String, String>, StoreError> {
        let rows = sqlx::query("SELECT key_id, fingerprint FROM sealing_keys")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Record a key's fingerprint the first time it is used (a recorded one is kept).
    pub async fn record_sealing_key(
        &self,
        key_id: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sealing_keys (key_id, fingerprint, first_used_at) VALUES ($1, $2, $3)
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id)
        .bind(fingerprint)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many subscriptions hold a value sealed with `key_id` (`None`: with any key).
    pub async fn count_sealed(&self, key_id: Option<&str>) -> Result<i64, StoreError> {
        let pattern = match key_id {
            Some(id) => format!("enc:v%:{}:%", escape_like(id)),
            None => "enc:v%".to_owned(),
        };
        let row = sqlx::query(
            "SELECT COUNT(*) FROM subscriptions
             WHERE secret LIKE $1 ESCAPE '\\' OR client_certificate LIKE $1 ESCAPE '\\'
                OR resource LIKE '%' || $1 ESCAPE '\\'",
        )
        .bind(pattern)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}

/// `id` with LIKE's wildcards escaped (`\\` is the escape character).
fn escape_like(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
