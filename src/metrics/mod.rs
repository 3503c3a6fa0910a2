//! Host telemetry: sampling /proc into [`sample::Sample`]s, encoding them
//! compactly for the wire ([`wire`]) and keeping them while the connection is
//! down ([`backlog`]).
//!
//! ```text
//!  timer ─▶ Sampler::sample(now) ─▶ (Sample, notes) ─▶ Encoder::encode ─▶ [schema?] + record
//!                                                                             │
//!                                   server ◀── send while connected ◀── Backlog (bounded, 256 KiB)
//!                                   Decoder::decode                       re-keys after drops/reconnect
//! ```
//!
//! Everything but the `Sampler` (file reads) and the `statvfs` helper is
//! sans-IO: parsers take `&str`, the codec takes and returns bytes. The server
//! uses [`wire`] (and needs nothing else from here), so only the I/O parts are
//! behind the `runner` feature.
//!
//! Sampling never fails as a whole: a file that is missing or does not parse
//! leaves its fields out of the sample and yields a [`Note`] that the caller
//! reports once.

pub mod backlog;
pub mod cgroup;
pub mod containers;
pub mod proc;
pub mod sample;
#[cfg(feature = "runner")]
pub mod tcp_diag;
pub mod wire;

use std::fmt;

pub use proc::ParseError;

/// "This part of the sample is unavailable, and why": returned next to each
/// sample. The text is stable from tick to tick (no counters or times in it)
/// so the caller can de-duplicate notes and log each once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Note {
    /// What is missing, e.g. `ipv6 traffic (/proc/net/snmp6)`.
    pub what: String,
    /// Why, e.g. `No such file or directory (os error 2)`.
    pub reason: String,
}

impl Note {
    pub fn new(what: impl Into<String>, reason: impl fmt::Display) -> Note {
        Note {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unavailable: {}: {}", self.what, self.reason)
    }
}
