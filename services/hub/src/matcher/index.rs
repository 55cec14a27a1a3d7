//! What the matcher matches against: per tenant, the R4 criteria subscriptions in a
//! [`CriteriaIndex`] (by their most selective terms) and the topic-based ones in a
//! [`TopicIndex`], each tenant with the generation it was built at, so a client write in one
//! tenant rebuilds that tenant only.

use std::collections::HashMap;

use hub_fhir::index::CriteriaIndex;
use hub_fhir::{Action, ChangeEvent};
use hub_store::TopicRow;
use time::OffsetDateTime;

use super::Matched;
use super::topic_index::TopicIndex;
use crate::auth::Grant;
use crate::model::Subscription;

/// What the criteria index returns for a match: the subscription and when it ends.
struct Target {
    id: String,
    end: Option<OffsetDateTime>,
}

/// One tenant's subscriptions, as of one generation.
pub struct TenantIndex {
    criteria: CriteriaIndex<Target>,
    topics: TopicIndex,
    generation: i64,
    /// What each owned subscription may receive (subscriptions from before owners were
    /// kept have none and are not restricted).
    grants: HashMap<String, Grant>,
}

impl TenantIndex {
    /// Index one tenant's live subscriptions and topics.
    pub fn build(
        subs: &[Subscription],
        topics: &[TopicRow],
        generation: i64,
        grants: HashMap<String, Grant>,
    ) -> TenantIndex {
        let mut criteria = CriteriaIndex::new();
        for sub in subs {
            // topic-based subscriptions are indexed with their topic
            let Some(c) = &sub.spec.parsed else {
                continue;
            };
            criteria.insert(
                &sub.tenant,
                c.clone(),
                Target {
                    id: sub.id.clone(),
                    end: sub.end(),
                },
            );
        }
        TenantIndex {
            criteria,
            topics: TopicIndex::build(topics, subs),
            generation,
            grants,
        }
    }

    pub fn len(&self) -> usize {
        self.criteria.len() + self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

    /// Swap in rebuilt tenants.
    pub fn replace(&mut self, rebuilt: Vec<(String, TenantIndex)>) {
        for (tenant, index) in rebuilt {
            self.tenants.insert(tenant, index);
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
    pub fn matches(&self, event: &ChangeEvent, now: OffsetDateTime) -> Matched<'_> {
        let mut m = Matched::default();
        let Some(t) = self.tenants.get(&event.tenant) else {
            return m;
        };
        // R4 criteria describe a resource's content; a deletion carries none to match.
        if event.action != Action::Delete
            && let Some(resource) = &event.resource
        {
            let now_micros = (now.unix_timestamp_nanos() / 1000) as i64;
            m.ids.extend(
                t.criteria
                    .matches(&event.tenant, resource, now_micros)
                    .into_iter()
                    .filter(|t| t.end.is_none_or(|end| now < end))
                    .map(|t| t.id.as_str()),
            );
        }
        t.topics.matches(event, now, &mut m.ids, &mut m.failures);
        // a subscription receives only what its owner may read now
        if !t.grants.is_empty() {
            m.ids
                .retain(|id| t.grants.get(*id).is_none_or(|g| g.may_receive(event, now)));
        }
        m
    }
}
