//! `GET /fhir/metadata`: a CapabilityStatement that says exactly what the hub supports.

use axum::extract::State;
use serde_json::json;

use super::fhir_json::FhirJson;
use crate::state::Hub;

/// What R4 criteria this version evaluates: kept next to the matcher's own refusals.
pub const CRITERIA_SUPPORT: &str = "Subscription.criteria: R4 search criteria 'Type?params' \
evaluated in memory against the FHIR R4 SearchParameter definitions (2,563 of 2,570 \
type/parameter pairs; refused by name: Bundle.composition, Bundle.message, InsurancePlan.name, \
Location.near, Patient.deceased and two MolecularSequence composites). Types: token, \
reference, string, uri, date, number, quantity, composite. Prefixes eq ne gt lt ge le sa eb \
ap with precision ranges (dates, numbers; sa/eb on dates only). Modifiers: :missing (all); \
:not :text :code-text :of-type (token); :exact :contains (string); :[Type] :identifier \
(reference); :above :below (uri). Quantities compare value|system|code without unit \
conversion. Refused with an OperationOutcome at create: chains, _has, :in/:not-in, \
:above/:below on codes and references, _text/_content/_list/_query/_filter and result \
parameters. Deletions do not notify R4 criteria subscriptions.";

/// What topic-based subscriptions support.
pub const TOPIC_SUPPORT: &str = "Topic-based subscriptions (Subscriptions R5 Backport IG on R4): \
Subscription.criteria is the canonical url of a SubscriptionTopic stored at /SubscriptionTopic \
(R4B/R5 JSON shape); filters in _criteria.extension backport-filter-criteria, limited to the \
topic's canFilterBy (comparators and modifiers as listed; eq when none); channel.payload \
application/fhir+json is required (or application/json), with _payload.extension backport-payload-content empty, \
id-only (default) or full-resource; notifications carry the payload MIME type as their content type; channel extensions backport-heartbeat-period, \
backport-timeout (1-120 s) and backport-max-count. Notifications are history Bundles whose first \
entry is a backport-subscription-status-r4 Parameters (types handshake, heartbeat, \
event-notification; $status gives query-status, $events query-event), one event per bundle or \
up to backport-max-count waiting events, \
eventNumber gap-free per subscription. Topics: resourceTrigger with supportedInteraction, \
queryCriteria (previous/current, resultForCreate, resultForDelete, requireBoth) and \
fhirPathCriteria with %current/%previous (%previous is the change event's previous version or, \
when the event lacks it, the last version the hub recorded for types that topics compare). \
Refused: eventTrigger, \
notificationShape include/revInclude, channel types other than rest-hook, websocket and \
urn:fhir-hub:channel-type#sse, payloads other than FHIR JSON. Websocket (topic-based only): \
$get-ws-binding-token gives a token and the websocket-url (/fhir/$subscription-ws); the client \
sends 'bind-with-token: <token>' and receives a handshake bundle, then event-notification \
bundles for events after it bound (earlier ones with $events), and heartbeats; hub extension: \
'bind-with-token: <token> <last event number seen>' resumes after that number. Server-Sent \
Events (channel type code sse of system urn:fhir-hub:channel-type, as backport-channel-type on \
channel.type in R4 or channelType in R5; topic-based or criteria): GET \
[base]/Subscription/{id}/$stream, text/event-stream with id = event number, events handshake, \
event-notification, heartbeat, history-gone, shutdown; resume with Last-Event-ID or ?from=N; \
browsers pass a $get-ws-binding-token token as ?token=. gRPC (code grpc of \
urn:fhir-hub:channel-type): fhirhub.v1.NotificationStream on the hub's gRPC listener \
(grpc.listen; reflection and grpc.health.v1): Subscribe from an event number, Consume as a \
named consumer resuming after its committed offsets, Commit.";

/// The Backport IG's R4 server CapabilityStatement, which this one instantiates.
pub const BACKPORT_SERVER_R4: &str = "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4";
pub const BACKPORT_IG: &str = "http://hl7.org/fhir/uv/subscriptions-backport/ImplementationGuide/hl7.fhir.uv.subscriptions-backport";
pub const BACKPORT_SUBSCRIPTION_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";

/// The topic API. SubscriptionTopic is not an R4 resource type, so an R4
/// CapabilityStatement cannot list it under `rest.resource`: it is described here instead.
const TOPIC_API: &str = "SubscriptionTopic (not an R4 resource type, so described here rather than under rest.resource): [base]/SubscriptionTopic supports read, vread, update (update-create), delete, _history, create and search by url (exact), status and resource (a resourceTrigger's resource, type name or StructureDefinition url); the R4B/R5 SubscriptionTopic JSON shape, or the Backport IG's R4 Basic representation, stored as the topic it stands for. Refused at write: eventTrigger, notificationShape include/revInclude, fhirPathCriteria that do not parse or name elements the resource cannot have, canFilterBy parameters the matcher cannot evaluate. A topic in use by a subscription cannot be deleted.";

/// `GET /fhir/metadata`: answered without a credential (discovery); the topics it lists are
/// the caller's tenant's, so an anonymous caller of a hub that requires credentials sees none.
pub async fn capability_statement(
    State(hub): State<Hub>,
    super::auth::MaybeCaller(caller): super::auth::MaybeCaller,
) -> FhirJson {
    let topics = match &caller {
        Some(c) => hub
            .store
            .list_topics(Some(&c.tenant))
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let topics: Vec<serde_json::Value> = topics
        .into_iter()
        .map(|t| {
            json!({"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical", "valueCanonical": t.url})
        })
        .collect();
    FhirJson(json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": hub_fhir::time_fmt::now_instant(),
        "kind": "instance",
        "software": {"name": "fhir-hub", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "FHIR Subscription Hub"},
        "fhirVersion": "4.0.1",
        // the Backport IG: SHOULD instantiate its R4 server CapabilityStatement
        "instantiates": [BACKPORT_SERVER_R4],
        "implementationGuide": [BACKPORT_IG],
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": format!("POST [base] accepts history, transaction and batch Bundles as change events to publish (answered 202 with an OperationOutcome, not a transaction-response: the hub stores no clinical resources). POST /events accepts change-event envelopes (JSON or NDJSON). {TOPIC_API}"),
            "resource": [{
                "type": "Subscription",
                "extension": topics,
                // the Backport IG: SHALL declare the Backport Subscription profile
                "supportedProfile": [BACKPORT_SUBSCRIPTION_PROFILE],
                "documentation": format!("Channel types: rest-hook; websocket for topic-based subscriptions; sse (urn:fhir-hub:channel-type) at [base]/Subscription/{{id}}/$stream; grpc (urn:fhir-hub:channel-type) on the gRPC listener. Payload: none (empty POST to the endpoint) or application/fhir+json (PUT [endpoint]/[type]/[id] with the resource). Every request carries Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature) signed with the subscription's secret (channel extension urn:fhir-hub:webhook-secret, or generated and returned once at create). Delivered means 2xx, or the statuses listed in the channel extension urn:fhir-hub:success-codes (valueString like 200-299,302). Mutual TLS: a PEM client certificate and key in the channel extension urn:fhir-hub:client-certificate (never shown on reads). Heartbeats: the Backport IG extension backport-heartbeat-period on channel (seconds) makes the hub send a signed empty POST after that much silence. Status: requested until an empty signed handshake POST succeeds, then active; error while deliveries fail; off on 410 Gone or when the retry schedule runs out; only the client sets requested again. Endpoints resolving to loopback, private, link-local, multicast or metadata addresses are refused (422). {CRITERIA_SUPPORT} {TOPIC_SUPPORT}"),
                "interaction": [
                    {"code": "read"},
                    {"code": "vread"},
                    {"code": "update"},
                    {"code": "delete"},
                    {"code": "history-instance"},
                    {"code": "create"},
                    {"code": "search-type"}
                ],
                "operation": [
                    {"name": "status", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"},
                    {"name": "events", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"},
                    {"name": "get-ws-binding-token", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-get-ws-binding-token"}
                ],
                "versioning": "versioned-update",
                "readHistory": false,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": [
                    {"name": "status", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Subscription-status"},
                    {"name": "type", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Subscription-type"},
                    {"name": "url", "type": "uri", "definition": "http://hl7.org/fhir/SearchParameter/Subscription-url", "documentation": "exact match only"},
                    {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}
                ]
            }]
        }]
    }))
}
