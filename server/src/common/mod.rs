//! Plumbing every feature stands on: the JSON error body, the caller
//! extractor and hashing, time formats, sealed secrets, stream re-checks and
//! WebSocket tickets, per-tenant quotas.

pub mod auth;
pub mod clock;
pub mod error;
pub mod quotas;
pub mod secrets;
pub mod stream_auth;
