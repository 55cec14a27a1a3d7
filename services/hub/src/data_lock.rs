//! One `serve` per embedded data file. Two processes serving the same SQLite store or
//! embedded log would both match and both deliver, numbering the same subscriptions from two
//! places; the second one is refused at start instead. The CLI's one-off commands (`publish`,
//! `keys`) take no lock: they write through SQLite's own locking while a hub serves.
//!
//! The lock is an advisory `flock` on `<file>.lock` beside each local file; the kernel drops
//! it when the process ends, however it ends, so a `kill -9` leaves nothing to clean up.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{Config, LogBackend};

/// The locks this process holds; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct DataLocks {
    _files: Vec<File>,
}

/// The local files `config` serves from: the SQLite store and the embedded log.
fn local_files(config: &Config) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let url = config.database_url();
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or("");
        if !path.is_empty() && path != ":memory:" {
            out.push(PathBuf::from(path));
        }
    }
    if config.log.backend == LogBackend::Embedded {
        out.push(config.embedded_log_path());
    }
    out
}

/// Lock every local file `config` serves from, or say which one another process serves.
pub fn lock(config: &Config) -> anyhow::Result<DataLocks> {
    let mut files = Vec::new();
    for path in local_files(config) {
        files.push(lock_one(&path)?);
    }
    Ok(DataLocks { _files: files })
}

fn lock_one(path: &Path) -> anyhow::Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    if let Some(dir) = lock_path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => anyhow::bail!(
            "another fhir-hub process is serving {} (its lock {} is held): two processes on one \
             embedded data file would both match and deliver the same subscriptions; stop the \
             other one, or give this one its own --data-dir",
            path.display(),
            lock_path.display()
        ),
        Err(TryLockError::Error(e)) => Err(anyhow::anyhow!("locking {}: {e}", lock_path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let first = lock_one(&db).unwrap();
        let err = lock_one(&db).unwrap_err().to_string();
        assert!(err.contains("another fhir-hub process is serving"), "{err}");
        drop(first);
        lock_one(&db).unwrap();
    }
}
