//! Every disclosure is authorized for its reader: a notification reaches a channel only as a
//! [`Disclosed`] batch, and the only way to get one is through a [`Disclosure`], which is
//! built from the reader's [`Caller`] (or, for rest-hook alone, from the subscription: its
//! receiver is the owner's own endpoint). The owner's grant decides what the matcher logs;
//! the reader's grant decides what each channel may hand over of it, at the moment it hands
//! it over, and the audit row names that reader.
//!
//! What a reader is refused, and how:
//! - **403 / `PERMISSION_DENIED` at connect** (`$events`, `$stream`, a websocket bind, gRPC
//!   `Subscribe`/`Consume`): the reader may not read `Subscription`, or may read none of the
//!   resource types the subscription notifies about (its criteria's type, its topic's
//!   trigger types) — not `system/`, not `patient/` with a patient context — or asks for a
//!   content level above the subscription's (`$events?content=full-resource` of an `id-only`
//!   subscription). A reader learns nothing of a subscription it could never read.
//! - **A filtered notification** otherwise: an event whose focus the reader may not see (a
//!   type outside its scopes; with `patient/` scopes, a resource outside its patient's
//!   compartment, or a deletion that carries no resource to place) goes out as its number
//!   and timestamp only, as `empty` content shows every event (SMART: the resource is not
//!   the reader's to see; the Backport IG: `empty` tells that something happened and no
//!   more). The reader's event numbers stay gap-free, so it can resume by number, and no
//!   disclosure row is written for what it was not shown. The classic R4 websocket (`ping
//!   <id>`, no numbers) sends no ping for a withheld event.
//! - **The stream ends** when the credential does: [`Disclosure::watch`] re-reads an API
//!   key every `auth.stream_recheck_secs` (revoked, expired, scopes reduced), and every
//!   batch checks the credential's end (`exp`, `expires_at`) and the last re-read. Each
//!   channel states why (SSE `access-ended`, websocket close 1008, gRPC
//!   `UNAUTHENTICATED`/`PERMISSION_DENIED`).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use hub_fhir::subscription::Content;
use hub_fhir::{IssueType, OperationOutcome};
use hub_store::{NewAudit, Notification};
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::auth::{Access, Caller, Perm, Scopes};
use crate::model::Subscription;
use crate::state::Hub;

/// Why a reader's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The credential is revoked, expired or unknown now.
    Revoked(String),
    /// The credential no longer may read the subscription or any of its resource types.
    Forbidden(String),
    /// The audit trail cannot be written, and `audit.fail_closed` makes no disclosure
    /// without it: the reader may come back later.
    Unaudited(String),
}

impl Ended {
    pub fn reason(&self) -> &str {
        match self {
            Ended::Revoked(why) | Ended::Forbidden(why) | Ended::Unaudited(why) => why,
        }
    }
}

/// What a reader is told when its disclosure cannot be audited.
pub const UNAUDITED: &str = "the audit trail cannot be written, and notifications are not \
                             disclosed without it (audit.fail_closed): try again later";

/// What one reader may see now.
#[derive(Debug, Clone)]
struct ReaderGrant {
    scopes: Scopes,
    patient: Option<String>,
    expires: Option<time::OffsetDateTime>,
}

impl ReaderGrant {
    fn of(caller: &Caller) -> ReaderGrant {
        ReaderGrant {
            scopes: caller.scopes.clone(),
            patient: caller.patient.clone(),
            expires: caller.expires,
        }
    }

    /// Whether this grant reaches any of `types` (`patient/` counts with a patient context).
    fn reaches_any(&self, types: &[String]) -> bool {
        types.is_empty()
            || types
                .iter()
                .any(|ty| match self.scopes.access(ty, Perm::Read) {
                    Access::All => true,
                    Access::Patient => self.patient.is_some(),
                    Access::None => false,
                })
    }

    /// Whether the reader may see the focus of `n`.
    fn shows(&self, n: &Notification) -> bool {
        match self.scopes.access(&n.focus_type, Perm::Read) {
            Access::All => true,
            Access::Patient => match (&self.patient, &n.resource) {
                (Some(p), Some(r)) => serde_json::from_str::<serde_json::Value>(r)
                    .is_ok_and(|v| hub_fhir::compartment::in_patient_compartment(&v, p)),
                // a deletion without the resource cannot be placed in a compartment
                _ => false,
            },
            Access::None => false,
        }
    }

    /// Why this grant may not go on reading a subscription of `types`, if it may not.
    fn refusal(&self, types: &[String]) -> Option<Ended> {
        if self
            .expires
            .is_some_and(|end| time::OffsetDateTime::now_utc() >= end)
        {
            return Some(Ended::Revoked("the credential has expired".into()));
        }
        if self.scopes.access("Subscription", Perm::Read) != Access::All {
            return Some(Ended::Forbidden(
                "the credential no longer has scope system/Subscription.r".into(),
            ));
        }
        if !self.reaches_any(types) {
            return Some(Ended::Forbidden(format!(
                "the credential may not read {} resources",
                types.join(" or ")
            )));
        }
        None
    }
}

/// Who a disclosure goes to.
#[derive(Debug)]
enum Reach {
    /// The owner's own endpoint (rest-hook): what the matcher logged under the owner's grant.
    OwnerEndpoint,
    /// A reader with its own grant, kept current by [`Disclosure::watch`].
    Reader {
        grant: Mutex<ReaderGrant>,
        key_id: Option<String>,
        /// The resource types the subscription notifies about.
        types: Vec<String>,
    },
}

#[derive(Debug)]
struct Inner {
    agent: String,
    tenant: String,
    subscription_id: String,
    channel: &'static str,
    content: Content,
    reach: Reach,
    ended: Mutex<Option<Ended>>,
}

/// One reader's right to one subscription's notifications on one channel.
#[derive(Debug, Clone)]
pub struct Disclosure(Arc<Inner>);

fn rank(c: Content) -> u8 {
    match c {
        Content::Empty => 0,
        Content::IdOnly => 1,
        Content::FullResource => 2,
    }
}

fn forbidden(msg: String) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        OperationOutcome::error(IssueType::Forbidden, msg),
    )
}

/// The resource types `sub` notifies about: its criteria's type, or its topic's trigger
/// types (empty when the topic is gone: every event is then checked on its own).
async fn focus_types(hub: &Hub, sub: &Subscription) -> Result<Vec<String>, ApiError> {
    if let Some(c) = &sub.spec.parsed {
        return Ok(vec![c.resource_type.clone()]);
    }
    let Some(t) = sub.topic() else {
        // R4 criteria whose parsed form this process does not keep (no matcher role): the
        // type is what comes before `?`, as validated at create
        let ty = sub.spec.criteria.split('?').next().unwrap_or("").trim();
        return Ok(if ty.is_empty() {
            Vec::new()
        } else {
            vec![ty.to_owned()]
        });
    };
    let Some(row) = hub.store.topic_by_url(sub.tenant(), &t.topic).await? else {
        return Ok(Vec::new());
    };
    let Ok(resource) = serde_json::from_str::<serde_json::Value>(&row.resource) else {
        return Ok(Vec::new());
    };
    let Ok(topic) = hub_fhir::topic::parse(&resource) else {
        return Ok(Vec::new());
    };
    let mut types: Vec<String> = Vec::new();
    for trigger in &topic.triggers {
        let ty = hub_fhir::topic::resource_of(&trigger.resource).to_owned();
        if !types.contains(&ty) {
            types.push(ty);
        }
    }
    Ok(types)
}

impl Disclosure {
    /// The disclosure of `sub` to `caller` on `channel`, at the subscription's content level
    /// or the lower one `asked`; 403 when the reader may see nothing of it (module docs).
    pub async fn for_reader(
        hub: &Hub,
        caller: &Caller,
        sub: &Subscription,
        channel: &'static str,
        asked: Option<Content>,
    ) -> Result<Disclosure, ApiError> {
        caller.require("Subscription", Perm::Read)?;
        let content = match asked {
            Some(c) if rank(c) > rank(sub.content()) => {
                return Err(forbidden(format!(
                    "content '{}' is more than Subscription/{} carries ('{}')",
                    c.as_str(),
                    sub.id(),
                    sub.content().as_str()
                )));
            }
            Some(c) => c,
            None => sub.content(),
        };
        let types = focus_types(hub, sub).await?;
        let grant = ReaderGrant::of(caller);
        if let Some(refused) = grant.refusal(&types) {
            let why = match refused {
                Ended::Forbidden(_) => format!(
                    "this credential may not read the {} resources Subscription/{} notifies about (needs system/<type>.r, or patient/<type>.r with a patient context)",
                    types.join(", "),
                    sub.id()
                ),
                Ended::Revoked(why) | Ended::Unaudited(why) => why,
            };
            return Err(forbidden(why));
        }
        Ok(Disclosure(Arc::new(Inner {
            agent: caller.subject.clone(),
            tenant: sub.tenant().to_owned(),
            subscription_id: sub.id().to_owned(),
            channel,
            content,
            reach: Reach::Reader {
                grant: Mutex::new(grant),
                key_id: caller.key_id.clone(),
                types,
            },
            ended: Mutex::new(None),
        })))
    }

    /// The disclosure of a rest-hook subscription to its own endpoint: the owner chose the
    /// receiver, and the matcher logged only what the owner's grant allows.
    pub fn to_owner_endpoint(sub: &Subscription) -> Disclosure {
        Disclosure(Arc::new(Inner {
            agent: sub.owner_subject(),
            tenant: sub.tenant().to_owned(),
            subscription_id: sub.id().to_owned(),
            channel: "rest-hook",
            content: sub.content(),
            reach: Reach::OwnerEndpoint,
            ended: Mutex::new(None),
        }))
    }

    /// The content level notifications go out at.
    pub fn content(&self) -> Content {
        self.0.content
    }

    /// Who receives (the audit trail's agent).
    pub fn agent(&self) -> &str {
        &self.0.agent
    }

    /// Why the reader's stream ended, once it has.
    pub fn ended(&self) -> Option<Ended> {
        self.0.ended.lock().ok().and_then(|e| e.clone())
    }

    fn end(&self, why: Ended) -> Ended {
        if let Ok(mut e) = self.0.ended.lock() {
            e.get_or_insert(why.clone());
        }
        why
    }

    /// A stop token for the reader's stream: a child of `parent`, cancelled as well when the
    /// credential ends (re-read every `auth.stream_recheck_secs`; [`Disclosure::ended`] then
    /// says why). The re-reading stops with the token or when the disclosure is dropped.
    pub fn watch(&self, hub: &Hub, parent: &CancellationToken) -> CancellationToken {
        let stop = parent.child_token();
        if let Reach::Reader { .. } = self.0.reach {
            let every = Duration::from_secs(hub.config.auth.stream_recheck_secs.max(1));
            tokio::spawn(recheck(
                hub.clone(),
                Arc::downgrade(&self.0),
                stop.clone(),
                every,
            ));
        }
        stop
    }

    /// `notes` as this reader may see them, or why its stream is over.
    pub fn filter(&self, notes: Vec<Notification>) -> Result<Disclosed, Ended> {
        if let Some(e) = self.ended() {
            return Err(e);
        }
        let shown = match &self.0.reach {
            Reach::OwnerEndpoint => vec![true; notes.len()],
            Reach::Reader { grant, types, .. } => {
                let grant = grant
                    .lock()
                    .map_err(|_| Ended::Revoked("the credential state is unavailable".into()))?
                    .clone();
                if let Some(e) = grant.refusal(types) {
                    return Err(self.end(e));
                }
                notes.iter().map(|n| grant.shows(n)).collect()
            }
        };
        Ok(Disclosed {
            notes,
            shown,
            content: self.0.content,
        })
    }

    /// [`Disclosure::filter`], with the audit rows of what is shown written before it is
    /// handed over.
    pub async fn hand_over(&self, hub: &Hub, notes: Vec<Notification>) -> Result<Disclosed, Ended> {
        let d = self.filter(notes)?;
        // with `audit.fail_closed`, no audit row, no disclosure
        crate::auth::record_disclosure(hub, self.audit_rows(d.all()))
            .await
            .map_err(|_| Ended::Unaudited(UNAUDITED.into()))?;
        // a stream's latency ends here: what follows is the write to its reader's socket
        let channel = match self.0.channel {
            "sse" => Some(crate::metrics::Channel::Sse),
            "websocket" => Some(crate::metrics::Channel::Websocket),
            "grpc" => Some(crate::metrics::Channel::Grpc),
            _ => None,
        };
        if let Some(channel) = channel {
            crate::metrics::Delivered {
                channel,
                notifications: &d.notes,
            }
            .emit(&hub.metrics);
        }
        Ok(d)
    }

    /// One disclosure row per event shown with its focus (none at `empty` content).
    pub fn audit_rows(&self, shown: Shown<'_>) -> Vec<NewAudit> {
        if shown.content == Content::Empty {
            return Vec::new();
        }
        shown
            .iter()
            .filter(|(_, seen)| *seen)
            .map(|(n, _)| NewAudit {
                tenant: self.0.tenant.clone(),
                kind: "disclosure".into(),
                action: "R".into(),
                agent: self.0.agent.clone(),
                entity: (!n.focus_type.is_empty())
                    .then(|| format!("{}/{}", n.focus_type, n.focus_id)),
                subscription_id: Some(self.0.subscription_id.clone()),
                channel: Some(self.0.channel.to_owned()),
                outcome: "0".into(),
                detail: Some(format!("event {}", n.event_number)),
            })
            .collect()
    }
}

/// Re-read the reader's API key every `every` until the stream stops; end it (with a
/// reason) when the key is revoked, expired, or no longer reaches the subscription, and
/// follow reduced scopes otherwise. A token's grant cannot change before its `exp`, which
/// every batch checks.
async fn recheck(hub: Hub, inner: Weak<Inner>, stop: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let Reach::Reader {
            grant,
            key_id,
            types,
        } = &inner.reach
        else {
            return;
        };
        let now = match key_id {
            Some(id) => match hub.store.api_key(id).await {
                Ok(Some(row)) if crate::auth::key_usable(&row) && row.tenant == inner.tenant => {
                    Some(ReaderGrant::of(&Caller::of_key(row)))
                }
                Ok(_) => None,
                Err(e) => {
                    // the store is away: keep the last grant, the batch check still runs
                    tracing::warn!(error = %e, "cannot re-check a stream's credential");
                    continue;
                }
            },
            None => grant.lock().ok().map(|g| g.clone()),
        };
        let why = match now {
            None => Some(Ended::Revoked(
                "the API key was revoked or has expired".into(),
            )),
            Some(g) => {
                let why = g.refusal(types);
                if let Ok(mut current) = grant.lock() {
                    *current = g;
                }
                why
            }
        };
        if let Some(why) = why {
            tracing::info!(agent = %inner.agent, subscription = %inner.subscription_id, channel = inner.channel, reason = why.reason(), "ending a stream: its credential ended");
            Disclosure(Arc::clone(&inner)).end(why);
            stop.cancel();
            return;
        }
    }
}

/// A batch of notifications as one reader may see them: what every channel renders from.
#[derive(Debug)]
pub struct Disclosed {
    notes: Vec<Notification>,
    shown: Vec<bool>,
    content: Content,
}

impl Disclosed {
    /// The whole batch.
    pub fn all(&self) -> Shown<'_> {
        Shown {
            notes: &self.notes,
            shown: &self.shown,
            content: self.content,
        }
    }

    /// The batch in groups of at most `n` (a topic's `backport-max-count`).
    pub fn chunks(&self, n: usize) -> impl Iterator<Item = Shown<'_>> {
        let n = n.max(1);
        self.notes
            .chunks(n)
            .zip(self.shown.chunks(n))
            .map(|(notes, shown)| Shown {
                notes,
                shown,
                content: self.content,
            })
    }
}

/// Some events of a [`Disclosed`] batch.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    notes: &'a [Notification],
    shown: &'a [bool],
    content: Content,
}

impl<'a> Shown<'a> {
    /// The content level the events go out at.
    pub fn content(&self) -> Content {
        self.content
    }

    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
    }

    /// The events, whatever the reader may see of them (numbers, ids for message ids).
    pub fn notes(&self) -> &'a [Notification] {
        self.notes
    }

    /// The last event (its number names a group).
    pub fn last(&self) -> Option<&'a Notification> {
        self.notes.last()
    }

    /// Each event, with whether the reader may see its focus.
    pub fn iter(&self) -> impl Iterator<Item = (&'a Notification, bool)> + use<'a> {
        self.notes.iter().zip(self.shown.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn note(number: i64, ty: &str, patient: Option<&str>) -> Notification {
        let resource = patient.map(|p| {
            json!({"resourceType": ty, "id": format!("r{number}"), "status": "final",
                   "code": {"text": "x"}, "subject": {"reference": format!("Patient/{p}")}})
            .to_string()
            .into()
        });
        Notification {
            log_key: hub_store::LogKey::for_tests(1),
            event_number: number,
            notification_id: format!("n{number}"),
            created_at: String::new(),
            note: hub_store::NewNotification {
                tenant: "t".into(),
                subscription_id: "s".into(),
                event_id: format!("e{number}"),
                action: "create".into(),
                focus_type: ty.into(),
                focus_id: format!("r{number}"),
                focus_version: None,
                occurred_at: String::new(),
                resource,
            },
        }
    }

    fn grant(scopes: &str, patient: Option<&str>) -> ReaderGrant {
        ReaderGrant {
            scopes: Scopes::parse([scopes]),
            patient: patient.map(str::to_owned),
            expires: None,
        }
    }

    #[test]
    fn a_reader_sees_the_focus_its_grant_reaches() {
        let p1 = note(1, "Observation", Some("p1"));
        let p2 = note(2, "Observation", Some("p2"));
        let deleted = note(3, "Observation", None);
        let enc = note(4, "Encounter", Some("p1"));
        let sys = grant("system/Subscription.rs system/Observation.rs", None);
        assert!(sys.shows(&p1) && sys.shows(&p2) && sys.shows(&deleted));
        assert!(!sys.shows(&enc));
        let pat = grant("system/Subscription.rs patient/Observation.rs", Some("p1"));
        assert!(pat.shows(&p1));
        assert!(!pat.shows(&p2), "another patient");
        assert!(!pat.shows(&deleted), "a deletion cannot be placed");
        let user = grant("system/Subscription.rs user/Observation.rs", None);
        assert!(
            !user.shows(&p1),
            "user/ without a patient context reaches nothing"
        );
        let types = ["Observation".to_owned()];
        assert_eq!(sys.refusal(&types), None);
        assert!(matches!(
            grant("system/Subscription.rs", None).refusal(&types),
            Some(Ended::Forbidden(_))
        ));
        assert!(matches!(
            grant("system/Subscription.rs patient/Observation.rs", None).refusal(&types),
            Some(Ended::Forbidden(_))
        ));
        let expired = ReaderGrant {
            expires: Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(1)),
            ..sys
        };
        assert!(matches!(expired.refusal(&types), Some(Ended::Revoked(_))));
    }
}
