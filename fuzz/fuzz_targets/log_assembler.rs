//! The log assembler (`src/docker/logs.rs`, `LogAssembler`): a container's
//! `logs?timestamps=1` body in, DATA frame payloads of whole timestamped
//! lines out, lines before the resume cursor skipped.
//!
//! Input: `[opts] [resume: 8 bytes secs, 4 nanos, 1 skip] [body …]`; opts
//! bit 0 = TTY, bit 1 = resume from the cursor, bits 2-7 how the body is
//! cut. Checked: every payload is non-empty, at most `MAX_DATA_PAYLOAD`,
//! ends in a newline and is stdout or stderr; the payloads, the cursor and
//! the counters do not depend on the cuts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::docker::logs::{Cursor, LogAssembler};
use tether::engine::stream::Timestamp;
use tether::protocol::{StreamTag, MAX_DATA_PAYLOAD};
use tether_fuzz::{opts, pieces, quiet};

type Out = (Vec<(StreamTag, Vec<u8>)>, Option<Cursor>, u64, u64, bool);

fn run(body: &[u8], tty: bool, resume: Option<Cursor>, mode: u8) -> Out {
    let mut a = LogAssembler::new(tty, resume);
    let mut out = Vec::new();
    let mut failed = false;
    for read in pieces(body, mode) {
        if a.feed(read, &mut out).is_err() {
            failed = true;
            break;
        }
    }
    a.finish(&mut out);
    for (tag, payload) in &out {
        assert!(matches!(tag, StreamTag::Stdout | StreamTag::Stderr));
        assert!(!payload.is_empty() && payload.len() <= MAX_DATA_PAYLOAD);
        assert_eq!(payload.last(), Some(&b'\n'));
    }
    (out, a.cursor(), a.lines, a.skipped, failed)
}

fuzz_target!(|data: &[u8]| {
    quiet();
    let Some((o, data)) = opts(data) else { return };
    if data.len() < 13 {
        return;
    }
    let (cur, body) = data.split_at(13);
    let resume = (o & 2 != 0).then(|| Cursor {
        ts: Timestamp {
            secs: i64::from_le_bytes(cur[..8].try_into().unwrap()),
            nanos: u32::from_le_bytes(cur[8..12].try_into().unwrap()) % 1_000_000_000,
        },
        skip: u32::from(cur[12]),
    });
    let tty = o & 1 == 1;
    let mode = o >> 2;
    let whole = run(body, tty, resume, 0);
    if mode != 0 {
        assert_eq!(
            whole,
            run(body, tty, resume, mode),
            "payloads depend on the cuts"
        );
    }
});
