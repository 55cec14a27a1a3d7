//! The credential behind a binding token (`$get-ws-binding-token`): a browser's
//! `EventSource` or a websocket bind presents the token instead of the credential, and acts
//! as the credential that asked for it — its grant, its rate and stream limits, its name in
//! the audit trail — never as the subscription's owner.

use axum::http::StatusCode;
use hub_fhir::{IssueType, OperationOutcome};
use serde::{Deserialize, Serialize};

use super::{Caller, Scopes, key_usable};
use crate::api::ApiError;
use crate::state::Hub;

/// What a binding token keeps of the credential it was issued to (JSON in
/// `ws_tokens.holder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub subject: String,
    /// An API key is read again at every use: revoked or expired, the token binds nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A token credential's scopes as it presented them.
    pub scopes: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// When the credential ends, in seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

fn refused(msg: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        OperationOutcome::error(IssueType::Security, msg),
    )
}

impl Holder {
    pub fn of(caller: &Caller) -> Holder {
        Holder {
            subject: caller.subject.clone(),
            key: caller.key_id.clone(),
            scopes: caller.scope_text.clone(),
            patient: caller.patient.clone(),
            expires: caller.expires.map(time::OffsetDateTime::unix_timestamp),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The caller a token issued in `tenant` to `holder` (its stored JSON) stands for now,
    /// within the credential's rate limit: 401 when the token names no credential, or an API
    /// key that is revoked, expired or moved; 429 over the rate.
    pub async fn caller(hub: &Hub, tenant: &str, holder: Option<&str>) -> Result<Caller, ApiError> {
        let Some(h) = holder.and_then(|j| serde_json::from_str::<Holder>(j).ok()) else {
            return Err(refused(
                "the binding token names no credential; ask for a new one",
            ));
        };
        let caller = match &h.key {
            Some(id) => match hub.store.api_key(id).await? {
                Some(row) if key_usable(&row) && row.tenant == tenant => Caller::of_key(row),
                _ => {
                    return Err(refused(
                        "the API key the binding token was issued to is revoked or expired",
                    ));
                }
            },
            None => Caller {
                subject: h.subject,
                tenant: tenant.to_owned(),
                scopes: Scopes::parse([h.scopes.as_str()]),
                scope_text: h.scopes,
                patient: h.patient,
                key_id: None,
                expires: h
                    .expires
                    .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()),
            },
        };
        if caller
            .expires
            .is_some_and(|end| time::OffsetDateTime::now_utc() >= end)
        {
            return Err(refused(
                "the credential the binding token was issued to has expired",
            ));
        }
        if caller.subject != super::ANONYMOUS {
            hub.auth.check_rate(&caller.subject)?;
        }
        Ok(caller)
    }
}
