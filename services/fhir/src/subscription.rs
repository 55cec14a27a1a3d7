//! Validating an R4 Subscription resource and extracting what the hub needs from it.

use serde_json::Value;

use crate::criteria::Criteria;
use crate::outcome::{IssueType, OperationOutcome};
use crate::time_fmt;

/// Subscription.status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Requested,
    Active,
    Error,
    Off,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Active => "active",
            Self::Error => "error",
            Self::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "requested" => Some(Self::Requested),
            "active" => Some(Self::Active),
            "error" => Some(Self::Error),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// How notifications reach the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelType {
    /// The hub POSTs (or PUTs, R4 with payload) to the subscriber's endpoint.
    RestHook,
    /// The subscriber connects to the hub's websocket and binds with a token.
    Websocket,
    /// Server-Sent Events: the subscriber reads `GET /fhir/Subscription/{id}/$stream`.
    /// A hub channel type (code `sse` in [`HUB_CHANNEL_TYPES`]), named with the Backport
    /// IG's `backport-channel-type` extension in R4 and as `channelType` in R5.
    Sse,
    /// The hub's gRPC stream (`fhirhub.v1.NotificationStream`), code `grpc` in
    /// [`HUB_CHANNEL_TYPES`].
    Grpc,
}

/// The hub's code system for channel types FHIR does not define.
pub const HUB_CHANNEL_TYPES: &str = "urn:fhir-hub:channel-type";

impl ChannelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::RestHook => "rest-hook",
            ChannelType::Websocket => "websocket",
            ChannelType::Sse => "sse",
            ChannelType::Grpc => "grpc",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelType> {
        match s {
            "rest-hook" => Some(ChannelType::RestHook),
            "websocket" => Some(ChannelType::Websocket),
            "sse" => Some(ChannelType::Sse),
            "grpc" => Some(ChannelType::Grpc),
            _ => None,
        }
    }

    /// A hub channel type, named by a Coding of [`HUB_CHANNEL_TYPES`].
    pub fn from_hub_code(code: &str) -> Option<ChannelType> {
        match code {
            "sse" => Some(ChannelType::Sse),
            "grpc" => Some(ChannelType::Grpc),
            _ => None,
        }
    }

    /// Whether the hub calls out to an endpoint (and so checks it against the egress policy).
    pub fn calls_out(self) -> bool {
        self == ChannelType::RestHook
    }
}

/// The channel the hub delivers over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub kind: ChannelType,
    pub endpoint: String,
    /// MIME type of the payload; `None` means the R4 "no payload" notification (empty POST).
    pub payload: Option<String>,
    /// Extra HTTP headers, `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// Seconds of silence after which the hub sends a heartbeat (Backport IG extension
    /// `backport-heartbeat-period` on the channel).
    pub heartbeat_secs: Option<u32>,
    /// HTTP statuses that count as delivered, as inclusive ranges (default 200-299).
    pub success: Vec<(u16, u16)>,
    /// PEM client certificate chain and private key for mutual TLS.
    pub client_certificate: Option<String>,
}

/// Channel extension carrying a PEM client certificate and key for mutual TLS.
pub const CLIENT_CERTIFICATE_EXTENSION: &str = "urn:fhir-hub:client-certificate";

impl Channel {
    pub fn is_success(&self, status: u16) -> bool {
        self.success
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// Channel extension listing the HTTP statuses that count as delivered: `"200-299,302"`.
pub const SUCCESS_CODES_EXTENSION: &str = "urn:fhir-hub:success-codes";

/// Parse `"200-299,302"` into ranges of valid HTTP statuses.
pub fn parse_success_codes(s: &str) -> Option<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return None;
        }
        out.push((lo, hi));
    }
    (!out.is_empty()).then_some(out)
}

/// The Backport IG's heartbeat-period extension on `Subscription.channel`.
pub const HEARTBEAT_EXTENSION: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";

/// How much of the focus resource a topic-based notification carries
/// (`backport-payload-content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Empty,
    IdOnly,
    FullResource,
}

impl Content {
    pub fn as_str(self) -> &'static str {
        match self {
            Content::Empty => "empty",
            Content::IdOnly => "id-only",
            Content::FullResource => "full-resource",
        }
    }

    pub fn parse(s: &str) -> Option<Content> {
        match s {
            "empty" => Some(Content::Empty),
            "id-only" => Some(Content::IdOnly),
            "full-resource" => Some(Content::FullResource),
            _ => None,
        }
    }
}

/// The FHIR version whose notification shape a topic-based subscription receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirVersion {
    /// History Bundle with a backport-subscription-status-r4 Parameters (the Backport IG).
    R4,
    /// History Bundle with an R4B SubscriptionStatus (payload `application/fhir+json;
    /// fhirVersion=4.3`).
    R4B,
    /// `subscription-notification` Bundle with an R5 SubscriptionStatus (an R5-shaped
    /// Subscription, or payload `fhirVersion=5.0`).
    R5,
}

/// A topic-based subscription (Subscriptions R5 Backport IG on R4): `criteria` is the
/// topic's canonical URL.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSubscription {
    pub topic: String,
    pub version: FhirVersion,
    /// `backport-filter-criteria` values, as written (checked against the topic by the API).
    pub filters: Vec<String>,
    pub content: Content,
    /// `backport-max-count`: the most events in one notification bundle.
    pub max_count: Option<u32>,
    /// `backport-timeout`: seconds the endpoint has to answer.
    pub timeout_secs: Option<u32>,
}

pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
pub const FILTER_CRITERIA_EXTENSION: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
pub const PAYLOAD_CONTENT_EXTENSION: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
pub const TIMEOUT_EXTENSION: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";
pub const MAX_COUNT_EXTENSION: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count";
pub const CHANNEL_TYPE_EXTENSION: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type";

/// Whether `Subscription.criteria` names a topic (a canonical URL) rather than R4 search
/// criteria.
pub fn is_topic_canonical(criteria: &str) -> bool {
    criteria.starts_with("http://")
        || criteria.starts_with("https://")
        || criteria.starts_with("urn:")
}

/// What the hub keeps of a validated Subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    pub status: Status,
    pub criteria: String,
    /// R4 search criteria; `None` for a topic-based subscription. Shared with the matcher's
    /// index.
    pub parsed: Option<std::sync::Arc<Criteria>>,
    pub topic: Option<TopicSubscription>,
    pub channel: Channel,
    /// Subscription.end, as given.
    pub end: Option<String>,
}

/// The longest criteria (and filter criteria) string accepted: far beyond any real search
/// (HAPI and browsers cap URLs near 8 KiB), and a bound on what every match evaluates.
pub const MAX_CRITERIA_BYTES: usize = 8 * 1024;

fn invalid(code: IssueType, msg: impl Into<String>, at: &str) -> OperationOutcome {
    OperationOutcome::error(code, msg).at(at.to_owned())
}

fn req_str<'a>(v: &'a Value, ptr: &str, at: &str) -> Result<&'a str, OperationOutcome> {
    match v.pointer(ptr) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) | None => Err(invalid(
            IssueType::Required,
            format!("{at} is required"),
            at,
        )),
        Some(_) => Err(invalid(
            IssueType::Structure,
            format!("{at} must be a string"),
            at,
        )),
    }
}

/// Validate a Subscription sent by a client (create or update): the R4 form (with the
/// Backport IG's extensions for topic-based subscriptions) or the R5 form (`topic`,
/// `filterBy`, `channelType`, ...), which is read as its Backport equivalent.
pub fn validate(resource: &Value) -> Result<SubscriptionSpec, OperationOutcome> {
    if resource.get("topic").is_some() {
        let r4 = r5_as_backport(resource)?;
        let mut spec = validate_r4(&r4)?;
        if let Some(t) = spec.topic.as_mut() {
            t.version = FhirVersion::R5;
        }
        return Ok(spec);
    }
    validate_r4(resource)
}

/// An R5 Subscription rewritten in the Backport IG's R4 form.
fn r5_as_backport(r: &Value) -> Result<Value, OperationOutcome> {
    let topic = r.get("topic").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            IssueType::Structure,
            "Subscription.topic must be a canonical URL string",
            "Subscription.topic",
        )
    })?;
    let mut filters = Vec::new();
    for (i, f) in r
        .get("filterBy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("Subscription.filterBy[{i}]");
        let param = f
            .get("filterParameter")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(IssueType::Required, "filterParameter is required", &at))?;
        let value = f
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(IssueType::Required, "value is required", &at))?;
        let mut text = String::new();
        if let Some(t) = f.get("resourceType").and_then(Value::as_str) {
            text.push_str(crate::topic::resource_of(t));
            text.push('?');
        }
        text.push_str(param);
        if let Some(m) = f.get("modifier").and_then(Value::as_str) {
            text.push(':');
            text.push_str(m);
        }
        text.push('=');
        if let Some(c) = f.get("comparator").and_then(Value::as_str)
            && c != "eq"
        {
            text.push_str(c);
        }
        text.push_str(value);
        filters.push(serde_json::json!({"url": FILTER_CRITERIA_EXTENSION, "valueString": text}));
    }
    let channel_type = r
        .pointer("/channelType/code")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut channel = serde_json::json!({"type": channel_type});
    // R5 names any channel type by a Coding; R4 needs the Backport extension for ours
    if r.pointer("/channelType/system").and_then(Value::as_str) == Some(HUB_CHANNEL_TYPES) {
        channel = serde_json::json!({"type": "rest-hook", "_type": {"extension": [{
            "url": CHANNEL_TYPE_EXTENSION,
            "valueCoding": {"system": HUB_CHANNEL_TYPES, "code": channel_type}}]}});
    }
    if let Some(e) = r.get("endpoint") {
        channel["endpoint"] = e.clone();
    }
    if let Some(ct) = r.get("contentType") {
        channel["payload"] = ct.clone();
    }
    if let Some(c) = r.get("content").and_then(Value::as_str) {
        channel["_payload"] =
            serde_json::json!({"extension": [{"url": PAYLOAD_CONTENT_EXTENSION, "valueCode": c}]});
    }
    let mut ext = Vec::new();
    if let Some(v) = r.get("heartbeatPeriod") {
        ext.push(serde_json::json!({"url": HEARTBEAT_EXTENSION, "valueUnsignedInt": v}));
    }
    if let Some(v) = r.get("timeout") {
        ext.push(serde_json::json!({"url": TIMEOUT_EXTENSION, "valueUnsignedInt": v}));
    }
    if let Some(v) = r.get("maxCount") {
        ext.push(serde_json::json!({"url": MAX_COUNT_EXTENSION, "valuePositiveInt": v}));
    }
    // hub extensions (secret, success codes, client certificate) ride on the R5 resource too
    if let Some(Value::Array(own)) = r.get("extension") {
        ext.extend(own.iter().cloned());
    }
    if !ext.is_empty() {
        channel["extension"] = Value::Array(ext);
    }
    let headers: Vec<Value> = r
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(Value::String(format!(
                "{}: {}",
                p.get("name")?.as_str()?,
                p.get("value")?.as_str()?
            )))
        })
        .collect();
    if !headers.is_empty() {
        channel["header"] = Value::Array(headers);
    }
    let status = r.get("status").and_then(Value::as_str).unwrap_or("");
    if status == "entered-in-error" {
        return Err(invalid(
            IssueType::Value,
            "Subscription.status entered-in-error cannot be written; delete the subscription",
            "Subscription.status",
        ));
    }
    let mut out = serde_json::json!({
        "resourceType": "Subscription",
        "status": status,
        "reason": r.get("reason").or_else(|| r.get("name")).and_then(Value::as_str).unwrap_or("R5 topic-based subscription"),
        "criteria": topic,
        "channel": channel,
    });
    if !filters.is_empty() {
        out["_criteria"] = serde_json::json!({"extension": filters});
    }
    if let Some(e) = r.get("end") {
        out["end"] = e.clone();
    }
    Ok(out)
}

fn validate_r4(resource: &Value) -> Result<SubscriptionSpec, OperationOutcome> {
    if !resource.is_object() {
        return Err(OperationOutcome::error(
            IssueType::Structure,
            "the body must be a FHIR JSON resource object",
        ));
    }
    let rt = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if rt != "Subscription" {
        return Err(invalid(
            IssueType::Invalid,
            format!("expected a Subscription, got resourceType '{rt}'"),
            "resourceType",
        ));
    }
    refuse_cross_version_extensions(resource, "Subscription")?;
    refuse_unknown_criteria_extensions(resource)?;
    let status_s = req_str(resource, "/status", "Subscription.status")?;
    let status = Status::parse(status_s).ok_or_else(|| {
        invalid(
            IssueType::Value,
            format!("Subscription.status '{status_s}' is not requested, active, error or off"),
            "Subscription.status",
        )
    })?;
    if status == Status::Error {
        return Err(invalid(
            IssueType::Value,
            "only the hub sets Subscription.status to error; send requested or off",
            "Subscription.status",
        ));
    }
    req_str(resource, "/reason", "Subscription.reason")?;
    let criteria = req_str(resource, "/criteria", "Subscription.criteria")?;
    if criteria.len() > MAX_CRITERIA_BYTES {
        return Err(invalid(
            IssueType::TooLong,
            format!(
                "Subscription.criteria is {} bytes; at most {MAX_CRITERIA_BYTES} are accepted",
                criteria.len()
            ),
            "Subscription.criteria",
        ));
    }
    let is_topic = is_topic_canonical(criteria);
    let parsed = if is_topic {
        None
    } else {
        Some(Criteria::parse(criteria).map_err(|e| e.to_outcome("Subscription.criteria"))?)
    };

    let kind = req_str(resource, "/channel/type", "Subscription.channel.type")?;
    let custom = resource
        .pointer("/channel/_type/extension")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(CHANNEL_TYPE_EXTENSION))
        });
    let channel_type = match custom {
        // the Backport IG's way to name a channel type R4 does not have
        Some(custom) => {
            let system = custom.pointer("/valueCoding/system").and_then(Value::as_str);
            let code = custom
                .pointer("/valueCoding/code")
                .and_then(Value::as_str)
                .unwrap_or("?");
            system
                .filter(|s| *s == HUB_CHANNEL_TYPES)
                .and_then(|_| ChannelType::from_hub_code(code))
                .ok_or_else(|| {
                    invalid(
                        IssueType::NotSupported,
                        format!(
                            "channel type '{code}' (backport-channel-type, system {}) is not supported; this hub delivers rest-hook, websocket, {HUB_CHANNEL_TYPES}#sse and {HUB_CHANNEL_TYPES}#grpc",
                            system.unwrap_or("none")
                        ),
                        "Subscription.channel.type",
                    )
                })?
        }
        None => ChannelType::parse(kind)
            .filter(|t| matches!(t, ChannelType::RestHook | ChannelType::Websocket))
            .ok_or_else(|| {
            invalid(
                IssueType::NotSupported,
                format!(
                    "channel type '{kind}' is not supported yet; this hub delivers rest-hook, (topic-based) websocket, {HUB_CHANNEL_TYPES}#sse and {HUB_CHANNEL_TYPES}#grpc"
                ),
                "Subscription.channel.type",
            )
        })?,
    };
    // websocket with R4 criteria is the classic R4 protocol (`bind <id>`, `ping <id>`)
    // a websocket or SSE client connects to the hub; there is no endpoint to call
    let endpoint = if !channel_type.calls_out() {
        ""
    } else {
        let endpoint = req_str(
            resource,
            "/channel/endpoint",
            "Subscription.channel.endpoint",
        )?;
        let ok_scheme = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !ok_scheme || endpoint.len() < 10 || endpoint.contains(char::is_whitespace) {
            return Err(invalid(
                IssueType::Value,
                format!("channel.endpoint '{endpoint}' must be an absolute http(s) URL"),
                "Subscription.channel.endpoint",
            ));
        }
        endpoint
    };
    let mut payload_version: Option<String> = None;
    let payload = match resource.pointer("/channel/payload") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => {
            payload_version = p
                .split(';')
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == "fhirVersion")
                .map(|(_, v)| v.trim().to_owned());
            let mime = p.split(';').next().unwrap_or("").trim();
            if !matches!(mime, "application/fhir+json" | "application/json") {
                return Err(invalid(
                    IssueType::NotSupported,
                    format!("channel.payload '{p}' is not supported; use application/fhir+json"),
                    "Subscription.channel.payload",
                ));
            }
            Some(mime.to_owned())
        }
        Some(_) => {
            return Err(invalid(
                IssueType::Structure,
                "channel.payload must be a string",
                "Subscription.channel.payload",
            ));
        }
    };
    let mut headers = Vec::new();
    match resource.pointer("/channel/header") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, h) in items.iter().enumerate() {
                let at = format!("Subscription.channel.header[{i}]");
                let parsed = h
                    .as_str()
                    .and_then(|s| s.split_once(':'))
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .filter(|(n, v)| is_header_name(n) && !v.contains(['\r', '\n']));
                if let Some((n, _)) = &parsed
                    && is_reserved_header(n)
                {
                    return Err(invalid(
                        IssueType::Value,
                        format!(
                            "{at}: header '{n}' is set by the hub (framing, host and webhook signature headers cannot be chosen)"
                        ),
                        &at,
                    ));
                }
                match parsed {
                    Some(pair) => headers.push(pair),
                    None => {
                        return Err(invalid(
                            IssueType::Value,
                            format!("{at} must be 'Name: value' with a valid header name"),
                            &at,
                        ));
                    }
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                IssueType::Structure,
                "channel.header must be an array of strings",
                "Subscription.channel.header",
            ));
        }
    }
    let heartbeat_secs = match channel_extension(resource, HEARTBEAT_EXTENSION) {
        None => None,
        Some(ext) => match ext.get("valueUnsignedInt").and_then(Value::as_u64) {
            Some(n) if (1..=86_400).contains(&n) => Some(n as u32),
            _ => {
                return Err(invalid(
                    IssueType::Value,
                    "the heartbeat period must be valueUnsignedInt seconds from 1 to 86400",
                    "Subscription.channel.extension",
                ));
            }
        },
    };
    let success = match channel_extension(resource, SUCCESS_CODES_EXTENSION) {
        None => vec![(200, 299)],
        Some(ext) => ext
            .get("valueString")
            .and_then(Value::as_str)
            .and_then(parse_success_codes)
            .ok_or_else(|| {
                invalid(
                    IssueType::Value,
                    "success codes must be valueString like \"200-299,302\" (statuses 100-599)",
                    "Subscription.channel.extension",
                )
            })?,
    };
    let client_certificate = match channel_extension(resource, CLIENT_CERTIFICATE_EXTENSION) {
        None => None,
        Some(ext) => match ext.get("valueString").and_then(Value::as_str) {
            Some(pem)
                if pem.contains("-----BEGIN CERTIFICATE-----")
                    && pem.contains("PRIVATE KEY-----") =>
            {
                Some(pem.to_owned())
            }
            _ => {
                return Err(invalid(
                    IssueType::Value,
                    "the client certificate must be a valueString with a PEM certificate chain and its private key",
                    "Subscription.channel.extension",
                ));
            }
        },
    };
    let end = match resource.get("end") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if time_fmt::parse_instant(s).is_some() => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                IssueType::Value,
                "Subscription.end must be a FHIR instant",
                "Subscription.end",
            ));
        }
    };
    let topic = if is_topic {
        Some(topic_fields(
            resource,
            criteria,
            payload.as_deref(),
            payload_version.as_deref(),
        )?)
    } else {
        for url in [PAYLOAD_CONTENT_EXTENSION, FILTER_CRITERIA_EXTENSION] {
            let present = ["/channel/_payload/extension", "/_criteria/extension"]
                .iter()
                .filter_map(|p| resource.pointer(p).and_then(Value::as_array))
                .flatten()
                .any(|e| e.get("url").and_then(Value::as_str) == Some(url));
            if present {
                return Err(invalid(
                    IssueType::NotSupported,
                    format!(
                        "{url} applies to topic-based subscriptions; these criteria are R4 search criteria"
                    ),
                    "Subscription.criteria",
                ));
            }
        }
        None
    };
    Ok(SubscriptionSpec {
        status,
        criteria: criteria.to_owned(),
        parsed: parsed.map(std::sync::Arc::new),
        topic,
        channel: Channel {
            kind: channel_type,
            endpoint: endpoint.to_owned(),
            payload,
            headers,
            heartbeat_secs,
            success,
            client_certificate,
        },
        end,
    })
}

/// The Backport IG fields of a topic-based subscription.
fn topic_fields(
    resource: &Value,
    topic: &str,
    payload: Option<&str>,
    payload_version: Option<&str>,
) -> Result<TopicSubscription, OperationOutcome> {
    let mut filters = Vec::new();
    for e in resource
        .pointer("/_criteria/extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if e.get("url").and_then(Value::as_str) != Some(FILTER_CRITERIA_EXTENSION) {
            continue;
        }
        match e.get("valueString").and_then(Value::as_str) {
            Some(f) if f.len() > MAX_CRITERIA_BYTES => {
                return Err(invalid(
                    IssueType::TooLong,
                    format!(
                        "a backport-filter-criteria is {} bytes; at most {MAX_CRITERIA_BYTES} are accepted",
                        f.len()
                    ),
                    "Subscription.criteria.extension",
                ));
            }
            Some(f) if !f.trim().is_empty() => filters.push(f.trim().to_owned()),
            _ => {
                return Err(invalid(
                    IssueType::Value,
                    "backport-filter-criteria must be a valueString like 'Observation?patient=Patient/123'",
                    "Subscription.criteria.extension",
                ));
            }
        }
    }
    if payload.is_none() {
        return Err(invalid(
            IssueType::Required,
            "a topic-based subscription needs channel.payload (application/fhir+json): notifications are Bundles",
            "Subscription.channel.payload",
        ));
    }
    let content_ext = resource
        .pointer("/channel/_payload/extension")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(PAYLOAD_CONTENT_EXTENSION))
        });
    let content = match content_ext {
        None => Content::IdOnly,
        Some(e) => {
            let code = e.get("valueCode").and_then(Value::as_str).unwrap_or("");
            Content::parse(code).ok_or_else(|| {
                invalid(
                    IssueType::NotSupported,
                    format!("payload content '{code}' is not supported: use empty, id-only or full-resource"),
                    "Subscription.channel.payload.extension",
                )
            })?
        }
    };
    let uint = |url: &str,
                key: &str,
                lo: u64,
                hi: u64,
                what: &str|
     -> Result<Option<u32>, OperationOutcome> {
        match channel_extension(resource, url) {
            None => Ok(None),
            Some(e) => match e.get(key).and_then(Value::as_u64) {
                Some(n) if (lo..=hi).contains(&n) => Ok(Some(n as u32)),
                _ => Err(invalid(
                    IssueType::Value,
                    format!("{what} must be {key} from {lo} to {hi}"),
                    "Subscription.channel.extension",
                )),
            },
        }
    };
    let timeout_secs = uint(TIMEOUT_EXTENSION, "valueUnsignedInt", 1, 120, "the timeout")?;
    let max_count = uint(
        MAX_COUNT_EXTENSION,
        "valuePositiveInt",
        1,
        1000,
        "the max count",
    )?;
    let version = match payload_version {
        None | Some("4.0") | Some("4.0.1") => FhirVersion::R4,
        Some("4.3") | Some("4.3.0") => FhirVersion::R4B,
        Some("5.0") | Some("5.0.0") => FhirVersion::R5,
        Some(v) => {
            return Err(invalid(
                IssueType::NotSupported,
                format!(
                    "fhirVersion={v} is not supported: use 4.0 (Backport Parameters), 4.3 (R4B SubscriptionStatus) or 5.0 (R5)"
                ),
                "Subscription.channel.payload",
            ));
        }
    };
    Ok(TopicSubscription {
        topic: topic.to_owned(),
        version,
        filters,
        content,
        max_count,
        timeout_secs,
    })
}

/// A cross-version extension (`http://hl7.org/fhir/5.0/StructureDefinition/extension-…`
/// and the like) on an R4 Subscription. The Backport IG: these SHOULD NOT describe what the
/// IG's own extensions describe, and the Inferno kit expects them refused. The hub refuses
/// them everywhere in the resource rather than silently ignoring what they ask for, except
/// R5's `Subscription.identifier`, which the IG's backport-subscription profile allows.
fn is_cross_version_extension(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://hl7.org/fhir/") else {
        return false;
    };
    if rest.ends_with("/StructureDefinition/extension-Subscription.identifier") {
        return false;
    }
    let version = rest.split('/').next().unwrap_or("");
    let mut parts = version.split('.');
    let numeric =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    numeric(parts.next()) && numeric(parts.next())
}

fn refuse_cross_version_extensions(v: &Value, at: &str) -> Result<(), OperationOutcome> {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if (k == "extension" || k == "modifierExtension")
                    && let Value::Array(exts) = child
                {
                    for e in exts {
                        let url = e.get("url").and_then(Value::as_str).unwrap_or("");
                        if is_cross_version_extension(url) {
                            return Err(invalid(
                                IssueType::NotSupported,
                                format!(
                                    "cross-version extension '{url}' is not supported on an R4 Subscription: use the Subscriptions Backport IG's extensions (backport-filter-criteria, backport-payload-content, backport-channel-type, ...)"
                                ),
                                &format!("{at}.{k}"),
                            ));
                        }
                    }
                }
                let name = k.strip_prefix('_').unwrap_or(k);
                refuse_cross_version_extensions(child, &format!("{at}.{name}"))?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|i| refuse_cross_version_extensions(i, at)),
        _ => Ok(()),
    }
}

/// An extension on `criteria` changes what a subscription matches; one the hub does not
/// know would be dropped silently and the subscriber would receive more than asked for.
fn refuse_unknown_criteria_extensions(resource: &Value) -> Result<(), OperationOutcome> {
    for e in resource
        .pointer("/_criteria/extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let url = e.get("url").and_then(Value::as_str).unwrap_or("");
        if url != FILTER_CRITERIA_EXTENSION {
            return Err(invalid(
                IssueType::NotSupported,
                format!(
                    "extension '{url}' on Subscription.criteria is not supported; the hub knows {FILTER_CRITERIA_EXTENSION}"
                ),
                "Subscription.criteria.extension",
            ));
        }
    }
    Ok(())
}

fn channel_extension<'a>(resource: &'a Value, url: &str) -> Option<&'a Value> {
    resource
        .pointer("/channel/extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

/// Headers a subscription may not set: HTTP framing and routing (a `Host` aims the request
/// elsewhere), and the Standard Webhooks headers (a second `webhook-signature` beside the
/// real one).
fn is_reserved_header(n: &str) -> bool {
    let n = n.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "host"
            | "content-length"
            | "content-type"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "te"
            | "trailer"
            | "keep-alive"
            | "expect"
    ) || n.starts_with("webhook-")
        || n.starts_with("proxy-")
}

fn is_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sub() -> Value {
        json!({"resourceType": "Subscription", "status": "requested", "reason": "labs",
            "criteria": "Observation?code=http://loinc.org|2345-7",
            "channel": {"type": "rest-hook", "endpoint": "https://ehr.example/hook",
                        "payload": "application/fhir+json", "header": ["Authorization: Bearer x"]}})
    }

    #[test]
    fn hub_channel_types_in_r4_and_r5() {
        let sse_r4 = json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
            "criteria": "Observation?code=1",
            "channel": {"type": "rest-hook", "payload": "application/fhir+json",
                "_type": {"extension": [{"url": CHANNEL_TYPE_EXTENSION,
                    "valueCoding": {"system": HUB_CHANNEL_TYPES, "code": "sse"}}]}}});
        let spec = validate(&sse_r4).unwrap();
        assert_eq!(spec.channel.kind, ChannelType::Sse);
        assert_eq!(
            spec.channel.endpoint, "",
            "the client connects; nothing to call"
        );
        // a code of another system, or one the hub does not have, is refused by name
        let mut other = sse_r4.clone();
        other["channel"]["_type"]["extension"][0]["valueCoding"]["system"] = json!("urn:x");
        let oo = validate(&other).unwrap_err();
        assert!(oo.summary().contains("urn:x"), "{}", oo.summary());
        let mut zulip = sse_r4.clone();
        zulip["channel"]["_type"]["extension"][0]["valueCoding"]["code"] = json!("zulip");
        assert!(validate(&zulip).is_err());
        // "sse" is not an R4 channel.type code
        let mut plain = sub();
        plain["channel"]["type"] = json!("sse");
        assert!(validate(&plain).is_err());
        // R5: channelType is a Coding
        let r5 = json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
            "topic": "http://example.org/t", "content": "id-only",
            "channelType": {"system": HUB_CHANNEL_TYPES, "code": "sse"},
            "contentType": "application/fhir+json"});
        assert_eq!(validate(&r5).unwrap().channel.kind, ChannelType::Sse);
    }

    #[test]
    fn success_codes() {
        assert_eq!(
            parse_success_codes("200-299, 302"),
            Some(vec![(200, 299), (302, 302)])
        );
        assert_eq!(parse_success_codes("299-200"), None);
        assert_eq!(parse_success_codes("abc"), None);
        assert_eq!(parse_success_codes("600"), None);
        let mut sub = sub();
        sub["channel"]["extension"] =
            json!([{"url": SUCCESS_CODES_EXTENSION, "valueString": "200,202"}]);
        let spec = validate(&sub).unwrap();
        assert!(spec.channel.is_success(202) && !spec.channel.is_success(201));
        sub["channel"]["extension"] =
            json!([{"url": SUCCESS_CODES_EXTENSION, "valueString": "2xx"}]);
        assert!(validate(&sub).is_err());
    }

    #[test]
    fn accepts_a_good_subscription() {
        let s = validate(&sub()).unwrap();
        assert_eq!(s.status, Status::Requested);
        assert_eq!(
            s.channel.headers,
            vec![("Authorization".into(), "Bearer x".into())]
        );
        assert_eq!(s.channel.payload.as_deref(), Some("application/fhir+json"));
    }

    #[test]
    fn refusals_point_at_the_element() {
        type Mutation = fn(&mut Value);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |s| s["criteria"] = json!("Observation?code:in=http://vs"),
                "Subscription.criteria",
            ),
            (
                |s| {
                    // a topic-based subscription with a payload content the IG does not define
                    s["criteria"] = json!("http://x/SubscriptionTopic/t");
                    s["channel"]["_payload"] = json!({"extension": [{"url": PAYLOAD_CONTENT_EXTENSION, "valueCode": "all"}]});
                },
                "Subscription.channel.payload.extension",
            ),
            (
                |s| s["channel"]["type"] = json!("email"),
                "Subscription.channel.type",
            ),
            (
                |s| s["channel"]["endpoint"] = json!("ftp://x"),
                "Subscription.channel.endpoint",
            ),
            (
                |s| s["channel"]["payload"] = json!("application/fhir+xml"),
                "Subscription.channel.payload",
            ),
            (
                |s| s["channel"]["header"] = json!(["bad header"]),
                "Subscription.channel.header[0]",
            ),
            (
                |s| s["channel"]["header"] = json!(["Host: internal.example"]),
                "Subscription.channel.header[0]",
            ),
            (
                |s| s["channel"]["header"] = json!(["X-Ok: 1", "Webhook-Signature: v1,forged"]),
                "Subscription.channel.header[1]",
            ),
            (|s| s["status"] = json!("error"), "Subscription.status"),
            (
                // 14 MB of criteria were accepted once
                |s| s["criteria"] = json!(format!("Observation?code={}", "1,".repeat(5000))),
                "Subscription.criteria",
            ),
            (
                // the Inferno kit's cross-version extension test
                |s| {
                    s["criteria"] = json!("http://x/SubscriptionTopic/t");
                    s["_criteria"] = json!({"extension": [{
                        "url": "http://hl7.org/fhir/5.0/subscriptions-backport/StructureDefinition/backport-filter-criteria",
                        "valueString": "Encounter.patient=Patient/123"}]});
                },
                "Subscription.criteria.extension",
            ),
            (
                // a cross-version extension anywhere, here R5's channel.content on channel
                |s| {
                    s["channel"]["extension"] = json!([{
                        "url": "http://hl7.org/fhir/4.3/StructureDefinition/extension-Subscription.content",
                        "valueCode": "full-resource"}]);
                },
                "Subscription.channel.extension",
            ),
            (
                // an extension on criteria the hub does not know would widen the match
                |s| {
                    s["criteria"] = json!("http://x/SubscriptionTopic/t");
                    s["_criteria"] = json!({"extension": [{"url": "http://example.org/narrow", "valueString": "x"}]});
                },
                "Subscription.criteria.extension",
            ),
            (
                |s| {
                    s.as_object_mut().unwrap().remove("reason");
                },
                "Subscription.reason",
            ),
        ];
        for (mutate, at) in cases {
            let mut s = sub();
            mutate(&mut s);
            let oo = validate(&s).unwrap_err();
            assert_eq!(
                oo.issues[0].expression,
                vec![at.to_owned()],
                "{}",
                oo.summary()
            );
        }
    }
}
