//! The API's one error type. Every refusal is `{"error": {"code": "snake_case", "message": "a
//! sentence naming the problem"}}` with the status of its variant; an internal failure is an
//! opaque 500 whose cause travels in the response's extensions to the request middleware,
//! which logs it once inside the request's span.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or names something that does not exist.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable reason.
        code: &'static str,
        /// A sentence naming the problem and the field.
        message: String,
    },
    /// 401: no credentials, or credentials that identify no one (a bad token, an unknown or
    /// revoked API key).
    #[error("{message}")]
    Unauthorized {
        /// Machine-readable reason.
        code: &'static str,
        /// A sentence naming the problem.
        message: String,
    },
    /// 403: the caller is known but may not do this (another org's runs).
    #[error("{message}")]
    Forbidden {
        /// Machine-readable reason.
        code: &'static str,
        /// A sentence naming the problem.
        message: String,
    },
    /// 404: no such run or route.
    #[error("{message}")]
    NotFound {
        /// Machine-readable reason.
        code: &'static str,
        /// A sentence naming what was not found.
        message: String,
    },
    /// 405: the route exists but not with this method.
    #[error("{message}")]
    MethodNotAllowed {
        /// A sentence naming the method.
        message: String,
    },
    /// 409: the run is in a state that refuses the request.
    #[error("{message}")]
    Conflict {
        /// Machine-readable reason.
        code: &'static str,
        /// A sentence naming the conflict.
        message: String,
        /// The run as it stands, sent beside the error.
        run: Option<Box<Value>>,
    },
    /// 413: the body is over a limit.
    #[error("{message}")]
    PayloadTooLarge {
        /// A sentence naming the limit.
        message: String,
    },
    /// 415: neither JSON nor multipart.
    #[error("{message}")]
    UnsupportedMediaType {
        /// A sentence naming the content type.
        message: String,
    },
    /// 422: well-formed, but the validator cannot run it (inputs, missing files, a reused
    /// idempotency key).
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable reason.
        code: &'static str,
        /// A sentence naming the problem and the field.
        message: String,
    },
    /// 500: something failed on our side; the client sees no detail.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// The body of every refusal: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `401` of every API route that takes credentials, as the OpenAPI document describes it.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    description = "`unauthenticated`, `unknown_api_key`, `revoked_api_key`, `bad_token`."
)]
pub(crate) struct Unauthenticated(
    #[expect(
        dead_code,
        reason = "only described in the OpenAPI document, never built"
    )]
    ErrorBody,
);

/// The `500` of an API route, as the OpenAPI document describes it (where nothing more is said).
#[derive(utoipa::IntoResponses)]
#[response(status = 500, description = "`internal`.")]
pub(crate) struct Internal(
    #[expect(
        dead_code,
        reason = "only described in the OpenAPI document, never built"
    )]
    ErrorBody,
);

/// A refusal's reason.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable reason, snake_case (`run_not_found`, `invalid_parameter`, …).
    pub code: &'static str,
    /// A sentence naming the problem and the field.
    pub message: String,
}

/// The body of a 409 about a run: the refusal, and the run as it stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RunConflict)]
pub struct ConflictBody {
    /// What went wrong.
    pub error: ErrorDetail,
    /// The run, whose state refused the request (its result, when it already completed).
    #[schema(value_type = super::view::RunView)]
    pub run: Box<Value>,
}

/// The cause of a 500, carried to the request middleware to be logged once.
#[derive(Debug, Clone)]
pub(crate) struct InternalCause(pub(crate) Arc<anyhow::Error>);

impl ApiError {
    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 422 with `code`.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// A 404 with `code`.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. }
            | Self::NotFound { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unprocessable { code, .. } => code,
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "body_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        match self {
            Self::Internal(cause) => {
                let body = ErrorBody {
                    error: ErrorDetail {
                        code,
                        message: "an internal error occurred; it has been logged \
                                  (quote the x-request-id response header when reporting it)"
                            .to_owned(),
                    },
                };
                let mut response = (status, Json(body)).into_response();
                response
                    .extensions_mut()
                    .insert(InternalCause(Arc::new(cause)));
                response
            }
            Self::Conflict {
                message,
                run: Some(run),
                ..
            } => (
                status,
                Json(ConflictBody {
                    error: ErrorDetail { code, message },
                    run,
                }),
            )
                .into_response(),
            other => {
                let message = other.to_string();
                let mut response = (
                    status,
                    Json(ErrorBody {
                        error: ErrorDetail { code, message },
                    }),
                )
                    .into_response();
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        axum::http::header::WWW_AUTHENTICATE,
                        axum::http::HeaderValue::from_static("Bearer"),
                    );
                }
                response
            }
        }
    }
}
