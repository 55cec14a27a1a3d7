//! What the matcher matches against: per tenant, the R4 criteria subscriptions in a
//! [`CriteriaIndex`] (by their most selective terms) and the topic-based ones in a
//! [`TopicIndex`], each tenant with the generation it is current at. A subscription write
//! changes its tenant's index in place ([`TenantIndex::insert`], [`TenantIndex::remove`]);
//! a topic or API key write rebuilds that tenant only.

use std::collections::HashMap;
use std::sync::Arc;

use hub_fhir::index::{CriteriaIndex, Handle};
use hub_fhir::raw_event::RawEvent;
use hub_fhir::{Action, ChangeEvent};
use hub_store::TopicRow;
use time::OffsetDateTime;

use super::Matched;
use super::topic_index::TopicIndex;
use crate::auth::Grant;
use crate::model::{KeyMap, Pair, SubKey, Subscription};

/// What the criteria index returns for a match: the subscription and when it ends.
struct Target {
    key: SubKey,
    end: Option<OffsetDateTime>,
}

/// One tenant's subscriptions, as of one generation.
pub struct TenantIndex {
    criteria: CriteriaIndex<Target>,
    /// Where each criteria subscription sits in `criteria`.
    handles: KeyMap<Handle>,
    topics: TopicIndex,
    generation: i64,
    /// What each owned subscription may receive (subscriptions from before owners were
    /// kept have none and are not restricted); equal grants shared ([`GrantPool`]).
    grants: KeyMap<Arc<Grant>>,
    pool: GrantPool,
}

/// The distinct grants of a tenant's subscriptions, each kept once: 100,000 per-patient
/// subscriptions made with a few credentials hold a few grants, not 100,000 copies.
#[derive(Default)]
struct GrantPool(Vec<Arc<Grant>>);

/// Past this many distinct grants new ones are not looked up (each is a linear scan).
const POOL_MAX: usize = 64;

impl GrantPool {
    fn share(&mut self, g: Grant) -> Arc<Grant> {
        if let Some(same) = self.0.iter().find(|p| ***p == g) {
            return Arc::clone(same);
        }
        let g = Arc::new(g);
        if self.0.len() < POOL_MAX {
            self.0.push(Arc::clone(&g));
        }
        g
    }
}

impl TenantIndex {
    /// Index one tenant's live subscriptions and topics.
    pub fn build(
        subs: &[Subscription],
        topics: &[TopicRow],
        generation: i64,
        grants: Vec<(SubKey, Grant)>,
    ) -> TenantIndex {
        let mut pool = GrantPool::default();
        let grants = grants
            .into_iter()
            .map(|(key, g)| (key, pool.share(g)))
            .collect();
        let mut index = TenantIndex {
            criteria: CriteriaIndex::new(),
            handles: KeyMap::default(),
            topics: TopicIndex::build(topics, subs),
            generation,
            grants,
            pool,
        };
        for sub in subs {
            index.insert_criteria(sub);
        }
        index
    }

    /// R4 criteria subscriptions go in the criteria index (topic-based ones are indexed with
    /// their topic).
    fn insert_criteria(&mut self, sub: &Subscription) {
        if sub.topic().is_some() {
            return;
        }
        // a catalog that dropped the parsed criteria (no matcher role) is read again here
        let c = match &sub.spec.parsed {
            Some(c) => Arc::clone(c),
            None => match hub_fhir::criteria::Criteria::parse(&sub.spec.criteria) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::warn!(subscription = %sub.id(), error = %e.to_outcome("Subscription.criteria").summary(), "stored criteria unreadable; not matching it");
                    return;
                }
            },
        };
        let target = Target {
            key: sub.key.clone(),
            end: sub.end(),
        };
        let h = self.criteria.insert(sub.tenant(), c, target);
        self.handles.insert(sub.key.clone(), h);
    }

    /// Index (or re-index) one live subscription in place, with what its owner may receive.
    pub fn insert(&mut self, sub: &Subscription, grant: Option<Grant>) {
        self.remove(sub.tenant(), sub.id());
        self.insert_criteria(sub);
        self.topics.insert(sub);
        if let Some(g) = grant {
            let g = self.pool.share(g);
            self.grants.insert(sub.key.clone(), g);
        }
    }

    /// Take one subscription out in place (deleted, or no longer live).
    pub fn remove(&mut self, tenant: &str, id: &str) {
        if let Some(h) = self.handles.remove(&Pair(tenant, id)) {
            self.criteria.remove(tenant, h);
        }
        self.topics.remove(tenant, id);
        self.grants.remove(&Pair(tenant, id));
    }

    pub fn len(&self) -> usize {
        self.criteria.len() + self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A change to the index, read from the store before it is applied.
pub enum Update {
    /// A tenant indexed afresh.
    Rebuilt(String, Box<TenantIndex>),
    /// Subscriptions `ids` of `tenant` changed as of `generation`; `live` are those of them
    /// still live, as they are now (with their owners' grants), the others are gone.
    Patched {
        tenant: String,
        generation: i64,
        ids: Vec<String>,
        live: Vec<(Subscription, Option<Grant>)>,
    },
}

/// Every tenant's index.
#[derive(Default)]
pub struct SubscriptionIndex {
    tenants: HashMap<String, TenantIndex>,
}

impl SubscriptionIndex {
    /// The generation a tenant's index was built at (`None`: not built).
    pub fn generation(&self, tenant: &str) -> Option<i64> {
        self.tenants.get(tenant).map(|t| t.generation)
    }

    /// Apply what changed: rebuilt tenants swap in, patched ones change in place.
    pub fn apply(&mut self, updates: Vec<Update>) {
        for u in updates {
            match u {
                Update::Rebuilt(tenant, index) => {
                    self.tenants.insert(tenant, *index);
                }
                Update::Patched {
                    tenant,
                    generation,
                    ids,
                    live,
                } => {
                    let Some(t) = self.tenants.get_mut(&tenant) else {
                        continue;
                    };
                    // the live ones are re-indexed (insert takes the old entry out first);
                    // the others are gone
                    let still: std::collections::HashSet<&str> =
                        live.iter().map(|(s, _)| s.id()).collect();
                    for id in ids.iter().filter(|id| !still.contains(id.as_str())) {
                        t.remove(&tenant, id);
                    }
                    for (sub, grant) in live {
                        t.insert(&sub, grant);
                    }
                    t.generation = generation;
                }
            }
        }
    }

    /// Subscriptions indexed, all tenants.
    pub fn len(&self) -> usize {
        self.tenants.values().map(TenantIndex::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a subscribed topic compares this tenant's resources of this type with the
    /// version before (the matcher then supplies and remembers previous versions).
    pub fn needs_previous(&self, tenant: &str, resource_type: &str) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|t| t.topics.needs_previous(tenant, resource_type))
    }

    /// The subscriptions `event` matches, and what could not be evaluated.
    ///
    /// R4 criteria match the resource's text through the index's projection (only the
    /// elements some criteria read are parsed); the whole tree is built only when a topic
    /// trigger or an owner's compartment has to read it, and only once.
    ///
    /// `Subscription.end` and the owners' grants are judged at the instant the change
    /// happened (its `occurredAt`, never later than `now`): a matcher catching up after an
    /// outage, or a replay, still notifies what happened while a subscription or a key was
    /// live, and nothing that happened after.
    pub fn matches(&self, event: &RawEvent<'_>, now: OffsetDateTime) -> Matched<'_> {
        let mut m = Matched::default();
        let head = &event.head;
        let at = hub_fhir::time_fmt::parse_instant(&head.occurred_at).map_or(now, |t| t.min(now));
        let Some(t) = self.tenants.get(&head.tenant) else {
            return m;
        };
        // R4 criteria describe a resource's content; a deletion carries none to match.
        if head.action != Action::Delete {
            let now_micros = (now.unix_timestamp_nanos() / 1000) as i64;
            let found = match (&head.resource, &event.resource) {
                (Some(tree), _) => Ok(t.criteria.matches(&head.tenant, tree, now_micros)),
                (None, Some(text)) => t.criteria.matches_text(
                    &head.tenant,
                    &head.resource_type,
                    text.get().as_bytes(),
                    now_micros,
                ),
                (None, None) => Ok(Vec::new()),
            };
            match found {
                Ok(found) => m.ids.extend(
                    found
                        .into_iter()
                        .filter(|t| t.end.is_none_or(|end| at < end))
                        .map(|t| t.key.id()),
                ),
                Err(e) => m.failures.push(format!("reading the resource: {e}")),
            }
        }
        let grants_apply = !t.grants.is_empty()
            && m.ids
                .iter()
                .any(|id| t.grants.contains_key(&Pair(&head.tenant, id)));
        if t.topics.is_empty() && !grants_apply {
            return m;
        }
        // the trees, from the text unless the event has them
        let built;
        let event: &ChangeEvent = if (event.resource.is_some() && head.resource.is_none())
            || (event.previous.is_some() && head.previous.is_none())
        {
            let mut e = event.clone();
            if let Err(err) = e.with_trees() {
                m.failures.push(format!("reading the resource: {err}"));
                return m;
            }
            built = e.head;
            &built
        } else {
            head
        };
        t.topics
            .matches(event, now, at, &mut m.ids, &mut m.failures);
        // a subscription receives only what its owner could read when the change happened
        if !t.grants.is_empty() {
            m.ids.retain(|id| {
                t.grants
                    .get(&Pair(&head.tenant, id))
                    .is_none_or(|g| g.may_receive(event, at))
            });
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    /// An active R4 criteria subscription on glucose results that ends at `end`.
    fn ending_subscription(end: &str) -> Subscription {
        let resource = json!({
            "resourceType": "Subscription", "status": "active", "reason": "test",
            "criteria": "Observation?code=http://loinc.org|2345-7", "end": end,
            "channel": {"type": "rest-hook", "endpoint": "http://example.test/hook"}
        });
        let spec = match hub_fhir::subscription::validate(&resource) {
            Ok(spec) => spec,
            Err(e) => panic!("test subscription refused: {e:?}"),
        };
        let mut sub = crate::model::tests::topic_subscription();
        sub.spec = Arc::new(spec);
        sub
    }

    fn glucose_at(occurred_at: &str) -> RawEvent<'static> {
        let event = json!({
            "id": format!("e-{occurred_at}"), "tenant": "default", "action": "update",
            "resourceType": "Observation", "resourceId": "o1", "occurredAt": occurred_at,
            "resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}}
        });
        let Ok(e) = ChangeEvent::from_envelope_value(event) else {
            panic!("test event refused")
        };
        let Ok(raw) = RawEvent::from_event(e) else {
            panic!("test event unreadable")
        };
        raw
    }

    /// A matcher that catches up after an outage still notifies a change that happened before
    /// `Subscription.end`, and nothing that happened after it (before, both were judged on
    /// the matcher's clock and the first was dropped).
    #[test]
    fn the_end_is_judged_when_the_change_happened() {
        let sub = ending_subscription("2030-01-01T00:00:00Z");
        let mut index = SubscriptionIndex::default();
        index.apply(vec![Update::Rebuilt(
            "default".into(),
            Box::new(TenantIndex::build(&[sub], &[], 1, Vec::new())),
        )]);
        let late = datetime!(2030-06-01 00:00 UTC);
        let matched = |occurred_at: &str| {
            let e = glucose_at(occurred_at);
            let m = index.matches(&e, late);
            m.ids.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            matched("2029-12-31T23:59:59Z"),
            ["s"],
            "happened while live"
        );
        assert!(
            matched("2030-02-01T00:00:00Z").is_empty(),
            "happened after the end"
        );
        // a change dated in the future is judged no later than now
        let now = datetime!(2029-06-01 00:00 UTC);
        let e = glucose_at("2031-01-01T00:00:00Z");
        assert_eq!(index.matches(&e, now).ids.len(), 1);
    }
}
