//! Recording a terminal session as asciicast v2 (issue 19): the header
//! line (width, height, start time), then one JSON line per event,
//! `[seconds, "o"|"i"|"r"|"m", data]`.
//!
//! ```text
//!  DATA from the runner ─▶ State::rec.output ─┐   (under the session's lock:
//!  keystrokes (if policy) ─▶ .input ─────────┼──▶ buf   an append, no I/O)
//!  client resize ─▶ .resize ─────────────────┘     │
//!  watchdog, every second ─▶ take() ─▶ RecordingStore::append (chunk seq n)
//!  session end ─▶ take() + finish (a task of its own)
//! ```
//!
//! The relay never waits on storage: events are encoded into `buf` under
//! the session's lock and written in batches by the session's watchdog
//! (`api.rs`), once a second. `buf` is bounded by the cap: a recording
//! holds at most `max_bytes` of event lines, taken or not.
//!
//! At the cap: the event that would pass it is not recorded; a marker
//! event (`"m"`, "recording stopped: …") ends the recording and the
//! session goes on, unrecorded. The cap leaves room for the marker, so a
//! recording is never larger than `max_bytes` (plus its header).
//!
//! asciicast is text: output is decoded as UTF-8 with a sequence cut
//! between two frames carried to the next, so the concatenated `"o"` data
//! is the byte stream the client saw; bytes that are not UTF-8 at all are
//! recorded as U+FFFD.

use std::time::Instant;

use serde_json::json;

use crate::db::recordings::RecordingPolicy;

/// Room kept under the cap for the marker line.
const MARKER_ROOM: u64 = 256;
/// Event data is cut into lines of at most this many bytes of input, so
/// one line never needs more than a bounded piece of the buffer.
const MAX_EVENT_DATA: usize = 16 * 1024;

/// A chunk of event lines taken for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: i64,
    pub data: Vec<u8>,
    /// The recording's totals after this chunk.
    pub bytes: i64,
    pub truncated: bool,
}

/// One session's recording in progress.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    buf: Vec<u8>,
    /// Event bytes so far, taken or not.
    bytes: u64,
    cap: u64,
    input: bool,
    /// Recording has stopped (cap reached, or the session ended).
    stopped: bool,
    truncated: bool,
    next_seq: i64,
    /// The start of a UTF-8 sequence the last output frame cut (≤ 3 bytes).
    carry: Vec<u8>,
}

impl Recorder {
    /// A recorder under `policy`, and its header line (JSON).
    pub fn new(policy: &RecordingPolicy, cols: u16, rows: u16, now_ms: i64) -> (Recorder, String) {
        let header = json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": now_ms / 1000,
            "env": {"TERM": "xterm-256color"},
        });
        let r = Recorder {
            started: Instant::now(),
            buf: Vec::new(),
            bytes: 0,
            cap: policy.max_bytes.max(MARKER_ROOM * 2),
            input: policy.record_input,
            stopped: false,
            truncated: false,
            next_seq: 0,
            carry: Vec::new(),
        };
        (r, header.to_string())
    }

    fn now(&self) -> f64 {
        // Microseconds, as asciinema writes them.
        self.started.elapsed().as_micros() as f64 / 1e6
    }

    fn event(&mut self, kind: &str, data: &str) {
        if self.stopped {
            return;
        }
        let t = self.now();
        let mut line = json!([t, kind, data]).to_string();
        line.push('\n');
        if self.bytes + line.len() as u64 + MARKER_ROOM > self.cap {
            let note = format!(
                "recording stopped: the {}-byte cap is reached (the session goes on)",
                self.cap
            );
            let mut marker = json!([t, "m", note]).to_string();
            marker.push('\n');
            self.bytes += marker.len() as u64;
            self.buf.extend_from_slice(marker.as_bytes());
            self.stopped = true;
            self.truncated = true;
            return;
        }
        self.bytes += line.len() as u64;
        self.buf.extend_from_slice(line.as_bytes());
    }

    /// Output the client will see, as it arrived from the runner.
    pub fn output(&mut self, data: &[u8]) {
        if self.stopped {
            return;
        }
        for piece in data.chunks(MAX_EVENT_DATA) {
            let text = self.decode(piece);
            if !text.is_empty() {
                self.event("o", &text);
            }
        }
    }

    /// Keystrokes, if the tenant records them.
    pub fn input(&mut self, data: &[u8]) {
        if !self.input || self.stopped {
            return;
        }
        for piece in data.chunks(MAX_EVENT_DATA) {
            self.event("i", &String::from_utf8_lossy(piece));
        }
    }

    pub fn resize(&mut self, cols: u16, rows: u16) {
        self.event("r", &format!("{cols}x{rows}"));
    }

    /// `carry` + `data` as text, keeping an unfinished sequence at the end
    /// for the next call.
    fn decode(&mut self, data: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(data);
        let mut out = String::with_capacity(bytes.len());
        let mut rest: &[u8] = &bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // `good` is valid UTF-8: `valid_up_to` says so.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None => {
                            self.carry = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// The event lines not yet taken, numbered; `None` when there are none.
    pub fn take(&mut self) -> Option<Chunk> {
        if self.buf.is_empty() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(Chunk {
            seq,
            data: std::mem::take(&mut self.buf),
            bytes: self.bytes as i64,
            truncated: self.truncated,
        })
    }

    /// The session ended: a cut sequence left over is recorded as it is
    /// (U+FFFD), and nothing more is.
    pub fn end(&mut self) -> Option<Chunk> {
        if !self.carry.is_empty() && !self.stopped {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned();
            self.event("o", &rest);
        }
        self.stopped = true;
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_bytes: u64, record_input: bool) -> RecordingPolicy {
        RecordingPolicy {
            max_bytes,
            record_input,
            ..RecordingPolicy::default()
        }
    }

    /// The `"o"` data of event lines, concatenated.
    fn output_of(lines: &[u8]) -> (String, Vec<String>) {
        let mut out = String::new();
        let mut kinds = Vec::new();
        for l in String::from_utf8(lines.to_vec()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            kinds.push(v[1].as_str().unwrap().to_owned());
            if v[1] == "o" {
                out.push_str(v[2].as_str().unwrap());
            }
        }
        (out, kinds)
    }

    #[test]
    fn utf8_cut_between_frames_is_rejoined_and_input_follows_the_policy() {
        let (mut r, header) = Recorder::new(&policy(1 << 20, false), 80, 24, 1_700_000_000_000);
        let h: serde_json::Value = serde_json::from_str(&header).unwrap();
        assert_eq!(
            (h["version"].as_u64(), h["width"].as_u64()),
            (Some(2), Some(80))
        );
        assert_eq!(h["timestamp"], 1_700_000_000);
        let text = "héllo → wörld\r\n";
        let bytes = text.as_bytes();
        // Every cut, including inside the two- and three-byte sequences.
        for cut in 1..bytes.len() {
            r.output(&bytes[..cut]);
            r.output(&bytes[cut..]);
        }
        r.input(b"secret\n");
        r.resize(100, 30);
        let c = r.end().unwrap();
        let (out, kinds) = output_of(&c.data);
        assert_eq!(out, text.repeat(bytes.len() - 1));
        assert!(!kinds.contains(&"i".to_owned()), "input is off by default");
        assert_eq!(kinds.last().map(String::as_str), Some("r"));
        assert_eq!(c.bytes as usize, c.data.len());
        assert!(r.take().is_none());

        let (mut r, _) = Recorder::new(&policy(1 << 20, true), 80, 24, 0);
        r.input(b"ls\n");
        r.output(b"\xff ok");
        let (out, kinds) = output_of(&r.take().unwrap().data);
        assert_eq!(kinds, ["i", "o"]);
        assert_eq!(out, "\u{FFFD} ok");
    }

    #[test]
    fn the_cap_stops_recording_with_a_marker_and_is_never_passed() {
        let cap = 4096;
        let (mut r, _) = Recorder::new(&policy(cap, false), 80, 24, 0);
        let mut all = Vec::new();
        for _ in 0..100 {
            r.output(b"0123456789abcdef0123456789abcdef\r\n");
            if let Some(c) = r.take() {
                all.push(c);
            }
        }
        let data: Vec<u8> = all.iter().flat_map(|c| c.data.clone()).collect();
        assert!(data.len() as u64 <= cap, "{} > {cap}", data.len());
        let (_, kinds) = output_of(&data);
        assert_eq!(kinds.last().map(String::as_str), Some("m"));
        assert_eq!(kinds.iter().filter(|k| *k == "m").count(), 1);
        assert!(all.last().unwrap().truncated);
        // Seqs count up from 0 with no gap.
        let seqs: Vec<i64> = all.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (0..all.len() as i64).collect::<Vec<_>>());
    }
}
