//! FHIR JSON in and out: the `application/fhir+json` response type and a body extractor
//! whose every failure is an OperationOutcome (413 for bodies over the limit).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_fhir::{IssueType, OperationOutcome};
use serde_json::Value;

use super::ApiError;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A JSON body sent as `application/fhir+json`.
pub struct FhirJson(pub Value);

impl IntoResponse for FhirJson {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        let mut res = body.into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        res
    }
}

/// The raw request body and its media type, read within the size limit.
pub struct RawBody {
    pub bytes: Bytes,
    pub content_type: String,
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            let status = rej.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    OperationOutcome::error(
                        IssueType::TooLong,
                        "the request body is larger than server.max_body_bytes",
                    ),
                )
            } else {
                ApiError::bad_request(OperationOutcome::error(
                    IssueType::Invalid,
                    format!("could not read the request body: {}", rej.body_text()),
                ))
            }
        })?;
        Ok(RawBody {
            bytes,
            content_type,
        })
    }
}

impl RawBody {
    /// A body without `Content-Type` is refused: a browser sends one (a `Blob` without a
    /// type) without a CORS preflight, so accepting it would let any page a user inside the
    /// network opens write to the hub (CSRF). JSON media types always need a preflight.
    pub fn require_content_type(&self) -> Result<(), ApiError> {
        if self.content_type.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                OperationOutcome::error(
                    IssueType::NotSupported,
                    "a request body needs a Content-Type: application/fhir+json (or application/x-ndjson for POST /events)",
                ),
            ));
        }
        Ok(())
    }

    /// Parse as one JSON object, refusing media types that are not JSON.
    pub fn json(&self) -> Result<Value, ApiError> {
        self.require_content_type()?;
        if !is_json_type(&self.content_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                OperationOutcome::error(
                    IssueType::NotSupported,
                    format!(
                        "Content-Type '{}' is not supported; send application/fhir+json",
                        self.content_type
                    ),
                ),
            ));
        }
        let v: Value = serde_json::from_slice(&self.bytes).map_err(|e| {
            ApiError::bad_request(OperationOutcome::error(
                IssueType::Structure,
                format!("the body is not valid JSON: {e}"),
            ))
        })?;
        if !v.is_object() {
            return Err(ApiError::bad_request(OperationOutcome::error(
                IssueType::Structure,
                "the body must be a JSON object",
            )));
        }
        Ok(v)
    }
}

pub fn is_json_type(ct: &str) -> bool {
    matches!(
        ct,
        "application/fhir+json" | "application/json" | "application/json+fhir"
    )
}
