//! The live rest-hook subscriptions as the delivery loop knows them.

use std::collections::HashMap;

use hub_fhir::subscription::{ChannelType, Status};
use hub_store::MatchingChanges;

use crate::model::{KeyMap, Pair, SubKey, Subscription};
use crate::state::Hub;

/// A subscription: its tenant and id.
type Key = SubKey;

/// The live rest-hook subscriptions as this process knows them, kept current from the tenant
/// generations: a pass re-reads only the subscriptions written since the last one (a client
/// write anywhere moves its tenant's generation), so 100,000 idle subscriptions cost no query.
#[derive(Default)]
pub(super) struct Known {
    generations: HashMap<String, i64>,
    pub(super) subs: KeyMap<Subscription>,
}

impl Known {
    /// Bring up to date; the subscriptions that were added, changed or removed.
    pub(super) async fn refresh(&mut self, hub: &Hub) -> Result<Vec<Key>, hub_store::StoreError> {
        let mut changed = Vec::new();
        for (tenant, generation) in hub.store.tenant_generations().await? {
            let at = self.generations.get(&tenant).copied();
            if at == Some(generation) {
                continue;
            }
            let changes = match at {
                Some(at) => hub.store.matching_changes(&tenant, at, generation).await?,
                None => MatchingChanges::Rebuild,
            };
            let rest_hook = |s: &Subscription| s.channel_type() == ChannelType::RestHook;
            match changes {
                MatchingChanges::Subscriptions { generation, ids } => {
                    let rows = hub.store.live_subscriptions_among(&tenant, &ids).await?;
                    let mut now: KeyMap<Subscription> = hub
                        .subscriptions
                        .read_all(rows)
                        .into_iter()
                        .filter(rest_hook)
                        .map(|s| (s.key.clone(), s))
                        .collect();
                    for id in ids {
                        let at = Pair(&tenant, &id);
                        let key = match now.remove(&at) {
                            Some(s) => {
                                let key = s.key.clone();
                                self.subs.insert(key.clone(), s);
                                key
                            }
                            None => match self.subs.remove_entry(&at) {
                                Some((key, _)) => key,
                                None => SubKey::new(&tenant, &id),
                            },
                        };
                        changed.push(key);
                    }
                    self.generations.insert(tenant, generation);
                }
                MatchingChanges::Rebuild => {
                    let rows = hub.store.live_subscriptions_of(&tenant).await?;
                    let before: Vec<Key> = self
                        .subs
                        .keys()
                        .filter(|k| k.tenant() == tenant)
                        .cloned()
                        .collect();
                    for key in before {
                        self.subs.remove(&key);
                        changed.push(key);
                    }
                    for s in hub
                        .subscriptions
                        .read_all(rows)
                        .into_iter()
                        .filter(rest_hook)
                    {
                        changed.push(s.key.clone());
                        self.subs.insert(s.key.clone(), s);
                    }
                    self.generations.insert(tenant, generation);
                }
            }
        }
        Ok(changed)
    }

    /// Read one subscription again (its worker ended on its own: it may be off now).
    pub(super) async fn recheck(
        &mut self,
        hub: &Hub,
        key: &Key,
    ) -> Result<(), crate::model::ModelError> {
        match hub
            .subscriptions
            .get(&hub.store, key.tenant(), key.id())
            .await?
        {
            Some(s) if s.status != Status::Off && s.channel_type() == ChannelType::RestHook => {
                self.subs.insert(key.clone(), s);
            }
            _ => {
                self.subs.remove(key);
            }
        }
        Ok(())
    }
}
