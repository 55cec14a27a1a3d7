//! The matcher's topic index: per tenant, each topic with the
//! subscriptions that name it and their filters.

use std::collections::HashMap;

use hub_fhir::index::CriteriaIndex;
use hub_fhir::topic::{self, Filter, Topic};
use hub_fhir::{ChangeEvent, Criteria};
use hub_store::TopicRow;

use crate::model::Subscription;
use serde_json::Value;
use time::OffsetDateTime;

struct TopicSub {
    id: String,
    filters: Vec<Filter>,
    end: Option<OffsetDateTime>,
}

struct Entry {
    topic: Topic,
    subs: Vec<TopicSub>,
    /// Per trigger resource type: the subscribers' filters indexed (as the R4 criteria are),
    /// and the subscribers without a filter on that type.
    by_type: HashMap<String, (CriteriaIndex<usize>, Vec<usize>)>,
}

impl Entry {
    /// Index the subscribers' filters per trigger resource type: a subscription's filters on
    /// one type combine (AND) into one criteria; no filter on a type means every change.
    fn index_filters(&mut self, tenant: &str) {
        let mut types: Vec<&str> = self
            .topic
            .triggers
            .iter()
            .map(|t| t.resource.as_str())
            .collect();
        types.sort_unstable();
        types.dedup();
        for ty in types {
            let mut index = CriteriaIndex::new();
            let mut unfiltered = Vec::new();
            for (i, s) in self.subs.iter().enumerate() {
                let queries: Vec<&str> = s
                    .filters
                    .iter()
                    .filter(|f| f.resource == ty)
                    .map(|f| f.query.as_str())
                    .collect();
                if queries.is_empty() {
                    unfiltered.push(i);
                    continue;
                }
                match Criteria::parse(&format!("{ty}?{}", queries.join("&"))) {
                    Ok(c) => index.insert(tenant, c, i),
                    Err(e) => {
                        tracing::warn!(subscription = %s.id, error = %e, "subscription filters no longer combine; not matching it");
                    }
                }
            }
            self.by_type.insert(ty.to_owned(), (index, unfiltered));
        }
    }
}

/// Topics and their subscribers, per tenant.
#[derive(Default)]
pub struct TopicIndex {
    by_tenant: HashMap<String, Vec<Entry>>,
    subscriptions: usize,
    /// (tenant, resource type) whose changes a subscribed topic compares with the version
    /// before: the matcher keeps their last version for events that do not carry it.
    needs_previous: std::collections::HashSet<(String, String)>,
}

impl TopicIndex {
    /// Builds the index; topics or subscriptions that no longer validate are skipped loudly.
    pub fn build(topics: &[TopicRow], subs: &[Subscription]) -> TopicIndex {
        let mut by_tenant: HashMap<String, Vec<Entry>> = HashMap::new();
        for row in topics {
            let parsed = serde_json::from_str::<Value>(&row.resource)
                .map_err(|e| e.to_string())
                .and_then(|v| topic::parse(&v).map_err(|oo| oo.summary()));
            match parsed {
                Ok(t) => by_tenant
                    .entry(row.tenant.clone())
                    .or_default()
                    .push(Entry {
                        topic: t,
                        subs: Vec::new(),
                        by_type: HashMap::new(),
                    }),
                Err(e) => {
                    tracing::warn!(topic = %row.id, tenant = %row.tenant, error = %e, "stored topic no longer validates; not matching it");
                }
            }
        }
        let mut count = 0;
        for sub in subs {
            let Some(ts) = sub.topic() else {
                continue;
            };
            let Some(entries) = by_tenant.get_mut(&sub.tenant) else {
                continue;
            };
            let Some(entry) = entries.iter_mut().find(|e| e.topic.url == ts.topic) else {
                continue;
            };
            let filters: Result<Vec<Filter>, _> = ts
                .filters
                .iter()
                .map(|f| topic::parse_filter(&entry.topic, f, "Subscription.criteria.extension"))
                .collect();
            let filters = match filters {
                Ok(f) => f,
                Err(oo) => {
                    tracing::warn!(subscription = %sub.id, error = %oo.summary(), "subscription filter no longer fits its topic; not matching it");
                    continue;
                }
            };
            entry.subs.push(TopicSub {
                id: sub.id.clone(),
                filters,
                end: sub.end(),
            });
            count += 1;
        }
        for (tenant, entries) in by_tenant.iter_mut() {
            for e in entries.iter_mut() {
                e.index_filters(tenant);
            }
        }
        let mut needs_previous = std::collections::HashSet::new();
        for (tenant, entries) in &by_tenant {
            for e in entries.iter().filter(|e| !e.subs.is_empty()) {
                let filtered = e.subs.iter().any(|s| !s.filters.is_empty());
                for t in &e.topic.triggers {
                    let on_delete = t.interactions.is_empty()
                        || t.interactions.contains(&hub_fhir::Action::Delete);
                    let uses_previous = t.query.as_ref().is_some_and(|q| q.previous.is_some())
                        || t.fhirpath
                            .as_ref()
                            .is_some_and(|f| f.source().contains("%previous"))
                        || (on_delete && filtered);
                    if uses_previous {
                        needs_previous.insert((tenant.clone(), t.resource.clone()));
                    }
                }
            }
        }
        TopicIndex {
            by_tenant,
            subscriptions: count,
            needs_previous,
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
        self.subscriptions
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }

    /// Ids of the topic-based subscriptions an event notifies; a trigger that could not be
    /// evaluated (over its budget) is reported in `failures` with the topic's url.
    pub fn matches<'s>(
        &'s self,
        event: &ChangeEvent,
        now: OffsetDateTime,
        out: &mut Vec<&'s str>,
        failures: &mut Vec<String>,
    ) {
        let Some(entries) = self.by_tenant.get(&event.tenant) else {
            return;
        };
        let current = event.resource.as_ref();
        let previous = event.previous.as_ref();
        for e in entries {
            if e.subs.is_empty() {
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
                if let Some(s) = e.subs.get(i)
                    && s.end.is_none_or(|end| now < end)
                {
                    out.push(&s.id);
                }
            }
        }
    }
}
