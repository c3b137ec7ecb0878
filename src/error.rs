//! Errors: the domain error of the manager, and the API error every HTTP failure
//! is answered with (RFC 7807 problem+json, from one table).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

macro_rules! problems {
    ($($(#[$doc:meta])* $variant:ident => ($name:literal, $status:ident, $title:literal),)*) => {
        /// A kind of API error: its problem type name, HTTP status and title.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Problem {
            $($(#[$doc])* $variant,)*
        }

        impl Problem {
            /// The last segment of the problem type URI.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// The HTTP status it is answered with.
            pub fn status(self) -> StatusCode {
                match self { $(Self::$variant => StatusCode::$status,)* }
            }

            /// The human-readable title.
            pub fn title(self) -> &'static str {
                match self { $(Self::$variant => $title,)* }
            }
        }
    };
}

problems! {
    /// No such path.
    GenericNotFound => ("generic-not-found", NOT_FOUND, "Unknown URL path"),
    /// A malformed request.
    GenericBadRequest => ("generic-bad-request", BAD_REQUEST, "Bad request"),
    /// The caller may not do this (an admin-only call with a user key).
    GenericForbidden => ("generic-forbidden", FORBIDDEN, "Forbidden operation"),
    /// The path exists but not with this method.
    MethodNotAllowed => ("method-not-allowed", METHOD_NOT_ALLOWED, "Method not allowed"),
    /// The body exceeds the size cap.
    RequestTooLarge => ("generic-bad-request", PAYLOAD_TOO_LARGE, "Request body too large"),
    /// A bug or an unexpected failure; details are only logged.
    InternalServerError => ("internal-server-error", INTERNAL_SERVER_ERROR, "Something went wrong during processing the request"),
    /// A backing service is unreachable.
    ServiceUnavailable => ("service-unavailable", SERVICE_UNAVAILABLE, "Service unavailable"),
    /// Not implemented yet.
    NotImplemented => ("not-implemented", NOT_IMPLEMENTED, "This API is not implemented"),
    /// Missing or malformed authentication headers.
    InvalidAuthParams => ("invalid-auth-params", BAD_REQUEST, "Missing or invalid authorization parameters"),
    /// Unknown key, inactive key or bad signature.
    AuthFailed => ("auth-failed", UNAUTHORIZED, "Credential/signature mismatch"),
    /// Malformed or missing API parameters.
    InvalidApiParams => ("invalid-api-params", BAD_REQUEST, "Missing or invalid API parameters"),
    /// No such agent.
    InstanceNotFound => ("instance-not-found", NOT_FOUND, "No such instance"),
    /// No such image or alias.
    ImageNotFound => ("image-not-found", NOT_FOUND, "No such environment image"),
    /// No such session for this access key.
    KernelNotFound => ("kernel-not-found", NOT_FOUND, "No such kernel"),
    /// The key's concurrency quota is used up.
    QuotaExceeded => ("quota-exceeded", PRECONDITION_FAILED, "You have reached your resource limit"),
    /// Too many requests in the window.
    RateLimitExceeded => ("rate-limit-exceeded", TOO_MANY_REQUESTS, "You have reached your API query rate limit"),
    /// No agent has room.
    InstanceNotAvailable => ("instance-not-available", SERVICE_UNAVAILABLE, "There is no available instance"),
    /// The agent failed to create the kernel.
    KernelCreationFailed => ("kernel-creation-failed", INTERNAL_SERVER_ERROR, "Kernel creation has failed"),
    /// The agent failed to destroy the kernel.
    KernelDestructionFailed => ("kernel-destruction-failed", INTERNAL_SERVER_ERROR, "Kernel destruction has failed"),
    /// The agent failed to restart the kernel.
    KernelRestartFailed => ("kernel-restart-failed", INTERNAL_SERVER_ERROR, "Kernel restart has failed"),
    /// The agent failed to execute the code.
    KernelExecutionFailed => ("kernel-execution-failed", INTERNAL_SERVER_ERROR, "Executing user code in the kernel has failed"),
    /// A live session of this key and token runs another image.
    KernelAlreadyExists => ("kernel-already-exists", BAD_REQUEST, "The kernel already exists with a different runtime type (language)."),
    /// No such virtual folder, or not visible to this key.
    FolderNotFound => ("folder-not-found", NOT_FOUND, "No such virtual folder. (Your operation may be permission denied.)"),
    /// The key already owns or shares a folder of that name.
    FolderAlreadyExists => ("folder-already-exists", BAD_REQUEST, "The virtual folder already exists with the same name."),
    /// No such file or directory inside a folder or a kernel.
    PathNotFound => ("generic-not-found", NOT_FOUND, "No such file or directory"),
    /// A GraphQL resolver failed.
    GeneralError => ("general-error", INTERNAL_SERVER_ERROR, "General error"),
}

/// Builds the problem type URI for a problem name.
pub fn problem_type(name: &str) -> String {
    format!("https://api.backend.ai/probs/{name}")
}

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// What went wrong.
    pub problem: Problem,
    /// Appended to the title in parentheses.
    pub detail: Option<String>,
    /// For agent failures: `{"type": ..., "title": ...}` of the agent's error.
    pub agent_details: Option<Box<Value>>,
    /// Extra response headers (e.g. the rate-limit headers on a 429).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error of the given kind without detail.
    pub fn new(problem: Problem) -> Self {
        Self { problem, detail: None, agent_details: None, headers: Vec::new() }
    }

    /// Adds the detail shown in parentheses after the title.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The problem+json body.
    pub fn body(&self) -> Value {
        let title = match &self.detail {
            Some(detail) => format!("{} ({detail})", self.problem.title()),
            None => self.problem.title().to_owned(),
        };
        let mut body = json!({"type": problem_type(self.problem.name()), "title": title});
        if let Some(agent_details) = &self.agent_details {
            body["agent-details"] = (**agent_details).clone();
        }
        body
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::new(problem)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.body()["title"].as_str().unwrap_or_default())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.problem.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        // Errors can bypass the DefaultHeaders middleware, so they carry it themselves.
        response.insert_header((header::SERVER, HeaderValue::from_static(crate::startup::SERVER_HEADER)));
        for (name, value) in &self.headers {
            response.insert_header((name.clone(), value.clone()));
        }
        response.body(self.body().to_string())
    }
}

impl From<beneath::BeneathError> for ApiError {
    fn from(error: beneath::BeneathError) -> Self {
        use beneath::BeneathError;
        match error {
            BeneathError::NotFound => ApiError::new(Problem::PathNotFound),
            BeneathError::BadPath(why) => {
                ApiError::new(Problem::InvalidApiParams).with_detail(format!("bad path: {why}"))
            }
            BeneathError::WrongKind(why) | BeneathError::TooLarge(why) => {
                ApiError::new(Problem::InvalidApiParams).with_detail(why)
            }
            BeneathError::Io(error) => {
                tracing::error!(error = %error, "file operation failed");
                ApiError::new(Problem::InternalServerError)
            }
        }
    }
}

/// The manager's domain error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The config store failed.
    #[error("config store error: {0}")]
    ConfigStore(String),
    /// The stat or rate-limit store failed.
    #[error("redis error: {0}")]
    Redis(String),
    /// An actor's mailbox is gone (the actor stopped).
    #[error("actor mailbox error: {0}")]
    Mailbox(#[from] actix::MailboxError),
    /// A failure that is already an API answer.
    #[error("{0}")]
    Api(ApiError),
}

impl From<ApiError> for Error {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

impl From<Problem> for Error {
    fn from(problem: Problem) -> Self {
        Self::Api(ApiError::new(problem))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Api(api) => api,
            Error::Redis(_) | Error::ConfigStore(_) => {
                tracing::error!(error = %error, "backing service failed");
                ApiError::new(Problem::ServiceUnavailable)
            }
            Error::Db(db) if crate::db::is_unavailable(&db) => {
                tracing::error!(error = %db, "the database is unreachable");
                ApiError::new(Problem::ServiceUnavailable)
            }
            // Actors only close their mailboxes while the process shuts down.
            Error::Mailbox(actix::MailboxError::Closed) => {
                tracing::warn!("request refused: shutting down");
                ApiError::new(Problem::ServiceUnavailable).with_detail("the manager is shutting down")
            }
            other => {
                tracing::error!(error = ?other, "request failed");
                ApiError::new(Problem::InternalServerError)
            }
        }
    }
}

/// The problem answered for an HTTP status that no handler described.
pub fn problem_for_status(status: StatusCode) -> Problem {
    match status.as_u16() {
        400 => Problem::GenericBadRequest,
        401 => Problem::AuthFailed,
        404 => Problem::GenericNotFound,
        405 => Problem::MethodNotAllowed,
        413 => Problem::RequestTooLarge,
        429 => Problem::RateLimitExceeded,
        501 => Problem::NotImplemented,
        503 => Problem::ServiceUnavailable,
        s if (400..500).contains(&s) => Problem::GenericBadRequest,
        _ => Problem::InternalServerError,
    }
}

/// The message of a caught panic (its `&str` or `String` payload), for the log.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
