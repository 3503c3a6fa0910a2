//! The compact wire form of metric samples, shared by runner and server.
//!
//! A sample is a list of numbered series. Their names and units travel as a
//! JSON [`Schema`] once per connection and whenever the set of series
//! changes (an interface or a disk appears); samples travel as small binary
//! records that refer to the schema by id:
//!
//! ```text
//! key record    0x01  schema_id  ts_ms            n      value × n          (absolute)
//! delta record  0x02  schema_id  zigzag(ts − prev)  bitmap[⌈n/8⌉]  value × popcount(bitmap)
//!
//! all integers are LEB128 varints; bit i of the bitmap (LSB first) = series i changed
//! value in a key record, or after an absent one:  0 = absent, else zigzag(v) + 1
//! value in a delta record after a present one:    0 = absent, else zigzag(v − prev) + 1
//! ```
//!
//! Values are fixed-point integers: the schema gives each series a unit and a
//! scale (`value × scale` is in the unit: percent × 100 has scale 0.01).
//!
//! A delta record only makes sense after the record before it, so a stream
//! is: schema, key record, deltas…; a new schema is always followed by a key
//! record; after a reconnect the runner starts again with the schema and a
//! key record ([`Encoder::restart`], or the backlog's own re-keying).
//!
//! On an idle host most series do not change from one tick to the next and
//! cost one bitmap bit; the ones that do cost one or two bytes.
//!
//! This module is pure (bytes in, bytes out) and depends only on serde: the
//! server uses [`Decoder`] and [`Schema`].

use serde::{Deserialize, Serialize};
use std::fmt::{self, Write as _};

/// Most series one schema may have. Bounds what a corrupt record can make
/// the decoder allocate; a real host has a few hundred at most.
pub const MAX_SERIES: usize = 4096;
/// Largest magnitude of a value. Values are clamped to ±MAX_VALUE so that a
/// delta between two of them, zigzagged, plus one, still fits a u64.
pub const MAX_VALUE: i64 = (1 << 62) - 1;

const TAG_KEY: u8 = 0x01;
const TAG_DELTA: u8 = 0x02;

/// What a series measures. `scale` turns the stored integer into this unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Percent,
    /// Load average (runnable tasks).
    Load,
    Count,
    Seconds,
    Bytes,
    BytesPerSecond,
    /// Events per second (operations, packets, errors, forks).
    PerSecond,
}

/// One series of a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesDef {
    /// Dotted name: `group[.instance].metric`, e.g. `cpu.busy`, `cpu0.busy`,
    /// `net.eth0.rx_bps`, `fs./var/lib.used`. The metric never contains a
    /// dot; an instance may (`eth0.100`, mount points), so split at the last.
    pub name: String,
    pub unit: Unit,
    /// Stored integer × scale = value in `unit` (0.01 for percent × 100,
    /// 1024 for sizes sent in KiB).
    pub scale: f64,
}

/// The series of the records that carry this schema's id, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Changes whenever the series change; records name the id they use.
    pub id: u32,
    pub series: Vec<SeriesDef>,
}

impl Schema {
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a schema received from the runner.
    pub fn from_json(text: &str) -> Result<Schema, WireError> {
        let s: Schema =
            serde_json::from_str(text).map_err(|e| WireError::BadSchema(e.to_string()))?;
        if s.series.len() > MAX_SERIES {
            return Err(WireError::TooManySeries(s.series.len() as u64));
        }
        if s.series.iter().any(|d| !d.scale.is_finite()) {
            return Err(WireError::BadSchema("scale is not a finite number".into()));
        }
        Ok(s)
    }
}

/// Something the encoder can turn into a record: a timestamp and, in a
/// stable order, each series with its name, unit, scale and value (`None`:
/// no value this time, e.g. the first tick of a rate).
pub trait SeriesSource {
    fn timestamp_ms(&self) -> u64;
    fn for_each_series(&self, f: Visitor<'_>);
}

/// Called once per series: name, unit, scale, value.
pub type Visitor<'a> = &'a mut dyn FnMut(&dyn fmt::Display, Unit, f64, Option<i64>);

/// Why a record or schema was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The record ends before its last field.
    Truncated,
    /// The first byte is no known record kind.
    BadTag(u8),
    /// A varint longer than 64 bits.
    BadVarint,
    /// A schema or key record with more series than [`MAX_SERIES`].
    TooManySeries(u64),
    /// A delta record with no key record before it on this stream.
    NoKeyRecord,
    /// The record is for another schema than the one in force.
    SchemaMismatch {
        record: u32,
        current: Option<u32>,
    },
    /// The record's series count differs from its schema's.
    SeriesCount {
        record: usize,
        schema: usize,
    },
    /// A delta takes a value past ±[`MAX_VALUE`].
    ValueOutOfRange,
    /// Bitmap bits set past the last series.
    StrayBits,
    /// Bytes left after the record.
    TrailingBytes(usize),
    BadSchema(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("metrics record truncated"),
            WireError::BadTag(t) => write!(f, "unknown metrics record kind {t:#04x}"),
            WireError::BadVarint => f.write_str("varint longer than 64 bits"),
            WireError::TooManySeries(n) => write!(f, "{n} series, more than {MAX_SERIES}"),
            WireError::NoKeyRecord => f.write_str("delta record without a key record before it"),
            WireError::SchemaMismatch { record, current } => match current {
                Some(c) => write!(f, "record for schema {record}, current schema is {c}"),
                None => write!(f, "record for schema {record} before any schema"),
            },
            WireError::SeriesCount { record, schema } => {
                write!(f, "record has {record} series, schema has {schema}")
            }
            WireError::ValueOutOfRange => f.write_str("value out of range"),
            WireError::StrayBits => f.write_str("bitmap bits set past the last series"),
            WireError::TrailingBytes(n) => write!(f, "{n} bytes after the record"),
            WireError::BadSchema(e) => write!(f, "bad metrics schema: {e}"),
        }
    }
}

impl std::error::Error for WireError {}

// ---------------------------------------------------------------------------
// Encoding

/// Turns samples into records, keeping the schema and the previous values.
#[derive(Debug)]
pub struct Encoder {
    schema: Schema,
    /// False until the first sample: there is no schema to compare with.
    have_schema: bool,
    next_id: u32,
    prev: Vec<Option<i64>>,
    prev_ts: u64,
    /// The next record must be a key record.
    need_key: bool,
    // Reused from tick to tick.
    cur: Vec<Option<i64>>,
    name: String,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder {
            schema: Schema {
                id: 0,
                series: Vec::new(),
            },
            have_schema: false,
            next_id: 1,
            prev: Vec::new(),
            prev_ts: 0,
            need_key: true,
            cur: Vec::new(),
            name: String::new(),
        }
    }

    /// The schema of the last record, once there is one.
    pub fn schema(&self) -> Option<&Schema> {
        self.have_schema.then_some(&self.schema)
    }

    /// Makes the next record a key record: call on a new connection when
    /// records are sent directly (the backlog does its own re-keying).
    pub fn restart(&mut self) {
        self.need_key = true;
    }

    /// Encodes one sample into `out` (cleared first). When the set of series
    /// changed it returns the new schema, which must reach the decoder before
    /// this record (which is then a key record). Series past [`MAX_SERIES`]
    /// are left out.
    pub fn encode(&mut self, src: &dyn SeriesSource, out: &mut Vec<u8>) -> Option<&Schema> {
        out.clear();
        self.cur.clear();
        let old = &self.schema.series;
        let mut same = self.have_schema;
        let mut defs: Vec<SeriesDef> = Vec::new();
        let (cur, name) = (&mut self.cur, &mut self.name);
        let mut idx = 0usize;
        src.for_each_series(&mut |n, unit, scale, v| {
            if idx >= MAX_SERIES {
                return;
            }
            name.clear();
            let _ = write!(name, "{n}");
            if same {
                let matches = old
                    .get(idx)
                    .is_some_and(|d| d.unit == unit && d.scale == scale && d.name == *name);
                if !matches {
                    same = false;
                    defs.extend_from_slice(&old[..idx]);
                }
            }
            if !same {
                defs.push(SeriesDef {
                    name: name.clone(),
                    unit,
                    scale,
                });
            }
            cur.push(v.map(|v| v.clamp(-MAX_VALUE, MAX_VALUE)));
            idx += 1;
        });
        if same && idx != old.len() {
            same = false;
            defs.extend_from_slice(&old[..idx]);
        }
        if !same {
            self.schema = Schema {
                id: self.next_id,
                series: defs,
            };
            self.next_id = self.next_id.wrapping_add(1).max(1);
            self.have_schema = true;
            self.need_key = true;
        }
        let ts = src.timestamp_ms();
        if self.need_key || self.prev.len() != self.cur.len() {
            write_key(self.schema.id, ts, &self.cur, out);
        } else {
            write_delta(self.schema.id, self.prev_ts, ts, &self.prev, &self.cur, out);
        }
        std::mem::swap(&mut self.prev, &mut self.cur);
        self.prev_ts = ts;
        self.need_key = false;
        (!same).then_some(&self.schema)
    }
}

pub(crate) fn write_key(schema_id: u32, ts: u64, values: &[Option<i64>], out: &mut Vec<u8>) {
    out.push(TAG_KEY);
    put_varint(out, u64::from(schema_id));
    put_varint(out, ts);
    put_varint(out, values.len() as u64);
    for v in values {
        put_varint(out, v.map_or(0, |v| zigzag(v) + 1));
    }
}

fn write_delta(
    schema_id: u32,
    prev_ts: u64,
    ts: u64,
    prev: &[Option<i64>],
    cur: &[Option<i64>],
    out: &mut Vec<u8>,
) {
    out.push(TAG_DELTA);
    put_varint(out, u64::from(schema_id));
    // Wall clocks step backwards now and then (NTP), hence signed.
    put_varint(out, zigzag(ts.wrapping_sub(prev_ts) as i64));
    let bitmap = out.len();
    out.resize(bitmap + cur.len().div_ceil(8), 0);
    for (i, (p, c)) in prev.iter().zip(cur).enumerate() {
        if p == c {
            continue;
        }
        out[bitmap + i / 8] |= 1 << (i % 8);
        let v = match (p, c) {
            (_, None) => 0,
            (None, Some(c)) => zigzag(*c) + 1,
            // Both within ±MAX_VALUE, so the difference fits.
            (Some(p), Some(c)) => zigzag(c - p) + 1,
        };
        put_varint(out, v);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `record` to a batch: several records in one binary message
/// (`varint length, record` each), which saves the per-message framing when
/// the backlog is drained after a reconnect.
pub fn push_to_batch(batch: &mut Vec<u8>, record: &[u8]) {
    put_varint(batch, record.len() as u64);
    batch.extend_from_slice(record);
}

/// The records of a batch, in order; an error for a cut-off one.
pub fn split_batch(batch: &[u8]) -> impl Iterator<Item = Result<&[u8], WireError>> {
    let mut r = Reader { b: batch, pos: 0 };
    std::iter::from_fn(move || {
        if r.pos >= r.b.len() {
            return None;
        }
        let item = r
            .varint()
            .and_then(|n| usize::try_from(n).map_err(|_| WireError::Truncated))
            .and_then(|n| r.bytes(n));
        if item.is_err() {
            r.pos = r.b.len();
        }
        Some(item)
    })
}

// ---------------------------------------------------------------------------
// Decoding

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, WireError> {
        let b = *self.b.get(self.pos).ok_or(WireError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(WireError::BadVarint);
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::BadVarint)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn finish(&self) -> Result<(), WireError> {
        match self.b.len() - self.pos {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

/// What a decoder knows after a record: the state a delta record builds
/// on. Used by [`Decoder`] and by the backlog to re-key its front.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chain {
    pub(crate) valid: bool,
    pub(crate) schema_id: u32,
    pub(crate) ts: u64,
    pub(crate) values: Vec<Option<i64>>,
    scratch: Vec<Option<i64>>,
}

impl Chain {
    /// Applies one record. On error the state is unchanged.
    pub(crate) fn apply(&mut self, rec: &[u8]) -> Result<(), WireError> {
        let mut r = Reader { b: rec, pos: 0 };
        let tag = r.byte()?;
        let id = u32::try_from(r.varint()?).map_err(|_| WireError::BadVarint)?;
        self.scratch.clear();
        let ts = match tag {
            TAG_KEY => {
                let ts = r.varint()?;
                let n = r.varint()?;
                if n > MAX_SERIES as u64 {
                    return Err(WireError::TooManySeries(n));
                }
                for _ in 0..n {
                    let v = r.varint()?;
                    self.scratch.push(absolute(v)?);
                }
                ts
            }
            TAG_DELTA => {
                if !self.valid {
                    return Err(WireError::NoKeyRecord);
                }
                if id != self.schema_id {
                    return Err(WireError::SchemaMismatch {
                        record: id,
                        current: Some(self.schema_id),
                    });
                }
                let ts = self.ts.wrapping_add(unzigzag(r.varint()?) as u64);
                let n = self.values.len();
                let bitmap = r.bytes(n.div_ceil(8))?;
                if n % 8 != 0 && bitmap[n / 8] >> (n % 8) != 0 {
                    return Err(WireError::StrayBits);
                }
                for (i, prev) in self.values.iter().enumerate() {
                    if bitmap[i / 8] & (1 << (i % 8)) == 0 {
                        self.scratch.push(*prev);
                        continue;
                    }
                    let v = r.varint()?;
                    let new = match (prev, v) {
                        (_, 0) => None,
                        (None, v) => absolute(v)?,
                        (Some(p), v) => {
                            let d = unzigzag(v - 1);
                            let s = p.checked_add(d).ok_or(WireError::ValueOutOfRange)?;
                            if !(-MAX_VALUE..=MAX_VALUE).contains(&s) {
                                return Err(WireError::ValueOutOfRange);
                            }
                            Some(s)
                        }
                    };
                    self.scratch.push(new);
                }
                ts
            }
            t => return Err(WireError::BadTag(t)),
        };
        r.finish()?;
        std::mem::swap(&mut self.values, &mut self.scratch);
        self.schema_id = id;
        self.ts = ts;
        self.valid = true;
        Ok(())
    }

    /// The timestamp `rec` carries when applied after this state, reading
    /// only its head (a key record's absolute time, or a delta's offset
    /// from this state's time). Nothing changes.
    pub(crate) fn next_ts(&self, rec: &[u8]) -> Result<u64, WireError> {
        let mut r = Reader { b: rec, pos: 0 };
        let tag = r.byte()?;
        r.varint()?;
        match tag {
            TAG_KEY => r.varint(),
            TAG_DELTA if !self.valid => Err(WireError::NoKeyRecord),
            TAG_DELTA => Ok(self.ts.wrapping_add(unzigzag(r.varint()?) as u64)),
            t => Err(WireError::BadTag(t)),
        }
    }

    /// The current state as a key record.
    pub(crate) fn write_key(&self, out: &mut Vec<u8>) {
        write_key(self.schema_id, self.ts, &self.values, out);
    }
}

/// A key-record value: 0 = absent, else zigzag + 1.
fn absolute(v: u64) -> Result<Option<i64>, WireError> {
    if v == 0 {
        return Ok(None);
    }
    let x = unzigzag(v - 1);
    if !(-MAX_VALUE..=MAX_VALUE).contains(&x) {
        return Err(WireError::ValueOutOfRange);
    }
    Ok(Some(x))
}

/// The server side: the schema in force and the previous record's values.
/// One per runner connection.
#[derive(Debug, Default)]
pub struct Decoder {
    schema: Option<Schema>,
    chain: Chain,
}

/// One decoded record; borrows the decoder until the next call.
#[derive(Debug)]
pub struct DecodedSample<'a> {
    pub schema: &'a Schema,
    pub ts_ms: u64,
    /// Stored integers, one per schema series; `None`: no value this time.
    pub values: &'a [Option<i64>],
}

impl<'a> DecodedSample<'a> {
    /// Each series with its value in its unit (stored integer × scale).
    pub fn scaled(&self) -> impl Iterator<Item = (&'a SeriesDef, Option<f64>)> + 'a {
        let (schema, values) = (self.schema, self.values);
        schema
            .series
            .iter()
            .zip(values)
            .map(|(d, v)| (d, v.map(|v| v as f64 * d.scale)))
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Installs the schema that the next records use.
    pub fn set_schema(&mut self, schema: Schema) -> Result<(), WireError> {
        if schema.series.len() > MAX_SERIES {
            return Err(WireError::TooManySeries(schema.series.len() as u64));
        }
        self.schema = Some(schema);
        Ok(())
    }

    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    /// Decodes one record. An error leaves the decoder as it was, so a bad
    /// record can be logged and skipped (the deltas after it then fail
    /// until the next key record, which the runner sends on reconnect).
    pub fn decode(&mut self, rec: &[u8]) -> Result<DecodedSample<'_>, WireError> {
        let mut next = self.chain.clone();
        next.apply(rec)?;
        let schema = self.schema.as_ref().ok_or(WireError::SchemaMismatch {
            record: next.schema_id,
            current: None,
        })?;
        if schema.id != next.schema_id {
            return Err(WireError::SchemaMismatch {
                record: next.schema_id,
                current: Some(schema.id),
            });
        }
        if schema.series.len() != next.values.len() {
            return Err(WireError::SeriesCount {
                record: next.values.len(),
                schema: schema.series.len(),
            });
        }
        self.chain = next;
        Ok(DecodedSample {
            schema,
            ts_ms: self.chain.ts,
            values: &self.chain.values,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hand-made source: (name, value) pairs, all counts.
    pub struct Fake {
        pub ts: u64,
        pub series: Vec<(String, Option<i64>)>,
    }

    impl SeriesSource for Fake {
        fn timestamp_ms(&self) -> u64 {
            self.ts
        }
        fn for_each_series(&self, f: Visitor<'_>) {
            for (n, v) in &self.series {
                f(n, Unit::Count, 1.0, *v);
            }
        }
    }

    fn fake(ts: u64, vals: &[(&str, Option<i64>)]) -> Fake {
        Fake {
            ts,
            series: vals.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        }
    }

    /// Encodes `samples` and decodes them again, checking each.
    fn round_trip(samples: &[Fake]) -> Vec<Vec<u8>> {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut recs = Vec::new();
        for s in samples {
            let mut out = Vec::new();
            if let Some(schema) = enc.encode(s, &mut out) {
                let json = schema.to_json();
                dec.set_schema(Schema::from_json(&json).unwrap()).unwrap();
            }
            let d = dec.decode(&out).unwrap();
            assert_eq!(d.ts_ms, s.ts);
            let names: Vec<&str> = d.schema.series.iter().map(|x| x.name.as_str()).collect();
            let want: Vec<&str> = s.series.iter().map(|x| x.0.as_str()).collect();
            assert_eq!(names, want);
            let vals: Vec<Option<i64>> = s.series.iter().map(|x| x.1).collect();
            assert_eq!(d.values, &vals[..]);
            recs.push(out);
        }
        recs
    }

    #[test]
    fn varints_and_zigzag() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Reader { b: &b, pos: 0 }.varint(), Ok(v));
        }
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            MAX_VALUE,
            -MAX_VALUE,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        let eleven = [0xffu8; 11];
        assert_eq!(
            Reader { b: &eleven, pos: 0 }.varint(),
            Err(WireError::BadVarint)
        );
        let big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(
            Reader { b: &big, pos: 0 }.varint(),
            Err(WireError::BadVarint)
        );
    }

    #[test]
    fn round_trips_with_changes_absences_and_schema_changes() {
        let recs = round_trip(&[
            fake(1000, &[("a", Some(1)), ("b", None), ("c", Some(-5))]),
            fake(6000, &[("a", Some(1)), ("b", None), ("c", Some(-5))]),
            fake(11000, &[("a", Some(2)), ("b", Some(7)), ("c", None)]),
            fake(
                9000,
                &[
                    ("a", Some(MAX_VALUE)),
                    ("b", Some(-MAX_VALUE)),
                    ("c", Some(0)),
                ],
            ),
            fake(
                14000,
                &[
                    ("a", Some(-MAX_VALUE)),
                    ("b", Some(MAX_VALUE)),
                    ("c", Some(0)),
                ],
            ),
            fake(19000, &[("a", Some(1)), ("c", Some(0))]),
            fake(24000, &[("a", Some(1)), ("z", Some(0))]),
            fake(29000, &[("a", Some(1)), ("z", Some(0)), ("y", Some(3))]),
            fake(34000, &[]),
            fake(39000, &[]),
        ]);
        assert_eq!(recs[0][0], TAG_KEY);
        assert_eq!(recs[1][0], TAG_DELTA);
        // Unchanged: tag, schema id, ts delta (2 bytes), one bitmap byte.
        assert_eq!(recs[1].len(), 5);
        assert_eq!(recs[5][0], TAG_KEY);
        assert_eq!(recs[6][0], TAG_KEY);
        assert_eq!(recs[7][0], TAG_KEY);
        assert_eq!(recs[9][0], TAG_DELTA);
    }

    #[test]
    fn values_are_clamped() {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let s = enc
            .encode(
                &fake(0, &[("a", Some(i64::MIN)), ("b", Some(i64::MAX))]),
                &mut out,
            )
            .unwrap()
            .clone();
        dec.set_schema(s).unwrap();
        assert_eq!(
            dec.decode(&out).unwrap().values,
            &[Some(-MAX_VALUE), Some(MAX_VALUE)]
        );
    }

    #[test]
    fn restart_sends_a_key_record() {
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        enc.encode(&fake(0, &[("a", Some(1))]), &mut out);
        enc.encode(&fake(1, &[("a", Some(1))]), &mut out);
        assert_eq!(out[0], TAG_DELTA);
        enc.restart();
        assert!(enc.encode(&fake(2, &[("a", Some(1))]), &mut out).is_none());
        assert_eq!(out[0], TAG_KEY);
    }

    #[test]
    fn decoder_errors() {
        let mut dec = Decoder::new();
        assert_eq!(dec.decode(&[]).unwrap_err(), WireError::Truncated);
        assert_eq!(dec.decode(&[9, 1]).unwrap_err(), WireError::BadTag(9));
        assert_eq!(
            dec.decode(&[TAG_DELTA, 1, 0]).unwrap_err(),
            WireError::NoKeyRecord
        );
        // Key record before any schema.
        assert_eq!(
            dec.decode(&[TAG_KEY, 1, 0, 0]).unwrap_err(),
            WireError::SchemaMismatch {
                record: 1,
                current: None
            }
        );
        dec.set_schema(Schema {
            id: 1,
            series: vec![SeriesDef {
                name: "a".into(),
                unit: Unit::Count,
                scale: 1.0,
            }],
        })
        .unwrap();
        assert_eq!(
            dec.decode(&[TAG_KEY, 1, 0, 0]).unwrap_err(),
            WireError::SeriesCount {
                record: 0,
                schema: 1
            }
        );
        assert_eq!(
            dec.decode(&[TAG_KEY, 1, 0, 1, 3, 0]).unwrap_err(),
            WireError::TrailingBytes(1)
        );
        assert_eq!(
            dec.decode(&[TAG_KEY, 1, 0, 0xff, 0xff, 0x7f]).unwrap_err(),
            WireError::TooManySeries(0x1fffff)
        );
        assert_eq!(
            dec.decode(&[TAG_KEY, 1, 0, 1, 3]).unwrap().values,
            &[Some(1)]
        );
        assert_eq!(
            dec.decode(&[TAG_DELTA, 1, 0, 0b10]).unwrap_err(),
            WireError::StrayBits
        );
        assert_eq!(
            dec.decode(&[TAG_DELTA, 2, 0, 0]).unwrap_err(),
            WireError::SchemaMismatch {
                record: 2,
                current: Some(1)
            }
        );
        // A failed record changes nothing: the next delta still applies.
        assert_eq!(
            dec.decode(&[TAG_DELTA, 1, 0, 1, 5]).unwrap().values,
            &[Some(3)]
        );
        assert!(Schema::from_json("{").is_err());
        assert!(Schema::from_json(
            r#"{"id":1,"series":[{"name":"a","unit":"furlongs","scale":1}]}"#
        )
        .is_err());
    }

    /// A few hundred records of a random walk, including absences.
    pub(crate) fn random_stream(seed: u64, n: usize) -> Vec<Fake> {
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut vals: Vec<Option<i64>> = vec![Some(0); 20];
        let mut out = Vec::new();
        let mut ts = 1_700_000_000_000u64;
        for i in 0..n {
            for v in vals.iter_mut() {
                let r = next();
                *v = match r % 10 {
                    0 => None,
                    1..=4 => *v,
                    _ => Some(v.unwrap_or(0) + (r >> 8) as i64 % 100_000 - 50_000),
                };
            }
            let width = if i % 50 < 40 { 20 } else { 17 };
            ts += 5000;
            out.push(Fake {
                ts,
                series: (0..width).map(|j| (format!("s{j}"), vals[j])).collect(),
            });
        }
        out
    }

    #[test]
    fn batches() {
        let mut batch = Vec::new();
        let recs: [&[u8]; 3] = [&[1, 2, 3], &[], &[9; 200]];
        for r in recs {
            push_to_batch(&mut batch, r);
        }
        let got: Vec<&[u8]> = split_batch(&batch).map(Result::unwrap).collect();
        assert_eq!(got, recs);
        for cut in 0..batch.len() {
            let items: Vec<_> = split_batch(&batch[..cut]).collect();
            assert!(items.len() <= 3);
            if cut != 4 && cut != 5 && cut != 0 {
                assert!(items.last().unwrap().is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn random_round_trips() {
        round_trip(&random_stream(42, 300));
    }

    /// Every truncation of every record is an error, and random corruption
    /// never panics.
    #[test]
    fn truncation_and_corruption() {
        let samples = random_stream(7, 120);
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut rng = 0x9e3779b97f4a7c15u64;
        for s in &samples {
            let mut rec = Vec::new();
            if let Some(schema) = enc.encode(s, &mut rec) {
                dec.set_schema(schema.clone()).unwrap();
            }
            for cut in 0..rec.len() {
                let mut probe = Decoder::new();
                probe.set_schema(dec.schema().unwrap().clone()).unwrap();
                probe.chain = dec.chain.clone();
                assert!(probe.decode(&rec[..cut]).is_err(), "cut at {cut} decoded");
            }
            for _ in 0..20 {
                let mut bad = rec.clone();
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng as usize) % bad.len();
                bad[i] ^= 1 << ((rng >> 32) % 8);
                if rng % 3 == 0 {
                    bad.truncate(i);
                }
                let mut probe = Decoder::new();
                probe.set_schema(dec.schema().unwrap().clone()).unwrap();
                probe.chain = dec.chain.clone();
                let _ = probe.decode(&bad);
            }
            // Random garbage of random length.
            let len = (rng % 40) as usize;
            let garbage: Vec<u8> = (0..len).map(|k| (rng >> (k % 56)) as u8).collect();
            let mut probe = Decoder::new();
            probe.chain = dec.chain.clone();
            let _ = probe.decode(&garbage);
            dec.decode(&rec).unwrap();
        }
    }
}
