//! The byte streams Docker sends inside response bodies and hijacked
//! connections: multiplexed stdout/stderr frames ([`MuxDecoder`]), raw TTY
//! output ([`StreamDecoder`] picks one by the container's `Tty`), JSON-lines
//! streams ([`LineSplitter`]) and timestamped log lines
//! ([`split_log_timestamp`]).
//!
//! All of them are sans-IO and bounded: frame payloads and lines that fit
//! in the input are handed out as slices of it; a frame is never collected
//! (a 1 GiB frame comes out as pieces), and a line is kept only up to the
//! caller's maximum.
//!
//! A multiplexed frame (containers and execs created with `Tty: false`):
//!
//! ```text
//!  ┌────────┬────────┬────────────────────┬──────────────────────┐
//!  │ stream │ 0 0 0  │ length (u32, BE)   │ payload (length B)   │
//!  └────────┴────────┴────────────────────┴──────────────────────┘
//!   0 stdin  1 stdout  2 stderr  3 engine error (stdcopy "systemerr")
//!
//!  MuxDecoder:  Header(have < 8) ──8 bytes──▶ Payload(remaining) ──0──▶ Header
//!                                   (length 0: straight back to Header)
//! ```
//!
//! With `Tty: true` there is no framing at all: the bytes are the terminal's
//! output, stdout and stderr merged. The `Content-Type` does not tell them
//! apart before API 1.42 (Engine 20.10 says `raw-stream` for both), so the
//! caller decides from the `Tty` it created the container or exec with.

use crate::net::Step;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// Not a frame header: the stream is probably a TTY stream read as if
    /// it were multiplexed.
    BadFrameHeader([u8; 8]),
    /// The stream ended inside a frame.
    Truncated,
    /// A log line without the `timestamps=1` prefix.
    BadTimestamp,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::BadFrameHeader(h) => write!(f, "bad multiplexed frame header {h:02x?}"),
            StreamError::Truncated => write!(f, "stream ended inside a frame"),
            StreamError::BadTimestamp => write!(f, "log line without a valid timestamp"),
        }
    }
}

impl std::error::Error for StreamError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// The engine reporting an error inside the stream (for example a log
    /// file it could not read); the payload is its message. Newer engines
    /// only.
    SystemErr,
}

/// Some bytes of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    pub kind: StreamKind,
    pub data: &'a [u8],
    /// The last bytes of a multiplexed frame (one log message ends here).
    /// Always `false` for a raw stream, which has no frames.
    pub end: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mux {
    Header { buf: [u8; 8], have: usize },
    Payload { kind: StreamKind, remaining: u32 },
}

/// Decoder for the 8-byte-header multiplexed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxDecoder {
    state: Mux,
    failed: Option<StreamError>,
}

impl Default for MuxDecoder {
    fn default() -> Self {
        MuxDecoder::new()
    }
}

impl MuxDecoder {
    pub fn new() -> MuxDecoder {
        MuxDecoder {
            state: Mux::Header {
                buf: [0; 8],
                have: 0,
            },
            failed: None,
        }
    }

    /// Decode from `input`; see [`Step`]. Payload bytes come out as they
    /// arrive, possibly several pieces per frame.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<Step<Piece<'a>>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut used = 0;
        loop {
            let rest = &input[used..];
            if rest.is_empty() {
                return Ok(Step {
                    consumed: used,
                    item: None,
                });
            }
            match &mut self.state {
                Mux::Header { buf, have } => {
                    let n = (8 - *have).min(rest.len());
                    buf[*have..*have + n].copy_from_slice(&rest[..n]);
                    *have += n;
                    used += n;
                    if *have < 8 {
                        continue;
                    }
                    let header = *buf;
                    // stdcopy ignores the three padding bytes, but a TTY
                    // stream misread as multiplexed fails here on its first
                    // byte, and that is worth saying clearly.
                    let kind = match header[0] {
                        0 => StreamKind::Stdin,
                        1 => StreamKind::Stdout,
                        2 => StreamKind::Stderr,
                        3 => StreamKind::SystemErr,
                        _ => return Err(self.fail(StreamError::BadFrameHeader(header))),
                    };
                    if header[1..4] != [0, 0, 0] {
                        return Err(self.fail(StreamError::BadFrameHeader(header)));
                    }
                    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                    self.state = if len == 0 {
                        Mux::Header {
                            buf: [0; 8],
                            have: 0,
                        }
                    } else {
                        Mux::Payload {
                            kind,
                            remaining: len,
                        }
                    };
                }
                Mux::Payload { kind, remaining } => {
                    let kind = *kind;
                    let n = rest.len().min(*remaining as usize);
                    *remaining -= n as u32;
                    let end = *remaining == 0;
                    if end {
                        self.state = Mux::Header {
                            buf: [0; 8],
                            have: 0,
                        };
                    }
                    let piece = Piece {
                        kind,
                        data: &rest[..n],
                        end,
                    };
                    return Ok(Step {
                        consumed: used + n,
                        item: Some(piece),
                    });
                }
            }
        }
    }

    /// The stream ended: an error if that was inside a frame.
    pub fn finish(&self) -> Result<(), StreamError> {
        match (&self.failed, &self.state) {
            (Some(e), _) => Err(e.clone()),
            (None, Mux::Header { have: 0, .. }) => Ok(()),
            (None, _) => Err(StreamError::Truncated),
        }
    }

    fn fail(&mut self, e: StreamError) -> StreamError {
        self.failed = Some(e.clone());
        e
    }
}

/// Output of a container or exec, whichever framing it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDecoder {
    /// `Tty: true`: no framing, everything is stdout.
    Raw,
    Multiplexed(MuxDecoder),
}

impl StreamDecoder {
    /// Docker frames output only when there is no TTY.
    pub fn for_tty(tty: bool) -> StreamDecoder {
        if tty {
            StreamDecoder::Raw
        } else {
            StreamDecoder::Multiplexed(MuxDecoder::new())
        }
    }

    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<Step<Piece<'a>>, StreamError> {
        match self {
            StreamDecoder::Raw if input.is_empty() => Ok(Step {
                consumed: 0,
                item: None,
            }),
            StreamDecoder::Raw => {
                let piece = Piece {
                    kind: StreamKind::Stdout,
                    data: input,
                    end: false,
                };
                Ok(Step {
                    consumed: input.len(),
                    item: Some(piece),
                })
            }
            StreamDecoder::Multiplexed(mux) => mux.feed(input),
        }
    }

    pub fn finish(&self) -> Result<(), StreamError> {
        match self {
            StreamDecoder::Raw => Ok(()),
            StreamDecoder::Multiplexed(mux) => mux.finish(),
        }
    }
}

// ---------------------------------------------------------------------------
// Lines

/// One line, without its `\n` or `\r\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// At most the splitter's maximum.
    pub bytes: &'a [u8],
    /// The line was longer; the rest was dropped.
    pub truncated: bool,
}

/// Splits a byte stream into lines for JSON-lines streams (events, build
/// and pull progress) and TTY log output. Blank lines are skipped: no JSON
/// stream gives them meaning.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    max: usize,
    /// A line that began in an earlier input; at most `max + 1` bytes
    /// (the extra one for a `\r` before the `\n`).
    buf: Vec<u8>,
    overflow: bool,
    /// The line in `buf` was handed out; clear it on the next call.
    emitted: bool,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter {
            max: max_line,
            buf: Vec::new(),
            overflow: false,
            emitted: false,
        }
    }

    /// Split `input`; see [`Step`]. A line inside `input` is not copied.
    pub fn feed<'a>(&'a mut self, input: &'a [u8]) -> Step<Line<'a>> {
        let mut used = 0;
        loop {
            if self.emitted {
                self.buf.clear();
                self.overflow = false;
                self.emitted = false;
            }
            let rest = &input[used..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                self.keep(rest);
                return Step {
                    consumed: input.len(),
                    item: None,
                };
            };
            used += nl + 1;
            if self.buf.is_empty() && !self.overflow {
                let line = strip_cr(&rest[..nl]);
                if line.is_empty() {
                    continue;
                }
                let truncated = line.len() > self.max;
                let bytes = &line[..line.len().min(self.max)];
                return Step {
                    consumed: used,
                    item: Some(Line { bytes, truncated }),
                };
            }
            self.keep(&rest[..nl]);
            self.emitted = true;
            let len = strip_cr(&self.buf).len();
            if len == 0 && !self.overflow {
                continue;
            }
            let truncated = self.overflow || len > self.max;
            let bytes = &self.buf[..len.min(self.max)];
            return Step {
                consumed: used,
                item: Some(Line { bytes, truncated }),
            };
        }
    }

    /// The stream ended: its last line if it had no newline.
    pub fn finish(&mut self) -> Option<Line<'_>> {
        if self.emitted {
            self.buf.clear();
            self.overflow = false;
        }
        self.emitted = true;
        let len = strip_cr(&self.buf).len();
        if len == 0 && !self.overflow {
            return None;
        }
        let truncated = self.overflow || len > self.max;
        Some(Line {
            bytes: &self.buf[..len.min(self.max)],
            truncated,
        })
    }

    /// Bytes held for an unfinished line; never above the maximum plus one.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = self.max.saturating_add(1).saturating_sub(self.buf.len());
        if bytes.len() > room {
            self.overflow = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

// ---------------------------------------------------------------------------
// Log timestamps

/// A point in time as Docker writes it, to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (UTC).
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// The `since`/`until` query form Docker accepts: `seconds.nanoseconds`.
    pub fn to_query(&self) -> String {
        format!("{}.{:09}", self.secs, self.nanos)
    }
}

/// Split a `timestamps=1` log line into its time and message:
/// `2024-01-01T00:00:00.123456789Z message`.
pub fn split_log_timestamp(line: &[u8]) -> Result<(Timestamp, &[u8]), StreamError> {
    let (ts, message) = match line.iter().position(|&b| b == b' ') {
        Some(p) => (&line[..p], &line[p + 1..]),
        None => (line, &b""[..]),
    };
    let ts = parse_rfc3339(ts).ok_or(StreamError::BadTimestamp)?;
    Ok((ts, message))
}

/// RFC 3339 with up to nine fraction digits and `Z` or `±hh:mm` (Go's
/// RFC3339Nano, which Docker uses, drops trailing zeros in places).
pub fn parse_rfc3339(s: &[u8]) -> Option<Timestamp> {
    fn num(s: &[u8]) -> Option<u32> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
    }
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
    let (hour, minute, second) = (num(&s[11..13])?, num(&s[14..16])?, num(&s[17..19])?);
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(&frac[..digits])? * 10u32.pow(9 - digits as u32);
        rest = &frac[digits..];
    }
    let offset: i64 = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day == 0 || day > month_days[month as usize - 1] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset;
    Some(Timestamp { secs, nanos })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn demux(
        dec: &mut MuxDecoder,
        input: &[u8],
    ) -> Result<Vec<(StreamKind, Vec<u8>)>, StreamError> {
        let mut out: Vec<(StreamKind, Vec<u8>)> = Vec::new();
        let mut rest = input;
        loop {
            let step = dec.feed(rest)?;
            rest = &rest[step.consumed..];
            let Some(p) = step.item else { break };
            match out.last_mut() {
                Some((k, d)) if *k == p.kind => d.extend_from_slice(p.data),
                _ => out.push((p.kind, p.data.to_vec())),
            }
        }
        Ok(out)
    }

    #[test]
    fn frames_split_anywhere() {
        let mut input = frame(1, b"hello\n");
        input.extend(frame(2, b"oops\n"));
        input.extend(frame(1, b""));
        input.extend(frame(0, b"in"));
        let want = vec![
            (StreamKind::Stdout, b"hello\n".to_vec()),
            (StreamKind::Stderr, b"oops\n".to_vec()),
            (StreamKind::Stdin, b"in".to_vec()),
        ];
        assert_eq!(demux(&mut MuxDecoder::new(), &input).unwrap(), want);
        for i in 0..=input.len() {
            let mut dec = MuxDecoder::new();
            let mut got = demux(&mut dec, &input[..i]).unwrap();
            for (k, d) in demux(&mut dec, &input[i..]).unwrap() {
                match got.last_mut() {
                    Some((gk, gd)) if *gk == k => gd.extend(d),
                    _ => got.push((k, d)),
                }
            }
            assert_eq!(got, want, "split at {i}");
            assert_eq!(dec.finish(), Ok(()));
        }
    }

    #[test]
    fn huge_frame_comes_out_in_pieces() {
        let mut dec = MuxDecoder::new();
        let step = dec.feed(&[1, 0, 0, 0, 0x40, 0, 0, 0]).unwrap(); // 1 GiB
        assert_eq!(
            step,
            Step {
                consumed: 8,
                item: None
            }
        );
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..4 {
            let step = dec.feed(&block).unwrap();
            assert_eq!(step.consumed, block.len());
            assert_eq!(step.item.unwrap().data.len(), block.len());
        }
        assert_eq!(dec.finish(), Err(StreamError::Truncated));
    }

    #[test]
    fn tty_bytes_are_not_frames() {
        let mut dec = MuxDecoder::new();
        let err = dec.feed(b"2024-01-01T00:00:00Z hi\n").unwrap_err();
        assert!(matches!(err, StreamError::BadFrameHeader(_)));
        assert_eq!(dec.feed(&frame(1, b"x")), Err(err), "stays failed");
        let mut dec = MuxDecoder::new();
        assert!(dec.feed(&[1, 0, 1, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn raw_stream_passes_through() {
        let mut dec = StreamDecoder::for_tty(true);
        let step = dec.feed(b"\x01abc").unwrap();
        assert_eq!(
            step.item.unwrap(),
            Piece {
                kind: StreamKind::Stdout,
                data: b"\x01abc",
                end: false,
            }
        );
        assert_eq!(dec.feed(b"").unwrap().item, None);
    }

    fn lines(sp: &mut LineSplitter, input: &[u8]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            let step = sp.feed(rest);
            let Some(line) = step.item else { break };
            out.push((
                String::from_utf8_lossy(line.bytes).into_owned(),
                line.truncated,
            ));
            rest = &rest[step.consumed..];
        }
        out
    }

    #[test]
    fn splits_lines_across_inputs() {
        let input = b"{\"a\":1}\r\n\n{\"b\":2}\nlast";
        for i in 0..=input.len() {
            let mut sp = LineSplitter::new(100);
            let mut got = lines(&mut sp, &input[..i]);
            got.extend(lines(&mut sp, &input[i..]));
            let last = sp
                .finish()
                .map(|l| String::from_utf8_lossy(l.bytes).into_owned());
            let want = [
                ("{\"a\":1}".to_string(), false),
                ("{\"b\":2}".to_string(), false),
            ];
            assert_eq!(got, want, "split at {i}");
            assert_eq!(last.as_deref(), Some("last"));
            assert_eq!(sp.finish(), None);
        }
    }

    #[test]
    fn overlong_lines_are_truncated_not_kept() {
        let mut input = vec![b'a'; 10_000];
        input.extend_from_slice(b"\r\nok\r\n");
        for piece in [1, 7, 100, 20_000] {
            let mut sp = LineSplitter::new(8);
            let mut got = Vec::new();
            for part in input.chunks(piece) {
                got.extend(lines(&mut sp, part));
                assert!(sp.buffered() <= 9);
            }
            assert_eq!(
                got,
                [("aaaaaaaa".to_string(), true), ("ok".to_string(), false)]
            );
        }
        // Exactly the maximum, with CRLF, is not truncated.
        let mut sp = LineSplitter::new(4);
        assert_eq!(lines(&mut sp, b"ab"), []);
        assert_eq!(lines(&mut sp, b"cd\r\n"), [("abcd".to_string(), false)]);
    }

    #[test]
    fn log_timestamps() {
        let (ts, msg) = split_log_timestamp(b"2026-11-28T13:03:50.683669995Z err 1").unwrap();
        assert_eq!(msg, b"err 1");
        assert_eq!(
            ts,
            Timestamp {
                secs: 1_795_871_030,
                nanos: 683_669_995
            }
        );
        assert_eq!(ts.to_query(), "1795871030.683669995");
        let (ts, msg) = split_log_timestamp(b"1970-01-01T00:00:00Z ").unwrap();
        assert_eq!((ts, msg), (Timestamp { secs: 0, nanos: 0 }, &b""[..]));
        let ts = parse_rfc3339(b"2024-02-29T01:00:00.5+01:00").unwrap();
        assert_eq!(
            ts,
            Timestamp {
                secs: 1_709_164_800,
                nanos: 500_000_000
            }
        );
        assert_eq!(parse_rfc3339(b"1969-12-31T23:59:59Z").unwrap().secs, -1);
        for bad in [
            &b"hello world"[..],
            b"2023-02-29T00:00:00Z",
            b"2024-13-01T00:00:00Z",
            b"2024-01-01T24:00:00Z",
            b"2024-01-01T00:00:00.Z",
            b"2024-01-01T00:00:00.1234567891Z",
            b"2024-01-01T00:00:00",
            b"2024-01-01T00:00:00+0100",
            b"\xff\xfe",
        ] {
            assert_eq!(
                split_log_timestamp(bad),
                Err(StreamError::BadTimestamp),
                "{bad:?}"
            );
        }
    }
}
