//! `/fhir/Subscription` in the one resource API (`api/resource.rs`): how a Subscription is
//! validated, stored and searched.
//!
//! The hub owns `id`, `meta.versionId`, `meta.lastUpdated`, `error` and the server-driven
//! part of `status`: a client sends `requested` (or `off`); the hub makes it `active` after a
//! successful handshake, `error` while deliveries fail, `off` on 410 Gone or when retries run
//! out. Each subscription has a Standard Webhooks signing secret: the client's (extension
//! `urn:fhir-hub:webhook-secret` on `channel`), or one the hub generates and shows once, in
//! the answer to the create.

use hub_fhir::subscription::{self, Status};
use hub_fhir::{IssueType, OperationOutcome};
use hub_store::{SubscriptionRow, SubscriptionWrite};
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::resource::{
    ResourceKind, Stored, WriteRequest, Written, stored_resource, validation_error,
};
use crate::auth::sealed::{Binding, Field};
use crate::delivery::sign;
use crate::{Hub, model};

/// A validated write and whether the hub generated its signing secret (then shown once).
struct Prepared {
    write: SubscriptionWrite,
    generated_secret: bool,
}

/// The stored form: client content with hub-owned fields removed, the status settled, the
/// endpoint checked against the egress policy, and a signing secret (the client's, the one
/// already stored, or a new one).
async fn settle_write(
    hub: &Hub,
    caller: &Caller,
    id: &str,
    body: &Value,
    existing: Option<&SubscriptionRow>,
) -> Result<Prepared, ApiError> {
    let tenant = caller.tenant.as_str();
    refuse_sealed_forms(body)?;
    let spec = subscription::validate(body).map_err(validation_error)?;
    let receives = match (&spec.topic, &spec.parsed) {
        (Some(t), _) => check_topic(hub, tenant, t).await?,
        (None, Some(c)) => vec![(c.resource_type.clone(), query_pairs(&spec.criteria))],
        (None, None) => Vec::new(),
    };
    check_receivable(caller, &receives)?;
    // websocket and SSE clients connect to the hub: nothing to hand-shake with
    let connects_in = !spec.channel.kind.calls_out();
    if spec.channel.kind.calls_out() {
        hub.egress
            .check(&spec.channel.endpoint)
            .await
            .map_err(|why| {
                ApiError::unprocessable(
                    OperationOutcome::error(
                        IssueType::Value,
                        format!("channel.endpoint refused: {why}"),
                    )
                    .at("Subscription.channel.endpoint"),
                )
            })?;
    }
    if let Some(pem) = &spec.channel.client_certificate {
        reqwest::Identity::from_pem(pem.as_bytes())
            .and_then(|id| reqwest::Client::builder().identity(id).build())
            .map_err(|e| {
                ApiError::unprocessable(
                    OperationOutcome::error(
                        IssueType::Value,
                        format!("the client certificate cannot be used: {e}"),
                    )
                    .at("Subscription.channel.extension"),
                )
            })?;
    }
    // A client asks (requested) or stops (off); the hub activates a rest-hook after the
    // handshake, a websocket or SSE subscription at once (its client connects to the hub and
    // gets the handshake when it binds).
    let status = match spec.status {
        Status::Off => Status::Off,
        _ if connects_in => Status::Active,
        Status::Requested | Status::Active | Status::Error => Status::Requested,
    };
    let mut resource = body.clone();
    // credentials stay with the endpoint they were given for: a changed endpoint keeps no
    // stored secret, client certificate or redacted header
    let same_endpoint = existing.is_some_and(|row| row.endpoint == spec.channel.endpoint);
    let existing = existing.filter(|_| same_endpoint);
    let sealer = hub.subscriptions.sealer();
    // what is kept from the stored version is opened here and sealed again below, bound to
    // this subscription (nothing is ever stored as it came in sealed form)
    let kept_unopenable = |why: String| {
        ApiError::unprocessable(
            OperationOutcome::error(
                IssueType::Value,
                format!(
                    "a stored credential of this subscription cannot be opened ({why}); send it again"
                ),
            )
            .at("Subscription.channel"),
        )
    };
    if let Some(row) = existing
        && let Ok(mut stored) = serde_json::from_str::<Value>(&row.resource)
    {
        let opened = model::open_headers(sealer, tenant, id, &mut stored);
        model::restore_headers(&mut resource, &stored);
        if let Err(why) = opened
            && model::has_redacted_header(&mut resource)
        {
            return Err(kept_unopenable(why));
        }
    }
    // Secrets go to their own columns; the stored resource never holds one.
    let sent = model::take_secrets(&mut resource);
    if let Some(s) = &sent.secret
        && !sign::valid_secret(s)
    {
        return Err(ApiError::unprocessable(
            OperationOutcome::error(
                IssueType::Value,
                "the webhook secret must be 'whsec_' followed by 24 to 64 bytes in base64",
            )
            .at("Subscription.channel.extension"),
        ));
    }
    let bind = |field| Binding {
        tenant,
        subscription: id,
        field,
    };
    let open_kept = |stored: Option<&String>, field| {
        stored
            .map(|v| sealer.open(&bind(field), v).map(|o| o.plain))
            .transpose()
            .map_err(kept_unopenable)
    };
    // Reads never show the secret or the client certificate, so an update that omits them
    // keeps the stored ones.
    let kept_secret = match sent.secret {
        Some(_) => None,
        None => open_kept(existing.and_then(|row| row.secret.as_ref()), Field::Secret)?,
    };
    let generated_secret = sent.secret.is_none() && kept_secret.is_none();
    let secret = sent
        .secret
        .or(kept_secret)
        .unwrap_or_else(sign::generate_secret);
    let client_certificate = match sent.client_certificate {
        Some(c) => Some(c),
        None => open_kept(
            existing.and_then(|row| row.client_certificate.as_ref()),
            Field::ClientCertificate,
        )?,
    };
    // stored sealed, bound to this tenant, subscription and field
    let secret = sealer.seal(&bind(Field::Secret), &secret);
    let client_certificate =
        client_certificate.map(|c| sealer.seal(&bind(Field::ClientCertificate), &c));
    model::seal_headers(sealer, tenant, id, &mut resource);
    if let Some(obj) = resource.as_object_mut() {
        obj.remove("id");
        obj.remove("meta");
        obj.remove("error");
        obj.insert("status".into(), json!(status.as_str()));
    }
    Ok(Prepared {
        write: SubscriptionWrite {
            status: status.as_str().to_owned(),
            criteria: spec.criteria,
            channel_type: spec.channel.kind.as_str().to_owned(),
            endpoint: spec.channel.endpoint,
            resource: resource.to_string(),
            secret: Some(secret),
            client_certificate,
            owner: Some(caller.owner().to_json()),
        },
        generated_secret,
    })
}

/// 422 when a client sends a value in the hub's sealed form (`enc:…`) as a header, signing
/// secret or client certificate: only the hub seals, so the hub is never asked to open a
/// ciphertext someone else chose.
fn refuse_sealed_forms(body: &Value) -> Result<(), ApiError> {
    let refuse = |what: String| {
        ApiError::unprocessable(
            OperationOutcome::error(
                IssueType::Value,
                format!(
                    "{what} has the form of a value the hub sealed ('enc:…'); send the value itself"
                ),
            )
            .at("Subscription.channel"),
        )
    };
    let mut copy = body.clone();
    if let Some(name) = model::sealed_looking_header(&mut copy) {
        return Err(refuse(format!("channel header '{name}'")));
    }
    let sent = model::take_secrets(&mut copy);
    if sent
        .secret
        .as_deref()
        .is_some_and(crate::auth::sealed::looks_sealed)
    {
        return Err(refuse("the webhook secret".into()));
    }
    if sent
        .client_certificate
        .as_deref()
        .is_some_and(crate::auth::sealed::looks_sealed)
    {
        return Err(refuse("the client certificate".into()));
    }
    Ok(())
}

/// The `name=value` pairs of a query (`Observation?subject=Patient/1&code=x` or `a=b&c=d`).
fn query_pairs(criteria: &str) -> Vec<(String, String)> {
    let query = criteria.split_once('?').map_or(criteria, |(_, q)| q);
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The caller's scopes must let it read every resource type the subscription would
/// receive; with `patient/` scopes only, the criteria (or topic filters) must confine each
/// type to the caller's patient. The matcher checks every notification again against the
/// owner's grants at the time it is logged.
fn check_receivable(
    caller: &Caller,
    receives: &[(String, Vec<(String, String)>)],
) -> Result<(), ApiError> {
    use crate::auth::{Access, Perm};
    let refuse = |msg: String| {
        ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            OperationOutcome::error(IssueType::Forbidden, msg).at("Subscription.criteria"),
        )
    };
    for (ty, pairs) in receives {
        match caller.scopes.access(ty, Perm::Read) {
            Access::All => {}
            Access::Patient => {
                let Some(patient) = &caller.patient else {
                    return Err(refuse(format!(
                        "patient/{ty} scopes need a patient context, and this credential has none"
                    )));
                };
                if !hub_fhir::compartment::query_confined_to(ty, pairs, patient) {
                    let params = hub_fhir::compartment::patient_params(ty).join(", ");
                    return Err(refuse(format!(
                        "this credential may only subscribe to {ty} resources of Patient/{patient}: the criteria must name that patient on one of {params}"
                    )));
                }
            }
            Access::None => {
                return Err(refuse(format!(
                    "this subscription would receive {ty} resources, which needs scope system/{ty}.r (or patient/{ty}.r)"
                )));
            }
        }
    }
    Ok(())
}

/// A topic-based subscription must name a topic this tenant has, and filter only as the
/// topic's canFilterBy allows (the Backport IG: reject what cannot be honoured).
async fn check_topic(
    hub: &Hub,
    tenant: &str,
    t: &subscription::TopicSubscription,
) -> Result<Vec<(String, Vec<(String, String)>)>, ApiError> {
    let refuse = |msg: String, at: &str| {
        ApiError::unprocessable(
            OperationOutcome::error(IssueType::NotSupported, msg).at(at.to_owned()),
        )
    };
    let Some(row) = hub.store.topic_by_url(tenant, &t.topic).await? else {
        return Err(refuse(
            format!(
                "topic '{}' is not supported: this hub has no SubscriptionTopic with that url (GET /fhir/SubscriptionTopic lists them)",
                t.topic
            ),
            "Subscription.criteria",
        ));
    };
    let resource: Value = serde_json::from_str(&row.resource)
        .map_err(|e| ApiError::internal(format!("stored topic {} is not JSON: {e}", row.id)))?;
    let topic = hub_fhir::topic::parse(&resource).map_err(|oo| {
        ApiError::internal(format!(
            "stored topic {} no longer validates: {}",
            row.id,
            oo.summary()
        ))
    })?;
    if topic.status == "retired" {
        return Err(refuse(
            format!("topic '{}' is retired", t.topic),
            "Subscription.criteria",
        ));
    }
    let mut filters = Vec::new();
    for f in &t.filters {
        filters.push(
            hub_fhir::topic::parse_filter(&topic, f, "Subscription.criteria.extension")
                .map_err(ApiError::unprocessable)?,
        );
    }
    // what it would receive: each trigger's type, with the filters that apply to it
    let mut receives: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for trigger in &topic.triggers {
        let ty = hub_fhir::topic::resource_of(&trigger.resource).to_owned();
        if receives.iter().any(|(t, _)| *t == ty) {
            continue;
        }
        let pairs = filters
            .iter()
            .filter(|f| f.resource == ty)
            .flat_map(|f| query_pairs(&f.query))
            .collect();
        receives.push((ty, pairs));
    }
    Ok(receives)
}

/// At most `auth.max_subscriptions_per_credential` subscriptions per credential.
async fn check_quota(hub: &Hub, caller: &Caller) -> Result<(), ApiError> {
    let max = hub.config.auth.max_subscriptions_per_credential;
    if max == 0 || caller.subject == crate::auth::ANONYMOUS {
        return Ok(());
    }
    let owned = hub
        .store
        .count_owned_subscriptions(&caller.tenant, &caller.owner().subject_prefix())
        .await?;
    if owned >= max as i64 {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            OperationOutcome::error(
                IssueType::TooCostly,
                format!(
                    "this credential already owns {owned} subscriptions (auth.max_subscriptions_per_credential = {max}); delete some first"
                ),
            ),
        ));
    }
    Ok(())
}

/// Put the signing secret into a rendered resource (the one answer that reveals it).
fn show_secret(resource: &mut Value, secret: &str) {
    // the R4 form keeps it on channel, the R5 form (no channel element) on the resource
    let holder = if resource.get("channel").is_some() {
        resource.get_mut("channel")
    } else {
        Some(&mut *resource)
    };
    let Some(channel) = holder.and_then(Value::as_object_mut) else {
        return;
    };
    let ext = channel.entry("extension").or_insert_with(|| json!([]));
    if let Some(list) = ext.as_array_mut() {
        list.push(json!({"url": model::SECRET_EXTENSION, "valueString": secret}));
    }
}

/// The resource as clients see it.
pub fn to_resource(row: &SubscriptionRow) -> Result<Value, ApiError> {
    let mut out = stored_resource(
        "Subscription",
        &row.id,
        row.version_id,
        &row.last_updated,
        &row.resource,
    )?;
    out.insert("status".into(), json!(row.status));
    if let Some(e) = &row.error {
        out.insert("error".into(), json!(e));
    }
    let mut v = Value::Object(out);
    // stored resources hold no secrets; this keeps a row written by hand from leaking one
    model::take_secrets(&mut v);
    model::redact_headers(&mut v);
    Ok(v)
}

/// The resource with its secret, for the one answer that reveals a generated secret.
fn with_secret(hub: &Hub, row: &SubscriptionRow) -> Result<Value, ApiError> {
    let mut v = to_resource(row)?;
    if let Some(secret) = &row.secret {
        let at = Binding {
            tenant: &row.tenant,
            subscription: &row.id,
            field: Field::Secret,
        };
        // just sealed by this process: it opens; were it not to, the answer omits it
        if let Ok(o) = hub.subscriptions.sealer().open(&at, secret) {
            show_secret(&mut v, &o.plain);
        }
    }
    Ok(v)
}

/// The caller's subscription `id`, typed, or 404.
pub(crate) async fn typed(
    hub: &Hub,
    tenant: &str,
    id: &str,
) -> Result<model::Subscription, ApiError> {
    hub.subscriptions
        .get(&hub.store, tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Subscription/{id} is not known")))
}

fn stored(row: &SubscriptionRow, resource: Value) -> Stored {
    Stored {
        id: row.id.clone(),
        version: row.version_id,
        last_updated: row.last_updated.clone(),
        resource,
    }
}

/// Subscription in the one resource API.
pub struct SubscriptionKind;

impl ResourceKind for SubscriptionKind {
    const TYPE: &'static str = "Subscription";
    const SEARCH_PARAMS: &'static [&'static str] = &["status", "_id", "type", "url"];

    async fn read(hub: &Hub, tenant: &str, id: &str) -> Result<Option<Stored>, ApiError> {
        match hub.store.get_subscription(tenant, id).await? {
            Some(row) => Ok(Some(stored(&row, to_resource(&row)?))),
            None => Ok(None),
        }
    }

    async fn write(hub: &Hub, req: WriteRequest<'_>) -> Result<Written, ApiError> {
        let (tenant, id) = (&req.caller.tenant, req.id);
        let (caller, body, if_version, create_only) =
            (req.caller, req.body, req.if_version, req.create_only);
        let existing = if create_only {
            None
        } else {
            hub.store.get_subscription(tenant, id).await?
        };
        let prepared = settle_write(hub, caller, id, body, existing.as_ref()).await?;
        let write = &prepared.write;
        // the generated secret is shown once: in the answer that created it
        let answer = |row: &SubscriptionRow| -> Result<Stored, ApiError> {
            let mut resource = if prepared.generated_secret {
                with_secret(hub, row)?
            } else {
                to_resource(row)?
            };
            // the answer to a write echoes the headers the client just sent (reads redact)
            model::restore_headers(&mut resource, body);
            Ok(stored(row, resource))
        };
        if existing.is_none() && if_version.is_none() {
            check_quota(hub, caller).await?;
            let row = hub.store.create_subscription(tenant, id, write).await?;
            hub.subscription_writes.notify_one();
            tracing::info!(subscription = %id, %tenant, subject = %caller.subject, "subscription created");
            return Ok(Written {
                stored: answer(&row)?,
                created: true,
            });
        }
        let row = match hub
            .store
            .update_subscription(tenant, id, if_version, write)
            .await
        {
            Ok(row) => {
                hub.subscription_writes.notify_one();
                row
            }
            Err(hub_store::StoreError::NotFound) => {
                return Err(ApiError::not_found(format!(
                    "Subscription/{id} is not known, so If-Match cannot hold"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        // Reactivating a subscription that was off skips its backlog (readable with $events
        // rather than replayed as a flood): the store does it in the update's transaction.
        tracing::info!(subscription = %id, %tenant, version = row.version_id, status = %row.status, "subscription updated");
        Ok(Written {
            stored: answer(&row)?,
            created: false,
        })
    }

    async fn delete(hub: &Hub, caller: &Caller, id: &str) -> Result<bool, ApiError> {
        let deleted = hub.store.delete_subscription(&caller.tenant, id).await?;
        hub.subscription_writes.notify_one();
        Ok(deleted)
    }

    async fn search(
        hub: &Hub,
        tenant: &str,
        params: &[(String, String)],
    ) -> Result<Vec<Stored>, ApiError> {
        let values = |name: &str| -> Vec<&str> {
            params
                .iter()
                .filter(|(k, _)| k == name)
                .flat_map(|(_, v)| v.split(','))
                .collect()
        };
        let statuses: Vec<String> = values("status").into_iter().map(str::to_owned).collect();
        if let Some(bad) = statuses.iter().find(|s| Status::parse(s).is_none()) {
            return Err(ApiError::bad_request(OperationOutcome::error(
                IssueType::Value,
                format!("status '{bad}' is not requested, active, error or off"),
            )));
        }
        let (ids, types, urls) = (values("_id"), values("type"), values("url"));
        let rows = hub
            .store
            .search_subscriptions(tenant, &statuses, i64::MAX)
            .await?;
        rows.iter()
            .filter(|r| ids.is_empty() || ids.contains(&r.id.as_str()))
            .filter(|r| types.is_empty() || types.contains(&r.channel_type.as_str()))
            .filter(|r| urls.is_empty() || urls.contains(&r.endpoint.as_str()))
            .map(|r| Ok(stored(r, to_resource(r)?)))
            .collect()
    }
}
