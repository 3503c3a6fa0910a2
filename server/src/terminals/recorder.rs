//! Recording a terminal session as asciicast v2 (issue 19): the header
//! line (width, height, start time), then one JSON line per event,
//! `[seconds, "o"|"i"|"r"|"m", data]`.
//!
//! ```text
//!  DATA from the runner ─▶ State::rec.output ─┐  Recorder (under the session's
//!  keystrokes (if policy) ─▶ .input ─────────┼─▶ lock): raw bytes + times,
//!  client resize ─▶ .resize ─────────────────┘  a copy, no encoding, no I/O
//!  watchdog, every second: take() under the lock ─▶ Encoder::encode (JSON,
//!    UTF-8, the cap; outside the lock) ─▶ RecordingStore::append (chunk n)
//!  session end ─▶ the last batch, the end
//! ```
//!
//! The relay never waits on the recording: it copies bytes into the
//! session's [`Recorder`] under the lock it holds anyway; the session's
//! watchdog (`api.rs`) takes them once a second, encodes them with its own
//! [`Encoder`] outside the lock and writes them in one batch. What waits
//! is bounded by the cap: a recording captures at most `max_bytes` of raw
//! bytes (its JSON lines are never shorter than what they carry).
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

/// One captured event, as it came.
#[derive(Debug)]
struct Raw {
    t: f64,
    kind: &'static str,
    data: Vec<u8>,
}

/// Events captured since the last take.
#[derive(Debug, Default)]
pub struct Batch {
    events: Vec<Raw>,
    /// The capture reached the cap: the recording ends with a marker.
    full: bool,
}

/// The relay's side of a recording: raw events and their times.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    input: bool,
    cap: u64,
    /// Raw bytes captured so far, taken or not.
    captured: u64,
    full: bool,
    events: Vec<Raw>,
}

/// The writer's side: JSON lines, the cap, chunk numbers.
#[derive(Debug)]
pub struct Encoder {
    buf: Vec<u8>,
    /// Event bytes so far.
    bytes: u64,
    cap: u64,
    /// Recording has stopped (cap reached, or the session ended).
    stopped: bool,
    truncated: bool,
    next_seq: i64,
    /// The start of a UTF-8 sequence the last output frame cut (≤ 3 bytes).
    carry: Vec<u8>,
}

impl Recorder {
    /// A recording under `policy`: the relay's side, the writer's side
    /// and the header line (JSON).
    pub fn new(
        policy: &RecordingPolicy,
        cols: u16,
        rows: u16,
        now_ms: i64,
    ) -> (Recorder, Encoder, String) {
        let header = json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": now_ms / 1000,
            "env": {"TERM": "xterm-256color"},
        });
        let cap = policy.max_bytes.max(MARKER_ROOM * 2);
        let r = Recorder {
            started: Instant::now(),
            input: policy.record_input,
            cap,
            captured: 0,
            full: false,
            events: Vec::new(),
        };
        let e = Encoder {
            buf: Vec::new(),
            bytes: 0,
            cap,
            stopped: false,
            truncated: false,
            next_seq: 0,
            carry: Vec::new(),
        };
        (r, e, header.to_string())
    }

    fn push(&mut self, kind: &'static str, data: &[u8]) {
        if self.full || data.is_empty() {
            return;
        }
        if self.captured + data.len() as u64 > self.cap {
            self.full = true;
            return;
        }
        self.captured += data.len() as u64;
        // Microseconds, as asciinema writes them.
        let t = self.started.elapsed().as_micros() as f64 / 1e6;
        self.events.push(Raw {
            t,
            kind,
            data: data.to_vec(),
        });
    }

    /// Output the client will see, as it arrived from the runner.
    pub fn output(&mut self, data: &[u8]) {
        self.push("o", data);
    }

    /// Keystrokes, if the tenant records them.
    pub fn input(&mut self, data: &[u8]) {
        if self.input {
            self.push("i", data);
        }
    }

    pub fn resize(&mut self, cols: u16, rows: u16) {
        self.push("r", format!("{cols}x{rows}").as_bytes());
    }

    /// What was captured since the last take (cheap: a move).
    pub fn take(&mut self) -> Batch {
        Batch {
            events: std::mem::take(&mut self.events),
            full: self.full,
        }
    }
}

impl Encoder {
    fn event(&mut self, t: f64, kind: &str, data: &str) {
        if self.stopped {
            return;
        }
        let start = self.buf.len();
        if serde_json::to_writer(&mut self.buf, &(t, kind, data)).is_err() {
            self.buf.truncate(start);
            return;
        }
        self.buf.push(b'\n');
        let line = (self.buf.len() - start) as u64;
        if self.bytes + line + MARKER_ROOM > self.cap {
            self.buf.truncate(start);
            self.stop(t);
            return;
        }
        self.bytes += line;
    }

    /// The cap is reached: the marker, and nothing more.
    fn stop(&mut self, t: f64) {
        if self.stopped {
            return;
        }
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
    }

    /// Encode a batch; `last`: the session ended (a cut sequence left
    /// over is recorded as U+FFFD). The event lines, numbered, if any.
    pub fn encode(&mut self, batch: Batch, last: bool) -> Option<Chunk> {
        let mut t_last = 0.0;
        for e in batch.events {
            t_last = e.t;
            for piece in e.data.chunks(MAX_EVENT_DATA) {
                if e.kind != "o" {
                    let text = String::from_utf8_lossy(piece).into_owned();
                    self.event(e.t, e.kind, &text);
                    continue;
                }
                // Most output is whole UTF-8: no copy then.
                if self.carry.is_empty() {
                    if let Ok(text) = std::str::from_utf8(piece) {
                        self.event(e.t, "o", text);
                        continue;
                    }
                }
                let text = self.decode(piece);
                if !text.is_empty() {
                    self.event(e.t, "o", &text);
                }
            }
        }
        if batch.full {
            self.stop(t_last);
        }
        if last {
            if !self.carry.is_empty() && !self.stopped {
                let rest = String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned();
                self.event(t_last, "o", &rest);
            }
            self.stopped = true;
        }
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
        let (mut r, mut enc, header) =
            Recorder::new(&policy(1 << 20, false), 80, 24, 1_700_000_000_000);
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
        let c = enc.encode(r.take(), true).unwrap();
        let (out, kinds) = output_of(&c.data);
        assert_eq!(out, text.repeat(bytes.len() - 1));
        assert!(!kinds.contains(&"i".to_owned()), "input is off by default");
        assert_eq!(kinds.last().map(String::as_str), Some("r"));
        assert_eq!(c.bytes as usize, c.data.len());
        assert!(enc.encode(r.take(), false).is_none());

        let (mut r, mut enc, _) = Recorder::new(&policy(1 << 20, true), 80, 24, 0);
        r.input(b"ls\n");
        r.output(b"\xff ok");
        let (out, kinds) = output_of(&enc.encode(r.take(), false).unwrap().data);
        assert_eq!(kinds, ["i", "o"]);
        assert_eq!(out, "\u{FFFD} ok");
    }

    #[test]
    fn the_cap_stops_recording_with_a_marker_and_is_never_passed() {
        let cap = 4096;
        let (mut r, mut enc, _) = Recorder::new(&policy(cap, false), 80, 24, 0);
        let mut all = Vec::new();
        for _ in 0..100 {
            r.output(b"0123456789abcdef0123456789abcdef\r\n");
            if let Some(c) = enc.encode(r.take(), false) {
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
