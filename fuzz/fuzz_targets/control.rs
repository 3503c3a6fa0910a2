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
            // JSON numbers inside free-form values may change form once
            // (1e2 → 100.0); after that only a float's last digit may move
            // (serde_json reads floats with large exponents fast, not
            // exactly: 4.444444444444446e62 → ...465e62). Anything else
            // that changes on a round trip is a defect.
            let twice = encode_control(again.id, again.body);
            let third = match decode_control(&twice) {
                Ok(Decoded::Known(e)) => encode_control(e.id, e.body),
                other => panic!("twice re-encoded '{name}' does not decode: {other:?}"),
            };
            let (a, b): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(&twice).unwrap(),
                serde_json::from_str(&third).unwrap(),
            );
            assert!(
                same(&a, &b),
                "'{name}' changes on each round trip:\n{twice}\n{third}"
            );
        }
        Ok(Decoded::Unknown { .. }) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

/// Equal JSON, floats within a relative 1e-12 (the last digit).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Number, Object};
    match (a, b) {
        (Number(x), Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
