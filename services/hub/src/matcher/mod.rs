//! The matcher role: consume change events, decide which subscriptions each matches, and log
//! the notifications durably before acknowledging the log position.
//!
//! Order of operations per batch (this is what makes delivery at-least-once without gaps):
//! 1. poll a batch from the changes topic;
//! 2. if any subscription changed on any instance (the store's generation counters), bring
//!    the index up to date (in place: only the subscriptions written since are re-read), so a
//!    subscription committed before an event is read sees that event;
//! 3. match and append the notifications in one store transaction (event numbers assigned
//!    there; re-processing the same change event adds nothing);
//! 4. only then ack the batch, so its offsets are committed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hub_fhir::raw_event::{Origin, RawEvent};
use hub_fhir::{Action, ChangeEvent};
use hub_log::Consumed;

use hub_store::{
    MatchingChanges, NewNotification, NewQuarantined, QuarantineStage, ResourceKey, Sanitized,
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::{Hub, retry};

pub mod durable;
pub mod index;
pub mod spool;
pub mod topic_index;

pub use index::{SubscriptionIndex, TenantIndex, Update};

use crate::model::Subscription;

/// What matching one event found.
#[derive(Debug, Default)]
pub struct Matched<'i> {
    /// Subscriptions to notify.
    pub ids: Vec<&'i str>,
    /// Triggers that could not be evaluated (over budget): the event is quarantined for them
    /// while the subscriptions that did match are notified.
    pub failures: Vec<String>,
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A record's log position, the quarantine's key.
fn source(rec: &Consumed) -> String {
    format!("{}/{}@{}", rec.topic, rec.partition, rec.offset)
}

/// A record for quarantine: its bytes as read; every text a producer chose (the key, what
/// the reason echoes) sanitized.
fn quarantined(
    rec: &Consumed,
    event: Option<&ChangeEvent>,
    stage: QuarantineStage,
    reason: &str,
) -> NewQuarantined {
    let reason = Sanitized::new(reason);
    // the reason may quote resource content: it goes to the quarantine (admins only), and
    // the log line says where to find it
    tracing::warn!(
        topic = %rec.topic,
        partition = rec.partition,
        offset = rec.offset,
        stage = stage.as_str(),
        reason_bytes = reason.len(),
        "change event quarantined"
    );
    NewQuarantined {
        source: Sanitized::new(&source(rec)),
        tenant: event.map(|e| Sanitized::new(&e.tenant)),
        event_id: event.map(|e| Sanitized::new(&e.id)),
        record_key: rec.key.as_deref().map(Sanitized::new),
        payload: rec.payload.clone(),
        stage,
        reason,
    }
}

/// Run `f` with a panic caught and turned into an error naming `what`: no record may stop
/// the matcher. (Memory exhaustion cannot be caught; the FHIRPath budget bounds it.)
fn isolated<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| format!("{what} panicked: {}", panic_text(&*p)))
}

fn parse_isolated<'r>(rec: &'r Consumed, default_tenant: &str) -> Result<RawEvent<'r>, String> {
    isolated("reading the event", || parse_record(rec, default_tenant)).and_then(|r| r)
}

fn match_isolated<'i>(
    index: &'i SubscriptionIndex,
    event: &RawEvent<'_>,
    now: OffsetDateTime,
) -> Result<Matched<'i>, String> {
    isolated("matching", || index.matches(event, now))
}

/// Read a log record: an envelope, or a bare FHIR resource written by another system. A
/// bare resource gets an event id derived from its log position, so re-reading it after a
/// crash deduplicates like an envelope would. The resources stay text: matching parses
/// what it reads.
pub fn parse_record<'r>(rec: &'r Consumed, default_tenant: &str) -> Result<RawEvent<'r>, String> {
    let (mut e, origin) = RawEvent::parse(
        &rec.payload,
        None,
        default_tenant,
        "a change event must be a JSON object",
    )
    .map_err(|e| e.to_string())?;
    if origin == Origin::Resource {
        e.head.id = format!("log:{}:{}:{}", rec.topic, rec.partition, rec.offset);
    }
    Ok(e)
}

/// What changed in the tenants whose generation moved since `index` was current: the
/// subscriptions written since, to change in place; a tenant whose topics or API keys
/// changed (or that is not indexed yet, or too far behind) read whole. Other processes'
/// writes are found the same way; the hub's status changes move nothing.
async fn changed_tenants(
    hub: &Hub,
    index: &SubscriptionIndex,
) -> Result<Vec<Update>, hub_store::StoreError> {
    let mut out = Vec::new();
    for (tenant, generation) in hub.store.tenant_generations().await? {
        let at = index.generation(&tenant);
        if at == Some(generation) {
            continue;
        }
        let changes = match at {
            Some(at) => hub.store.matching_changes(&tenant, at, generation).await?,
            None => MatchingChanges::Rebuild,
        };
        // what each subscription may receive: its owner's grants (an API key's as they are now)
        let keys = || async {
            Ok::<_, hub_store::StoreError>(
                hub.store
                    .api_keys(Some(&tenant))
                    .await?
                    .into_iter()
                    .map(|k| (k.id.clone(), k))
                    .collect::<HashMap<String, hub_store::ApiKeyRow>>(),
            )
        };
        let grant = |s: &Subscription, keys: &HashMap<String, hub_store::ApiKeyRow>| {
            s.owner
                .as_ref()
                .map(|owner| crate::auth::Grant::of(owner, keys))
        };
        match changes {
            MatchingChanges::Subscriptions { generation, ids } => {
                let subs = hub
                    .subscriptions
                    .read_all(hub.store.live_subscriptions_among(&tenant, &ids).await?);
                let keys = if subs.iter().any(|s| s.owner.is_some()) {
                    keys().await?
                } else {
                    HashMap::new()
                };
                let live = subs
                    .into_iter()
                    .map(|s| {
                        let g = grant(&s, &keys);
                        (s, g)
                    })
                    .collect();
                tracing::debug!(%tenant, generation, changed = ids.len(), "matcher index changed in place");
                out.push(Update::Patched {
                    tenant,
                    generation,
                    ids,
                    live,
                });
            }
            MatchingChanges::Rebuild => {
                let subs = hub
                    .subscriptions
                    .read_all(hub.store.live_subscriptions_of(&tenant).await?);
                let topics = hub.store.list_topics(Some(&tenant)).await?;
                let keys = keys().await?;
                let grants = subs
                    .iter()
                    .filter_map(|s| Some((s.key.clone(), grant(s, &keys)?)))
                    .collect();
                let built = TenantIndex::build(&subs, &topics, generation, grants);
                tracing::info!(%tenant, generation, subscriptions = built.len(), "matcher index built for a tenant");
                out.push(Update::Rebuilt(tenant, Box::new(built)));
            }
        }
    }
    Ok(out)
}

/// Fill in `previous` for events of types a subscribed topic compares with the version before
/// (from earlier events of the batch, then the store), and return the versions to record.
/// `None` when stopped while the store was unavailable.
/// Unix microseconds of an instant (what orders remembered versions).
fn changed_us(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

async fn supply_previous(
    hub: &Hub,
    index: &SubscriptionIndex,
    events: &mut [RawEvent<'_>],
    shutdown: &CancellationToken,
) -> Option<Vec<hub_store::VersionAt>> {
    let key = |e: &ChangeEvent| -> ResourceKey {
        (
            e.tenant.clone(),
            e.resource_type.clone(),
            e.resource_id.clone(),
        )
    };
    let relevant = |e: &RawEvent<'_>| index.needs_previous(&e.head.tenant, &e.head.resource_type);
    // a previous version the event carries (as text or tree) is the producer's
    let carries = |e: &RawEvent<'_>| e.previous.is_some() || e.head.previous.is_some();
    let mut wanted: Vec<ResourceKey> = events
        .iter()
        .filter(|e| relevant(e) && !carries(e) && e.head.action != Action::Create)
        .map(|e| key(&e.head))
        .collect();
    if !events.iter().any(relevant) {
        return Some(Vec::new());
    }
    wanted.sort();
    wanted.dedup();
    let mut stored = HashMap::new();
    if !wanted.is_empty() {
        stored = retry::until_ok(shutdown, "reading previous resource versions", || {
            hub.store.last_versions(&wanted)
        })
        .await?;
    }
    let mut latest: HashMap<ResourceKey, (Option<String>, i64)> = HashMap::new();
    let now_us = changed_us(time::OffsetDateTime::now_utc());
    for e in events.iter_mut().filter(|e| relevant(e)) {
        let k = key(&e.head);
        if !carries(e) && e.head.action != Action::Create {
            let before = match latest.get(&k) {
                Some((v, _)) => v.clone(),
                None => stored.get(&k).cloned(),
            };
            e.head.previous = before.and_then(|s| serde_json::from_str::<Value>(&s).ok());
        }
        let after = match e.head.action {
            Action::Delete => None,
            _ => e.resource.as_ref().map(|r| r.get().to_owned()),
        };
        // the store keeps the newest by when the change happened, whatever order it is read in
        let at = hub_fhir::time_fmt::parse_instant(&e.head.occurred_at).map_or(now_us, changed_us);
        if latest.get(&k).is_none_or(|(_, seen)| *seen <= at) {
            latest.insert(k, (after, at));
        }
    }
    Some(
        latest
            .into_iter()
            .map(|(k, (resource, at))| (k, resource, at))
            .collect(),
    )
}

/// Run the matcher until `shutdown`.
pub async fn run(hub: Hub, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = &hub.config.matcher;
    let topic = hub.config.log.changes_topic.clone();
    let mut consumer = hub
        .log
        .consumer(&topic, &hub.config.kafka.matcher_group)
        .await?;
    let mut index = SubscriptionIndex::default();
    let mut last_refresh = Instant::now();
    let poll = Duration::from_millis(cfg.poll_ms);
    let reload = Duration::from_millis(cfg.reload_ms);
    let spool = spool::Spool::new(
        hub.config.server.data_dir.join(spool::SPOOL_FILE),
        cfg.spool_max_bytes,
    );
    tracing::info!(%topic, "matcher consuming");

    hub.metrics.matcher_beat();
    while !shutdown.is_cancelled() {
        // `/ready` watches this: a batch held by an outage or a stuck evaluation stops it
        hub.metrics.matcher_beat();
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            b = consumer.poll(cfg.batch_size, poll) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "event log poll failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if !batch.is_empty() || last_refresh.elapsed() >= reload {
            // Until the index is current, events must wait: matching with a stale index
            // could miss a subscription created before the event.
            match retry::until_ok(&shutdown, "checking subscriptions", || {
                changed_tenants(&hub, &index)
            })
            .await
            {
                None => break,
                Some(updates) => index.apply(updates),
            }
            last_refresh = Instant::now();
        }
        if batch.is_empty() {
            continue;
        }
        let batch_started = Instant::now();

        let now = OffsetDateTime::now_utc();
        let mut dead = Vec::new();
        let mut records = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        for rec in &batch {
            match parse_isolated(rec, &hub.config.tenancy.default_tenant) {
                Ok(e) => {
                    records.push(rec);
                    events.push(e);
                }
                // Retrying cannot fix a malformed record: quarantine it and move on.
                Err(why) => dead.push(quarantined(rec, None, QuarantineStage::Parse, &why)),
            }
        }
        // Topics comparing with the version before get it from the store when the event
        // does not carry it; the versions this batch leaves are written after the
        // notifications (a crash in between re-reads the batch against the older versions:
        // same decisions, deduplicated notifications).
        let Some(latest) = supply_previous(&hub, &index, &mut events, &shutdown).await else {
            break;
        };
        // Logged in chunks as they are made (memory bounded by the chunk, not by batch ×
        // fan-out), each chunk's readers woken once it is durable, and nobody else.
        let mut chunks = durable::Chunks::new(
            &hub.store,
            &shutdown,
            cfg.max_notifications_per_transaction,
            |logged: &[hub_store::Notification]| hub.wakeups.logged_here(logged),
        );
        let mut stopped = false;
        'events: for (i, (rec, event)) in records.iter().zip(&events).enumerate() {
            let matched = match match_isolated(&index, event, now) {
                Ok(m) => m,
                Err(why) => {
                    dead.push(quarantined(
                        rec,
                        Some(&event.head),
                        QuarantineStage::Match,
                        &why,
                    ));
                    continue;
                }
            };
            if !matched.failures.is_empty() {
                // The subscriptions that matched are notified now; a replay of the
                // quarantined event adds nothing for them (the log deduplicates by event id).
                let why = matched.failures.join("; ");
                dead.push(quarantined(
                    rec,
                    Some(&event.head),
                    QuarantineStage::Match,
                    &why,
                ));
            }
            if matched.ids.is_empty() {
                continue;
            }
            // one copy of the resource, as it was written, for every subscription it reaches
            let resource: Option<std::sync::Arc<str>> =
                event.resource.as_ref().map(|r| r.get().into());
            let head = &event.head;
            for id in matched.ids {
                let note = NewNotification {
                    tenant: head.tenant.clone(),
                    subscription_id: id.to_owned(),
                    event_id: head.id.clone(),
                    action: head.action.as_str().to_owned(),
                    focus_type: head.resource_type.clone(),
                    focus_id: head.resource_id.clone(),
                    focus_version: head.version_id.clone(),
                    occurred_at: head.occurred_at.clone(),
                    resource: resource.clone(),
                };
                // Not acked until all of this is durable: a failure holds the batch.
                if chunks.push(i, note).await.is_none() {
                    stopped = true;
                    break 'events;
                }
            }
        }
        if stopped || chunks.flush().await.is_none() {
            break;
        }
        // An event whose notifications the store refuses would be refused on every retry:
        // it is quarantined instead, and the partition moves on.
        for (i, why) in chunks.refused() {
            if let (Some(rec), Some(event)) = (records.get(i), events.get(i)) {
                dead.push(quarantined(
                    rec,
                    Some(&event.head),
                    QuarantineStage::Store,
                    &why.to_string(),
                ));
            }
        }
        let logged = chunks.count();
        if durable::quarantine(&hub.store, &shutdown, &dead, &spool, &hub.metrics)
            .await
            .is_none()
        {
            break;
        }
        if durable::record_versions(&hub.store, &shutdown, &latest)
            .await
            .is_none()
        {
            break;
        }
        if let Err(e) = consumer.ack(&batch).await {
            tracing::warn!(error = %e, "could not ack a processed batch; it will be re-read and deduplicated");
        }
        let published_ms: Vec<i64> = batch.iter().filter_map(|r| r.published_ms).collect();
        crate::metrics::BatchMatched {
            events: batch.len(),
            quarantined: dead.len(),
            notifications: logged,
            took: batch_started.elapsed(),
            published_ms: &published_ms,
        }
        .emit(&hub.metrics);
    }
    tracing::info!("matcher draining");
    consumer.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_quarantine_reason() {
        let r: Result<(), String> = isolated("matching", || panic!("boom at byte 7"));
        assert_eq!(r, Err("matching panicked: boom at byte 7".to_owned()));
        let owned: Result<(), String> = isolated("x", || panic!("{}", String::from("owned")));
        assert_eq!(owned, Err("x panicked: owned".to_owned()));
        assert_eq!(isolated("x", || 5), Ok(5));
    }

    #[test]
    fn unreadable_records_are_errors_not_panics() {
        for payload in [
            &b"{not json \xff"[..],
            b"[]",
            b"42",
            b"{}",
            b"{\"resourceType\": 5}",
        ] {
            let rec = Consumed {
                topic: "t".into(),
                partition: 0,
                offset: 1,
                key: None,
                payload: payload.to_vec(),
                published_ms: None,
            };
            assert!(parse_isolated(&rec, "default").is_err());
        }
    }
}
