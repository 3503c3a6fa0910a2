//! Log line timestamps, read by both sides: the runner's
//! `engine::stream::parse_rfc3339` places a line for the resume cursor,
//! the server's `clock::parse_rfc3339` (under `logs::parse_rfc3339_ns`)
//! stores the cursor and answers `since`/`until`. The server's module is a
//! self-contained file of its binary crate, compiled in here as it is.
//!
//! Checked: neither panics on any text (API query strings and runner log
//! lines reach them); where both accept a time, they agree to the
//! millisecond (else a resumed stream would skip or repeat lines); the
//! server reads back the times it renders; `parse_time` never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::engine::stream::parse_rfc3339;

#[allow(dead_code)]
#[path = "../../server/src/common/clock.rs"]
mod clock;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let server = clock::parse_rfc3339(&text);
    if let (Some(ms), Some(ts)) = (server, parse_rfc3339(data)) {
        let runner_ms = ts.secs * 1000 + i64::from(ts.nanos / 1_000_000);
        assert_eq!(ms, runner_ms, "runner and server read {text:?} differently");
    }
    // Years 0 to 9999 only: the four-digit form has no other.
    if let Some(ms) = server.filter(|ms| (0..253_402_300_800_000).contains(ms)) {
        assert_eq!(
            clock::parse_rfc3339(&clock::rfc3339(ms)),
            Some(ms - ms.rem_euclid(1000))
        );
    }
    if data.len() >= 8 {
        let ms = i64::from_le_bytes(data[..8].try_into().unwrap());
        let _ = clock::rfc3339(ms);
    }
    let _ = clock::parse_time(&text, 1_795_867_200_000);
    let _ = clock::parse_duration_ms(&text);
});
