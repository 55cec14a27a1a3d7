//! One HTTP request to a rest-hook endpoint: built from the subscription's channel and a
//! notification (or a handshake), signed, sent, and classified.

use std::time::Duration;

use hub_fhir::notification::{self, EventInfo, StatusInfo};
use hub_fhir::subscription::{Channel, FhirVersion, TopicSubscription};
use hub_store::Notification;
use reqwest::Method;

use super::schedule::parse_retry_after;
use super::sign;

/// What to send.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub method: Method,
    pub url: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Stable across retries of the same message (the `webhook-id`).
    pub webhook_id: String,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    Failed {
        reason: String,
        /// From `Retry-After` on 429 and 503.
        retry_after: Option<Duration>,
        /// 410 Gone: the endpoint asks never to be called again.
        gone: bool,
    },
}

impl Outcome {
    fn failed(reason: impl Into<String>) -> Self {
        Outcome::Failed {
            reason: reason.into(),
            retry_after: None,
            gone: false,
        }
    }
}

/// R4 rest-hook semantics: without a payload, an empty POST to the endpoint; with one, a PUT
/// of the resource to `[endpoint]/[type]/[id]`.
pub fn notification(channel: &Channel, n: &Notification) -> Dispatch {
    let endpoint = channel.endpoint.trim_end_matches('/');
    match (&channel.payload, &n.resource) {
        (Some(mime), Some(body)) => Dispatch {
            method: Method::PUT,
            url: format!("{endpoint}/{}/{}", n.focus_type, n.focus_id),
            content_type: Some(mime.clone()),
            body: body.clone().into_bytes(),
            webhook_id: n.notification_id.clone(),
        },
        _ => Dispatch {
            method: Method::POST,
            url: channel.endpoint.clone(),
            content_type: None,
            body: Vec::new(),
            webhook_id: n.notification_id.clone(),
        },
    }
}

/// The handshake that activates a subscription: an empty, signed POST to the endpoint (what
/// an R4 rest-hook receiver already accepts), with an id naming the subscription version.
pub fn handshake(channel: &Channel, subscription_id: &str, version: i64) -> Dispatch {
    Dispatch {
        method: Method::POST,
        url: channel.endpoint.clone(),
        content_type: None,
        body: Vec::new(),
        webhook_id: format!("handshake-{subscription_id}-{version}"),
    }
}

/// Logged notifications as the events of a notification bundle.
pub fn event_infos(notes: &[Notification]) -> Vec<EventInfo<'_>> {
    notes
        .iter()
        .map(|n| EventInfo {
            number: n.event_number,
            timestamp: &n.occurred_at,
            focus_type: &n.focus_type,
            focus_id: &n.focus_id,
            action: &n.action,
            resource: n.resource.as_deref(),
        })
        .collect()
}

/// A topic-based message (Backport IG, R4): a notification bundle POSTed to the endpoint.
/// Handshakes and heartbeats pass no events; `webhook_id` defaults to the first event's
/// notification id (stable across retries) or a fresh one.
pub fn topic_message(
    channel: &Channel,
    status: &StatusInfo<'_>,
    topic: &TopicSubscription,
    notes: &[Notification],
    webhook_id: Option<String>,
) -> Dispatch {
    let events = event_infos(notes);
    let bundle = notification::bundle_for(topic.version, status, &events, topic.content);
    let webhook_id = webhook_id
        .or_else(|| notes.first().map(|n| n.notification_id.clone()))
        .unwrap_or_else(|| {
            format!(
                "{}-{}-{}",
                status.kind,
                status.subscription_id,
                uuid::Uuid::now_v7()
            )
        });
    Dispatch {
        method: Method::POST,
        url: channel.endpoint.clone(),
        content_type: Some(match topic.version {
            FhirVersion::R4 => "application/fhir+json".to_owned(),
            FhirVersion::R4B => "application/fhir+json; fhirVersion=4.3".to_owned(),
            FhirVersion::R5 => "application/fhir+json; fhirVersion=5.0".to_owned(),
        }),
        body: bundle.to_string().into_bytes(),
        webhook_id,
    }
}

/// A heartbeat: an empty, signed POST saying "still here" after a quiet period.
pub fn heartbeat(channel: &Channel, subscription_id: &str) -> Dispatch {
    Dispatch {
        method: Method::POST,
        url: channel.endpoint.clone(),
        content_type: None,
        body: Vec::new(),
        webhook_id: format!("heartbeat-{subscription_id}-{}", uuid::Uuid::now_v7()),
    }
}

/// Send a dispatch with the channel's headers and Standard Webhooks signature headers.
pub async fn send(
    client: &reqwest::Client,
    channel: &Channel,
    secret: &str,
    d: &Dispatch,
) -> Outcome {
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let Some(signature) = sign::signature(secret, &d.webhook_id, timestamp, &d.body) else {
        return Outcome::failed("the subscription's signing secret is unusable");
    };
    let mut req = client
        .request(d.method.clone(), &d.url)
        .body(d.body.clone());
    for (name, value) in &channel.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    if let Some(ct) = &d.content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct.as_str());
    }
    req = req
        .header("webhook-id", d.webhook_id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    match req.send().await {
        Ok(res) if channel.is_success(res.status().as_u16()) => Outcome::Delivered {
            status: res.status().as_u16(),
        },
        Ok(res) => {
            let status = res.status().as_u16();
            let retry_after = if status == 429 || status == 503 {
                res.headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
            } else {
                None
            };
            let reason = if res.status().is_redirection() {
                format!("endpoint answered HTTP {status} (redirects are not followed)")
            } else {
                format!("endpoint answered HTTP {status}")
            };
            Outcome::Failed {
                reason,
                retry_after,
                gone: status == 410,
            }
        }
        Err(e) if e.is_timeout() => Outcome::failed("request timed out"),
        Err(e) if e.is_connect() => Outcome::failed(format!("cannot connect: {e}")),
        Err(e) => Outcome::failed(format!("request failed: {e}")),
    }
}
