//! Durable state of the hub: subscriptions, the per-subscription notification log (where
//! gap-free event numbers are assigned) and delivery state.
//!
//! One implementation over `sqlx::Any` with SQL that both backends accept, so PostgreSQL
//! (production, several hub instances) and SQLite (embedded default) cannot drift apart;
//! each backend has its own embedded migrations. The contract tests run against both.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

mod api_keys;
mod audit;
mod consumers;
mod delivery;
mod generations;
mod history;
mod housekeeping;
mod leases;
mod listen;
mod logged_events;
mod notifications;
mod quarantine;
mod retention;
mod subscriptions;
mod topics;
mod versions;
mod ws_tokens;

pub use api_keys::ApiKeyRow;
pub use audit::{AuditQuery, AuditRow, NewAudit};
pub use delivery::DeliveryState;
pub use generations::MatchingChanges;
pub use history::Version;
pub use housekeeping::Purged;
pub use leases::Heartbeat;
pub use listen::{Heard, Logged, LoggedListener};
pub use notifications::{NewNotification, Notification};
pub use quarantine::{NewQuarantined, QuarantineStage, Quarantined};
pub use retention::RETENTION_BATCH;
pub use subscriptions::{SubscriptionRow, SubscriptionWrite};
pub use topics::TopicRow;
pub use versions::ResourceKey;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("version conflict: the resource is at version {current}")]
    VersionConflict { current: i64 },
    #[error("already exists")]
    AlreadyExists,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(format!("migration failed: {e}"))
    }
}

/// Which SQL database backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Where the pool connects: a `LISTEN` connection (PostgreSQL) and [`Store::own_pool`]
    /// open connections of their own there.
    url: std::sync::Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the URL: it may hold a password
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connect to `url` (`postgres://...` or `sqlite://path`), creating a SQLite file if
    /// needed, and run the embedded migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Unavailable(format!(
                "unsupported database URL '{}': use postgres://... or sqlite://...",
                redact(url)
            )));
        };
        let url = if backend == Backend::Sqlite {
            ensure_sqlite_parent(url)?;
            if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            }
        } else {
            url.to_owned()
        };
        // SQLite: one connection, so this process's statements queue in order in the pool
        // instead of meeting as writers in SQLite's busy handler (sleeps from 1 ms growing to
        // 100 ms) or failing a deferred transaction's upgrade to a writer; reads are
        // microseconds, and the file has one writer at a time anyway. This took the p99
        // publish-to-client latency from 175 ms to under 10 ms (docs/benchmarks.md).
        let size = if backend == Backend::Sqlite { 1 } else { 16 };
        let pool = open_pool(&url, backend, size).await?;
        let store = Store {
            pool,
            backend,
            url: std::sync::Arc::from(url.as_str()),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The same database through a pool of its own (`max_connections`): a role that polls
    /// a lot (delivery) cannot then take the connections another role's writes need (the
    /// matcher's appends).
    pub async fn own_pool(&self, max_connections: u32) -> Result<Store, StoreError> {
        if self.backend == Backend::Sqlite {
            // one process, one writer: a second pool would only wait on the first's lock
            return Ok(self.clone());
        }
        Ok(Store {
            pool: open_pool(&self.url, self.backend, max_connections.max(1)).await?,
            backend: self.backend,
            url: std::sync::Arc::clone(&self.url),
        })
    }

    /// Connections of this store's pool now open, and how many of them are idle.
    pub fn pool_usage(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// A cheap round trip to the database.
    pub async fn health(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Statements the database has run so far (PostgreSQL's committed and rolled-back
    /// transactions; every autocommit statement is one): for benchmarks that count what
    /// idle work costs. 0 on SQLite.
    pub async fn database_statements(&self) -> Result<i64, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(0);
        }
        // statistics are published at the end of each transaction, and read from a snapshot
        // taken once per transaction: clear it first so this one sees the latest
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(
            "SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database
             WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Close the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `count` bind placeholders numbered from `first`: `$first`, `$first+1`, … on PostgreSQL;
/// bare `?` on SQLite, which numbers them in the order they appear (so a statement built
/// with these must use them for every parameter, bound in textual order). SQLite finds a
/// named parameter such as `$7` by walking a list, and the driver asks for every parameter's
/// name: a statement with thousands of named parameters costs the square of their number
/// (a 9,000-parameter audit INSERT spent most of the hub's time there).
pub(crate) fn placeholders(backend: Backend, first: usize, count: usize) -> Vec<String> {
    (first..first + count)
        .map(|i| match backend {
            Backend::Postgres => format!("${i}"),
            Backend::Sqlite => "?".to_owned(),
        })
        .collect()
}

async fn open_pool(url: &str, backend: Backend, size: u32) -> Result<AnyPool, StoreError> {
    let opts = AnyConnectOptions::from_str(url)?;
    let mut pool_opts = AnyPoolOptions::new()
        .acquire_timeout(Duration::from_secs(10))
        .max_connections(size);
    if backend == Backend::Sqlite {
        pool_opts = pool_opts.after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        });
    }
    pool_opts
        .connect_with(opts)
        .await
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", redact(url))))
}

/// A URL whose connections use a new, empty schema on the PostgreSQL server at `base`:
/// how tests and benchmarks get a database of their own on a shared server.
pub async fn fresh_postgres_schema(base: &str, prefix: &str) -> Result<String, StoreError> {
    use sqlx::Connection;
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", redact(base))))?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// Hide the password of a database URL for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn ensure_sqlite_parent(url: &str) -> Result<(), StoreError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    Ok(())
}

/// The current instant as stored (`2024-01-31T12:00:00.123Z`).
pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
