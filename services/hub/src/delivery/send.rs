//! One HTTP request to a rest-hook endpoint (a message rendered by `channels::render`),
//! signed, sent, and classified.

use std::time::Duration;

use hub_fhir::subscription::Channel;
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
        // never the URL: with a payload it ends in the resource type and id
        Err(e) if e.is_timeout() => {
            Outcome::failed(format!("request timed out: {}", causes(&e.without_url())))
        }
        Err(e) if e.is_connect() => {
            Outcome::failed(format!("cannot connect: {}", causes(&e.without_url())))
        }
        Err(e) => Outcome::failed(format!("request failed: {}", causes(&e.without_url()))),
    }
}

/// An error and every cause under it, `: `-separated ("error sending request: client error
/// (Connect): tcp connect error: Connection refused (os error 111)"), so that a refused
/// connection, a TLS failure and a timeout read differently. A cause a layer already
/// quotes in its own text is not repeated.
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    #[test]
    fn every_cause_is_named_once() {
        let chain = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "tcp connect error: Connection refused",
                Some(Box::new(Layer("Connection refused", None))),
            ))),
        );
        assert_eq!(
            causes(&chain),
            "error sending request: tcp connect error: Connection refused"
        );
    }
}
