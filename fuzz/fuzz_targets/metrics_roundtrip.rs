//! The metrics wire end to end: what the runner's `Encoder` can write, the
//! server's `Decoder` must read back exactly (values clamped to
//! ±`MAX_VALUE`), through schema changes, absent values, clock steps back
//! and batches, including after a reconnect (`Encoder::restart`).
//!
//! Input: a list of samples, each `[flags] [ts: 8] [n] n × ([kind] [value: 8])`:
//! flags bit 0 renames a series (new schema), bit 1 restarts the encoder
//! (a reconnect: the server starts a new decoder), kind 0 = absent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fmt;
use tether::metrics::wire::{
    push_to_batch, split_batch, Decoder, Encoder, Schema, SeriesSource, Unit, Visitor, MAX_VALUE,
};

struct Sample {
    ts: u64,
    rename: bool,
    values: Vec<Option<i64>>,
}

impl SeriesSource for Sample {
    fn timestamp_ms(&self) -> u64 {
        self.ts
    }
    fn for_each_series(&self, f: Visitor<'_>) {
        for (i, v) in self.values.iter().enumerate() {
            let name: &dyn fmt::Display = if self.rename && i == 0 {
                &"renamed"
            } else {
                &i
            };
            f(name, Unit::Count, 1.0, *v);
        }
    }
}

fn take<const N: usize>(data: &mut &[u8]) -> Option<[u8; N]> {
    let (a, b) = data.split_first_chunk::<N>()?;
    *data = b;
    Some(*a)
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut enc = Encoder::new();
    let mut dec = Decoder::new();
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    let mut record = Vec::new();
    while let (Some([flags]), Some(ts), Some([n])) = (
        take::<1>(&mut data),
        take::<8>(&mut data),
        take::<1>(&mut data),
    ) {
        let mut values = Vec::new();
        for _ in 0..n % 16 {
            let (Some([kind]), Some(v)) = (take::<1>(&mut data), take::<8>(&mut data)) else {
                return;
            };
            values.push((kind != 0).then(|| i64::from_le_bytes(v)));
        }
        if flags & 2 != 0 {
            // A reconnect: what was batched is decoded first, then the
            // server starts over, as a new connection does.
            check(&mut dec, &batch, &expected);
            batch.clear();
            expected.clear();
            dec = Decoder::new();
            enc.restart();
        }
        let s = Sample {
            ts: u64::from_le_bytes(ts),
            rename: flags & 1 != 0,
            values,
        };
        if let Some(schema) = enc.encode(&s, &mut record) {
            // A schema goes out as JSON before the records that use it.
            check(&mut dec, &batch, &expected);
            batch.clear();
            expected.clear();
            dec.set_schema(Schema::from_json(&schema.to_json()).expect("own schema parses"))
                .expect("own schema fits");
        }
        if enc.schema().is_some() && dec.schema().is_none() {
            let schema = enc.schema().unwrap();
            dec.set_schema(Schema::from_json(&schema.to_json()).unwrap())
                .unwrap();
        }
        push_to_batch(&mut batch, &record);
        let clamped = s
            .values
            .iter()
            .map(|v| v.map(|v| v.clamp(-MAX_VALUE, MAX_VALUE)))
            .collect::<Vec<_>>();
        expected.push((s.ts, clamped));
    }
    check(&mut dec, &batch, &expected);
});

fn check(dec: &mut Decoder, batch: &[u8], expected: &[(u64, Vec<Option<i64>>)]) {
    let mut n = 0;
    for (rec, want) in split_batch(batch).zip(expected) {
        let rec = rec.expect("own batch splits");
        let got = dec
            .decode(rec)
            .unwrap_or_else(|e| panic!("own record refused: {e}"));
        assert_eq!((got.ts_ms, got.values.to_vec()), (want.0, want.1.clone()));
        n += 1;
    }
    assert_eq!(n, expected.len());
}
