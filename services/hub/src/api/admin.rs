//! Administration: API keys (`/admin/keys`) and the audit trail as FHIR `AuditEvent`s
//! (`/fhir/AuditEvent`). `hub/admin` administers its own tenant's keys and audit trail;
//! `hub/operator` every tenant's, and only an operator grants the scopes that span tenants
//! (`hub/operator`, `hub/metrics`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use hub_fhir::{IssueType, OperationOutcome};
use hub_store::{AuditQuery, AuditRow, NewAudit};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::{FhirJson, RawBody};
use crate::auth::keys::{self, KeyError, KeySpec};
use crate::state::Hub;

/// The body of `POST /admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewKeyBody {
    /// Default: the caller's tenant.
    tenant: Option<String>,
    #[serde(default)]
    name: String,
    scopes: String,
    patient: Option<String>,
    expires_at: Option<String>,
}

async fn audit_key(hub: &Hub, caller: &Caller, tenant: &str, action: &str, id: &str) {
    crate::auth::record(
        hub,
        vec![NewAudit {
            tenant: tenant.to_owned(),
            kind: "change".into(),
            action: action.into(),
            agent: caller.subject.clone(),
            entity: Some(format!("ApiKey/{id}")),
            outcome: "0".into(),
            ..Default::default()
        }],
    )
    .await;
}

/// 403 when `scopes` reach beyond one tenant and the caller is not the operator (a tenant
/// admin cannot mint an operator key).
fn require_grantable(caller: &Caller, scopes: &str) -> Result<(), ApiError> {
    if crate::auth::Scopes::parse([scopes]).spans_tenants() && !caller.scopes.is_operator() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            OperationOutcome::error(
                IssueType::Forbidden,
                "only hub/operator may grant hub/operator or hub/metrics",
            ),
        ));
    }
    Ok(())
}

/// The key `id` if the caller administers its tenant; 404 otherwise (another tenant's keys
/// are not named to a tenant admin).
async fn administered_key(
    hub: &Hub,
    caller: &Caller,
    id: &str,
) -> Result<hub_store::ApiKeyRow, ApiError> {
    let key = hub
        .store
        .api_key(id)
        .await?
        .filter(|k| caller.administers(&k.tenant))
        .ok_or_else(|| ApiError::not_found(format!("no usable API key '{id}'")))?;
    // a key that reaches beyond its tenant (an operator's) is the operator's to change or
    // revoke, though it lives in the admin's tenant
    require_grantable(caller, &key.scopes)?;
    Ok(key)
}

/// `POST /admin/keys`: 201 with the key's token, shown this once.
pub async fn create_key(
    State(hub): State<Hub>,
    caller: Caller,
    body: RawBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_admin()?;
    let body: NewKeyBody = serde_json::from_value(body.json()?).map_err(|e| {
        ApiError::bad_request(OperationOutcome::error(
            IssueType::Structure,
            format!("a key is {{\"scopes\": \"…\", \"tenant\"?, \"name\"?, \"patient\"?, \"expiresAt\"?}}: {e}"),
        ))
    })?;
    let tenant = body.tenant.unwrap_or_else(|| caller.tenant.clone());
    caller.require_admin_of(&tenant)?;
    require_grantable(&caller, &body.scopes)?;
    let spec = KeySpec {
        tenant,
        name: body.name,
        scopes: body.scopes,
        patient: body.patient,
        expires_at: body.expires_at,
    };
    let (row, token) = keys::create(&hub.store, spec).await.map_err(|e| match e {
        KeyError::Invalid(m) => {
            ApiError::unprocessable(OperationOutcome::error(IssueType::Value, m))
        }
        KeyError::Store(e) => e.into(),
    })?;
    audit_key(&hub, &caller, &row.tenant, "C", &row.id).await;
    let mut out = keys::to_json(&row);
    out["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /admin/keys`.
pub async fn list_keys(State(hub): State<Hub>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let tenant = (!caller.scopes.is_operator()).then_some(caller.tenant.as_str());
    let rows = hub.store.api_keys(tenant).await?;
    Ok(Json(
        json!({"keys": rows.iter().map(keys::to_json).collect::<Vec<_>>()}),
    ))
}

/// `DELETE /admin/keys/{id}`: revoke at once (204), 404 when unknown or already revoked.
pub async fn revoke_key(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let tenant = administered_key(&hub, &caller, &id).await?.tenant;
    if !hub.store.revoke_api_key(&id).await? {
        return Err(ApiError::not_found(format!("no usable API key '{id}'")));
    }
    audit_key(&hub, &caller, &tenant, "D", &id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `PATCH /admin/keys/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyScopesBody {
    scopes: String,
}

/// `PATCH /admin/keys/{id}` with `{"scopes": "…"}`: change a key's scopes at once (what the
/// subscriptions it owns may receive changes with them).
pub async fn set_key_scopes(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let body: KeyScopesBody = serde_json::from_value(body.json()?).map_err(|e| {
        ApiError::bad_request(OperationOutcome::error(
            IssueType::Structure,
            format!("expected {{\"scopes\": \"…\"}}: {e}"),
        ))
    })?;
    administered_key(&hub, &caller, &id).await?;
    require_grantable(&caller, &body.scopes)?;
    let scopes = keys::check_scopes(&body.scopes)
        .map_err(|e| {
            ApiError::unprocessable(OperationOutcome::error(IssueType::Value, e.to_string()))
        })?
        .join(" ");
    if !hub.store.set_api_key_scopes(&id, &scopes).await? {
        return Err(ApiError::not_found(format!("no usable API key '{id}'")));
    }
    let row = hub
        .store
        .api_key(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no usable API key '{id}'")))?;
    audit_key(&hub, &caller, &row.tenant, "U", &id).await;
    Ok(Json(keys::to_json(&row)))
}

/// FHIR date search values on `recorded`: `ge`/`gt` give a lower bound, `le`/`lt` an upper
/// one, a bare instant (or `eq`) both around that value's precision.
fn date_bounds(values: &[&str]) -> Result<(Option<String>, Option<String>), ApiError> {
    let (mut since, mut until) = (None, None);
    for v in values {
        let (prefix, rest) = match v.get(..2) {
            Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
            _ => ("eq", *v),
        };
        let bad = || {
            ApiError::bad_request(OperationOutcome::error(
                IssueType::Value,
                format!("date '{v}' is not a FHIR date, dateTime or instant"),
            ))
        };
        let range = hub_fhir::datetime::parse(rest).ok_or_else(bad)?;
        let at = |micros: i64| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                .ok()
                .map(hub_fhir::time_fmt::instant)
        };
        let (lo, hi) = (at(range.lo).ok_or_else(bad)?, at(range.hi).ok_or_else(bad)?);
        match prefix {
            "ge" | "gt" => since = Some(lo),
            "le" | "lt" => until = Some(hi),
            _ => {
                since = Some(lo);
                until = Some(hi);
            }
        }
    }
    Ok((since, until))
}

fn audit_event(hub: &Hub, row: &AuditRow) -> Value {
    let a = &row.audit;
    let (code, display) = match a.kind.as_str() {
        "disclosure" => ("110106", "Export"),
        "credential" => ("110114", "User Authentication"),
        _ => ("rest", "RESTful Operation"),
    };
    let system = if code == "rest" {
        "http://terminology.hl7.org/CodeSystem/audit-event-type"
    } else {
        "http://dicom.nema.org/resources/ontology/DCM"
    };
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": row.id.to_string(),
        "type": {"system": system, "code": code, "display": display},
        "action": a.action,
        "recorded": row.recorded,
        "outcome": a.outcome,
        "agent": [{
            "who": {"identifier": {"system": "urn:fhir-hub:credential", "value": a.agent}},
            "requestor": true
        }],
        "source": {"site": a.tenant, "observer": {"display": "fhir-hub"}},
    });
    if let Some(d) = &a.detail {
        ev["outcomeDesc"] = json!(d);
    }
    let mut entities = Vec::new();
    if let Some(e) = &a.entity {
        entities.push(json!({"what": {"reference": e}}));
    }
    if let Some(s) = &a.subscription_id {
        let mut sub = json!({
            "what": {"reference": format!("Subscription/{s}")},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "3", "display": "Report"},
        });
        if let Some(c) = &a.channel {
            sub["detail"] = json!([{"type": "channel", "valueString": c}]);
        }
        entities.push(sub);
    }
    if !entities.is_empty() {
        ev["entity"] = json!(entities);
    }
    let _ = hub;
    ev
}

/// `GET /fhir/AuditEvent?date=&agent=&entity=&subscription=&_count=`: the audit trail,
/// newest first, as a searchset Bundle. `hub/admin` sees its own tenant; `hub/operator` any
/// tenant with `_tenant=<name>`, or every tenant with `_tenant=*`.
pub async fn audit_events(
    State(hub): State<Hub>,
    caller: Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<FhirJson, ApiError> {
    caller.require_admin()?;
    let get_all = |name: &str| -> Vec<&str> {
        params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    if let Some((k, _)) = params.iter().find(|(k, _)| {
        !matches!(
            k.as_str(),
            "date" | "agent" | "entity" | "subscription" | "_count" | "_tenant"
        )
    }) {
        return Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "AuditEvent search has no parameter '{k}' (date, agent, entity, subscription, _count, _tenant)"
            ),
        )));
    }
    let (since, until) = date_bounds(&get_all("date"))?;
    let count = match get_all("_count").first() {
        None => 100,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(OperationOutcome::error(
                    IssueType::Value,
                    format!("_count '{c}' must be a number from 0 to 1000"),
                ))
            })?,
    };
    let one = |name: &str| get_all(name).first().map(|s| s.to_string());
    let entity = one("entity").map(|e| match e.split_once("/fhir/") {
        // an absolute reference finds the relative one stored
        Some((_, rel)) => rel.to_owned(),
        None => e,
    });
    let tenant = match one("_tenant").as_deref() {
        Some("*") => {
            if !caller.scopes.is_operator() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    OperationOutcome::error(
                        IssueType::Forbidden,
                        "_tenant=* (every tenant) needs scope hub/operator",
                    ),
                ));
            }
            None
        }
        Some(t) => {
            caller.require_admin_of(t)?;
            Some(t.to_owned())
        }
        None => Some(caller.tenant.clone()),
    };
    let q = AuditQuery {
        tenant,
        since,
        until,
        agent: one("agent"),
        entity,
        subscription_id: one("subscription")
            .map(|s| s.trim_start_matches("Subscription/").to_owned()),
        limit: count,
    };
    let rows = hub.store.audit_events(&q).await?;
    let base = &hub.base_url;
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "fullUrl": format!("{base}/AuditEvent/{}", r.id),
                "resource": audit_event(&hub, r),
                "search": {"mode": "match"},
            })
        })
        .collect();
    Ok(FhirJson(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{base}/AuditEvent")}],
        "entry": entries,
    })))
}
