//! The one error type every REST answer that is not 2xx goes through.
//!
//! `docs/api.md` fixes the body, `{"error": {"code", "message"}}`, and the
//! stable codes. Handlers return `Result<_, ApiError>`; storage failures turn
//! into `internal` here, with the detail going to the log, not to the caller.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tether::protocol::{api_error as code, ApiError as ErrorBodyJson, ErrorBody};

use crate::db::StorageError;

/// Error code of a Docker engine error passed through.
pub const DOCKER: &str = "docker";
/// Error code: the runner cannot reach its Docker engine.
pub const DOCKER_UNAVAILABLE: &str = "docker_unavailable";
/// Error code: the runner answered with an error this server does not know.
pub const RUNNER_ERROR: &str = "runner_error";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// A Docker engine error passed through (`code` is `docker`): the
    /// engine's status, repeated in the body as `docker_status`.
    pub docker_status: Option<u16>,
    /// Sent as `Retry-After` (whole seconds, at least 1): a 429 or 503 that
    /// says when trying again makes sense.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            docker_status: None,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code::NOT_FOUND, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code::CONFLICT, message)
    }

    /// A bug or a storage failure: the caller learns only that it happened.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "internal server error",
        )
    }

    pub fn runner_not_found(id: &str) -> Self {
        Self::not_found(format!("no runner {id} in this tenant"))
    }

    /// A request to a runner that got no answer: 409 when it has no link
    /// (try again once it is back), 504 when it did not answer `what`
    /// within `limit`.
    /// 413: what was asked would not fit in one message to a runner
    /// (`tether::protocol::MAX_CONTROL_MESSAGE`); the message names it.
    pub fn too_large(e: tether::protocol::TooLarge) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            tether::protocol::TOO_LARGE,
            e.to_string(),
        )
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict(m) => ApiError::conflict(m),
            other => ApiError::internal(other),
        }
    }
}

impl From<getrandom::Error> for ApiError {
    fn from(e: getrandom::Error) -> Self {
        ApiError::internal(format!("random source: {e}"))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if let Some(late) = crate::common::edge::timed_out(&e) {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                code::BAD_REQUEST,
                late.to_string(),
            );
        }
        ApiError::new(e.status(), code::BAD_REQUEST, e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The audit layer records the code (`audit/mod.rs`).
        let code = ErrorCode(self.code);
        let error = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        let retry_after = self.retry_after.map(|wait| {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            axum::http::HeaderValue::from(secs.max(1))
        });
        let mut res = match self.docker_status {
            Some(docker_status) => (
                self.status,
                Json(serde_json::json!({ "error": error, "docker_status": docker_status })),
            )
                .into_response(),
            None => (self.status, Json(ErrorBodyJson { error })).into_response(),
        };
        if let Some(v) = retry_after {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        res.extensions_mut().insert(code);
        res
    }
}

/// The `code` of an error answer, left in the response's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);
