//! HTTP routes, one module per resource, each exporting `configure`.

mod authorize;
mod health;
mod kernel;
mod root;

use actix_web::web;

pub use health::healthz;

/// Registers the routes of the `/v{N}` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    root::configure(cfg);
    authorize::configure(cfg);
    kernel::configure(cfg);
}
