//! Binding tokens (`$get-ws-binding-token`): what a websocket bind (`bind-with-token`) and a
//! browser's SSE `EventSource` (`$stream?token=`) present instead of a credential, since
//! neither can send an `Authorization` header. A token names one subscription and acts as
//! the credential that asked for it (`auth::holder`); it lasts `auth.binding_token_ttl_secs`,
//! never past that credential's own end.
//!
//! **Renewal.** A page that holds only a token keeps its stream alive by asking for the next
//! one with it (`$get-ws-binding-token?token=…`, no other credential) before it expires; the
//! hub then checks the credential behind it again exactly as at issue (a key revoked or
//! expired, a token past its `exp`, a grant that no longer reaches the subscription: refused)
//! and answers a fresh token with a fresh lifetime. The old token is not extended (it still
//! ends when it would have), and an expired token renews nothing: a token leaked from a URL
//! or a log stops working within one lifetime unless its holder keeps renewing it, and every
//! renewal is audited under the credential's name. Lifetimes extended on use were not
//! chosen: a stream URL is used on every reconnect, so a leaked one would live for ever
//! without the credential ever being checked again.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use base64::Engine as _;
use hub_fhir::{IssueType, OperationOutcome};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

use crate::api::ApiError;
use crate::api::auth::{Caller, MaybeCaller};
use crate::api::fhir_json::FhirJson;
use crate::auth::holder::Holder;
use crate::channels::disclosure::Disclosure;
use crate::state::Hub;
use hub_fhir::subscription::ChannelType;

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    /// The current binding token, to renew it (no other credential needed).
    token: Option<String>,
}

fn refused(msg: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        OperationOutcome::error(IssueType::Security, msg),
    )
}

/// `GET|POST /fhir/Subscription/{id}/$get-ws-binding-token`: with a credential, a token
/// for it; with `?token=` (and no credential), the next token of that token's holder.
pub async fn binding_token(
    State(hub): State<Hub>,
    MaybeCaller(caller): MaybeCaller,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<FhirJson, ApiError> {
    let (caller, renewed) = match (caller, q.token) {
        (Some(c), _) => (c, false),
        (None, Some(token)) => {
            let bound = hub.store.ws_token(&token).await?.ok_or_else(|| {
                refused(
                    "the binding token is unknown or expired; ask for a new one with a credential",
                )
            })?;
            if bound.subscription_id != id {
                return Err(refused("the binding token is for another subscription"));
            }
            // An SSE token's renewal rotates: the token sits in a URL (a proxy's log, browser
            // history), so the presented one is used up, a copy of it renews nothing once its
            // holder renewed, and a holder whose renewal is refused learns that someone else
            // renewed first (of two renewals racing, one wins). A websocket token travels
            // only inside the socket and is used up by its bind: it is left for that bind,
            // so a page can keep a spare.
            let sse = crate::api::subscriptions::typed(&hub, &bound.tenant, &id)
                .await?
                .channel_type()
                == ChannelType::Sse;
            if sse && hub.store.take_ws_token(&token).await?.is_none() {
                return Err(refused(
                    "the binding token was already renewed or used; ask for a new one with a credential",
                ));
            }
            (
                Holder::caller(&hub, &bound.tenant, bound.holder.as_deref()).await?,
                true,
            )
        }
        (None, None) => {
            return Err(refused(
                "a binding token needs a credential (Authorization: Bearer …), or ?token= with the current binding token to renew it",
            ));
        }
    };
    issue(&hub, &caller, &id, renewed).await
}

/// A new token of `id` for `caller`, audited; `renewed` when asked for with a token.
async fn issue(hub: &Hub, caller: &Caller, id: &str, renewed: bool) -> Result<FhirJson, ApiError> {
    caller.require("Subscription", crate::auth::Perm::Read)?;
    let sub = crate::api::subscriptions::typed(hub, &caller.tenant, id).await?;
    if sub.channel_type().calls_out() {
        return Err(ApiError::unprocessable(OperationOutcome::error(
            IssueType::NotSupported,
            format!(
                "Subscription/{id} uses channel type '{}'; binding tokens are for websocket and SSE subscriptions",
                sub.channel_type().as_str()
            ),
        )));
    }
    // refused now rather than at the bind: the asker may see nothing of this subscription
    let channel = if sub.channel_type() == ChannelType::Sse {
        "sse"
    } else {
        "websocket"
    };
    Disclosure::for_reader(hub, caller, &sub, channel, None).await?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    // the token acts as the credential that asked for it, and ends no later than it does
    let ttl = Duration::from_secs(hub.config.auth.binding_token_ttl_secs);
    let mut expires = time::OffsetDateTime::now_utc() + ttl;
    if let Some(end) = caller.expires {
        expires = expires.min(end);
    }
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(ApiError::internal)?;
    let holder = Holder::of(caller).to_json();
    hub.store
        .create_ws_token(&token, &caller.tenant, id, &expires, &holder)
        .await?;
    let how = if renewed { "renewed" } else { "issued" };
    crate::auth::record(
        hub,
        vec![hub_store::NewAudit {
            tenant: caller.tenant.clone(),
            kind: "credential".into(),
            action: "C".into(),
            agent: caller.subject.clone(),
            entity: Some(format!("Subscription/{id}")),
            subscription_id: Some(id.to_owned()),
            channel: Some(channel.to_owned()),
            outcome: "0".into(),
            detail: Some(format!("binding token {how}, valid until {expires}")),
        }],
    )
    .await;
    let ws_url = hub.base_url.replacen("http", "ws", 1) + "/$subscription-ws";
    Ok(FhirJson(json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "token", "valueString": token},
            {"name": "expiration", "valueDateTime": expires},
            {"name": "subscription", "valueString": format!("Subscription/{id}")},
            {"name": "websocket-url", "valueUrl": ws_url}
        ]
    })))
}
