//! Host metrics at rest: the model (retention, resolutions, sample rows and
//! their value encoding, query results) and the [`MetricStore`] trait.
//!
//! A sample's values travel encoded (`encode_values`): one LEB128 varint per
//! series, 0 absent, else zigzag(stored integer) + 1; rollups store per
//! series count, min, max and sum (`encode_aggs`). Backends store these
//! bytes as they are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tether::metrics::wire::{SeriesDef, Unit};

use super::StorageError;

#[async_trait]
pub trait MetricStore: Send + Sync {
    fn retention(&self) -> Retention;
    /// The small integer a runner's samples are keyed by (created if new).
    async fn source(&self, runner_id: &str) -> Result<i64, StorageError>;
    /// The newest stored sample of a runner (`welcome.metrics_ts`).
    async fn last_ts(&self, runner_id: &str) -> Result<Option<i64>, StorageError>;
    /// The stored id of a series list (shared by every runner with it).
    async fn intern_schema(&self, series: &[SeriesDef], now: i64) -> Result<i64, StorageError>;
    /// Store batches in one transaction; how many samples were new.
    async fn insert(&self, batches: Vec<SampleRows>, now: i64) -> Result<usize, StorageError>;
    /// Roll up complete buckets and expire old rows.
    async fn maintain(&self, now: i64) -> Result<MaintainStats, StorageError>;
    #[allow(clippy::too_many_arguments)]
    async fn range(
        &self,
        runner_id: &str,
        from: i64,
        to: i64,
        resolution: Resolution,
        filter: &SeriesFilter,
        max_rows: usize,
    ) -> Result<Vec<SeriesData>, RangeError>;
    /// The newest sample of each runner that has one: (index in
    /// `runner_ids`, sample).
    async fn latest(&self, runner_ids: &[&str])
        -> Result<Vec<(usize, LatestSample)>, StorageError>;
    /// Rows in one of the backend's tables (tests).
    #[doc(hidden)]
    async fn count(&self, table: &str) -> i64;
}

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// How long each resolution is kept, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw_ms: i64,
    pub minute_ms: i64,
    pub hour_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_ms: DAY_MS,
            minute_ms: 7 * DAY_MS,
            hour_ms: 90 * DAY_MS,
        }
    }
}

impl Retention {
    pub fn from_durations(raw: Duration, minute: Duration, hour: Duration) -> Retention {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        Retention {
            raw_ms: ms(raw),
            minute_ms: ms(minute),
            hour_ms: ms(hour),
        }
    }

    pub(crate) fn longest(&self) -> i64 {
        self.raw_ms.max(self.minute_ms).max(self.hour_ms)
    }

    /// How long a resolution is kept.
    pub fn of(&self, r: Resolution) -> i64 {
        match r {
            Resolution::Raw => self.raw_ms,
            Resolution::Minute => self.minute_ms,
            Resolution::Hour => self.hour_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Raw,
    Minute,
    Hour,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }

    pub fn parse(s: &str) -> Option<Resolution> {
        match s {
            "raw" => Some(Resolution::Raw),
            "1m" => Some(Resolution::Minute),
            "1h" => Some(Resolution::Hour),
            _ => None,
        }
    }

    pub(crate) fn bucket_ms(self) -> i64 {
        match self {
            Resolution::Raw => 1,
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
        }
    }
}

/// One runner's samples of one schema, ready to store.
#[derive(Debug, Clone, Default)]
pub struct SampleRows {
    pub source: i64,
    pub schema: i64,
    /// (ts ms, values encoded with [`encode_values`]).
    pub rows: Vec<(i64, Vec<u8>)>,
}

/// Which series a query wants: everything, exact names, or `prefix*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesFilter {
    exact: HashSet<String>,
    prefixes: Vec<String>,
}

/// Most names or patterns in one filter.
const MAX_FILTER_ITEMS: usize = 256;

impl SeriesFilter {
    /// `cpu.busy,mem.used,net.*`: exact names, or a prefix ending in `*`.
    pub fn parse(s: &str) -> Result<SeriesFilter, String> {
        let mut f = SeriesFilter::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if f.exact.len() + f.prefixes.len() >= MAX_FILTER_ITEMS {
                return Err(format!("more than {MAX_FILTER_ITEMS} series patterns"));
            }
            match item.find('*') {
                None => {
                    f.exact.insert(item.to_owned());
                }
                Some(i) if i + 1 == item.len() => f.prefixes.push(item[..i].to_owned()),
                Some(_) => {
                    return Err(format!(
                        "series pattern {item:?}: '*' may only end a prefix, e.g. net.*"
                    ))
                }
            }
        }
        Ok(f)
    }

    pub fn is_all(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    pub fn matches(&self, name: &str) -> bool {
        self.is_all()
            || self.exact.contains(name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// min/avg/max over a range, in the series' unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Samples behind the figures (raw samples, also at 1m and 1h).
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn avg(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }

    pub(crate) fn add(&mut self, count: u64, sum: f64, min: f64, max: f64) {
        if self.count == 0 {
            (self.min, self.max) = (min, max);
        } else {
            self.min = self.min.min(min);
            self.max = self.max.max(max);
        }
        self.count += count;
        self.sum += sum;
    }
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            count: 0,
            sum: 0.0,
            min: 0.0,
            max: 0.0,
        }
    }
}

/// One series of a range answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub name: String,
    pub unit: Unit,
    /// (ts ms, value in `unit`), oldest first. At 1m and 1h: bucket start
    /// and the bucket's average.
    pub points: Vec<(i64, f64)>,
    pub summary: Summary,
}

/// The newest stored sample of a runner.
#[derive(Debug, Clone)]
pub struct LatestSample {
    pub ts: i64,
    pub schema: Arc<[SeriesDef]>,
    /// In each series' unit; `None`: no value in that sample.
    pub values: Vec<Option<f64>>,
}

impl LatestSample {
    pub fn series(&self) -> impl Iterator<Item = (&SeriesDef, Option<f64>)> {
        self.schema.iter().zip(self.values.iter().copied())
    }
}

#[derive(Debug)]
pub enum RangeError {
    Storage(StorageError),
    /// More stored rows than the caller allows: ask for a coarser resolution.
    TooManyRows(usize),
}

impl From<StorageError> for RangeError {
    fn from(e: StorageError) -> Self {
        RangeError::Storage(e)
    }
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaintainStats {
    pub minutes_rolled: usize,
    pub hours_rolled: usize,
    pub raw_deleted: usize,
    pub minute_deleted: usize,
    pub hour_deleted: usize,
    pub schemas_deleted: usize,
}

/// Start of the bucket of width `w` that holds `ts`.
pub fn floor(ts: i64, w: i64) -> i64 {
    ts - ts.rem_euclid(w)
}

/// Rounds to 12 significant digits: averages of fixed-point values carry
/// float noise in the last bits (3.0549999999999997 for 3.055), which no
/// stored value is precise enough to mean.
pub fn tidy(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let digits = 11 - v.abs().log10().floor() as i32;
    let factor = 10f64.powi(digits);
    let t = (v * factor).round() / factor;
    if t.is_finite() {
        t
    } else {
        v
    }
}

/// `v × scale`, without the float noise of multiplying by 0.01: a scale
/// that is the inverse of a whole number divides instead (1234 × 0.01 would
/// print as 12.340000000000002, 1234 / 100 prints as 12.34).
pub fn scaled(v: f64, scale: f64) -> f64 {
    if scale > 0.0 && scale < 1.0 {
        let inv = 1.0 / scale;
        if (inv - inv.round()).abs() < 1e-9 {
            return v / inv.round();
        }
    }
    v * scale
}

// ---- value codecs --------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Result<u128, StorageError> {
    let mut v = 0u128;
    let mut shift = 0;
    loop {
        let byte = *b
            .get(*pos)
            .ok_or_else(|| StorageError::Corrupt("metrics value blob truncated".into()))?;
        *pos += 1;
        if shift > 126 {
            return Err(StorageError::Corrupt("metrics varint too long".into()));
        }
        v |= u128::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn narrow(v: u128) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt("metrics value out of range".into()))
}

/// One sample's values, in schema order: 0 absent, else zigzag(v) + 1.
pub fn encode_values(values: &[Option<i64>], out: &mut Vec<u8>) {
    for v in values {
        put_varint(out, v.map_or(0, |v| u128::from(zigzag(v)) + 1));
    }
}

pub fn decode_values(b: &[u8], out: &mut Vec<Option<i64>>) -> Result<(), StorageError> {
    out.clear();
    let mut pos = 0;
    while pos < b.len() {
        let u = get_varint(b, &mut pos)?;
        out.push(match u {
            0 => None,
            u => Some(unzigzag(narrow(u - 1)?)),
        });
    }
    Ok(())
}

/// count, sum, min, max of one series in one bucket, in stored integers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Agg {
    pub count: u64,
    pub sum: i128,
    pub min: i64,
    pub max: i64,
}

impl Agg {
    pub(crate) fn add(&mut self, v: i64) {
        self.merge(&Agg {
            count: 1,
            sum: i128::from(v),
            min: v,
            max: v,
        });
    }

    pub(crate) fn merge(&mut self, o: &Agg) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *o;
            return;
        }
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Per series: count; if non-zero then zigzag(min), max − min, sum − count·min
/// (all non-negative, and small for a steady series: 1 byte each).
pub fn encode_aggs(aggs: &[Agg], out: &mut Vec<u8>) {
    for a in aggs {
        put_varint(out, u128::from(a.count));
        if a.count > 0 {
            put_varint(out, u128::from(zigzag(a.min)));
            put_varint(out, (i128::from(a.max) - i128::from(a.min)) as u128);
            let excess = a.sum - i128::from(a.count) * i128::from(a.min);
            put_varint(out, excess.max(0) as u128);
        }
    }
}

pub fn decode_aggs(b: &[u8], out: &mut Vec<Agg>) -> Result<(), StorageError> {
    out.clear();
    let mut pos = 0;
    while pos < b.len() {
        let count = narrow(get_varint(b, &mut pos)?)?;
        if count == 0 {
            out.push(Agg::default());
            continue;
        }
        let min = unzigzag(narrow(get_varint(b, &mut pos)?)?);
        let span = narrow(get_varint(b, &mut pos)?)?;
        let excess = get_varint(b, &mut pos)?;
        let max = i64::try_from(i128::from(min) + i128::from(span))
            .map_err(|_| StorageError::Corrupt("metrics max out of range".into()))?;
        let sum = i128::from(count)
            .checked_mul(i128::from(min))
            .and_then(|s| s.checked_add(i128::try_from(excess).ok()?))
            .ok_or_else(|| StorageError::Corrupt("metrics sum out of range".into()))?;
        out.push(Agg {
            count,
            sum,
            min,
            max,
        });
    }
    Ok(())
}

// ---- rolling up (shared by the backends) --------------------------------------------

/// Schemas a backend keeps in memory at most; then its cache starts over.
pub(crate) const SCHEMA_CACHE_MAX: usize = 4096;

/// A backend's memory of interned metric schemas (both backends intern the
/// same way; only the SQL differs).
#[derive(Default)]
pub(crate) struct SchemaCache {
    pub(crate) by_hash: HashMap<Vec<u8>, i64>,
    pub(crate) by_id: HashMap<i64, Arc<[SeriesDef]>>,
    /// When `last_used` was last written, per schema id.
    pub(crate) touched: HashMap<i64, i64>,
}

impl SchemaCache {
    /// Bounded: past [`SCHEMA_CACHE_MAX`] entries the cache starts over.
    pub(crate) fn make_room(&mut self) {
        if self.by_id.len() >= SCHEMA_CACHE_MAX || self.by_hash.len() >= SCHEMA_CACHE_MAX {
            self.by_id.clear();
            self.by_hash.clear();
        }
        if self.touched.len() >= SCHEMA_CACHE_MAX {
            self.touched.clear();
        }
    }
}

/// The rows of one bucket folded per schema: usually one schema per
/// bucket, two when the series changed inside it.
#[derive(Default)]
pub(crate) struct BucketFold {
    pub(crate) groups: Vec<(i64, Vec<Agg>)>,
    values: Vec<Option<i64>>,
    aggs: Vec<Agg>,
}

impl BucketFold {
    /// Add one stored row: raw values (`from_raw`) or a rollup's aggregates.
    pub(crate) fn add(
        &mut self,
        schema: i64,
        blob: &[u8],
        from_raw: bool,
    ) -> Result<(), StorageError> {
        let group = match self.groups.iter().position(|(s, _)| *s == schema) {
            Some(i) => &mut self.groups[i].1,
            None => {
                self.groups.push((schema, Vec::new()));
                &mut self.groups.last_mut().expect("just pushed").1
            }
        };
        if from_raw {
            decode_values(blob, &mut self.values)?;
            if group.len() < self.values.len() {
                group.resize(self.values.len(), Agg::default());
            }
            for (a, v) in group.iter_mut().zip(&self.values) {
                if let Some(v) = v {
                    a.add(*v);
                }
            }
        } else {
            decode_aggs(blob, &mut self.aggs)?;
            if group.len() < self.aggs.len() {
                group.resize(self.aggs.len(), Agg::default());
            }
            for (a, b) in group.iter_mut().zip(&self.aggs) {
                a.merge(b);
            }
        }
        Ok(())
    }
}

// ---- the range answer (shared by the backends) ---------------------------------------

/// For one stored schema: which output series each position feeds.
pub(crate) struct Plan {
    schema: Arc<[SeriesDef]>,
    slots: Vec<Option<usize>>,
}

struct SeriesAcc {
    data: SeriesData,
    /// The bucket being merged (rows of two schemas in one bucket): ts,
    /// sum, count.
    open: Option<(i64, f64, u64)>,
}

pub(crate) struct RangeBuilder<'f> {
    filter: &'f SeriesFilter,
    series: Vec<SeriesAcc>,
    index: HashMap<String, usize>,
    plans: HashMap<i64, Arc<Plan>>,
}

impl<'f> RangeBuilder<'f> {
    pub(crate) fn new(filter: &'f SeriesFilter) -> Self {
        RangeBuilder {
            filter,
            series: Vec::new(),
            index: HashMap::new(),
            plans: HashMap::new(),
        }
    }

    pub(crate) fn plan(
        &mut self,
        schema_id: i64,
        load: impl FnOnce() -> Result<Arc<[SeriesDef]>, StorageError>,
    ) -> Result<Arc<Plan>, StorageError> {
        if let Some(p) = self.plans.get(&schema_id) {
            return Ok(p.clone());
        }
        let schema = load()?;
        let mut slots = Vec::with_capacity(schema.len());
        for d in schema.iter() {
            if !self.filter.matches(&d.name) {
                slots.push(None);
                continue;
            }
            let next = self.series.len();
            let i = *self.index.entry(d.name.clone()).or_insert(next);
            if i == next {
                self.series.push(SeriesAcc {
                    data: SeriesData {
                        name: d.name.clone(),
                        unit: d.unit,
                        points: Vec::new(),
                        summary: Summary::default(),
                    },
                    open: None,
                });
            }
            slots.push(Some(i));
        }
        let plan = Arc::new(Plan { schema, slots });
        self.plans.insert(schema_id, plan.clone());
        Ok(plan)
    }

    pub(crate) fn add_raw(&mut self, plan: &Plan, ts: i64, values: &[Option<i64>]) {
        for ((slot, d), v) in plan.slots.iter().zip(plan.schema.iter()).zip(values) {
            if let (Some(i), Some(v)) = (slot, v) {
                let v = scaled(*v as f64, d.scale);
                let s = &mut self.series[*i].data;
                s.points.push((ts, v));
                s.summary.add(1, v, v, v);
            }
        }
    }

    pub(crate) fn add_bucket(&mut self, plan: &Plan, ts: i64, aggs: &[Agg]) {
        for ((slot, d), a) in plan.slots.iter().zip(plan.schema.iter()).zip(aggs) {
            let Some(i) = slot else { continue };
            if a.count == 0 {
                continue;
            }
            let sum = scaled(a.sum as f64, d.scale);
            let (lo, hi) = (scaled(a.min as f64, d.scale), scaled(a.max as f64, d.scale));
            let acc = &mut self.series[*i];
            acc.data.summary.add(a.count, sum, lo.min(hi), lo.max(hi));
            match &mut acc.open {
                Some((t, s, c)) if *t == ts => {
                    *s += sum;
                    *c += a.count;
                }
                open => {
                    if let Some((t, s, c)) = open.take() {
                        acc.data.points.push((t, s / c as f64));
                    }
                    *open = Some((ts, sum, a.count));
                }
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<SeriesData> {
        self.series
            .into_iter()
            .map(|mut acc| {
                if let Some((t, s, c)) = acc.open.take() {
                    acc.data.points.push((t, s / c as f64));
                }
                let mut d = acc.data;
                for p in &mut d.points {
                    p.1 = tidy(p.1);
                }
                let s = &mut d.summary;
                (s.min, s.max, s.sum) = (tidy(s.min), tidy(s.max), tidy(s.sum));
                d
            })
            .collect()
    }
}
