//! The change events of the notification log, each stored once however many subscriptions
//! it reaches (`logged_events`), and what keeps retention from taking one an append is about
//! to refer to.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{Any, Row, Transaction};

use crate::notifications::{CHUNK, Key};
use crate::{Backend, NewNotification, StoreError, placeholders};

/// A change event of the batch as stored: its sequence number, when it was first logged,
/// and whether this transaction stored it (no subscription can have it yet).
pub(crate) struct StoredEvent {
    pub(crate) seq: i64,
    pub(crate) logged_at: String,
    pub(crate) fresh: bool,
}

/// Store the batch's change events once each: what each one's notifications refer to.
/// Those stored before (a re-read batch, another subscription, a race with another matcher)
/// are marked logged again (`relogged_at`), which keeps them from retention as long as a
/// fresh event; one a purge removed meanwhile is stored again. None is ever left out.
pub(crate) async fn store_events<'a>(
    backend: Backend,
    tx: &mut Transaction<'_, Any>,
    batch: &'a [NewNotification],
    created_at: &str,
) -> Result<HashMap<Key<'a>, StoredEvent>, StoreError> {
    let mut firsts: Vec<&NewNotification> = Vec::new();
    let mut seen: HashSet<Key<'a>> = HashSet::new();
    for n in batch {
        if seen.insert((n.tenant.as_str(), n.event_id.as_str())) {
            firsts.push(n);
        }
    }
    let mut stored: HashMap<Key<'a>, StoredEvent> = HashMap::with_capacity(firsts.len());
    // Insert, then mark what was there; an event neither inserted nor found was purged
    // between the two statements (it existed for the insert, not for the update): insert
    // it again. A purge removes only events no notification refers to, so this ends; the
    // bound turns a store that behaves otherwise into an error the caller retries.
    for _ in 0..3 {
        let todo: Vec<&NewNotification> = firsts
            .iter()
            .filter(|n| !stored.contains_key(&(n.tenant.as_str(), n.event_id.as_str())))
            .copied()
            .collect();
        if todo.is_empty() {
            return Ok(stored);
        }
        insert_events(backend, tx, &todo, created_at, &mut stored).await?;
        relog_events(backend, tx, &todo, created_at, &mut stored).await?;
    }
    if firsts
        .iter()
        .all(|n| stored.contains_key(&(n.tenant.as_str(), n.event_id.as_str())))
    {
        return Ok(stored);
    }
    Err(StoreError::Unavailable(
        "change events were purged while being logged, three times over".into(),
    ))
}

/// Insert the events of `todo` not stored yet; each inserted one goes into `stored`.
async fn insert_events<'a>(
    backend: Backend,
    tx: &mut Transaction<'_, Any>,
    todo: &[&'a NewNotification],
    created_at: &str,
    stored: &mut HashMap<Key<'a>, StoredEvent>,
) -> Result<(), StoreError> {
    for chunk in todo.chunks(CHUNK / 2) {
        let values: Vec<String> = (0..chunk.len())
            .map(|j| format!("({})", placeholders(backend, j * 9 + 1, 9).join(", ")))
            .collect();
        let sql = format!(
            "INSERT INTO logged_events (tenant, event_id, action, focus_type, focus_id,
                 focus_version, occurred_at, logged_at, resource)
             VALUES {} ON CONFLICT (tenant, event_id) DO NOTHING RETURNING seq, tenant, event_id",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for n in chunk {
            q = q
                .bind(&n.tenant)
                .bind(&n.event_id)
                .bind(&n.action)
                .bind(&n.focus_type)
                .bind(&n.focus_id)
                .bind(&n.focus_version)
                .bind(&n.occurred_at)
                .bind(created_at)
                .bind(n.resource.as_deref());
        }
        let named: HashMap<Key<'a>, &NewNotification> = chunk
            .iter()
            .map(|n| ((n.tenant.as_str(), n.event_id.as_str()), *n))
            .collect();
        for row in q.fetch_all(&mut **tx).await? {
            let (seq, tenant, event_id): (i64, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            if let Some(n) = named.get(&(tenant.as_str(), event_id.as_str())) {
                let event = StoredEvent {
                    seq,
                    logged_at: created_at.to_owned(),
                    fresh: true,
                };
                stored.insert((n.tenant.as_str(), n.event_id.as_str()), event);
            }
        }
    }
    Ok(())
}

/// Mark the events of `todo` that were stored before as logged again at `created_at` and
/// put them into `stored`. On PostgreSQL this locks their rows until the transaction ends,
/// and retention leaves a locked event alone (it is being logged again).
async fn relog_events<'a>(
    backend: Backend,
    tx: &mut Transaction<'_, Any>,
    todo: &[&'a NewNotification],
    created_at: &str,
    stored: &mut HashMap<Key<'a>, StoredEvent>,
) -> Result<(), StoreError> {
    let mut missing: BTreeMap<&'a str, Vec<&'a str>> = BTreeMap::new();
    for n in todo {
        if !stored.contains_key(&(n.tenant.as_str(), n.event_id.as_str())) {
            missing.entry(&n.tenant).or_default().push(&n.event_id);
        }
    }
    for (tenant, ids) in missing {
        for chunk in ids.chunks(CHUNK) {
            let p = placeholders(backend, 1, chunk.len() + 2);
            let sql = format!(
                "UPDATE logged_events SET relogged_at = {}
                 WHERE tenant = {} AND event_id IN ({})
                 RETURNING event_id, seq, logged_at",
                p[0],
                p[1],
                p[2..].join(", ")
            );
            let mut q = sqlx::query(&sql).bind(created_at).bind(tenant);
            for id in chunk {
                q = q.bind(*id);
            }
            let named: HashMap<&str, &'a str> = chunk.iter().map(|id| (*id, *id)).collect();
            for row in q.fetch_all(&mut **tx).await? {
                let id: String = row.try_get(0)?;
                if let Some(id) = named.get(id.as_str()) {
                    let event = StoredEvent {
                        seq: row.try_get(1)?,
                        logged_at: row.try_get(2)?,
                        fresh: false,
                    };
                    stored.insert((tenant, *id), event);
                }
            }
        }
    }
    Ok(())
}
