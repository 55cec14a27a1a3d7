//! The API's one error type: every failure becomes a FHIR OperationOutcome with the right
//! HTTP status.

use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hub_fhir::{IssueType, OperationOutcome};

use super::fhir_json::FhirJson;

/// An error answer: status + OperationOutcome.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub outcome: OperationOutcome,
    /// Headers the answer carries (`WWW-Authenticate`, `Retry-After`, `RateLimit-*`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, outcome: OperationOutcome) -> Self {
        Self {
            status,
            outcome,
            headers: Vec::new(),
        }
    }

    /// Add a header to the answer.
    pub fn with_header(mut self, name: HeaderName, value: String) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.headers.push((name, v));
        }
        self
    }

    /// Add a header named by a static lower-case string.
    pub fn with_header_name(self, name: &'static str, value: String) -> Self {
        self.with_header(HeaderName::from_static(name), value)
    }

    pub fn bad_request(outcome: OperationOutcome) -> Self {
        Self::new(StatusCode::BAD_REQUEST, outcome)
    }

    pub fn unprocessable(outcome: OperationOutcome) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, outcome)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            OperationOutcome::error(IssueType::NotFound, what),
        )
    }

    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            OperationOutcome::error(IssueType::Transient, what),
        )
    }

    /// A 500 whose details go to the log under a reference the answer names: internal
    /// texts (SQL, paths, stored data) never reach clients.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4();
        tracing::error!(error = %what, %reference, "internal error answering a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            OperationOutcome::error(
                IssueType::Exception,
                format!("internal error (reference {reference}; the hub's log has the details)"),
            ),
        )
    }
}

impl From<crate::model::ModelError> for ApiError {
    fn from(e: crate::model::ModelError) -> Self {
        match e {
            crate::model::ModelError::Store(e) => e.into(),
            corrupt @ crate::model::ModelError::Corrupt { .. } => ApiError::internal(corrupt),
        }
    }
}

impl From<hub_store::StoreError> for ApiError {
    fn from(e: hub_store::StoreError) -> Self {
        use hub_store::StoreError as E;
        match e {
            E::NotFound => ApiError::not_found("not found"),
            E::Unavailable(m) => ApiError::unavailable(format!("store unavailable: {m}")),
            // a row this request needs is held by another transaction (or a statement ran
            // past its limit): worth retrying, not a fault of the request
            E::Timeout(m) => ApiError::unavailable(format!(
                "store busy: {m} (a row this request needs is locked by another transaction, \
                 or the statement ran past its time limit); retry"
            )),
            E::VersionConflict { current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                OperationOutcome::error(
                    IssueType::Conflict,
                    format!("version conflict: the resource is at version {current}"),
                ),
            ),
            E::AlreadyExists => ApiError::new(
                StatusCode::CONFLICT,
                OperationOutcome::error(IssueType::Conflict, "the resource already exists"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<hub_log::LogError> for ApiError {
    fn from(e: hub_log::LogError) -> Self {
        match e {
            hub_log::LogError::Unavailable(m) => ApiError::unavailable(format!(
                "event log unavailable: {m}; nothing was published, retry"
            )),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, FhirJson(self.outcome.to_json())).into_response();
        for (k, v) in self.headers {
            res.headers_mut().append(k, v);
        }
        res
    }
}

/// Errors that axum's extractors answer in plain text (a malformed query string or path, a
/// body over the limit) become OperationOutcomes like every other error.
pub async fn plain_text_as_outcome(res: Response) -> Response {
    let status = res.status();
    let plain = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return res;
    }
    let bytes = axum::body::to_bytes(res.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => IssueType::TooLong,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => IssueType::NotSupported,
        s if s.is_server_error() => IssueType::Exception,
        _ => IssueType::Invalid,
    };
    let text = String::from_utf8_lossy(&bytes);
    ApiError::new(status, OperationOutcome::error(code, text.trim())).into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no resource or operation at {}", uri.path()))
}

pub async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        OperationOutcome::error(
            IssueType::NotSupported,
            format!("this method is not supported on {}", uri.path()),
        ),
    )
}
