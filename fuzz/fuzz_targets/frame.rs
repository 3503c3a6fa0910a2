//! The 16-byte binary frame header, as both the runner (`conn::on_data`)
//! and the server (`runner_ws::inbound`) decode it: `protocol::decode_frame`
//! is the one decoder on both sides. A frame that decodes must encode back
//! to the same bytes, and its payload must respect the kind's limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::protocol::{decode_frame, encode_frame, FrameKind, MAX_DATA_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    match decode_frame(data) {
        Ok((header, payload)) => {
            match header.kind {
                FrameKind::Ack | FrameKind::Credit => assert!(payload.is_empty()),
                _ => assert!(payload.len() <= MAX_DATA_PAYLOAD),
            }
            assert_eq!(encode_frame(header, payload), data);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
