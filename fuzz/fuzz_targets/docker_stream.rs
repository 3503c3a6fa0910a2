//! The byte streams inside Docker bodies (`src/engine/stream.rs`): the
//! stdout/stderr multiplexer (or raw TTY bytes), the line splitter of
//! JSON-lines streams and TTY logs, and `timestamps=1` log line parsing.
//!
//! Input: `[opts] [bytes …]`; opts bit 0 = TTY (raw), bits 1-7 how the
//! bytes are cut. Checked: the `Step` contract, that the pieces and lines
//! do not depend on the cuts, the line bound (and the splitter's buffer
//! bound), and that a parsed timestamp's nanoseconds are below a second.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::engine::stream::{split_log_timestamp, LineSplitter, StreamDecoder, StreamKind};
use tether_fuzz::{opts, pieces};

/// Stream pieces merged per (kind, frame): kind, bytes, frame ended.
type Pieces = Vec<(StreamKind, Vec<u8>, bool)>;

/// What came out, and the error if any.
fn demux(data: &[u8], tty: bool, mode: u8) -> (Pieces, Option<String>) {
    let mut dec = StreamDecoder::for_tty(tty);
    let mut out: Pieces = Vec::new();
    for read in pieces(data, mode) {
        let mut rest = read;
        loop {
            let step = match dec.feed(rest) {
                Ok(s) => s,
                Err(e) => return (out, Some(format!("{e:?}"))),
            };
            assert!(step.consumed <= rest.len());
            rest = &rest[step.consumed..];
            let Some(p) = step.item else {
                assert!(rest.is_empty(), "None before all input was used");
                break;
            };
            assert!(step.consumed > 0, "a piece without input");
            assert!(!p.data.is_empty(), "an empty piece");
            match out.last_mut() {
                // Same frame continued (raw streams have no frames).
                Some((k, d, end)) if *k == p.kind && !*end => {
                    d.extend_from_slice(p.data);
                    *end = p.end;
                }
                _ => out.push((p.kind, p.data.to_vec(), p.end)),
            }
        }
    }
    (out, dec.finish().err().map(|e| format!("{e:?}")))
}

fn lines(data: &[u8], max: usize, mode: u8) -> Vec<(Vec<u8>, bool)> {
    let mut split = LineSplitter::new(max);
    let mut out = Vec::new();
    for read in pieces(data, mode) {
        let mut rest = read;
        loop {
            let step = split.feed(rest);
            assert!(step.consumed <= rest.len());
            let Some(line) = step.item else {
                assert_eq!(step.consumed, rest.len());
                break;
            };
            assert!(line.bytes.len() <= max, "line over the maximum");
            assert!(!line.bytes.is_empty() || line.truncated);
            out.push((line.bytes.to_vec(), line.truncated));
            rest = &rest[step.consumed..];
        }
        assert!(
            split.buffered() <= max + 1,
            "splitter buffer over its bound"
        );
    }
    if let Some(line) = split.finish() {
        assert!(line.bytes.len() <= max);
        out.push((line.bytes.to_vec(), line.truncated));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((o, data)) = opts(data) else { return };
    let tty = o & 1 == 1;
    let mode = o >> 1;
    let whole = demux(data, tty, 0);
    assert_eq!(whole, demux(data, tty, mode), "pieces depend on the cuts");
    let max = 1 + usize::from(o % 97);
    let l = lines(data, max, 0);
    assert_eq!(l, lines(data, max, mode), "lines depend on the cuts");
    for (line, _) in &l {
        if let Ok((ts, _msg)) = split_log_timestamp(line) {
            assert!(ts.nanos < 1_000_000_000);
            let _ = ts.to_query();
        }
    }
});
