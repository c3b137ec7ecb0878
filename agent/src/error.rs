//! API errors of the agent RPC: one table of (variant, problem name, status).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use super::runtime::RuntimeError;

/// An RPC error, answered as `application/problem+json`.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Missing or wrong cluster secret.
    #[error("authentication failed")]
    Unauthorized,
    /// No kernel with this id.
    #[error("kernel not found")]
    KernelNotFound,
    /// Creating a kernel whose id exists.
    #[error("kernel already exists")]
    KernelExists,
    /// Malformed or unacceptable request.
    #[error("invalid API parameters ({0})")]
    InvalidParams(String),
    /// Request body too large.
    #[error("payload too large")]
    TooLarge,
    /// No such route.
    #[error("not found")]
    NotFound,
    /// Internal failure; the cause is logged, not answered.
    #[error("agent failure")]
    Failure(#[source] anyhow::Error),
}

impl AgentError {
    /// The problem name and status of each variant.
    fn problem(&self) -> (&'static str, StatusCode) {
        match self {
            AgentError::Unauthorized => ("auth-failed", StatusCode::UNAUTHORIZED),
            AgentError::KernelNotFound => ("kernel-not-found", StatusCode::NOT_FOUND),
            AgentError::KernelExists => ("kernel-exists", StatusCode::CONFLICT),
            AgentError::InvalidParams(_) => ("invalid-api-params", StatusCode::BAD_REQUEST),
            AgentError::TooLarge => ("payload-too-large", StatusCode::PAYLOAD_TOO_LARGE),
            AgentError::NotFound => ("generic-not-found", StatusCode::NOT_FOUND),
            AgentError::Failure(_) => ("agent-failure", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl ResponseError for AgentError {
    fn status_code(&self) -> StatusCode {
        self.problem().1
    }

    fn error_response(&self) -> HttpResponse {
        let (name, status) = self.problem();
        if let AgentError::Failure(e) = self {
            tracing::error!(error = ?e, "agent failure");
        }
        HttpResponse::build(status).content_type("application/problem+json").body(
            json!({
                "type": format!("https://api.backend.ai/probs/{name}"),
                "title": self.to_string(),
            })
            .to_string(),
        )
    }
}

impl From<RuntimeError> for AgentError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::KernelNotFound => AgentError::KernelNotFound,
            RuntimeError::KernelExists => AgentError::KernelExists,
            RuntimeError::InvalidInput(why) => AgentError::InvalidParams(why),
            RuntimeError::TooLarge => AgentError::TooLarge,
            RuntimeError::Failure(e) => AgentError::Failure(e),
        }
    }
}
