//! One FHIR resource API, written once for every resource type the hub serves
//! (Subscription, SubscriptionTopic): create, read, vread, update (update-as-create; `If-Match`
//! → 412 on a stale version), delete, search and `_history`, with one set of status codes,
//! headers (`ETag`, `Last-Modified`, `Location`, `Content-Location`) and absolute `fullUrl`s
//! from the one base URL, following the FHIR RESTful API page. A type only says how its
//! resources are validated, stored and searched ([`ResourceKind`]).
//!
//! Status codes: create 201; update 200, or 201 when it created; a body without an `id`, or
//! with another one, 400; malformed content (structure, required elements) 400, well-formed
//! but refused 422; read/vread of
//! an unknown id or version 404, of a deleted version 410; delete 200 with an
//! OperationOutcome, of an unknown id 404; `If-Match` that is not `W/"n"` with n ≥ 1 400.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_fhir::event::is_fhir_id;
use hub_fhir::{IssueType, OperationOutcome};
use serde_json::{Map, Value, json};

use super::ApiError;
use super::auth::Caller;
use super::fhir_json::{FhirJson, RawBody};
use crate::auth::Perm;
use crate::state::Hub;

/// A resource as clients see it, at one version.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub version: i64,
    pub last_updated: String,
    pub resource: Value,
}

/// A create or update, as the generic handlers checked it.
#[derive(Debug, Clone, Copy)]
pub struct WriteRequest<'a> {
    pub caller: &'a Caller,
    pub id: &'a str,
    pub body: &'a Value,
    /// `If-Match`: the version the client last saw.
    pub if_version: Option<i64>,
    /// A create (POST, a fresh id); otherwise an update that creates when the id is
    /// unknown and `if_version` is `None`.
    pub create_only: bool,
}

/// The result of a create or update.
#[derive(Debug)]
pub struct Written {
    pub stored: Stored,
    pub created: bool,
}

/// What a resource type contributes to the API.
pub trait ResourceKind: Send + Sync + 'static {
    const TYPE: &'static str;
    /// Search parameters the type understands (besides `_count`).
    const SEARCH_PARAMS: &'static [&'static str];

    /// The current version, `None` when there is none.
    fn read(
        hub: &Hub,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Stored>, ApiError>> + Send;

    /// Validate and store a create or an update.
    fn write(
        hub: &Hub,
        req: WriteRequest<'_>,
    ) -> impl Future<Output = Result<Written, ApiError>> + Send;

    /// Delete; `false` when there was nothing to delete.
    fn delete(
        hub: &Hub,
        caller: &Caller,
        id: &str,
    ) -> impl Future<Output = Result<bool, ApiError>> + Send;

    /// The resources matching `params` (already checked against `SEARCH_PARAMS`).
    fn search(
        hub: &Hub,
        tenant: &str,
        params: &[(String, String)],
    ) -> impl Future<Output = Result<Vec<Stored>, ApiError>> + Send;
}

/// A stored resource as clients see it: `resourceType`, the hub's `id` and `meta` first,
/// then the stored content (which keeps neither).
pub fn stored_resource(
    resource_type: &str,
    id: &str,
    version_id: i64,
    last_updated: &str,
    stored: &str,
) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_str(stored)
        .map_err(|e| ApiError::internal(format!("stored {resource_type}/{id} is not JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::internal(format!(
            "stored {resource_type}/{id} is not an object"
        )));
    };
    let mut out = Map::new();
    out.insert("resourceType".into(), json!(resource_type));
    out.insert("id".into(), json!(id));
    out.insert(
        "meta".into(),
        json!({"versionId": version_id.to_string(), "lastUpdated": last_updated}),
    );
    for (k, val) in obj {
        if k != "resourceType" {
            out.insert(k, val);
        }
    }
    Ok(out)
}

/// 400 unless `id` is a FHIR id.
pub fn check_id(id: &str) -> Result<(), ApiError> {
    if is_fhir_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::Invalid,
            format!("'{id}' is not a valid FHIR id"),
        )))
    }
}

/// Map a validation outcome to 400 (malformed: wrong structure, a required element missing)
/// or 422 (well-formed, but refused: invalid values, unsupported features, business rules).
pub fn validation_error(oo: OperationOutcome) -> ApiError {
    let malformed = oo
        .issues
        .iter()
        .any(|i| matches!(i.code, IssueType::Structure | IssueType::Required));
    if malformed {
        ApiError::bad_request(oo)
    } else {
        ApiError::unprocessable(oo)
    }
}

/// `W/"3"` or `"3"` → 3; anything else (including versions below 1) is a 400.
fn parse_if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    s.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(OperationOutcome::error(
                IssueType::Invalid,
                format!("If-Match '{s}' is not a version ETag like W/\"1\""),
            ))
        })
}

/// An instant as an HTTP date (`Last-Modified`).
fn http_date(instant: &str) -> Option<String> {
    let t = hub_fhir::time_fmt::parse_instant(instant)?;
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC).format(&f).ok()
}

fn version_url<K: ResourceKind>(hub: &Hub, id: &str, version: i64) -> String {
    format!("{}/{}/{id}/_history/{version}", hub.base_url, K::TYPE)
}

/// The answer for one resource version, with its headers.
fn respond<K: ResourceKind>(hub: &Hub, status: StatusCode, s: Stored) -> Response {
    let url = version_url::<K>(hub, &s.id, s.version);
    let mut res = (status, FhirJson(s.resource)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", s.version)) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = http_date(&s.last_updated).and_then(|d| HeaderValue::from_str(&d).ok()) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&url) {
        if status == StatusCode::CREATED {
            h.insert(header::LOCATION, v.clone());
        }
        h.insert(header::CONTENT_LOCATION, v);
    }
    res
}

/// Record a client's change of a resource in the audit trail.
async fn audit_change<K: ResourceKind>(hub: &Hub, caller: &Caller, action: &str, id: &str) {
    crate::auth::record(
        hub,
        vec![hub_store::NewAudit {
            tenant: caller.tenant.clone(),
            kind: "change".into(),
            action: action.into(),
            agent: caller.subject.clone(),
            entity: Some(format!("{}/{id}", K::TYPE)),
            outcome: "0".into(),
            ..Default::default()
        }],
    )
    .await;
}

fn unknown<K: ResourceKind>(id: &str) -> ApiError {
    ApiError::not_found(format!("{}/{id} is not known", K::TYPE))
}

/// `POST /fhir/{type}`.
pub async fn create<K: ResourceKind>(
    State(hub): State<Hub>,
    caller: Caller,
    body: RawBody,
) -> Result<Response, ApiError> {
    caller.require(K::TYPE, Perm::Create)?;
    let body = body.json()?;
    let id = uuid::Uuid::new_v4().to_string();
    let req = WriteRequest {
        caller: &caller,
        id: &id,
        body: &body,
        if_version: None,
        create_only: true,
    };
    let w = K::write(&hub, req).await?;
    audit_change::<K>(&hub, &caller, "C", &id).await;
    Ok(respond::<K>(&hub, StatusCode::CREATED, w.stored))
}

/// `GET /fhir/{type}/{id}`.
pub async fn read<K: ResourceKind>(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(K::TYPE, Perm::Read)?;
    check_id(&id)?;
    let s = K::read(&hub, &caller.tenant, &id)
        .await?
        .ok_or_else(|| unknown::<K>(&id))?;
    Ok(respond::<K>(&hub, StatusCode::OK, s))
}

/// `GET /fhir/{type}/{id}/_history/{vid}`.
pub async fn vread<K: ResourceKind>(
    State(hub): State<Hub>,
    caller: Caller,
    Path((id, vid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(K::TYPE, Perm::Read)?;
    check_id(&id)?;
    let version: i64 = vid
        .parse()
        .map_err(|_| ApiError::not_found(format!("{}/{id} has no version '{vid}'", K::TYPE)))?;
    // the current version as read answers it (with the hub's live status)
    if let Some(s) = K::read(&hub, &caller.tenant, &id).await?
        && s.version == version
    {
        return Ok(respond::<K>(&hub, StatusCode::OK, s));
    }
    let v = hub
        .store
        .version(&caller.tenant, K::TYPE, &id, version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{}/{id} has no version {version}", K::TYPE)))?;
    let Some(stored) = &v.resource else {
        return Err(ApiError::new(
            StatusCode::GONE,
            OperationOutcome::error(
                IssueType::Deleted,
                format!("{}/{id} version {version} is a delete", K::TYPE),
            ),
        ));
    };
    let resource = stored_resource(K::TYPE, &id, version, &v.last_updated, stored)?;
    let mut resource = Value::Object(resource);
    crate::model::take_secrets(&mut resource);
    crate::model::redact_headers(&mut resource);
    Ok(respond::<K>(
        &hub,
        StatusCode::OK,
        Stored {
            id,
            version,
            last_updated: v.last_updated,
            resource,
        },
    ))
}

/// `PUT /fhir/{type}/{id}`: update, or create with that id.
pub async fn update<K: ResourceKind>(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    caller.require(K::TYPE, Perm::Update)?;
    check_id(&id)?;
    let if_version = parse_if_match(&headers)?;
    let body = body.json()?;
    let at = format!("{}.id", K::TYPE);
    match body.get("id").and_then(Value::as_str) {
        Some(b) if b == id => {}
        Some(b) => {
            return Err(ApiError::bad_request(
                OperationOutcome::error(
                    IssueType::Invalid,
                    format!("the body's id '{b}' does not match the URL's id '{id}'"),
                )
                .at(at),
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                OperationOutcome::error(
                    IssueType::Required,
                    "an update must carry the resource id",
                )
                .at(at),
            ));
        }
    }
    let req = WriteRequest {
        caller: &caller,
        id: &id,
        body: &body,
        if_version,
        create_only: false,
    };
    let w = K::write(&hub, req).await?;
    audit_change::<K>(&hub, &caller, if w.created { "C" } else { "U" }, &id).await;
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(respond::<K>(&hub, status, w.stored))
}

/// `DELETE /fhir/{type}/{id}`.
pub async fn delete<K: ResourceKind>(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(K::TYPE, Perm::Delete)?;
    check_id(&id)?;
    if !K::delete(&hub, &caller, &id).await? {
        return Err(unknown::<K>(&id));
    }
    audit_change::<K>(&hub, &caller, "D", &id).await;
    tracing::info!(resource = K::TYPE, %id, tenant = %caller.tenant, subject = %caller.subject, "resource deleted");
    Ok((
        StatusCode::OK,
        FhirJson(OperationOutcome::information(format!("{}/{id} deleted", K::TYPE)).to_json()),
    )
        .into_response())
}

/// `GET /fhir/{type}?...`: a searchset Bundle.
pub async fn search<K: ResourceKind>(
    State(hub): State<Hub>,
    caller: Caller,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    caller.require(K::TYPE, Perm::Search)?;
    if let Some((unknown, _)) = params
        .iter()
        .find(|(k, _)| k != "_count" && !K::SEARCH_PARAMS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "search parameter '{unknown}' is not supported on {} (supported: {}, _count)",
                K::TYPE,
                K::SEARCH_PARAMS.join(", ")
            ),
        )));
    }
    let count = match params.iter().find(|(k, _)| k == "_count") {
        None => 100,
        Some((_, c)) => c
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 1000)
            .ok_or_else(|| {
                ApiError::bad_request(OperationOutcome::error(
                    IssueType::Value,
                    format!("_count '{c}' must be a number from 0 to 1000"),
                ))
            })?,
    };
    let found = K::search(&hub, &caller.tenant, &params).await?;
    let base = &hub.base_url;
    let entries: Vec<Value> = found
        .iter()
        .take(count)
        .map(|s| {
            json!({
                "fullUrl": format!("{base}/{}/{}", K::TYPE, s.id),
                "resource": s.resource,
                "search": {"mode": "match"},
            })
        })
        .collect();
    Ok(FhirJson(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": found.len(),
        "link": [{"relation": "self", "url": format!("{base}/{}", K::TYPE)}],
        "entry": entries,
    }))
    .into_response())
}

/// `GET /fhir/{type}/{id}/_history`: a history Bundle, newest first.
pub async fn history<K: ResourceKind>(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(K::TYPE, Perm::Read)?;
    check_id(&id)?;
    let versions = hub.store.history(&caller.tenant, K::TYPE, &id).await?;
    if versions.is_empty() {
        return Err(unknown::<K>(&id));
    }
    let base = &hub.base_url;
    let oldest = versions.iter().map(|v| v.version_id).min().unwrap_or(1);
    let mut entries = Vec::with_capacity(versions.len());
    for v in &versions {
        let url = format!("{base}/{}/{id}", K::TYPE);
        let mut entry = json!({
            "fullUrl": url,
            "response": {"status": "200 OK", "etag": format!("W/\"{}\"", v.version_id),
                         "lastModified": v.last_updated},
        });
        match &v.resource {
            Some(stored) => {
                let mut r = Value::Object(stored_resource(
                    K::TYPE,
                    &id,
                    v.version_id,
                    &v.last_updated,
                    stored,
                )?);
                crate::model::take_secrets(&mut r);
                crate::model::redact_headers(&mut r);
                entry["resource"] = r;
                let method = if v.version_id == oldest {
                    "POST"
                } else {
                    "PUT"
                };
                entry["request"] = json!({"method": method, "url": format!("{}/{id}", K::TYPE)});
                if method == "POST" {
                    entry["response"]["status"] = json!("201 Created");
                }
            }
            None => {
                entry["request"] = json!({"method": "DELETE", "url": format!("{}/{id}", K::TYPE)});
                entry["response"]["status"] = json!("204 No Content");
            }
        }
        entries.push(entry);
    }
    Ok(FhirJson(json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{base}/{}/{id}/_history", K::TYPE)}],
        "entry": entries,
    }))
    .into_response())
}
