//! Network plumbing every part of the runner may stand on, none of which
//! names a feature: the one HTTP/1.1 codec, the TLS configuration, the
//! byte stream under the WebSocket, the proxy CONNECT exchange, and name
//! resolution (the resolver thread).
//!
//! ```text
//! dns.rs         name resolution on one helper thread (getaddrinfo blocks): the loop's
//!                `Resolver` (request slot, answer channel, waker) and `resolve_blocking`
//! http.rs        sans-IO HTTP/1.1: request encoding, the response decoder (events, borrowed
//!                body bytes) and a buffered whole-answer collector; Docker, downloads, CONNECT
//! proxy.rs       HTTP CONNECT through a forward proxy: request bytes, answer (via http)
//! tls.rs         the rustls client configuration (roots or one CA file), error helpers
//! transport.rs   plain TCP or rustls pumped by hand over a non-blocking socket
//! ```
//!
//! Nothing here owns a socket but `transport` (generic over it), no thread
//! but `dns`'s helper, and nothing here imports the rest of the runner: `conn`, `docker`, `http`
//! (the blocking client) and the features import `net`, never the reverse.

pub mod dns;
pub mod http;
pub mod proxy;
pub mod tls;
pub mod transport;

/// What one `feed` call did: bytes of the input it used, and at most one
/// item. `item: None` means every byte was used and more input is needed;
/// with `Some`, call `feed` again with the rest of the input (it may be
/// empty: some items, like `End` after a head with no body, need no bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct Step<T> {
    pub consumed: usize,
    pub item: Option<T>,
}
