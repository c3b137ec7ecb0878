//! Middleware of the API gateway, outermost first: request logs, the Server
//! header, `X-Method-Override`, panic catching, problem+json for every error,
//! and (on the `/v{N}` scope) version checks, authentication and rate limits.

mod gateway;
mod problem;

pub use gateway::{gateway, Authenticated, OriginalMethod};
pub use problem::{catch_panic, log_request, method_override, problem_json};
