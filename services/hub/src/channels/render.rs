//! The one rendering of every message a subscription receives, whatever the channel:
//! handshake, heartbeat and event-notification (and the query-status / query-event answers
//! of `$status` and `$events`), as an R4 Backport, R4B or R5 notification bundle for
//! topic-based subscriptions, or the classic R4 payloads for criteria subscriptions (an
//! empty POST, or the resource PUT to `[endpoint]/[type]/[id]`).

use hub_fhir::notification::{self, EventInfo, StatusInfo};
use hub_fhir::subscription::{Content, FhirVersion, Status};
use serde_json::Value;

use super::disclosure::Shown;
use crate::model::Subscription;

/// Which message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl Kind {
    /// The `type` code of the notification (SubscriptionStatus.type).
    pub fn code(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Heartbeat => "heartbeat",
            Kind::EventNotification => "event-notification",
            Kind::QueryStatus => "query-status",
            Kind::QueryEvent => "query-event",
        }
    }
}

/// A rendered message, for any channel to frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// `None`: an empty body (classic R4 without payload, handshakes and heartbeats).
    pub body: Option<Vec<u8>>,
    pub content_type: Option<String>,
    /// Classic R4 with a payload: the resource goes to `[endpoint]/[type]/[id]` by PUT.
    pub resource_path: Option<String>,
    /// Stable across retries of the same message: the `webhook-id` of a rest-hook, the SSE
    /// `id` companion, the gRPC notification id.
    pub id: String,
}

/// The content type of a bundle of this shape for a subscription whose `channel.payload`
/// names `payload` (the IG: the content type SHALL match the payload MIME type, so a
/// subscriber that asked for `application/json` gets `application/json`), with the
/// `fhirVersion` parameter when the shape is not the server's own R4.
pub fn content_type(payload: Option<&str>, shape: FhirVersion) -> String {
    let mime = payload.unwrap_or("application/fhir+json");
    match shape {
        FhirVersion::R4 => mime.to_owned(),
        FhirVersion::R4B => format!("{mime}; fhirVersion=4.3"),
        FhirVersion::R5 => format!("{mime}; fhirVersion=5.0"),
    }
}

/// Disclosed notifications as the events of a bundle.
fn event_infos<'a>(events: Option<Shown<'a>>) -> Vec<EventInfo<'a>> {
    let Some(events) = events else {
        return Vec::new();
    };
    events
        .iter()
        .map(|(n, shown)| EventInfo {
            number: n.event_number,
            timestamp: &n.occurred_at,
            focus_type: &n.focus_type,
            focus_id: &n.focus_id,
            action: &n.action,
            resource: n.resource.as_deref(),
            withheld: !shown,
        })
        .collect()
}

/// One message to one subscription: everything a rendering depends on.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub sub: &'a Subscription,
    /// The FHIR base URL for references.
    pub base: &'a str,
    /// The subscription's status as the message reports it (a handshake goes out while
    /// `requested`).
    pub status: Status,
    pub kind: Kind,
    pub events_since_start: i64,
    /// The events of an event-notification (one, or up to `backport-max-count`), or of a
    /// query-event answer, as their reader may see them (they come only from a
    /// [`super::disclosure::Disclosure`]); `None` otherwise.
    events: Option<Shown<'a>>,
    /// The content level: the subscription's, or the disclosure's for a message with events.
    content: Content,
    /// What the status's `error` says on a message other than a status answer (`$events`:
    /// the asked events that were purged).
    notice: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// A message without events.
    pub fn new(
        sub: &'a Subscription,
        base: &'a str,
        status: Status,
        kind: Kind,
        events_since_start: i64,
    ) -> Message<'a> {
        Message {
            sub,
            base,
            status,
            kind,
            events_since_start,
            events: None,
            content: sub.content(),
            notice: None,
        }
    }

    /// The same message with `notice` as its status's `error`.
    pub fn with_notice(self, notice: &'a str) -> Message<'a> {
        Message {
            notice: Some(notice),
            ..self
        }
    }

    /// The same message carrying `events`, at their disclosure's content level.
    pub fn with(self, events: Shown<'a>) -> Message<'a> {
        Message {
            events: Some(events),
            content: events.content(),
            ..self
        }
    }

    /// The status part of every bundle.
    pub fn status_info(&self) -> StatusInfo<'a> {
        StatusInfo {
            base: self.base,
            subscription_id: self.sub.id(),
            topic: self.sub.topic().map(|t| t.topic.as_str()),
            status: self.status.as_str(),
            kind: self.kind.code(),
            events_since_start: self.events_since_start,
            // why the hub set error/off is part of the status answer, not of every message
            error: if self.kind == Kind::QueryStatus {
                self.sub.error.as_deref()
            } else {
                self.notice
            },
        }
    }

    /// The notification bundle, in the subscription's shape: what topic-based channels
    /// send, and what `$events`/`$status` answer.
    pub fn bundle(&self) -> Value {
        let events = event_infos(self.events);
        notification::bundle_for(self.sub.shape(), &self.status_info(), &events, self.content)
    }

    /// [`Message::bundle`] as JSON text (the R4 shape is written without building the tree).
    pub fn bundle_text(&self) -> String {
        let events = event_infos(self.events);
        notification::bundle_text_for(self.sub.shape(), &self.status_info(), &events, self.content)
    }

    /// The message as a channel sends it: the subscription's bundle for topic-based
    /// subscriptions, the classic R4 payload otherwise.
    pub fn render(&self) -> Rendered {
        let sub = self.sub;
        let id = match self.kind {
            Kind::Handshake => format!("handshake-{}-{}", sub.id(), sub.version),
            // The id names exactly what the message carries: one event is its notification
            // id; a group names its first notification and its last event number, so a group
            // cut differently after a restart is a different message (a receiver
            // deduplicating on `webhook-id` would otherwise drop the events it never had).
            kind => match self.events.map(|e| e.notes()).unwrap_or_default() {
                [] => format!("{}-{}-{}", kind.code(), sub.id(), uuid::Uuid::now_v7()),
                [one] => one.notification_id.clone(),
                [first, .., last] => format!("{}..{}", first.notification_id, last.event_number),
            },
        };
        if sub.topic().is_none() {
            // classic R4: handshakes and heartbeats are empty POSTs; a notification carries
            // the resource when the channel has a payload
            // (the last event, when its reader may see it at full-resource)
            let last = self
                .events
                .and_then(|e| e.iter().last())
                .filter(|(_, shown)| *shown && self.content == Content::FullResource)
                .map(|(n, _)| n);
            return match (self.kind, &sub.spec.channel.payload, last) {
                (Kind::EventNotification, Some(_), Some(n)) if n.resource.is_some() => Rendered {
                    body: n.resource.as_ref().map(|r| r.as_bytes().to_vec()),
                    content_type: sub.spec.channel.payload.clone(),
                    resource_path: Some(format!("{}/{}", n.focus_type, n.focus_id)),
                    id,
                },
                _ => Rendered {
                    body: None,
                    content_type: None,
                    resource_path: None,
                    id,
                },
            };
        }
        Rendered {
            body: Some(self.bundle_text().into_bytes()),
            content_type: Some(content_type(
                sub.spec.channel.payload.as_deref(),
                sub.shape(),
            )),
            resource_path: None,
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_store::Notification;

    fn note(number: i64) -> Notification {
        Notification {
            log_key: hub_store::LogKey::for_tests(1),
            event_number: number,
            notification_id: format!("n{number}"),
            created_at: String::new(),
            note: hub_store::NewNotification {
                tenant: "default".into(),
                subscription_id: "s".into(),
                event_id: format!("e{number}"),
                action: "create".into(),
                focus_type: "Observation".into(),
                focus_id: format!("o{number}"),
                focus_version: None,
                occurred_at: "2024-01-01T00:00:00Z".into(),
                resource: None,
            },
        }
    }

    #[test]
    fn a_message_id_names_exactly_the_events_it_carries() {
        let sub = crate::model::tests::topic_subscription();
        let notes: Vec<Notification> = (1..=8).map(note).collect();
        let disclosure = crate::channels::disclosure::Disclosure::to_owner_endpoint(&sub);
        let id = |notes: &[Notification]| {
            let d = disclosure
                .filter(notes.to_vec())
                .expect("the owner's endpoint");
            Message::new(
                &sub,
                "http://hub/fhir",
                Status::Active,
                Kind::EventNotification,
                8,
            )
            .with(d.all())
            .render()
            .id
        };
        assert_eq!(id(&notes[..1]), "n1", "one event: its notification id");
        // the same group again (a retry) keeps its id
        assert_eq!(id(&notes[..5]), id(&notes[..5]));
        // cut differently after a restart: a different message, a different id
        assert_ne!(id(&notes[..5]), id(&notes[..8]));
        assert_ne!(id(&notes[..1]), id(&notes[..2]));
    }
}
