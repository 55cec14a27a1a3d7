//! The matcher's topic index: per tenant, each topic with the
//! subscriptions that name it and their filters.

use std::collections::HashMap;

use hub_fhir::index::{CriteriaIndex, Handle};
use hub_fhir::topic::{self, Filter, Topic};
use hub_fhir::{ChangeEvent, Criteria};
use hub_store::TopicRow;

use crate::model::{KeyMap, Pair, SubKey, Subscription};
use serde_json::Value;
use time::OffsetDateTime;

struct TopicSub {
    key: SubKey,
    filters: Vec<Filter>,
    end: Option<OffsetDateTime>,
    /// Per trigger resource type, where the subscription sits (to take it out again).
    placed: Vec<(String, Placed)>,
}

enum Placed {
    Unfiltered,
    Filtered(Handle),
}

struct Entry {
    topic: Topic,
    /// Subscriber slots, `None` where one left (reused by the next).
    subs: Vec<Option<TopicSub>>,
    free: Vec<usize>,
    live: usize,
    /// Subscribers with at least one filter.
    filtered: usize,
    /// Per trigger resource type: the subscribers' filters indexed (as the R4 criteria are),
    /// and the subscribers without a filter on that type.
    by_type: HashMap<String, (CriteriaIndex<usize>, Vec<usize>)>,
}

impl Entry {
    fn new(topic: Topic) -> Entry {
        let by_type = topic
            .triggers
            .iter()
            .map(|t| (t.resource.clone(), (CriteriaIndex::new(), Vec::new())))
            .collect();
        Entry {
            topic,
            subs: Vec::new(),
            free: Vec::new(),
            live: 0,
            filtered: 0,
            by_type,
        }
    }

    /// Add a subscriber: per trigger resource type, its filters on that type combine (AND)
    /// into one indexed criteria; no filter on a type means every change of it.
    fn add(&mut self, tenant: &str, mut sub: TopicSub) -> usize {
        let slot = self.free.pop().unwrap_or(self.subs.len());
        for (ty, (index, unfiltered)) in &mut self.by_type {
            let queries: Vec<&str> = sub
                .filters
                .iter()
                .filter(|f| &f.resource == ty)
                .map(|f| f.query.as_str())
                .collect();
            if queries.is_empty() {
                unfiltered.push(slot);
                sub.placed.push((ty.clone(), Placed::Unfiltered));
                continue;
            }
            match Criteria::parse(&format!("{ty}?{}", queries.join("&"))) {
                Ok(c) => {
                    let h = index.insert(tenant, c, slot);
                    sub.placed.push((ty.clone(), Placed::Filtered(h)));
                }
                Err(e) => {
                    tracing::warn!(subscription = %sub.key.id(), error = %e, "subscription filters no longer combine; not matching it");
                }
            }
        }
        self.live += 1;
        self.filtered += usize::from(!sub.filters.is_empty());
        match self.subs.get_mut(slot) {
            Some(s) => *s = Some(sub),
            None => self.subs.push(Some(sub)),
        }
        slot
    }

    fn remove(&mut self, tenant: &str, slot: usize) {
        let Some(sub) = self.subs.get_mut(slot).and_then(Option::take) else {
            return;
        };
        for (ty, placed) in sub.placed {
            let Some((index, unfiltered)) = self.by_type.get_mut(&ty) else {
                continue;
            };
            match placed {
                Placed::Unfiltered => unfiltered.retain(|&i| i != slot),
                Placed::Filtered(h) => {
                    index.remove(tenant, h);
                }
            }
        }
        self.live -= 1;
        self.filtered -= usize::from(!sub.filters.is_empty());
        self.free.push(slot);
    }
}

/// Topics and their subscribers, per tenant. Subscribers come and go in place
/// ([`TopicIndex::insert`], [`TopicIndex::remove`]); a topic change rebuilds the tenant.
#[derive(Default)]
pub struct TopicIndex {
    by_tenant: HashMap<String, Vec<Entry>>,
    /// (tenant, subscription id) → (topic entry, subscriber slot).
    located: KeyMap<(usize, usize)>,
    /// (tenant, resource type) whose changes a subscribed topic compares with the version
    /// before: the matcher keeps their last version for events that do not carry it.
    needs_previous: std::collections::HashSet<(String, String)>,
}

impl TopicIndex {
    /// Builds the index; topics or subscriptions that no longer validate are skipped loudly.
    pub fn build(topics: &[TopicRow], subs: &[Subscription]) -> TopicIndex {
        let mut index = TopicIndex::default();
        for row in topics {
            let parsed = serde_json::from_str::<Value>(&row.resource)
                .map_err(|e| e.to_string())
                .and_then(|v| topic::parse(&v).map_err(|oo| oo.summary()));
            match parsed {
                Ok(t) => index
                    .by_tenant
                    .entry(row.tenant.clone())
                    .or_default()
                    .push(Entry::new(t)),
                Err(e) => {
                    tracing::warn!(topic = %row.id, tenant = %row.tenant, error = %e, "stored topic no longer validates; not matching it");
                }
            }
        }
        for sub in subs {
            index.place(sub);
        }
        let tenants: Vec<String> = index.by_tenant.keys().cloned().collect();
        for t in tenants {
            index.refresh_previous(&t);
        }
        index
    }

    /// Index (or re-index) one subscription in place; a criteria subscription, or one whose
    /// topic or filters no longer fit, leaves it out.
    pub fn insert(&mut self, sub: &Subscription) {
        self.remove(sub.tenant(), sub.id());
        if self.place(sub) {
            self.refresh_previous(sub.tenant());
        }
    }

    /// Take one subscription out in place (nothing if it is not indexed).
    pub fn remove(&mut self, tenant: &str, id: &str) {
        let Some((e, slot)) = self.located.remove(&Pair(tenant, id)) else {
            return;
        };
        if let Some(entry) = self.by_tenant.get_mut(tenant).and_then(|v| v.get_mut(e)) {
            entry.remove(tenant, slot);
        }
        self.refresh_previous(tenant);
    }

    fn place(&mut self, sub: &Subscription) -> bool {
        let Some(ts) = sub.topic() else {
            return false;
        };
        let Some(entries) = self.by_tenant.get_mut(sub.tenant()) else {
            return false;
        };
        let Some(e) = entries.iter().position(|e| e.topic.url == ts.topic) else {
            return false;
        };
        let entry = &mut entries[e];
        let filters: Result<Vec<Filter>, _> = ts
            .filters
            .iter()
            .map(|f| topic::parse_filter(&entry.topic, f, "Subscription.criteria.extension"))
            .collect();
        let filters = match filters {
            Ok(f) => f,
            Err(oo) => {
                tracing::warn!(subscription = %sub.id(), error = %oo.summary(), "subscription filter no longer fits its topic; not matching it");
                return false;
            }
        };
        let slot = entry.add(
            sub.tenant(),
            TopicSub {
                key: sub.key.clone(),
                filters,
                end: sub.end(),
                placed: Vec::new(),
            },
        );
        self.located.insert(sub.key.clone(), (e, slot));
        true
    }

    /// Recompute which of `tenant`'s resource types need their previous versions.
    fn refresh_previous(&mut self, tenant: &str) {
        self.needs_previous.retain(|(t, _)| t != tenant);
        let Some(entries) = self.by_tenant.get(tenant) else {
            return;
        };
        for e in entries.iter().filter(|e| e.live > 0) {
            let filtered = e.filtered > 0;
            for t in &e.topic.triggers {
                let on_delete =
                    t.interactions.is_empty() || t.interactions.contains(&hub_fhir::Action::Delete);
                let uses_previous = t.query.as_ref().is_some_and(|q| q.previous.is_some())
                    || t.fhirpath
                        .as_ref()
                        .is_some_and(|f| f.source().contains("%previous"))
                    || (on_delete && filtered);
                if uses_previous {
                    self.needs_previous
                        .insert((tenant.to_owned(), t.resource.clone()));
                }
            }
        }
    }

    /// Whether the matcher should supply (and remember) previous versions of this type.
    pub fn needs_previous(&self, tenant: &str, resource_type: &str) -> bool {
        !self.needs_previous.is_empty()
            && self
                .needs_previous
                .contains(&(tenant.to_owned(), resource_type.to_owned()))
    }

    /// How many topic-based subscriptions are indexed.
    pub fn len(&self) -> usize {
        self.located.len()
    }

    pub fn is_empty(&self) -> bool {
        self.located.is_empty()
    }

    /// Ids of the topic-based subscriptions an event notifies; a trigger that could not be
    /// evaluated (over its budget) is reported in `failures` with the topic's url.
    /// `Subscription.end` is judged at `at`, the instant the change happened.
    pub fn matches<'s>(
        &'s self,
        event: &ChangeEvent,
        now: OffsetDateTime,
        at: OffsetDateTime,
        out: &mut Vec<&'s str>,
        failures: &mut Vec<String>,
    ) {
        let Some(entries) = self.by_tenant.get(&event.tenant) else {
            return;
        };
        let current = event.resource.as_ref();
        let previous = event.previous.as_ref();
        for e in entries {
            if e.live == 0 {
                continue;
            }
            let mut fired = false;
            for t in &e.topic.triggers {
                match t.fires(event.action, &event.resource_type, current, previous) {
                    Ok(true) => {
                        fired = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(err) => failures.push(format!("topic {}: {err}", e.topic.url)),
                }
            }
            if !fired {
                continue;
            }
            let Some((index, unfiltered)) = e.by_type.get(&event.resource_type) else {
                continue;
            };
            let now_micros = (now.unix_timestamp_nanos() / 1000) as i64;
            // filters read the current version, or the previous one of a deletion
            let filtered = current
                .or(previous)
                .map(|r| index.matches(&event.tenant, r, now_micros))
                .unwrap_or_default();
            for &i in unfiltered.iter().chain(filtered) {
                if let Some(Some(s)) = e.subs.get(i)
                    && s.end.is_none_or(|end| at < end)
                {
                    out.push(s.key.id());
                }
            }
        }
    }
}
