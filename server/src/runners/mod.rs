//! Tenants, tokens, enrollment and runners over REST; runner health
//! changes and the SSE stream that announces them.

pub mod api;
pub mod events;
pub mod health;
