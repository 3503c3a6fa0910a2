//! Host telemetry arriving on a runner's socket: metrics records and
//! fingerprint reports (`docs/protocol.md` 4a).
//!
//! Metrics, per connection ([`MetricsStream`], made on the first schema):
//!
//! ```text
//!  metrics_schema ─▶ check, intern (stored schema id) ─▶ Decoder::set_schema
//!  METRICS frame ─▶ split_batch ─▶ Decoder::decode each record, in order
//!                     ─▶ values re-encoded (one row per sample) ─▶ MetricsWriter queue
//!  MetricsWriter thread: every flush interval, one transaction for everything queued,
//!                        then raises each connection's `stored` mark
//!  connection timer: stored > acked ─▶ metrics_ack{ts_ms}, at most every ack interval
//! ```
//!
//! A bad schema or a record that does not decode is a protocol violation
//! (`error` + close 4004); the records before it in the frame are kept.
//! The writer's queue is bounded (in batches and in bytes): when the database falls behind, the
//! connection tasks wait on it and stop reading their sockets (backpressure
//! to the runners, whose backlogs hold the samples), nothing piles up here.
//!
//! A connection keeps a [`Decoder`] (the schema in force, without the
//! series names, which live in the store, and the previous record's
//! values) and a few counters: about 5 KiB for a 65-series host. Measured
//! with `tether-sim --metrics` (1,000 runners, a distinct 65-series schema
//! each, one record per 5 s): server RSS 38 KiB per runner (21 KiB
//! without metrics), 3 % of a core.
//!
//! Fingerprints: the first report on a connection is full and is diffed
//! against the stored one (so changes made while the runner was offline are
//! caught); later reports carry changes, applied to the stored copy. Every
//! change is kept as a drift event, except boot-time jitter of a few
//! seconds. A change list that does not apply asks the runner for a full
//! report (`fingerprint_resync`).

pub mod api;
pub mod link;
pub mod prometheus;

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct TelemetryCtx {
    pub db: Db,
}

/// Metrics queries, fingerprints and drift, the Prometheus exposition.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    TelemetryCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use axum::routing::get;
    axum::Router::new()
        .route("/api/v1/runners/{id}/metrics", get(api::runner_metrics))
        .route(
            "/api/v1/runners/{id}/metrics/latest",
            get(api::latest_metrics),
        )
        .route("/api/v1/metrics/summary", get(api::metrics_summary))
        .route("/api/v1/runners/{id}/fingerprint", get(api::fingerprint))
        .route("/api/v1/runners/{id}/drift", get(api::drift))
        .route("/api/v1/metrics/prometheus", get(api::prometheus))
}

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether::fingerprint::{apply, diff, Change, Fingerprint};
use tether::metrics::wire::{split_batch, Decoder, Schema, SeriesDef, MAX_SERIES};
use tether::protocol::FingerprintReport;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::db::metrics::{encode_values, SampleRows, MINUTE_MS};
use crate::db::Db;
use crate::db::MetricStore;
use crate::db::{ControlStore, FingerprintWrite, StorageError};

/// Longest series name accepted in a schema.
const MAX_SERIES_NAME: usize = 512;
/// Batches queued for the writer before connections wait.
const WRITER_QUEUE: usize = 4096;
/// Bytes of rows queued for the writer before connections wait. A frame
/// of unchanged delta records is tiny on the wire but expands to a full
/// row per record, so counting batches alone would not bound memory.
const WRITER_QUEUE_BYTES: usize = 64 << 20;
/// What a queued row costs besides its values (ts, vector slot).
const ROW_OVERHEAD: usize = 32;
/// Samples written in one transaction at most; the rest go in the next.
const WRITER_MAX_ROWS: usize = 50_000;
/// How far ahead of the server's clock a sample may be. Further ahead it is
/// not stored: its timestamp would become `welcome.metrics_ts` and make the
/// runner skip real samples after its clock is fixed.
const MAX_CLOCK_AHEAD_MS: i64 = 3_600_000;
/// Samples this close to the raw retention limit are not stored: they would
/// be expired at once, and a minute already rolled up from complete data
/// must not be recomputed from a part of it.
const RETENTION_MARGIN_MS: i64 = 2 * MINUTE_MS;
/// A boot time that moved by at most this much is the kernel's rounding
/// (btime is derived from the clock and the uptime), not a reboot.
const BOOT_TIME_JITTER_SECS: u64 = 5;
/// After the writer's flush, a little slack before the first ack.
const ACK_SLACK: Duration = Duration::from_millis(200);

/// Samples of one connection for the writer, and where to say they are stored.
pub struct QueuedSamples {
    pub rows: SampleRows,
    /// Once written, every record of this connection up to here is handled.
    pub ack_ts: u64,
    pub stored: Arc<AtomicU64>,
    /// Its share of the queue's byte budget, given back once written.
    budget: Option<OwnedSemaphorePermit>,
}

/// The handle connections queue samples with. Cheap to clone.
#[derive(Clone)]
pub struct MetricsWriter {
    tx: mpsc::Sender<QueuedSamples>,
    budget: Arc<Semaphore>,
}

impl MetricsWriter {
    /// Starts the writer task (on the current tokio runtime). It ends when
    /// every handle is dropped, after writing what was queued.
    pub fn start(store: Arc<dyn MetricStore>, every: Duration) -> MetricsWriter {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(write_loop(store, rx, every));
        MetricsWriter {
            tx,
            budget: Arc::new(Semaphore::new(WRITER_QUEUE_BYTES)),
        }
    }

    /// Queue samples; waits while the queue is full (backpressure).
    pub async fn queue(&self, mut samples: QueuedSamples) -> Result<(), StorageError> {
        let closed = || StorageError::Corrupt("the metrics writer is not running".into());
        let bytes: usize = samples
            .rows
            .rows
            .iter()
            .map(|(_, v)| v.len() + ROW_OVERHEAD)
            .sum();
        let permits = u32::try_from(bytes.clamp(1, WRITER_QUEUE_BYTES)).unwrap_or(u32::MAX);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| closed())?;
        samples.budget = Some(permit);
        self.tx.send(samples).await.map_err(|_| closed())
    }
}

/// One transaction per `every` for everything queued.
async fn write_loop(
    store: Arc<dyn MetricStore>,
    mut rx: mpsc::Receiver<QueuedSamples>,
    every: Duration,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        // Let the rest of this interval's samples arrive, then write them all.
        tokio::time::sleep(every).await;
        let mut queued = vec![first];
        let mut rows = queued[0].rows.rows.len();
        while rows < WRITER_MAX_ROWS {
            match rx.try_recv() {
                Ok(q) => {
                    rows += q.rows.rows.len();
                    queued.push(q);
                }
                Err(_) => break,
            }
        }
        let batches: Vec<SampleRows> = queued
            .iter_mut()
            .map(|q| std::mem::take(&mut q.rows))
            .collect();
        match store.insert(batches, crate::common::clock::now_ms()).await {
            Ok(n) => {
                if failing {
                    tracing::info!("storing metrics works again");
                    failing = false;
                }
                tracing::trace!(rows, new = n, "metrics written");
                for q in &queued {
                    q.stored.fetch_max(q.ack_ts, Ordering::AcqRel);
                }
            }
            Err(e) => {
                // Not acknowledged, so the runners keep these samples until
                // a later write succeeds or their backlog drops them.
                if !failing {
                    tracing::error!("storing {rows} metrics samples: {e}");
                    failing = true;
                }
            }
        }
    }
}

/// Why a schema or a frame of records is refused.
#[derive(Debug)]
pub enum MetricsError {
    /// Bad input from the runner: close 4004 with this reason.
    Violation(String),
    Storage(StorageError),
}

/// What a METRICS frame gave.
pub struct FrameOutcome {
    /// Samples to queue (decoded before any error).
    pub queued: Option<QueuedSamples>,
    pub error: Option<MetricsError>,
}

/// One connection's metrics state.
pub struct MetricsStream {
    decoder: Decoder,
    source: Option<i64>,
    /// Stored id of the schema in force.
    schema: Option<i64>,
    stored: Arc<AtomicU64>,
    queued_ts: u64,
    acked_ts: u64,
    last_ack: Option<Instant>,
    /// When to look at `stored` next (an ack may be due).
    pub ack_due: Option<Instant>,
    skipped: u64,
}

impl Default for MetricsStream {
    fn default() -> Self {
        MetricsStream::new()
    }
}

impl MetricsStream {
    pub fn new() -> MetricsStream {
        MetricsStream {
            decoder: Decoder::new(),
            source: None,
            schema: None,
            stored: Arc::new(AtomicU64::new(0)),
            queued_ts: 0,
            acked_ts: 0,
            last_ack: None,
            ack_due: None,
            skipped: 0,
        }
    }

    /// A `metrics_schema` message: check it, store it, decode with it.
    pub async fn set_schema(
        &mut self,
        store: &dyn MetricStore,
        runner_id: &str,
        schema: &Schema,
        now_ms: i64,
    ) -> Result<(), MetricsError> {
        check_schema(schema).map_err(MetricsError::Violation)?;
        if self.source.is_none() {
            self.source = Some(
                store
                    .source(runner_id)
                    .await
                    .map_err(MetricsError::Storage)?,
            );
        }
        let id = store
            .intern_schema(&schema.series, now_ms)
            .await
            .map_err(MetricsError::Storage)?;
        // The names stay in the store; decoding needs only the count.
        let slim = Schema {
            id: schema.id,
            series: schema
                .series
                .iter()
                .map(|d| SeriesDef {
                    name: String::new(),
                    unit: d.unit,
                    scale: d.scale,
                })
                .collect(),
        };
        self.decoder
            .set_schema(slim)
            .map_err(|e| MetricsError::Violation(e.to_string()))?;
        self.schema = Some(id);
        Ok(())
    }

    /// A METRICS frame's payload: decode every record in order. Samples
    /// outside the accepted window (clock far ahead, or older than raw
    /// retention) are counted and logged once, not stored.
    pub fn on_frame(
        &mut self,
        payload: &[u8],
        now_ms: i64,
        raw_retention_ms: i64,
        runner_id: &str,
    ) -> FrameOutcome {
        let mut rows = SampleRows {
            source: self.source.unwrap_or_default(),
            schema: self.schema.unwrap_or_default(),
            rows: Vec::new(),
        };
        let mut ack_ts = self.queued_ts;
        let mut error = None;
        let oldest = now_ms.saturating_sub(raw_retention_ms) + RETENTION_MARGIN_MS;
        let newest = now_ms.saturating_add(MAX_CLOCK_AHEAD_MS);
        for record in split_batch(payload) {
            let decoded = record.and_then(|r| self.decoder.decode(r));
            let sample = match decoded {
                Ok(s) => s,
                Err(e) => {
                    error = Some(MetricsError::Violation(format!("metrics record: {e}")));
                    break;
                }
            };
            let ts = i64::try_from(sample.ts_ms).unwrap_or(i64::MAX);
            if ts > newest {
                self.skip(runner_id, "ahead of the server's clock");
                continue;
            }
            // Handled either way: stored, or too old to keep.
            ack_ts = ack_ts.max(sample.ts_ms);
            if ts < oldest {
                self.skip(runner_id, "older than the raw retention");
                continue;
            }
            let mut vals = Vec::with_capacity(sample.values.len() * 3);
            encode_values(sample.values, &mut vals);
            rows.rows.push((ts, vals));
        }
        let queued = (ack_ts > self.queued_ts || !rows.rows.is_empty()).then(|| {
            self.queued_ts = ack_ts;
            QueuedSamples {
                rows,
                ack_ts,
                stored: self.stored.clone(),
                budget: None,
            }
        });
        FrameOutcome { queued, error }
    }

    fn skip(&mut self, runner_id: &str, why: &str) {
        self.skipped += 1;
        if self.skipped == 1 {
            tracing::warn!(
                runner = runner_id,
                "metrics sample {why}: not stored (logged once per connection)"
            );
        }
    }

    /// Something was queued: plan a look at the stored mark.
    pub fn queued(&mut self, now: Instant, flush: Duration, every: Duration) {
        if self.ack_due.is_none() {
            let earliest = now + flush + ACK_SLACK;
            let due = self
                .last_ack
                .map_or(earliest, |t| (t + every).max(earliest));
            self.ack_due = Some(due);
        }
    }

    /// The ack to send now, if any; plans the next look.
    pub fn take_ack(&mut self, now: Instant, flush: Duration, every: Duration) -> Option<u64> {
        let stored = self.stored.load(Ordering::Acquire);
        let ack = (stored > self.acked_ts).then_some(stored);
        if ack.is_some() {
            self.acked_ts = stored;
            self.last_ack = Some(now);
        }
        self.ack_due = (self.queued_ts > stored).then(|| {
            if ack.is_some() {
                now + every
            } else {
                // The writer has not got to it yet.
                now + flush
            }
        });
        ack
    }
}

fn check_schema(schema: &Schema) -> Result<(), String> {
    if schema.series.len() > MAX_SERIES {
        return Err(format!(
            "metrics schema has {} series, more than {MAX_SERIES}",
            schema.series.len()
        ));
    }
    let mut names = HashSet::with_capacity(schema.series.len());
    for d in &schema.series {
        if d.name.is_empty() || d.name.len() > MAX_SERIES_NAME {
            return Err(format!(
                "metrics schema: series names must be 1 to {MAX_SERIES_NAME} bytes"
            ));
        }
        if !d.scale.is_finite() || d.scale == 0.0 {
            return Err(format!(
                "metrics schema: series {:?} has scale {}",
                d.name, d.scale
            ));
        }
        if !names.insert(d.name.as_str()) {
            return Err(format!("metrics schema: series {:?} twice", d.name));
        }
    }
    Ok(())
}

// ---- fingerprints ---------------------------------------------------------------------

/// What a fingerprint report did.
#[derive(Debug, Clone, PartialEq)]
pub enum FingerprintOutcome {
    /// The first fingerprint of this runner: stored, no drift.
    Baseline,
    /// Stored; this many drift events recorded.
    Updated { drift: Vec<Change> },
    /// A change list that cannot be applied: ask for a full report.
    Resync(String),
}

/// Store a fingerprint report of `runner_id` and record its drift.
pub async fn record_fingerprint(
    storage: &dyn ControlStore,
    runner_id: &str,
    report: &FingerprintReport,
    now_ms: i64,
) -> Result<FingerprintOutcome, StorageError> {
    let at = i64::try_from(report.ts_ms)
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(now_ms);
    // The decision runs inside the store's transaction (off this task), so
    // it owns a copy of the report and leaves its outcome here.
    let report = report.clone();
    let outcome = Arc::new(std::sync::Mutex::new(FingerprintOutcome::Resync(
        "no fingerprint stored yet".into(),
    )));
    let result = outcome.clone();
    storage
        .update_fingerprint(
            runner_id,
            Box::new(move |stored| {
                let mut outcome = result.lock().unwrap_or_else(|e| e.into_inner());
                decide_fingerprint(&report, at, now_ms, stored, &mut outcome)
            }),
        )
        .await?;
    let outcome = outcome.lock().unwrap_or_else(|e| e.into_inner());
    Ok(outcome.clone())
}

/// The new fingerprint and its drift from the stored one (`None`: nothing
/// to write), and what that was.
fn decide_fingerprint(
    report: &FingerprintReport,
    at: i64,
    now_ms: i64,
    stored: Option<&str>,
    outcome: &mut FingerprintOutcome,
) -> Option<FingerprintWrite> {
    // Strings and plain structs always serialize.
    let notes = serde_json::to_string(&report.notes).unwrap_or_else(|_| "[]".into());
    // A stored copy this build cannot read counts as none: the next
    // full report becomes the new baseline.
    let stored: Option<Fingerprint> = stored.and_then(|s| serde_json::from_str(s).ok());
    let (fingerprint, changes): (Fingerprint, Vec<Change>) = match (&report.full, stored) {
        (Some(full), None) => {
            *outcome = FingerprintOutcome::Baseline;
            ((**full).clone(), Vec::new())
        }
        (Some(full), Some(old)) => ((**full).clone(), diff(&old, full)),
        (None, Some(mut copy)) => match apply(&mut copy, &report.changes) {
            Ok(()) => (copy, report.changes.clone()),
            Err(e) => {
                *outcome = FingerprintOutcome::Resync(e.to_string());
                return None;
            }
        },
        (None, None) => return None,
    };
    let kept: Vec<Change> = changes
        .into_iter()
        .filter(|c| !is_boot_time_jitter(c))
        .collect();
    let drift: Vec<(i64, String)> = kept
        .iter()
        .map(|c| (at, serde_json::to_string(c).unwrap_or_default()))
        .collect();
    if *outcome != FingerprintOutcome::Baseline {
        *outcome = FingerprintOutcome::Updated { drift: kept };
    }
    Some(FingerprintWrite {
        body: serde_json::to_string(&fingerprint).unwrap_or_default(),
        notes,
        collected_at: at,
        updated_at: now_ms,
        drift,
    })
}

fn is_boot_time_jitter(c: &Change) -> bool {
    c.path == "boot_time"
        && matches!(
            (c.old.as_u64(), c.new.as_u64()),
            (Some(a), Some(b)) if a.abs_diff(b) <= BOOT_TIME_JITTER_SECS
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_are_checked() {
        let d = |n: &str, scale: f64| SeriesDef {
            name: n.into(),
            unit: tether::metrics::wire::Unit::Count,
            scale,
        };
        let s = |series| Schema { id: 1, series };
        assert!(check_schema(&s(vec![d("a", 1.0), d("b", 0.01)])).is_ok());
        assert!(check_schema(&s(vec![d("a", 1.0), d("a", 1.0)])).is_err());
        assert!(check_schema(&s(vec![d("", 1.0)])).is_err());
        assert!(check_schema(&s(vec![d("a", f64::NAN)])).is_err());
        assert!(check_schema(&s(vec![d("a", 0.0)])).is_err());
        assert!(check_schema(&s(vec![d(&"x".repeat(600), 1.0)])).is_err());
    }

    #[test]
    fn boot_time_jitter_is_not_drift() {
        let c = |old: u64, new: u64| Change {
            path: "boot_time".into(),
            old: json!(old),
            new: json!(new),
            at: None,
        };
        assert!(is_boot_time_jitter(&c(100, 103)));
        assert!(!is_boot_time_jitter(&c(100, 1000)));
        let mut k = c(1, 2);
        k.path = "cpu_count".into();
        assert!(!is_boot_time_jitter(&k));
    }
}
