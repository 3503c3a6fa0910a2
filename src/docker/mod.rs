//! Docker Engine API over its unix socket, without an HTTP client crate or an
//! SDK: on the runner's one sans-IO HTTP/1.1 codec ([`crate::net::http`]),
//! the stream formats Docker puts inside bodies and hijacked connections
//! ([`stream`]), and the Engine API requests and answers the runner uses
//! ([`api`]). [`client`] drives them
//! from the event loop over the engine's socket.
//!
//! Nothing here touches a socket. The event loop owns the `UnixStream` and
//! moves bytes; these types turn bytes into values and back. Every decoder
//! has the same shape: `feed(&[u8])` returns a [`crate::net::Step`] saying
//! how many bytes it consumed and at most one item, and items borrow from the input where
//! they can, so a streaming body is never collected in memory.
//!
//! Driving one request from a mio loop (edge-triggered, non-blocking):
//!
//! ```text
//!  connect /var/run/docker.sock ─▶ write req.encode() (keep an offset: writes may be partial)
//!     │                              (chunked upload: then encode_chunk(..)…, LAST_CHUNK)
//!     ▼
//!  readable ─▶ read into a fixed buffer until WouldBlock, capped per pass
//!     │        for each read: let mut rest = &buf[..n];
//!     │          loop { let s = dec.feed(rest)?; rest = &rest[s.consumed..];
//!     │                 match s.item { None => break, Some(Head(h)) | Some(Body(b)) => …,
//!     │                                Some(End) => done (connection reusable if dec.can_reuse()),
//!     │                                Some(Upgraded) => `rest` and every later read is the raw stream } }
//!     ▼
//!  read returns 0 (EOF) ─▶ dec.eof(): End for read-until-close bodies, Err(Truncated) mid-body
//! ```
//!
//! What flows where:
//!
//! ```text
//!  GET /version ──▶ BufferedDecoder (limit) ──▶ api::parse_json / api::check (engine's message)
//!  logs, attach ──▶ ResponseDecoder Body ─┬─▶ StreamDecoder (mux frames or raw tty) ─▶ LineSplitter ─▶ split_log_timestamp
//!  exec start ───▶ ResponseDecoder Upgraded ┘    (the socket after the head; only then write stdin, raw; shutdown(Write) for EOF)
//!  events, build, pull ──▶ ResponseDecoder Body ─▶ LineSplitter ─▶ serde_json (api::Event, api::ProgressLine)
//! ```

pub mod api;
pub mod client;
pub mod logs;
pub mod stream;

#[cfg(test)]
mod tests;
