//! Timeouts of the runner connection, of requests through it and of
//! dashboard sessions: one struct, set at start (`serve`), shortened by
//! tests. Each feature's context holds a copy of it.

use std::time::Duration;

/// Timeouts of the runner connection, adjustable so tests need not wait 10 s.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// From the upgrade to the runner's `hello` (protocol.md: 10 s).
    pub hello_timeout: Duration,
    /// `POST /runners/{id}/ping` waits this long for the `pong`.
    pub request_timeout: Duration,
    /// Sending one frame to a runner; a peer that stops reading is dropped.
    pub send_timeout: Duration,
    /// After sending a close frame, how long to wait for the peer's.
    pub close_wait: Duration,
    /// The metrics writer stores what was queued in one transaction this often.
    pub metrics_flush: Duration,
    /// A runner gets a `metrics_ack` at most this often.
    pub metrics_ack_every: Duration,
    /// A Docker call through a runner waits this long for the answer (plus
    /// the stop timeout for stop and restart).
    pub docker_timeout: Duration,
    /// A dashboard login lasts this long (`users/mod.rs`).
    pub session_ttl: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            hello_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            close_wait: Duration::from_secs(2),
            metrics_flush: Duration::from_secs(1),
            metrics_ack_every: Duration::from_secs(5),
            docker_timeout: Duration::from_secs(30),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}
