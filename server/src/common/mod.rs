//! Plumbing every feature stands on: the JSON error body, request parsing,
//! the caller extractor and hashing, time formats, the edge toward strangers
//! (caps, rates, body bounds, the peer address), private files, sealed
//! secrets, stream re-checks and WebSocket tickets, per-tenant quotas, the
//! timeouts (`Tuning`), what the server's TLS clients trust.

pub mod auth;
pub mod bus;
pub mod clock;
pub mod edge;
pub mod error;
pub mod files;
pub mod http;
pub mod observe;
pub mod quotas;
pub mod secrets;
pub mod stream_auth;
pub mod tls;
pub mod tuning;
