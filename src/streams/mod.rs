//! Long-lived streams: session lifecycle events over Server-Sent Events, and
//! terminals over WebSocket.

pub mod hub;
pub mod peer;
pub mod pty;
mod sse;

use actix_web::web;

/// Registers the stream routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    sse::configure(cfg);
    pty::configure(cfg);
}
