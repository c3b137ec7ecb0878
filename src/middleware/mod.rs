//! Middleware of the API gateway, outermost first: [`frame`] (request logs, the
//! Server header, `X-Method-Override`, panic catching, problem+json for every
//! error), and on the `/v{N}` scope [`gateway`] (version checks, authentication
//! and rate limits).

mod gateway;
mod problem;

pub use gateway::{gateway, Authenticated, FailureWatch};
pub use problem::frame;
