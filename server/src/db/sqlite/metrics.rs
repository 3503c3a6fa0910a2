//! Host metrics at rest: raw samples, 1-minute and 1-hour rollups, retention,
//! and the range and latest queries the API answers.
//!
//! [`SqliteMetrics`] owns its own SQLite file (`<data-dir>/metrics.db`, WAL),
//! apart from the control-plane database: the bulk of a fleet's telemetry
//! never holds the lock that enrollments and health changes need, and it can
//! be thrown away without losing anything else. Its methods speak in domain
//! terms (insert samples, roll up, expire, query a range) and are the only
//! SQL about metrics, so a PostgreSQL implementation could stand behind them.
//!
//! ```text
//!  writer task (one transaction per second)   ─insert─▶ metrics_raw ──┐ marks (runner, minute) dirty
//!                                                                     ▼
//!  maintain(now), every minute: complete dirty minutes ─rollup─▶ metrics_1m ──┐ marks the hour dirty
//!                               complete dirty hours   ─rollup─▶ metrics_1h ◀─┘
//!                               expire raw > 24 h, 1m > 7 d, 1h > 90 d
//!                               (never the rows of a bucket still to be rolled up)
//! ```
//!
//! Dirty marks make the rollups exact however late a sample comes (a runner
//! drains hours of backlog after a reconnect): a bucket is recomputed from
//! the level below whenever something was added to it.
//!
//! # Layout and size
//!
//! A runner is a small integer (`metric_sources.id`), a series list a stored
//! schema row (`metric_schemas`, shared by every runner with the same
//! series), so a sample is one row keyed by `(source, ts)`:
//!
//! ```text
//! metrics_raw  (src, ts) → schema, vals     vals: per series, in schema order, one LEB128
//!                                           varint: 0 absent, else zigzag(stored integer) + 1
//! metrics_1m   (src, ts, schema) → aggs     aggs: per series: count, then if count > 0
//! metrics_1h   (src, ts, schema) → aggs           zigzag(min), max − min, sum − count·min
//! ```
//!
//! Both are `WITHOUT ROWID` tables clustered on the key, so a range of one
//! runner is one b-tree walk and the key is stored once. Measured
//! (`raw_sample_size_on_disk`: 62 series shaped like a host's, ±5 % noise
//! on two thirds of them every sample, 50 interleaved writers):
//!
//! ```text
//! raw sample   159 bytes of values, 197 bytes on disk (key, header, b-tree slack)
//!              → 3.4 MB per runner per day at one sample per 5 s
//! 1m / 1h row  ~640 bytes (count, min, max, sum per series; a steady
//!              series costs 4 bytes) → 6.5 MB per runner for 7 days of 1m,
//!              1.4 MB for 90 days of 1h
//! ```
//!
//! About 11 MB per runner at the default retentions, 11 GB for 1,000.
//! Rollup costs ~25 µs per minute bucket (release build), so a minute of
//! 1,000 runners is rolled up in ~25 ms.
//!
//! Values stay the runner's fixed-point integers; the schema's scale turns
//! them into units at query time. Sums keep averages exact across rollup
//! levels (the hour is the sum of its minutes, not an average of averages).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use tether::metrics::wire::SeriesDef;

use super::migrate::{migrate, Migration, Step};
use crate::db::metrics::*;
use crate::db::StorageError;

/// A bucket is rolled up once it ended this long ago; later samples re-dirty
/// it, so this only saves recomputing buckets that are still filling.
const MINUTE_GRACE_MS: i64 = 10_000;
const HOUR_GRACE_MS: i64 = 2 * MINUTE_MS;
/// Buckets rolled up per transaction, so the writer is never held up long.
const ROLLUP_CHUNK: usize = 500;
/// Sources expired per transaction.
const EXPIRE_CHUNK: usize = 256;
/// A schema's `last_used` is persisted at most this often.
const SCHEMA_TOUCH_EVERY_MS: i64 = HOUR_MS;

/// metrics.db's schema, in order (`migrate.rs`).
const MIGRATIONS: &[Migration] = &[Migration {
    name: "sources, schemas, raw, rollups",
    step: Step::Sql(
        r#"
CREATE TABLE metric_sources (
    id          INTEGER PRIMARY KEY,
    runner_id   TEXT NOT NULL UNIQUE,
    last_ts     INTEGER
);
CREATE TABLE metric_schemas (
    id          INTEGER PRIMARY KEY,
    hash        BLOB NOT NULL UNIQUE,
    series      TEXT NOT NULL,
    last_used   INTEGER NOT NULL
);
CREATE TABLE metrics_raw (
    src     INTEGER NOT NULL,
    ts      INTEGER NOT NULL,
    schema  INTEGER NOT NULL,
    vals    BLOB NOT NULL,
    PRIMARY KEY (src, ts)
) WITHOUT ROWID;
CREATE TABLE metrics_1m (
    src     INTEGER NOT NULL,
    ts      INTEGER NOT NULL,
    schema  INTEGER NOT NULL,
    aggs    BLOB NOT NULL,
    PRIMARY KEY (src, ts, schema)
) WITHOUT ROWID;
CREATE TABLE metrics_1h (
    src     INTEGER NOT NULL,
    ts      INTEGER NOT NULL,
    schema  INTEGER NOT NULL,
    aggs    BLOB NOT NULL,
    PRIMARY KEY (src, ts, schema)
) WITHOUT ROWID;
CREATE TABLE metrics_dirty (
    level   INTEGER NOT NULL,
    bucket  INTEGER NOT NULL,
    src     INTEGER NOT NULL,
    PRIMARY KEY (level, bucket, src)
) WITHOUT ROWID;
"#,
    ),
}];

impl From<rusqlite::Error> for RangeError {
    fn from(e: rusqlite::Error) -> Self {
        RangeError::Storage(e.into())
    }
}

pub struct SqliteMetrics {
    write: Mutex<Connection>,
    /// A second connection for API queries, so a long range read does not
    /// wait behind the writer (WAL readers do not block it). None in memory.
    read: Option<Mutex<Connection>>,
    retention: Retention,
    /// Lock order: a connection first, then this; never the other way.
    schemas: Mutex<SchemaCache>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // SQLite rolls back a transaction left open by a panic; the caches hold
    // nothing that a half-done update could make wrong.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SqliteMetrics {
    pub fn open(path: &Path, retention: Retention) -> Result<SqliteMetrics, StorageError> {
        let write = Connection::open(path)?;
        write.pragma_update(None, "journal_mode", "WAL")?;
        // Losing the last second of samples to a power cut is fine: they
        // were not acknowledged, so the runners send them again.
        write.pragma_update(None, "synchronous", "NORMAL")?;
        super::steady_plans(&write)?;
        let write = setup(write)?;
        let read = Connection::open(path)?;
        read.busy_timeout(Duration::from_secs(5))?;
        read.pragma_update(None, "query_only", true)?;
        super::steady_plans(&read)?;
        Ok(SqliteMetrics {
            write: Mutex::new(write),
            read: Some(Mutex::new(read)),
            retention,
            schemas: Mutex::default(),
        })
    }

    /// A private in-memory database, for tests.
    #[doc(hidden)] // a test seam: the integration tests' databases
    pub fn open_in_memory(retention: Retention) -> Result<SqliteMetrics, StorageError> {
        Ok(SqliteMetrics {
            write: Mutex::new(setup(Connection::open_in_memory()?)?),
            read: None,
            retention,
            schemas: Mutex::default(),
        })
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    fn write(&self) -> MutexGuard<'_, Connection> {
        lock(&self.write)
    }

    fn read(&self) -> MutexGuard<'_, Connection> {
        self.read.as_ref().map_or_else(|| self.write(), lock)
    }

    // ---- the runner socket's side ---------------------------------------------------

    /// The source id of a runner, made on first use.
    pub fn source(&self, runner_id: &str) -> Result<i64, StorageError> {
        let conn = self.write();
        conn.execute(
            "INSERT OR IGNORE INTO metric_sources (runner_id) VALUES (?1)",
            [runner_id],
        )?;
        Ok(conn.query_row(
            "SELECT id FROM metric_sources WHERE runner_id = ?1",
            [runner_id],
            |r| r.get(0),
        )?)
    }

    /// Timestamp of the newest sample ever stored for a runner (the
    /// `welcome.metrics_ts` it resumes after).
    pub fn last_ts(&self, runner_id: &str) -> Result<Option<i64>, StorageError> {
        Ok(self
            .read()
            .prepare_cached("SELECT last_ts FROM metric_sources WHERE runner_id = ?1")?
            .query_row([runner_id], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten())
    }

    /// The stored id of a series list, stored on first sight. Equal lists
    /// (same names, units and scales, in order) share one id across runners.
    pub fn intern_schema(&self, series: &[SeriesDef], now: i64) -> Result<i64, StorageError> {
        // Serializing names, enum tags and finite floats cannot fail.
        let json = serde_json::to_string(series).unwrap_or_default();
        let hash = Sha256::digest(json.as_bytes())[..].to_vec();
        if let Some(id) = lock(&self.schemas).by_hash.get(&hash) {
            return Ok(*id);
        }
        let id = {
            let conn = self.write();
            conn.execute(
                "INSERT INTO metric_schemas (hash, series, last_used) VALUES (?1, ?2, ?3)
                 ON CONFLICT (hash) DO UPDATE SET last_used = MAX(last_used, excluded.last_used)",
                params![hash, json, now],
            )?;
            let id: i64 = conn.query_row(
                "SELECT id FROM metric_schemas WHERE hash = ?1",
                [&hash],
                |r| r.get(0),
            )?;
            let mut cache = lock(&self.schemas);
            cache.make_room();
            cache.by_hash.insert(hash, id);
            cache.by_id.insert(id, series.to_vec().into());
            cache.touched.insert(id, now);
            id
        };
        Ok(id)
    }

    /// Stores samples in one transaction. A sample whose (runner, ts) is
    /// already stored is left as it is, so a resent record never doubles a
    /// point. Returns how many rows were new.
    pub fn insert(&self, batches: &[SampleRows], now: i64) -> Result<usize, StorageError> {
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0;
        {
            let mut add = tx.prepare_cached(
                "INSERT OR IGNORE INTO metrics_raw (src, ts, schema, vals) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut dirty = tx.prepare_cached(
                "INSERT OR IGNORE INTO metrics_dirty (level, bucket, src) VALUES (0, ?1, ?2)",
            )?;
            let mut newest = tx.prepare_cached(
                "UPDATE metric_sources SET last_ts = MAX(COALESCE(last_ts, ?2), ?2) WHERE id = ?1",
            )?;
            let mut marked = HashSet::new();
            let mut schemas = HashSet::new();
            for b in batches {
                let mut max_ts = None;
                for (ts, vals) in &b.rows {
                    if add.execute(params![b.source, ts, b.schema, vals])? == 1 {
                        inserted += 1;
                        let minute = floor(*ts, MINUTE_MS);
                        if marked.insert((b.source, minute)) {
                            dirty.execute(params![minute, b.source])?;
                        }
                    }
                    max_ts = max_ts.max(Some(*ts));
                }
                if let Some(ts) = max_ts {
                    newest.execute(params![b.source, ts])?;
                    schemas.insert(b.schema);
                }
            }
            // Keep each schema's last_used roughly current (hourly), so the
            // schema collector never takes one that rows still use.
            let stale: Vec<i64> = {
                let cache = lock(&self.schemas);
                schemas
                    .into_iter()
                    .filter(|id| {
                        cache
                            .touched
                            .get(id)
                            .is_none_or(|t| now - t >= SCHEMA_TOUCH_EVERY_MS)
                    })
                    .collect()
            };
            if !stale.is_empty() {
                let mut touch = tx.prepare_cached(
                    "UPDATE metric_schemas SET last_used = MAX(last_used, ?2) WHERE id = ?1",
                )?;
                for id in &stale {
                    touch.execute(params![id, now])?;
                }
                let mut cache = lock(&self.schemas);
                cache.make_room();
                for id in stale {
                    cache.touched.insert(id, now);
                }
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    // ---- maintenance -----------------------------------------------------------------

    /// One pass of the background task: roll up, then expire.
    pub fn maintain(&self, now: i64) -> Result<MaintainStats, StorageError> {
        let mut stats = MaintainStats::default();
        self.rollup(now, &mut stats)?;
        self.expire(now, &mut stats)?;
        Ok(stats)
    }

    /// Recompute every complete bucket that got new data: minutes from raw
    /// samples, then hours from minutes.
    pub fn rollup(&self, now: i64, stats: &mut MaintainStats) -> Result<(), StorageError> {
        stats.minutes_rolled += self.rollup_level(&MINUTES, now)?;
        stats.hours_rolled += self.rollup_level(&HOURS, now)?;
        Ok(())
    }

    fn rollup_level(&self, level: &Level, now: i64) -> Result<usize, StorageError> {
        let mut done = 0;
        loop {
            let mut conn = self.write();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let buckets: Vec<(i64, i64)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT src, bucket FROM metrics_dirty WHERE level = ?1 AND bucket <= ?2
                     ORDER BY bucket LIMIT ?3",
                )?;
                let rows = stmt.query_map(
                    params![
                        level.level,
                        now - level.width - level.grace,
                        ROLLUP_CHUNK as i64
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                rows.collect::<Result<_, _>>()?
            };
            for &(src, bucket) in &buckets {
                match rollup_bucket(&tx, level, src, bucket) {
                    Ok(()) => {}
                    // A row this build cannot read must not stop every
                    // rollup after it: skip the bucket (its rows stay for
                    // raw queries until they expire).
                    Err(StorageError::Corrupt(why)) => {
                        tracing::warn!(src, bucket, "metrics rollup skipped: {why}");
                        tx.prepare_cached(
                            "DELETE FROM metrics_dirty WHERE level = ?1 AND bucket = ?2 AND src = ?3",
                        )?
                        .execute(params![level.level, bucket, src])?;
                    }
                    Err(e) => return Err(e),
                }
            }
            tx.commit()?;
            done += buckets.len();
            if buckets.len() < ROLLUP_CHUNK {
                return Ok(done);
            }
        }
    }

    /// Delete what is past its retention; never the rows of a bucket that
    /// is still to be rolled up.
    pub fn expire(&self, now: i64, stats: &mut MaintainStats) -> Result<(), StorageError> {
        let r = self.retention;
        let raw_cut = floor(now.saturating_sub(r.raw_ms), MINUTE_MS);
        let minute_cut = floor(now.saturating_sub(r.minute_ms), MINUTE_MS);
        let hour_cut = now.saturating_sub(r.hour_ms);
        let sources: Vec<i64> = {
            let conn = self.write();
            let mut stmt = conn.prepare_cached("SELECT id FROM metric_sources")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for chunk in sources.chunks(EXPIRE_CHUNK) {
            let mut conn = self.write();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut raw = tx.prepare_cached(
                    "DELETE FROM metrics_raw WHERE src = ?1 AND ts < ?2 AND NOT EXISTS (
                         SELECT 1 FROM metrics_dirty d WHERE d.level = 0
                         AND d.bucket = metrics_raw.ts - metrics_raw.ts % 60000 AND d.src = ?1)",
                )?;
                let mut minute = tx.prepare_cached(
                    "DELETE FROM metrics_1m WHERE src = ?1 AND ts < ?2 AND NOT EXISTS (
                         SELECT 1 FROM metrics_dirty d WHERE d.level = 1
                         AND d.bucket = metrics_1m.ts - metrics_1m.ts % 3600000 AND d.src = ?1)",
                )?;
                let mut hour =
                    tx.prepare_cached("DELETE FROM metrics_1h WHERE src = ?1 AND ts < ?2")?;
                for src in chunk {
                    stats.raw_deleted += raw.execute(params![src, raw_cut])?;
                    stats.minute_deleted += minute.execute(params![src, minute_cut])?;
                    stats.hour_deleted += hour.execute(params![src, hour_cut])?;
                }
            }
            tx.commit()?;
        }
        // A schema no row can use any more: every row written with it is
        // past the longest retention.
        let cut = now.saturating_sub(r.longest()).saturating_sub(DAY_MS);
        let deleted = self
            .write()
            .execute("DELETE FROM metric_schemas WHERE last_used < ?1", [cut])?;
        if deleted > 0 {
            let mut cache = lock(&self.schemas);
            cache.by_hash.clear();
            cache.by_id.clear();
            cache.touched.clear();
        }
        stats.schemas_deleted += deleted;
        Ok(())
    }

    // ---- queries ---------------------------------------------------------------------

    /// The series of a runner between `from` and `to` (inclusive) at one
    /// resolution. Refuses to read more than `max_rows` stored rows.
    pub fn range(
        &self,
        runner_id: &str,
        from: i64,
        to: i64,
        resolution: Resolution,
        filter: &SeriesFilter,
        max_rows: usize,
    ) -> Result<Vec<SeriesData>, RangeError> {
        let conn = self.read();
        let Some(src) = source_of(&conn, runner_id)? else {
            return Ok(Vec::new());
        };
        let sql = match resolution {
            Resolution::Raw => {
                "SELECT ts, schema, vals FROM metrics_raw
                 WHERE src = ?1 AND ts >= ?2 AND ts <= ?3 ORDER BY ts LIMIT ?4"
            }
            Resolution::Minute => {
                "SELECT ts, schema, aggs FROM metrics_1m
                 WHERE src = ?1 AND ts >= ?2 AND ts <= ?3 ORDER BY ts, schema LIMIT ?4"
            }
            Resolution::Hour => {
                "SELECT ts, schema, aggs FROM metrics_1h
                 WHERE src = ?1 AND ts >= ?2 AND ts <= ?3 ORDER BY ts, schema LIMIT ?4"
            }
        };
        // A bucket that starts before `from` but reaches into the range counts.
        let first = floor(from, resolution.bucket_ms());
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params![
            src,
            first,
            to,
            i64::try_from(max_rows)
                .unwrap_or(i64::MAX)
                .saturating_add(1)
        ])?;
        let mut out = RangeBuilder::new(filter);
        let mut n = 0;
        let mut values = Vec::new();
        let mut aggs = Vec::new();
        while let Some(row) = rows.next()? {
            n += 1;
            if n > max_rows {
                return Err(RangeError::TooManyRows(max_rows));
            }
            let ts: i64 = row.get(0)?;
            let schema_id: i64 = row.get(1)?;
            let blob = row.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
            let plan = out.plan(schema_id, || self.schema(&conn, schema_id))?;
            if resolution == Resolution::Raw {
                decode_values(blob, &mut values)?;
                out.add_raw(&plan, ts, &values);
            } else {
                decode_aggs(blob, &mut aggs)?;
                out.add_bucket(&plan, ts, &aggs);
            }
        }
        Ok(out.finish())
    }

    /// The newest stored sample of each runner that has one, by index into
    /// `runner_ids`.
    pub fn latest(&self, runner_ids: &[&str]) -> Result<Vec<(usize, LatestSample)>, StorageError> {
        let conn = self.read();
        let mut out = Vec::new();
        let mut stmt = conn.prepare_cached(
            "SELECT r.ts, r.schema, r.vals FROM metric_sources s JOIN metrics_raw r ON r.src = s.id
             WHERE s.runner_id = ?1 ORDER BY r.ts DESC LIMIT 1",
        )?;
        let mut values = Vec::new();
        for (i, id) in runner_ids.iter().enumerate() {
            let row = stmt
                .query_row([id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()?;
            let Some((ts, schema_id, blob)) = row else {
                continue;
            };
            let schema = self.schema(&conn, schema_id)?;
            decode_values(&blob, &mut values)?;
            let values = schema
                .iter()
                .zip(values.iter().chain(std::iter::repeat(&None)))
                .map(|(d, v)| v.map(|v| scaled(v as f64, d.scale)))
                .collect();
            out.push((i, LatestSample { ts, schema, values }));
        }
        Ok(out)
    }

    /// A stored schema by id, through the cache.
    fn schema(&self, conn: &Connection, id: i64) -> Result<Arc<[SeriesDef]>, StorageError> {
        if let Some(s) = lock(&self.schemas).by_id.get(&id) {
            return Ok(s.clone());
        }
        let json: String = conn
            .query_row(
                "SELECT series FROM metric_schemas WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StorageError::Corrupt(format!("metrics schema {id} is missing")))?;
        let series: Vec<SeriesDef> = serde_json::from_str(&json)
            .map_err(|e| StorageError::Corrupt(format!("metrics schema {id}: {e}")))?;
        let series: Arc<[SeriesDef]> = series.into();
        let mut cache = lock(&self.schemas);
        cache.make_room();
        cache.by_id.insert(id, series.clone());
        Ok(series)
    }

    /// Row counts per table, for tests and the size benchmark.
    #[doc(hidden)] // a test seam: rows in one table
    pub fn count(&self, table: &str) -> i64 {
        self.read()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }
}

fn setup(mut conn: Connection) -> Result<Connection, StorageError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    migrate(&mut conn, "metrics.db", MIGRATIONS)?;
    Ok(conn)
}

fn source_of(conn: &Connection, runner_id: &str) -> Result<Option<i64>, StorageError> {
    Ok(conn
        .query_row(
            "SELECT id FROM metric_sources WHERE runner_id = ?1",
            [runner_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// A rollup level: where its rows come from and go.
struct Level {
    level: i64,
    width: i64,
    grace: i64,
    select: &'static str,
    from_raw: bool,
    delete: &'static str,
    insert: &'static str,
    /// Width of the level above, whose bucket this one dirties.
    parent: Option<i64>,
}

const MINUTES: Level = Level {
    level: 0,
    width: MINUTE_MS,
    grace: MINUTE_GRACE_MS,
    select: "SELECT schema, vals FROM metrics_raw WHERE src = ?1 AND ts >= ?2 AND ts < ?3",
    from_raw: true,
    delete: "DELETE FROM metrics_1m WHERE src = ?1 AND ts = ?2",
    insert: "INSERT INTO metrics_1m (src, ts, schema, aggs) VALUES (?1, ?2, ?3, ?4)",
    parent: Some(HOUR_MS),
};

const HOURS: Level = Level {
    level: 1,
    width: HOUR_MS,
    grace: HOUR_GRACE_MS,
    select: "SELECT schema, aggs FROM metrics_1m WHERE src = ?1 AND ts >= ?2 AND ts < ?3",
    from_raw: false,
    delete: "DELETE FROM metrics_1h WHERE src = ?1 AND ts = ?2",
    insert: "INSERT INTO metrics_1h (src, ts, schema, aggs) VALUES (?1, ?2, ?3, ?4)",
    parent: None,
};

fn rollup_bucket(
    tx: &rusqlite::Transaction<'_>,
    level: &Level,
    src: i64,
    bucket: i64,
) -> Result<(), StorageError> {
    let mut fold = BucketFold::default();
    {
        let mut stmt = tx.prepare_cached(level.select)?;
        let mut rows = stmt.query(params![src, bucket, bucket + level.width])?;
        while let Some(row) = rows.next()? {
            let schema: i64 = row.get(0)?;
            let blob = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            fold.add(schema, blob, level.from_raw)?;
        }
    }
    let groups = fold.groups;
    // Nothing below (should not happen: rows of dirty buckets are kept):
    // leave what was rolled up before.
    if !groups.is_empty() {
        tx.prepare_cached(level.delete)?
            .execute(params![src, bucket])?;
        let mut insert = tx.prepare_cached(level.insert)?;
        let mut blob = Vec::new();
        for (schema, aggs) in &groups {
            blob.clear();
            encode_aggs(aggs, &mut blob);
            insert.execute(params![src, bucket, schema, blob])?;
        }
        if let Some(parent) = level.parent {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO metrics_dirty (level, bucket, src) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![level.level + 1, floor(bucket, parent), src])?;
        }
    }
    tx.prepare_cached("DELETE FROM metrics_dirty WHERE level = ?1 AND bucket = ?2 AND src = ?3")?
        .execute(params![level.level, bucket, src])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether::metrics::wire::Unit;

    fn def(name: &str, unit: Unit, scale: f64) -> SeriesDef {
        SeriesDef {
            name: name.into(),
            unit,
            scale,
        }
    }

    fn rows(store: &SqliteMetrics, src: i64, schema: i64, samples: &[(i64, Vec<Option<i64>>)]) {
        let rows = samples
            .iter()
            .map(|(ts, v)| {
                let mut b = Vec::new();
                encode_values(v, &mut b);
                (*ts, b)
            })
            .collect();
        store
            .insert(
                &[SampleRows {
                    source: src,
                    schema,
                    rows,
                }],
                samples.iter().map(|s| s.0).max().unwrap_or(0),
            )
            .unwrap();
    }

    #[test]
    fn codecs_round_trip() {
        let vals = [
            Some(0),
            None,
            Some(-1),
            Some(tether::metrics::wire::MAX_VALUE),
            Some(-tether::metrics::wire::MAX_VALUE),
            Some(12345),
        ];
        let mut b = Vec::new();
        encode_values(&vals, &mut b);
        let mut back = Vec::new();
        decode_values(&b, &mut back).unwrap();
        assert_eq!(back, vals);
        for cut in 0..b.len() {
            // A cut blob either fails or decodes fewer values, never panics.
            let _ = decode_values(&b[..cut], &mut back);
        }

        let m = tether::metrics::wire::MAX_VALUE;
        let aggs = [
            Agg::default(),
            Agg {
                count: 3,
                sum: 6,
                min: 1,
                max: 3,
            },
            Agg {
                count: 36_000,
                sum: i128::from(m) * 36_000,
                min: -m,
                max: m,
            },
        ];
        let mut b = Vec::new();
        encode_aggs(&aggs, &mut b);
        let mut back = Vec::new();
        decode_aggs(&b, &mut back).unwrap();
        assert_eq!(back, aggs);
        // A steady series costs four bytes.
        let mut b = Vec::new();
        encode_aggs(
            &[Agg {
                count: 12,
                sum: 12 * 50,
                min: 50,
                max: 50,
            }],
            &mut b,
        );
        assert_eq!(b.len(), 4);
        assert!(decode_aggs(&[0x80], &mut back).is_err());
    }

    #[test]
    fn filters() {
        let f = SeriesFilter::parse("cpu.busy, net.*,,").unwrap();
        assert!(f.matches("cpu.busy") && f.matches("net.eth0.rx_bps"));
        assert!(!f.matches("cpu.iowait") && !f.matches("cpu0.busy"));
        assert!(SeriesFilter::parse("").unwrap().is_all());
        assert!(SeriesFilter::parse("n*t").is_err());
        assert!(SeriesFilter::parse("*").unwrap().matches("anything"));
    }

    #[test]
    fn scaling_has_no_float_noise() {
        assert_eq!(scaled(1234.0, 0.01).to_string(), "12.34");
        assert_eq!(scaled(3.0, 1024.0), 3072.0);
        assert_eq!(scaled(7.0, 0.3), 7.0 * 0.3);
    }

    #[test]
    fn duplicates_are_ignored_and_last_ts_kept() {
        let s = SqliteMetrics::open_in_memory(Retention::default()).unwrap();
        let src = s.source("rn_1").unwrap();
        assert_eq!(s.source("rn_1").unwrap(), src);
        assert_eq!(s.last_ts("rn_1").unwrap(), None);
        let schema = s.intern_schema(&[def("a", Unit::Count, 1.0)], 0).unwrap();
        rows(
            &s,
            src,
            schema,
            &[(1000, vec![Some(1)]), (2000, vec![Some(2)])],
        );
        rows(
            &s,
            src,
            schema,
            &[(2000, vec![Some(99)]), (1000, vec![Some(98)])],
        );
        assert_eq!(s.count("metrics_raw"), 2);
        assert_eq!(s.last_ts("rn_1").unwrap(), Some(2000));
        let got = s
            .range(
                "rn_1",
                0,
                10_000,
                Resolution::Raw,
                &SeriesFilter::default(),
                100,
            )
            .unwrap();
        assert_eq!(got[0].points, vec![(1000, 1.0), (2000, 2.0)]);
        // The same series list is one schema row, whoever sends it.
        assert_eq!(
            s.intern_schema(&[def("a", Unit::Count, 1.0)], 5).unwrap(),
            schema
        );
        assert_ne!(
            s.intern_schema(&[def("a", Unit::Count, 2.0)], 5).unwrap(),
            schema
        );
    }

    #[test]
    fn rollups_are_exact_and_late_samples_redo_them() {
        let s = SqliteMetrics::open_in_memory(Retention::default()).unwrap();
        let src = s.source("rn_1").unwrap();
        let schema = s
            .intern_schema(
                &[
                    def("cpu.busy", Unit::Percent, 0.01),
                    def("x", Unit::Count, 1.0),
                ],
                0,
            )
            .unwrap();
        let t0 = 1_000_000_800_000; // 2001-09-09T02:00:00Z, an hour boundary
        assert_eq!(t0 % HOUR_MS, 0);
        // Two hours of 5 s samples: cpu = minute index × 100 (1.00 %, 2.00 % …)
        // in the first hour plus 0..11 within the minute; x absent every other.
        let mut samples = Vec::new();
        for i in 0..(2 * 720) {
            let ts = t0 + i * 5000;
            let minute = i / 12;
            let v = minute * 100 + i % 12;
            samples.push((ts, vec![Some(v), (i % 2 == 0).then_some(7)]));
        }
        rows(&s, src, schema, &samples);
        let mut st = MaintainStats::default();
        s.rollup(t0 + 2 * HOUR_MS + 5 * MINUTE_MS, &mut st).unwrap();
        assert_eq!((st.minutes_rolled, st.hours_rolled), (120, 2));
        assert_eq!(s.count("metrics_dirty"), 0);

        let all = SeriesFilter::default();
        let m = s
            .range("rn_1", t0, t0 + 2 * HOUR_MS, Resolution::Minute, &all, 1000)
            .unwrap();
        assert_eq!(m[0].name, "cpu.busy");
        assert_eq!(m[0].points.len(), 120);
        // Minute k: values k·100 + 0..11, average k·100 + 5.5, in hundredths.
        assert_eq!(m[0].points[0], (t0, 0.055));
        assert_eq!(m[0].points[3], (t0 + 3 * MINUTE_MS, 3.055));
        assert_eq!(m[1].points[0], (t0, 7.0));
        assert_eq!(m[0].summary.min, 0.0);
        assert_eq!(m[0].summary.max, 119.11);
        assert_eq!(m[0].summary.count, 1440);

        let h = s
            .range("rn_1", t0, t0 + 2 * HOUR_MS, Resolution::Hour, &all, 1000)
            .unwrap();
        // Hour 0: minutes 0..59 → mean of k·100 + 5.5 = 2955.5 hundredths.
        assert_eq!(h[0].points, vec![(t0, 29.555), (t0 + HOUR_MS, 89.555)]);
        assert_eq!(h[1].summary.count, 720);
        let raw_avg = samples.iter().map(|(_, v)| v[0].unwrap()).sum::<i64>() as f64 / 1440.0;
        assert!((h[0].summary.avg() - raw_avg / 100.0).abs() < 1e-9);

        // A late sample in minute 0 of hour 0 (ts + 1 ms: a new point) redoes
        // that minute and that hour, nothing else.
        rows(&s, src, schema, &[(t0 + 1, vec![Some(10_000), None])]);
        let mut st = MaintainStats::default();
        s.rollup(t0 + 3 * HOUR_MS, &mut st).unwrap();
        assert_eq!((st.minutes_rolled, st.hours_rolled), (1, 1));
        let m = s
            .range("rn_1", t0, t0, Resolution::Minute, &all, 1000)
            .unwrap();
        assert_eq!(
            m[0].points,
            vec![(t0, tidy((66.0 + 10_000.0) / 13.0 / 100.0))]
        );

        // Incomplete buckets wait.
        let t1 = t0 + 10 * HOUR_MS;
        rows(&s, src, schema, &[(t1, vec![Some(1), None])]);
        let mut st = MaintainStats::default();
        s.rollup(t1 + MINUTE_MS, &mut st).unwrap();
        assert_eq!(st.minutes_rolled, 0);
        s.rollup(t1 + MINUTE_MS + MINUTE_GRACE_MS, &mut st).unwrap();
        assert_eq!((st.minutes_rolled, st.hours_rolled), (1, 0));
    }

    #[test]
    fn a_schema_change_inside_a_bucket_merges_by_name() {
        let s = SqliteMetrics::open_in_memory(Retention::default()).unwrap();
        let src = s.source("rn_1").unwrap();
        let a = s.intern_schema(&[def("x", Unit::Count, 1.0)], 0).unwrap();
        let b = s
            .intern_schema(&[def("y", Unit::Count, 1.0), def("x", Unit::Count, 1.0)], 0)
            .unwrap();
        rows(&s, src, a, &[(0, vec![Some(1)]), (5000, vec![Some(3)])]);
        rows(&s, src, b, &[(10_000, vec![Some(9), Some(8)])]);
        s.rollup(HOUR_MS * 2, &mut MaintainStats::default())
            .unwrap();
        let all = SeriesFilter::default();
        for res in [Resolution::Minute, Resolution::Hour] {
            let got = s.range("rn_1", 0, HOUR_MS, res, &all, 100).unwrap();
            let names: Vec<&str> = got.iter().map(|d| d.name.as_str()).collect();
            assert_eq!(names, ["x", "y"]);
            assert_eq!(got[0].points, vec![(0, 4.0)], "{res:?}");
            assert_eq!(got[1].points, vec![(0, 9.0)]);
        }
    }

    #[test]
    fn retention_deletes_old_rows_but_not_unrolled_ones() {
        let retention = Retention {
            raw_ms: HOUR_MS,
            minute_ms: 2 * HOUR_MS,
            hour_ms: 3 * HOUR_MS,
        };
        let s = SqliteMetrics::open_in_memory(retention).unwrap();
        let src = s.source("rn_1").unwrap();
        let t0 = 100 * DAY_MS;
        let schema = s.intern_schema(&[def("x", Unit::Count, 1.0)], t0).unwrap();
        let samples: Vec<_> = (0..(4 * 60))
            .map(|i| (t0 + i * MINUTE_MS, vec![Some(i)]))
            .collect();
        rows(&s, src, schema, &samples);
        let now = t0 + 4 * HOUR_MS + 5 * MINUTE_MS;
        // Expiring before rolling up keeps the rows of dirty buckets.
        let mut st = MaintainStats::default();
        s.expire(now, &mut st).unwrap();
        assert_eq!(st.raw_deleted, 0);
        let st = s.maintain(now).unwrap();
        assert_eq!((st.minutes_rolled, st.hours_rolled), (240, 4));
        // raw: the last hour (minutes 185..239) ; 1m: the last 2 h (125..239);
        // 1h: hours starting in the last 3 h (2 and 3).
        assert_eq!(st.raw_deleted, 185);
        assert_eq!(s.count("metrics_raw"), 55);
        assert_eq!(s.count("metrics_1m"), 115);
        assert_eq!(s.count("metrics_1h"), 2);
        // Much later everything is gone, and the schema with it.
        let st = s.maintain(now + 10 * DAY_MS).unwrap();
        assert_eq!(st.schemas_deleted, 1);
        for t in ["metrics_raw", "metrics_1m", "metrics_1h", "metric_schemas"] {
            assert_eq!(s.count(t), 0, "{t}");
        }
        // last_ts survives: the runner does not resend what was stored.
        assert_eq!(s.last_ts("rn_1").unwrap(), Some(t0 + 239 * MINUTE_MS));
    }

    #[test]
    fn range_limits_and_latest() {
        let s = SqliteMetrics::open_in_memory(Retention::default()).unwrap();
        let src = s.source("rn_1").unwrap();
        let schema = s
            .intern_schema(
                &[
                    def("cpu.busy", Unit::Percent, 0.01),
                    def("mem.used", Unit::Bytes, 1024.0),
                ],
                0,
            )
            .unwrap();
        let samples: Vec<_> = (0..10)
            .map(|i| (i * 5000, vec![Some(i * 100), (i < 9).then_some(2)]))
            .collect();
        rows(&s, src, schema, &samples);
        let all = SeriesFilter::default();
        assert!(matches!(
            s.range("rn_1", 0, 50_000, Resolution::Raw, &all, 9),
            Err(RangeError::TooManyRows(9))
        ));
        let got = s
            .range("rn_1", 10_000, 20_000, Resolution::Raw, &all, 10)
            .unwrap();
        assert_eq!(
            got[0].points,
            vec![(10_000, 2.0), (15_000, 3.0), (20_000, 4.0)]
        );
        assert_eq!(got[1].points[0], (10_000, 2048.0));
        let only = SeriesFilter::parse("mem.*").unwrap();
        let got = s
            .range("rn_1", 0, 50_000, Resolution::Raw, &only, 10)
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].summary.count, 9);
        assert!(s
            .range("rn_other", 0, 1, Resolution::Raw, &all, 10)
            .unwrap()
            .is_empty());

        let latest = s.latest(&["rn_none", "rn_1"]).unwrap();
        assert_eq!(latest.len(), 1);
        let (i, l) = &latest[0];
        assert_eq!((*i, l.ts), (1, 45_000));
        let vals: Vec<_> = l.series().map(|(d, v)| (d.name.as_str(), v)).collect();
        assert_eq!(vals, [("cpu.busy", Some(9.0)), ("mem.used", None)]);
    }

    /// Bytes per stored raw sample of a realistic host, on disk. Run with
    /// `cargo test -p tether-server raw_sample_size -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn raw_sample_size_on_disk() {
        let dir = std::env::temp_dir().join(format!("tether-metrics-size-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = SqliteMetrics::open(&dir.join("m.db"), Retention::default()).unwrap();
        let (defs, base) = realistic_host();
        let mut state = base.clone();
        let schema = s.intern_schema(&defs, 0).unwrap();
        let runners = 50;
        let sources: Vec<i64> = (0..runners)
            .map(|i| s.source(&format!("rn_{i}")).unwrap())
            .collect();
        let samples: i64 = 2 * 720; // two hours at 5 s
        let mut rng = 0x2545F4914F6CDD1Du64;
        let mut value_bytes = 0usize;
        for k in 0..samples {
            let mut batch = Vec::new();
            for &src in &sources {
                step(&base, &mut state, &mut rng);
                let mut b = Vec::new();
                encode_values(&state, &mut b);
                value_bytes += b.len();
                batch.push(SampleRows {
                    source: src,
                    schema,
                    rows: vec![(1_700_000_000_000 + k * 5000, b)],
                });
            }
            s.insert(&batch, 0).unwrap();
        }
        let used = |s: &SqliteMetrics| -> i64 {
            let c = s.write();
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
            let free: i64 = c
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                .unwrap();
            (pages - free) * 4096
        };
        let n = (runners * samples) as f64;
        let raw_bytes = used(&s);
        let started = std::time::Instant::now();
        let st = s.maintain(1_700_000_000_000 + 3 * HOUR_MS).unwrap();
        let took = started.elapsed();
        let rolled_bytes = used(&s) - raw_bytes;
        println!(
            "{} series: {:.0} value bytes per sample, {:.0} bytes per raw sample on disk; \
             {} 1m + {} 1h rows in {took:?}: about {:.0} bytes per rollup row",
            defs.len(),
            value_bytes as f64 / n,
            raw_bytes as f64 / n,
            st.minutes_rolled,
            st.hours_rolled,
            rolled_bytes as f64 / (st.minutes_rolled + st.hours_rolled).max(1) as f64
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 65 series shaped like the runner's: percentages in hundredths, sizes
    /// in KiB, byte and packet rates, counts.
    fn realistic_host() -> (Vec<SeriesDef>, Vec<Option<i64>>) {
        let mut defs = vec![def("uptime", Unit::Seconds, 1.0)];
        let mut vals = vec![Some(3_000_000)];
        for cpu in ["cpu", "cpu0", "cpu1", "cpu2", "cpu3"] {
            for (m, v) in [("busy", 1500), ("iowait", 20), ("steal", 0)] {
                defs.push(def(&format!("{cpu}.{m}"), Unit::Percent, 0.01));
                vals.push(Some(v));
            }
        }
        for (m, v) in [("1", 45), ("5", 60), ("15", 70)] {
            defs.push(def(&format!("load.{m}"), Unit::Load, 0.01));
            vals.push(Some(v));
        }
        for (m, v) in [("tasks", 310), ("running", 2), ("blocked", 0)] {
            defs.push(def(&format!("proc.{m}"), Unit::Count, 1.0));
            vals.push(Some(v));
        }
        defs.push(def("proc.forks", Unit::PerSecond, 0.01));
        vals.push(Some(350));
        for (m, v) in [
            ("mem.total", 16_000_000),
            ("mem.available", 9_000_000),
            ("mem.used", 6_000_000),
            ("mem.cache", 4_000_000),
            ("swap.total", 2_000_000),
            ("swap.used", 10_000),
        ] {
            defs.push(def(m, Unit::Bytes, 1024.0));
            vals.push(Some(v));
        }
        for fs in ["/", "/boot"] {
            for (m, v) in [
                ("size", 100_000_000),
                ("used", 40_000_000),
                ("avail", 60_000_000),
            ] {
                defs.push(def(&format!("fs.{fs}.{m}"), Unit::Bytes, 1024.0));
                vals.push(Some(v));
            }
            for (m, v) in [("inodes", 6_000_000), ("inodes_used", 400_000)] {
                defs.push(def(&format!("fs.{fs}.{m}"), Unit::Count, 1.0));
                vals.push(Some(v));
            }
        }
        for (m, u, s, v) in [
            ("read_bps", Unit::BytesPerSecond, 1.0, 20_000),
            ("write_bps", Unit::BytesPerSecond, 1.0, 150_000),
            ("read_ops", Unit::PerSecond, 0.01, 300),
            ("write_ops", Unit::PerSecond, 0.01, 2500),
        ] {
            defs.push(def(&format!("disk.sda.{m}"), u, s));
            vals.push(Some(v));
        }
        for (m, u, s, v) in [
            ("rx_bps", Unit::BytesPerSecond, 1.0, 50_000),
            ("tx_bps", Unit::BytesPerSecond, 1.0, 30_000),
            ("rx_pps", Unit::PerSecond, 0.01, 9000),
            ("tx_pps", Unit::PerSecond, 0.01, 7000),
            ("rx_errs", Unit::PerSecond, 0.01, 0),
            ("tx_errs", Unit::PerSecond, 0.01, 0),
            ("rx_drop", Unit::PerSecond, 0.01, 0),
            ("tx_drop", Unit::PerSecond, 0.01, 0),
        ] {
            defs.push(def(&format!("net.eth0.{m}"), u, s));
            vals.push(Some(v));
        }
        for fam in ["ip4", "ip6"] {
            for (m, u, v) in [
                ("in_bytes", Unit::Bytes, 80_000_000_000i64),
                ("out_bytes", Unit::Bytes, 50_000_000_000),
                ("in_bps", Unit::BytesPerSecond, 45_000),
                ("out_bps", Unit::BytesPerSecond, 28_000),
            ] {
                defs.push(def(&format!("{fam}.{m}"), u, 1.0));
                vals.push(Some(v));
            }
        }
        for (m, v) in [("established", 40), ("listen", 12), ("time_wait", 25)] {
            defs.push(def(&format!("tcp.{m}"), Unit::Count, 1.0));
            vals.push(Some(v));
        }
        (defs, vals)
    }

    /// Noise of ±5 % around each base value; a third of the series keep
    /// their previous value (steady sizes and counts).
    fn step(base: &[Option<i64>], vals: &mut [Option<i64>], rng: &mut u64) {
        for (b, v) in base.iter().zip(vals.iter_mut()) {
            let (Some(b), Some(v)) = (b, v) else { continue };
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            if *rng % 3 == 0 {
                continue;
            }
            let spread = (*b / 10).max(2);
            *v = (*b + ((*rng >> 8) % spread as u64) as i64 - spread / 2).max(0);
        }
    }
}
