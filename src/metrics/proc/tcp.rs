//! TCP connection counts by state from `/proc/net/tcp` and `tcp6`.
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue ...
//!    0: 00000000:07E8 00000000:0000 0A 00000000:00000000 ...
//! ```
//!
//! A busy server has tens of thousands of lines (150 bytes each), so this
//! is a byte-level state machine fed in chunks: no line buffer, no
//! allocation, and any split point gives the same counts. Only the fourth
//! field (`st`, two hex digits) is looked at; the header's `st` is not hex
//! and so is not counted.

/// Kernel state numbers (include/net/tcp_states.h) and names.
pub const STATE_NAMES: [&str; 11] = [
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
];

/// Sockets per state; index `state - 1` (see [`STATE_NAMES`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpStates {
    pub counts: [u32; 11],
}

impl TcpStates {
    pub fn add(&mut self, other: &TcpStates) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }
}

/// Counts states over chunks of a tcp table. Lines without `\n` at the end
/// of input are not counted (cut off).
#[derive(Debug, Clone, Default)]
pub struct TcpStateCounter {
    states: TcpStates,
    /// Whitespace-separated field of the current line we are in (0-based),
    /// or `SKIP` once the state field is done with.
    field: u8,
    in_field: bool,
    /// Hex digits of the state field so far, and how many.
    st: u8,
    st_digits: u8,
    st_ok: bool,
}

const STATE_FIELD: u8 = 3;
const SKIP: u8 = u8::MAX;

impl TcpStateCounter {
    pub fn new() -> TcpStateCounter {
        TcpStateCounter {
            st_ok: true,
            ..TcpStateCounter::default()
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.field == SKIP {
                // Jump over the rest of the line in one search.
                match bytes.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.end_line();
                        bytes = &bytes[i + 1..];
                        continue;
                    }
                    None => return,
                }
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            match b {
                b'\n' => self.end_line(),
                b' ' | b'\t' => {
                    if self.in_field {
                        self.in_field = false;
                        if self.field == STATE_FIELD {
                            self.field = SKIP;
                        } else {
                            self.field += 1;
                        }
                    }
                }
                _ => {
                    self.in_field = true;
                    if self.field == STATE_FIELD {
                        match (b as char).to_digit(16) {
                            Some(d) if self.st_digits < 2 => {
                                self.st = self.st * 16 + d as u8;
                                self.st_digits += 1;
                            }
                            _ => self.st_ok = false,
                        }
                    }
                }
            }
        }
    }

    fn end_line(&mut self) {
        if self.field >= STATE_FIELD && self.st_ok && self.st_digits == 2 {
            let s = usize::from(self.st);
            if (1..=STATE_NAMES.len()).contains(&s) {
                self.states.counts[s - 1] = self.states.counts[s - 1].saturating_add(1);
            }
        }
        self.field = 0;
        self.in_field = false;
        self.st = 0;
        self.st_digits = 0;
        self.st_ok = true;
    }

    /// The counts of all complete lines fed so far.
    pub fn states(&self) -> TcpStates {
        self.states
    }
}

/// Counts of one whole table.
pub fn count_tcp_states(text: &str) -> TcpStates {
    let mut c = TcpStateCounter::new();
    c.feed(text.as_bytes());
    c.states()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    #[test]
    fn busy_server_table() {
        let t = fixture("hosts/docker-host-5.15/net/tcp");
        let s = count_tcp_states(&t);
        let lines = t.lines().count() as u32 - 1;
        assert_eq!(s.counts.iter().sum::<u32>(), lines);
        assert_eq!(s.counts[0], 6); // established
        assert_eq!(s.counts[5], 2); // time_wait
        assert_eq!(s.counts[9], 5); // listen
        let t6 = fixture("hosts/docker-host-5.15/net/tcp6");
        let s6 = count_tcp_states(&t6);
        assert_eq!(s6.counts[9], 3);
        assert_eq!(s6.counts[0], 1);
    }

    #[test]
    fn every_split_point_gives_the_same_counts() {
        let t = fixture("hosts/docker-host-5.15/net/tcp");
        let whole = count_tcp_states(&t);
        for i in 0..=t.len() {
            let mut c = TcpStateCounter::new();
            c.feed(&t.as_bytes()[..i]);
            c.feed(&t.as_bytes()[i..]);
            assert_eq!(c.states(), whole, "split at {i}");
        }
        // Byte by byte.
        let mut c = TcpStateCounter::new();
        for b in t.as_bytes() {
            c.feed(std::slice::from_ref(b));
        }
        assert_eq!(c.states(), whole);
    }

    #[test]
    fn prefixes_never_count_more() {
        let t = fixture("hosts/docker-host-5.15/net/tcp");
        let whole: u32 = count_tcp_states(&t).counts.iter().sum();
        each_prefix(&t, |p| {
            let n: u32 = count_tcp_states(p).counts.iter().sum();
            let complete = p.matches('\n').count().saturating_sub(1) as u32;
            assert!(n <= whole && n <= complete);
        });
    }

    #[test]
    fn odd_lines_are_skipped() {
        let s = count_tcp_states("a b c 0A\na b c 0AB\na b c 1\na b c ZZ\na b c 0C\na b c 01");
        assert_eq!(s.counts[9], 1);
        assert_eq!(s.counts.iter().sum::<u32>(), 1);
    }
}
