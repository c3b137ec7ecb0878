//! Long-lived streams: session lifecycle events over Server-Sent Events.

pub mod hub;
mod sse;

pub use sse::configure;
