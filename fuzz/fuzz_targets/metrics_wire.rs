//! The metrics wire decoder as the server runs it on every METRICS frame
//! (`server/src/telemetry/mod.rs`, `MetricsStream::on_frame`): `split_batch`,
//! then `Decoder::decode` on each record in order, under the schema the
//! runner announced, stopping at the first bad record.
//!
//! Input: `[series count] [schema id] [batch …]`; the schema is what the
//! server installs (names dropped: only the count matters to decoding).
//! Every decoded sample must have one value per series, and a record that
//! fails must leave the decoder as it was (the next one decodes the same
//! whether or not a bad one came before).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::metrics::wire::{split_batch, Decoder, Schema, SeriesDef, Unit, MAX_VALUE};

fn decoder(count: usize, id: u32) -> Decoder {
    let mut d = Decoder::new();
    let series = (0..count)
        .map(|_| SeriesDef {
            name: String::new(),
            unit: Unit::Count,
            scale: 1.0,
        })
        .collect();
    d.set_schema(Schema { id, series }).expect("a small schema");
    d
}

fuzz_target!(|data: &[u8]| {
    let [count, id, batch @ ..] = data else {
        return;
    };
    let count = usize::from(*count);
    let mut dec = decoder(count, u32::from(*id));
    // The same stream with every bad record removed: must end identical.
    let mut clean = decoder(count, u32::from(*id));
    for record in split_batch(batch) {
        let Ok(record) = record else { break };
        match dec.decode(record) {
            Ok(sample) => {
                assert_eq!(sample.values.len(), count);
                for v in sample.values.iter().flatten() {
                    assert!((-MAX_VALUE..=MAX_VALUE).contains(v));
                }
                for (def, v) in sample.scaled() {
                    assert_eq!(def.unit, Unit::Count);
                    if let Some(v) = v {
                        assert!(v.is_finite());
                    }
                }
                let got = (sample.ts_ms, sample.values.to_vec());
                let c = clean
                    .decode(record)
                    .expect("the clean stream decodes it too");
                assert_eq!((c.ts_ms, c.values.to_vec()), got);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
