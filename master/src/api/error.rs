//! The API's error: a status and the text of `{"error": "..."}`. Handlers return
//! `Result<Response, ApiError>` and use `?`; [`IntoResponse`] renders it as Go's encoder
//! would. State errors get their status and the reference's wording here, in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::model::ErrorBody;
use crate::state::StateError;

/// An API error: status and the `error` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400 with `message`.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NotFound => Self::new(StatusCode::NOT_FOUND, "Instance not found"),
            StateError::KeyRecordFixed => Self::new(StatusCode::FORBIDDEN, "Forbidden: API Key"),
            StateError::UrlUnchanged => Self::new(StatusCode::CONFLICT, "Instance URL conflict"),
            StateError::Busy => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Instance busy: its worker is still carrying out earlier actions; retry in a moment",
            ),
            StateError::SaveFailed(text) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        super::json(
            self.status,
            &ErrorBody {
                error: self.message,
            },
        )
    }
}
