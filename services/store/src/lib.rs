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
mod log_key;
mod logged_events;
mod notifications;
mod quarantine;
mod retention;
mod sealing;
mod subscriptions;
mod text;
mod topics;
mod versions;
mod ws_tokens;

pub use api_keys::ApiKeyRow;
pub use audit::{AuditQuery, AuditRow, NewAudit};
pub use consumers::Commit;
pub use delivery::{DeliveryState, Failure};
pub use generations::MatchingChanges;
pub use history::Version;
pub use housekeeping::Purged;
pub use leases::Heartbeat;
pub use listen::{Heard, Logged, LoggedListener};
pub use log_key::LogKey;
pub use notifications::{NewNotification, Notification};
pub use quarantine::{NewQuarantined, QuarantineStage, Quarantined};
pub use retention::RETENTION_BATCH;
pub use subscriptions::{SubscriptionRow, SubscriptionSecrets, SubscriptionWrite};
pub use text::{MAX_SANITIZED_BYTES, Sanitized};
pub use topics::TopicRow;
pub use versions::{ResourceKey, VersionAt};
pub use ws_tokens::WsToken;

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
    /// The database refused a value of what was written (a character its encoding cannot
    /// hold, a value over its size limits, a failed constraint): writing the same data again
    /// fails the same way, so a caller holding it must set it aside, not retry.
    #[error("the database refused the data: {0}")]
    Refused(String),
    /// A statement waited past the lock or statement timeout (another transaction holds a
    /// row this one needs), or the session sat idle in a transaction past its limit.
    #[error("database timeout: {0}")]
    Timeout(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) => match classify(db.as_ref()) {
                Class::Refused => StoreError::Refused(Sanitized::new(&e.to_string()).into_string()),
                Class::Timeout => StoreError::Timeout(e.to_string()),
                Class::Other => StoreError::Database(e.to_string()),
            },
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// What a database error says about retrying.
enum Class {
    /// The data itself: the same write fails again.
    Refused,
    /// A lock or statement timeout: another try may pass.
    Timeout,
    Other,
}

fn classify(e: &dyn sqlx::error::DatabaseError) -> Class {
    use sqlx::error::ErrorKind;
    match e.kind() {
        // a race between two writers of one key: the retry sees the winner's row
        ErrorKind::UniqueViolation => return Class::Other,
        ErrorKind::ForeignKeyViolation
        | ErrorKind::NotNullViolation
        | ErrorKind::CheckViolation => {
            return Class::Refused;
        }
        _ => {}
    }
    if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let code = pg.code();
        return match code.get(..2) {
            // data exception (22: encoding, length, format) and program limit exceeded (54:
            // an index row or a value too large); other integrity violations (23)
            Some("22" | "54") => Class::Refused,
            Some("23") if code != "23505" => Class::Refused,
            // lock_not_available, query_canceled (statement timeout),
            // idle_in_transaction_session_timeout
            _ if matches!(code, "55P03" | "57014" | "25P03") => Class::Timeout,
            _ => Class::Other,
        };
    }
    if let Some(lite) = e.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // the primary result code is the low byte of the extended one
        let primary = sqlx::error::DatabaseError::code(lite)
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff);
        return match primary {
            // SQLITE_TOOBIG, SQLITE_CONSTRAINT (unique excluded above), SQLITE_MISMATCH,
            // SQLITE_RANGE
            Some(18 | 19 | 20 | 25) => Class::Refused,
            _ => Class::Other,
        };
    }
    Class::Other
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

/// Limits PostgreSQL enforces on each pooled connection, so one frozen process cannot hold
/// up every other: a lock wait, a statement and an idle open transaction each end. 0 turns
/// one off. SQLite has one writer per file and its own busy timeout; these do not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `lock_timeout`: a statement waiting this long for a row lock fails
    /// ([`StoreError::Timeout`]).
    pub lock_ms: u64,
    /// `statement_timeout`: any statement running this long is cancelled.
    pub statement_ms: u64,
    /// `idle_in_transaction_session_timeout`: a session idle this long inside a transaction
    /// is ended, its locks released.
    pub idle_in_transaction_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            lock_ms: 10_000,
            // long enough for housekeeping's purges on a large log
            statement_ms: 300_000,
            idle_in_transaction_ms: 60_000,
        }
    }
}

impl Timeouts {
    /// The `SET` statements applying these to a session (what every pooled PostgreSQL
    /// connection runs first).
    pub fn session_sql(&self) -> String {
        format!(
            "SET lock_timeout = {}; SET statement_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}",
            self.lock_ms, self.statement_ms, self.idle_in_transaction_ms
        )
    }
}

/// The store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    timeouts: Timeouts,
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
    /// needed, and run the embedded migrations; PostgreSQL sessions get the default
    /// [`Timeouts`].
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with(url, Timeouts::default()).await
    }

    /// [`Store::connect`] with these PostgreSQL session limits.
    pub async fn connect_with(url: &str, timeouts: Timeouts) -> Result<Store, StoreError> {
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
        let pool = open_pool(&url, backend, size, timeouts).await?;
        let store = Store {
            pool,
            backend,
            timeouts,
            url: std::sync::Arc::from(url.as_str()),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Bring the schema up to this binary's migrations. A schema a newer binary migrated
    /// (one holding a migration this binary does not know) is refused, never used: this
    /// binary's statements may not fit it (rolling back means the backup taken before the
    /// upgrade, docs/operations.md).
    async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        };
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(v) if v > latest => {
                StoreError::Unavailable(format!(
                    "the database schema is newer than this fhir-hub {}: it holds migration {v}, \
                     this binary knows migrations up to {latest}. A newer fhir-hub upgraded it; \
                     run that version (or newer), or restore the backup taken before the upgrade",
                    env!("CARGO_PKG_VERSION")
                ))
            }
            sqlx::migrate::MigrateError::VersionMissing(v) => StoreError::Unavailable(format!(
                "the database schema holds migration {v}, which this fhir-hub {} does not know: \
                 it was made by another build of fhir-hub",
                env!("CARGO_PKG_VERSION")
            )),
            other => other.into(),
        })?;
        Ok(())
    }

    /// The newest schema migration this binary knows, per backend (docs/operations.md).
    pub fn schema_version(backend: Backend) -> i64 {
        let migrator = match backend {
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        };
        migrator.iter().map(|m| m.version).max().unwrap_or(0)
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
            pool: open_pool(
                &self.url,
                self.backend,
                max_connections.max(1),
                self.timeouts,
            )
            .await?,
            backend: self.backend,
            timeouts: self.timeouts,
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

    /// PostgreSQL: the limits a pooled session runs with, as the server reports them
    /// (`lock_timeout`, `statement_timeout`, `idle_in_transaction_session_timeout`); empty on
    /// SQLite.
    pub async fn session_limits(&self) -> Result<Vec<String>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let row = sqlx::query(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),
                 current_setting('idle_in_transaction_session_timeout')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(vec![row.try_get(0)?, row.try_get(1)?, row.try_get(2)?])
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

async fn open_pool(
    url: &str,
    backend: Backend,
    size: u32,
    timeouts: Timeouts,
) -> Result<AnyPool, StoreError> {
    let opts = AnyConnectOptions::from_str(url)?;
    let mut pool_opts = AnyPoolOptions::new()
        .acquire_timeout(Duration::from_secs(10))
        .max_connections(size);
    if backend == Backend::Postgres {
        // every pooled session (the LISTEN connection is not pooled: it waits by design)
        let set = std::sync::Arc::<str>::from(timeouts.session_sql());
        pool_opts = pool_opts.after_connect(move |conn, _| {
            let set = std::sync::Arc::clone(&set);
            Box::pin(async move {
                conn.execute(&*set).await?;
                Ok(())
            })
        });
    }
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
    match pool_opts.connect_with(opts.clone()).await {
        Ok(pool) => Ok(pool),
        // the pool retries until its timeout and then says only that: one direct attempt
        // tells why (connection refused, no such host, authentication, TLS)
        Err(sqlx::Error::PoolTimedOut) => {
            use sqlx::Connection;
            let probe = sqlx::AnyConnection::connect_with(&opts);
            let why = match tokio::time::timeout(Duration::from_secs(10), probe).await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(conn)) => {
                    drop(conn.close().await);
                    "no pooled connection within 10 s, though a direct one works (a session \
                     setting the pool runs failed, or the server is overloaded)"
                        .to_owned()
                }
                Err(_) => "no answer within 10 s".to_owned(),
            };
            Err(StoreError::Unavailable(format!(
                "cannot connect to {} ({}): {why}",
                server_of(url),
                redact(url)
            )))
        }
        Err(e) => Err(StoreError::Unavailable(format!("{}: {e}", redact(url)))),
    }
}

/// `host:port` of a database URL (`postgres://user:pw@host:port/db?…`), no credentials.
fn server_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        "the database".to_owned()
    } else if host.contains(':') && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
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

    #[test]
    fn names_the_server_without_credentials() {
        for (url, server) in [
            ("postgres://u:secret@db.example:6543/hub", "db.example:6543"),
            ("postgres://u@10.0.0.1/hub?sslmode=require", "10.0.0.1:5432"),
            ("postgresql://[::1]:5433/hub", "[::1]:5433"),
            ("postgres://[::1]/hub", "[::1]:5432"),
        ] {
            assert_eq!(super::server_of(url), server);
        }
    }
}
