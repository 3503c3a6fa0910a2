//! Tether runner library. `protocol` is always built (the server uses it);
//! everything else is the runner and needs the `runner` feature.
//!
//! The runner holds one outbound TLS WebSocket to tether-server, driven by one
//! single-threaded mio event loop ([`event_loop`]). The only other thread is
//! the DNS helper ([`conn::dns`]), because `getaddrinfo` blocks.
//!
//! Module map (what owns what):
//!
//! ```text
//! main.rs        CLI (lexopt), prints the error chain once, maps it to an exit code
//! exit           the exit code table
//! log            leveled logger to stderr, UTC timestamps
//! config         durations, environment lookups, proxy selection
//! url            https/wss URL parsing (host incl. [ipv6], port, path)
//! rand           small PRNG for jitter, seeded from getrandom
//! state          state dir (credential, CA copy) and run dir (status.json)
//! signals        self-pipe for SIGTERM/SIGINT/SIGCHLD
//! event_loop     Poll, tokens, timer heap, dispatch
//! conn/          the control connection: state machine, backoff, dns, proxy, tls, transport;
//!                sends the telemetry feed at the lowest priority
//! child          child processes in the loop: pipes, bounds, timeout, reaping
//! telemetry/     metrics and fingerprint on timers: sampler → backlog (acked), firewall probe, reports
//! http           sans-IO HTTP/1.1 response parser + small blocking HTTPS client
//! enroll         `tether enroll`
//! metrics/       /proc parsers, sampler, compact wire encoding, backfill backlog (wire is shared with the server)
//! fingerprint/   host fingerprint: collectors, diff and apply (shared with the server)
//! update/        signed self-update: verify, stage, trial, swap, re-exec, roll back
//! version        the version this binary reports (a patchable slot, for the update tests)
//! docker/        sans-IO Docker Engine HTTP/1.1 codec and API request builders; client: the
//!                engine in the loop (probe, docker_request, events, snapshots)
//! terminal/      interactive terminals: host login shells on PTYs, TTY execs in containers
//! ```

// Every `unsafe` block lives in `sys` (small safe functions, each with a
// SAFETY note); the rest of the crate may not add one.
#![deny(unsafe_code)]

pub mod fingerprint;
pub mod metrics;
pub mod protocol;

#[cfg(feature = "runner")]
pub mod log;

#[cfg(feature = "runner")]
pub mod child;
#[cfg(feature = "runner")]
pub mod config;
#[cfg(feature = "runner")]
pub mod conn;
#[cfg(feature = "runner")]
pub mod docker;
#[cfg(feature = "runner")]
pub mod enroll;
#[cfg(feature = "runner")]
pub mod event_loop;
#[cfg(feature = "runner")]
pub mod exit;
#[cfg(feature = "runner")]
pub mod http;
#[cfg(feature = "runner")]
pub mod jobs;
#[cfg(feature = "runner")]
pub mod rand;
#[cfg(feature = "runner")]
pub mod signals;
#[cfg(feature = "runner")]
pub mod state;
#[cfg(feature = "runner")]
#[allow(unsafe_code)]
pub mod sys;
#[cfg(feature = "runner")]
pub mod telemetry;
#[cfg(feature = "runner")]
pub mod terminal;
#[cfg(feature = "runner")]
pub mod update;
#[cfg(feature = "runner")]
pub mod url;
#[cfg(feature = "runner")]
pub mod version;
