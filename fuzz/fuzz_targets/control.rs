//! Control messages (JSON text frames), as both sides decode them:
//! `protocol::decode_control` is the one decoder of the runner
//! (`conn::on_control`) and of the server (`runner_ws::inbound`).
//!
//! Beyond "no panic": what one side decodes it must be able to send
//! (encode, decode again: the same message), so a value the server accepts
//! from a runner can never turn into one the runner refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::protocol::{decode_control, encode_control, Decoded, MAX_CONTROL_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_control(text) {
        Ok(Decoded::Known(env)) => {
            assert!(text.len() <= MAX_CONTROL_MESSAGE);
            let name = env.body.type_name();
            let once = encode_control(env.id, env.body);
            let again = match decode_control(&once) {
                Ok(Decoded::Known(e)) => e,
                other => panic!("re-encoded '{name}' does not decode: {other:?}\n{once}"),
            };
            // Compared as text: JSON numbers inside free-form values may
            // change form once (1e2 → 100.0), never twice.
            let twice = encode_control(again.id, again.body);
            let third = match decode_control(&twice) {
                Ok(Decoded::Known(e)) => encode_control(e.id, e.body),
                other => panic!("twice re-encoded '{name}' does not decode: {other:?}"),
            };
            assert_eq!(twice, third, "'{name}' changes on each round trip");
        }
        Ok(Decoded::Unknown { .. }) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
