//! Container management and log collection on the Docker engine: [`client`]
//! probes the engine, answers the server's `docker_request`s, follows
//! `/events` and reports container changes; [`logs`] follows and collects
//! container logs on data channels. Both call the engine through the one
//! Engine call ([`crate::engine::call`]), build requests with
//! [`crate::engine::api`] and read bodies with [`crate::engine::stream`],
//! on the runner's one HTTP/1.1 codec ([`crate::net::http`]).
//!
//! What flows where:
//!
//! ```text
//!  GET /version ──▶ Answer::Whole (limit) ──▶ api::parse_json / api::check (engine's message)
//!  logs ─────────▶ Answer::Stream Body ─▶ StreamDecoder (mux frames or raw tty) ─▶ LineSplitter ─▶ split_log_timestamp
//!  exec start ───▶ Answer::Whole, upgraded: the socket after the head is the raw stream (terminal)
//!  events ───────▶ Answer::Stream Body ─▶ LineSplitter ─▶ serde_json (api::Event)
//! ```

pub mod client;
pub mod logs;

#[cfg(test)]
mod tests;
