//! [`MetricStore`] on PostgreSQL: the same model as `sqlite/metrics.rs`
//! (sources, interned schemas, raw samples, 1m and 1h rollups kept exact by
//! dirty marks), with the three sample tables partitioned by time
//! (`partitions.rs`): retention drops a whole partition once every row in
//! it is past retention and none of its buckets is still to be rolled up,
//! and deletes rows only in the partition the cut falls in.
//!
//! A batch of samples is one multi-row `INSERT … SELECT FROM unnest(…)`
//! (duplicates ignored by the key, dirty marks made from its `RETURNING`),
//! so a second of a thousand runners' samples is one statement.
//!
//! Rollups take their dirty marks `FOR UPDATE SKIP LOCKED`: replicas
//! maintaining at once share the work instead of colliding on a bucket.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use tether::metrics::wire::SeriesDef;

use super::partitions::{Partitions, Table, WriteError};
use crate::db::metrics::*;
use crate::db::StorageError;

/// As in `sqlite/metrics.rs`: a bucket is rolled up once it ended this
/// long ago; later samples re-dirty it.
const MINUTE_GRACE_MS: i64 = 10_000;
const HOUR_GRACE_MS: i64 = 2 * MINUTE_MS;
/// Buckets rolled up per transaction.
const ROLLUP_CHUNK: i64 = 500;
/// A schema's `last_used` is persisted at most this often.
const SCHEMA_TOUCH_EVERY_MS: i64 = HOUR_MS;

pub(super) const RAW: Table = Table {
    name: "metrics_raw",
    width: DAY_MS,
};
pub(super) const MINUTES_T: Table = Table {
    name: "metrics_1m",
    width: DAY_MS,
};
pub(super) const HOURS_T: Table = Table {
    name: "metrics_1h",
    width: 30 * DAY_MS,
};

/// A rollup level: where its rows come from and go.
struct Level {
    level: i32,
    width: i64,
    grace: i64,
    from: &'static str,
    from_raw: bool,
    to: Table,
    parent: Option<i64>,
}

const MINUTES: Level = Level {
    level: 0,
    width: MINUTE_MS,
    grace: MINUTE_GRACE_MS,
    from: "SELECT schema, vals FROM metrics_raw WHERE src = $1 AND ts >= $2 AND ts < $3",
    from_raw: true,
    to: MINUTES_T,
    parent: Some(HOUR_MS),
};

const HOURS: Level = Level {
    level: 1,
    width: HOUR_MS,
    grace: HOUR_GRACE_MS,
    from: "SELECT schema, aggs FROM metrics_1m WHERE src = $1 AND ts >= $2 AND ts < $3",
    from_raw: false,
    to: HOURS_T,
    parent: None,
};

pub struct PgMetrics {
    pool: Pool,
    retention: Retention,
    schemas: Mutex<SchemaCache>,
    parts: Partitions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The cache maps to rows that exist; a panic mid-update leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PgMetrics {
    pub(super) fn new(pool: Pool, retention: Retention) -> PgMetrics {
        PgMetrics {
            pool,
            retention,
            schemas: Mutex::default(),
            parts: Partitions::default(),
        }
    }

    async fn schema(
        &self,
        c: &tokio_postgres::Client,
        id: i64,
    ) -> Result<Arc<[SeriesDef]>, StorageError> {
        if let Some(s) = lock(&self.schemas).by_id.get(&id) {
            return Ok(s.clone());
        }
        let json: String = c
            .query_opt("SELECT series FROM metric_schemas WHERE id = $1", &[&id])
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("metrics schema {id} is missing")))?
            .get(0);
        let series: Vec<SeriesDef> = serde_json::from_str(&json)
            .map_err(|e| StorageError::Corrupt(format!("metrics schema {id}: {e}")))?;
        let series: Arc<[SeriesDef]> = series.into();
        let mut cache = lock(&self.schemas);
        cache.make_room();
        cache.by_id.insert(id, series.clone());
        Ok(series)
    }

    /// Store the rows once their partitions exist; how many were new.
    async fn insert_rows(&self, batches: &[SampleRows], now: i64) -> Result<usize, WriteError> {
        let (mut srcs, mut tss, mut schemas, mut vals) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut newest: HashMap<i64, i64> = HashMap::new();
        let mut used = HashSet::new();
        for b in batches {
            for (ts, v) in &b.rows {
                srcs.push(b.source);
                tss.push(*ts);
                schemas.push(b.schema);
                vals.push(v.as_slice());
                let n = newest.entry(b.source).or_insert(*ts);
                *n = (*n).max(*ts);
                used.insert(b.schema);
            }
        }
        if srcs.is_empty() {
            return Ok(0);
        }
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let inserted: i64 = tx
            .query_one(
                "WITH ins AS (
                     INSERT INTO metrics_raw (src, ts, schema, vals)
                     SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BYTEA[])
                     ON CONFLICT DO NOTHING RETURNING src, ts),
                 dirty AS (
                     INSERT INTO metrics_dirty (level, bucket, src)
                     SELECT DISTINCT 0, ts - mod(ts, 60000), src FROM ins
                     ON CONFLICT DO NOTHING)
                 SELECT count(*) FROM ins",
                &[&srcs, &tss, &schemas, &vals],
            )
            .await?
            .get(0);
        let (ids, last): (Vec<i64>, Vec<i64>) = newest.into_iter().unzip();
        tx.execute(
            "UPDATE metric_sources s SET last_ts = GREATEST(COALESCE(s.last_ts, v.ts), v.ts)
             FROM unnest($1::BIGINT[], $2::BIGINT[]) AS v(id, ts) WHERE s.id = v.id",
            &[&ids, &last],
        )
        .await?;
        // Keep each schema's last_used roughly current (hourly), so the
        // schema collector never takes one that rows still use.
        let stale: Vec<i64> = {
            let cache = lock(&self.schemas);
            used.into_iter()
                .filter(|id| {
                    cache
                        .touched
                        .get(id)
                        .is_none_or(|t| now - t >= SCHEMA_TOUCH_EVERY_MS)
                })
                .collect()
        };
        if !stale.is_empty() {
            tx.execute(
                "UPDATE metric_schemas SET last_used = GREATEST(last_used, $2) WHERE id = ANY($1)",
                &[&stale, &now],
            )
            .await?;
        }
        tx.commit().await?;
        if !stale.is_empty() {
            let mut cache = lock(&self.schemas);
            cache.make_room();
            for id in stale {
                cache.touched.insert(id, now);
            }
        }
        Ok(usize::try_from(inserted).unwrap_or(0))
    }

    /// Recompute up to a chunk of dirty buckets of one level; how many.
    async fn rollup_chunk(&self, level: &Level, now: i64) -> Result<usize, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let buckets: Vec<(i64, i64)> = tx
            .query(
                "SELECT src, bucket FROM metrics_dirty WHERE level = $1 AND bucket <= $2
                 ORDER BY bucket LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[
                    &level.level,
                    &(now - level.width - level.grace),
                    &ROLLUP_CHUNK,
                ],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // The destination partitions first (their own transaction).
        self.parts
            .ensure(
                &self.pool,
                &level.to,
                &buckets.iter().map(|b| b.1).collect::<Vec<_>>(),
            )
            .await?;
        for &(src, bucket) in &buckets {
            let mut fold = BucketFold::default();
            let mut skip = None;
            for row in tx
                .query(level.from, &[&src, &bucket, &(bucket + level.width)])
                .await?
            {
                if let Err(e) = fold.add(row.get(0), row.get(1), level.from_raw) {
                    skip = Some(e);
                    break;
                }
            }
            match skip {
                // A row this build cannot read must not stop every rollup
                // after it: skip the bucket (its rows stay for raw queries).
                Some(StorageError::Corrupt(why)) => {
                    tracing::warn!(src, bucket, "metrics rollup skipped: {why}");
                }
                Some(e) => return Err(e),
                None if fold.groups.is_empty() => {}
                None => {
                    let table = level.to.name;
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE src = $1 AND ts = $2"),
                        &[&src, &bucket],
                    )
                    .await?;
                    let mut blob = Vec::new();
                    for (schema, aggs) in &fold.groups {
                        blob.clear();
                        encode_aggs(aggs, &mut blob);
                        tx.execute(
                            &format!(
                                "INSERT INTO {table} (src, ts, schema, aggs) VALUES ($1, $2, $3, $4)"
                            ),
                            &[&src, &bucket, schema, &blob],
                        )
                        .await?;
                    }
                    if let Some(parent) = level.parent {
                        tx.execute(
                            "INSERT INTO metrics_dirty (level, bucket, src) VALUES ($1, $2, $3)
                             ON CONFLICT DO NOTHING",
                            &[&(level.level + 1), &floor(bucket, parent), &src],
                        )
                        .await?;
                    }
                }
            }
            tx.execute(
                "DELETE FROM metrics_dirty WHERE level = $1 AND bucket = $2 AND src = $3",
                &[&level.level, &bucket, &src],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(buckets.len())
    }

    async fn rollup_level(&self, level: &Level, now: i64) -> Result<usize, StorageError> {
        let mut done = 0;
        loop {
            let n = self.rollup_chunk(level, now).await?;
            done += n;
            if (n as i64) < ROLLUP_CHUNK {
                return Ok(done);
            }
        }
    }

    /// Drop the partitions of `t` wholly before `cut` with no dirty bucket
    /// of `dirty_level` (None: no rollup reads `t`), then delete the rows
    /// before `cut` left in the partition it falls in; rows removed.
    async fn expire_table(
        &self,
        t: &Table,
        cut: i64,
        dirty: Option<(i32, i64)>,
    ) -> Result<usize, StorageError> {
        let mut c = self.pool.get().await?;
        let mut removed = 0usize;
        for n in self.parts.list(&c, t).await? {
            let (lo, hi) = t.bounds(n);
            if hi > cut {
                break;
            }
            if let Some((level, _)) = dirty {
                let pending = c
                    .query_opt(
                        "SELECT 1 FROM metrics_dirty WHERE level = $1 AND bucket >= $2 AND bucket < $3
                         LIMIT 1",
                        &[&level, &lo, &hi],
                    )
                    .await?
                    .is_some();
                if pending {
                    continue;
                }
            }
            let rows: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM {}", self.parts.name(t, n)),
                    &[],
                )
                .await?
                .get(0);
            self.parts.drop(&mut c, t, n, None).await?;
            removed += usize::try_from(rows).unwrap_or(0);
        }
        let n = match dirty {
            Some((level, width)) => {
                c.execute(
                    &format!(
                        "DELETE FROM {} r WHERE r.ts < $1 AND NOT EXISTS (
                             SELECT 1 FROM metrics_dirty d WHERE d.level = $2
                             AND d.bucket = r.ts - mod(r.ts, $3) AND d.src = r.src)",
                        t.name
                    ),
                    &[&cut, &level, &width],
                )
                .await?
            }
            None => {
                c.execute(&format!("DELETE FROM {} WHERE ts < $1", t.name), &[&cut])
                    .await?
            }
        };
        Ok(removed + usize::try_from(n).unwrap_or(0))
    }

    /// Today's and tomorrow's partitions of every table, made ahead.
    async fn make_ahead(&self, now: i64) -> Result<(), StorageError> {
        for t in [RAW, MINUTES_T, HOURS_T] {
            self.parts
                .ensure(&self.pool, &t, &[now, now.saturating_add(DAY_MS)])
                .await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl MetricStore for PgMetrics {
    fn retention(&self) -> Retention {
        self.retention
    }

    async fn source(&self, runner_id: &str) -> Result<i64, StorageError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO metric_sources (runner_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&runner_id],
        )
        .await?;
        Ok(c.query_one(
            "SELECT id FROM metric_sources WHERE runner_id = $1",
            &[&runner_id],
        )
        .await?
        .get(0))
    }

    async fn last_ts(&self, runner_id: &str) -> Result<Option<i64>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT last_ts FROM metric_sources WHERE runner_id = $1",
            &[&runner_id],
        )
        .await?
        .and_then(|r| r.get(0)))
    }

    async fn intern_schema(&self, series: &[SeriesDef], now: i64) -> Result<i64, StorageError> {
        // Serializing names, enum tags and finite floats cannot fail.
        let json = serde_json::to_string(series).unwrap_or_default();
        let hash = Sha256::digest(json.as_bytes())[..].to_vec();
        if let Some(id) = lock(&self.schemas).by_hash.get(&hash) {
            return Ok(*id);
        }
        let c = self.pool.get().await?;
        let id: i64 = c
            .query_one(
                "INSERT INTO metric_schemas (hash, series, last_used) VALUES ($1, $2, $3)
                 ON CONFLICT (hash) DO UPDATE
                   SET last_used = GREATEST(metric_schemas.last_used, excluded.last_used)
                 RETURNING id",
                &[&hash, &json, &now],
            )
            .await?
            .get(0);
        let mut cache = lock(&self.schemas);
        cache.make_room();
        cache.by_hash.insert(hash, id);
        cache.by_id.insert(id, series.to_vec().into());
        cache.touched.insert(id, now);
        Ok(id)
    }

    async fn insert(&self, batches: Vec<SampleRows>, now: i64) -> Result<usize, StorageError> {
        let keys: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.rows.iter().map(|r| r.0))
            .collect();
        self.parts.ensure(&self.pool, &RAW, &keys).await?;
        match self.insert_rows(&batches, now).await {
            Err(WriteError::NoPartition) => {
                // A partition another replica dropped: make it again, once.
                self.parts.forget_all();
                self.parts.ensure(&self.pool, &RAW, &keys).await?;
                Ok(self.insert_rows(&batches, now).await?)
            }
            r => Ok(r?),
        }
    }

    async fn maintain(&self, now: i64) -> Result<MaintainStats, StorageError> {
        let mut stats = MaintainStats::default();
        self.make_ahead(now).await?;
        stats.minutes_rolled += self.rollup_level(&MINUTES, now).await?;
        stats.hours_rolled += self.rollup_level(&HOURS, now).await?;
        let r = self.retention;
        let raw_cut = floor(now.saturating_sub(r.raw_ms), MINUTE_MS);
        let minute_cut = floor(now.saturating_sub(r.minute_ms), MINUTE_MS);
        let hour_cut = now.saturating_sub(r.hour_ms);
        stats.raw_deleted += self
            .expire_table(&RAW, raw_cut, Some((0, MINUTE_MS)))
            .await?;
        stats.minute_deleted += self
            .expire_table(&MINUTES_T, minute_cut, Some((1, HOUR_MS)))
            .await?;
        stats.hour_deleted += self.expire_table(&HOURS_T, hour_cut, None).await?;
        // A schema no row can use any more.
        let cut = now.saturating_sub(r.longest()).saturating_sub(DAY_MS);
        let c = self.pool.get().await?;
        let deleted = c
            .execute("DELETE FROM metric_schemas WHERE last_used < $1", &[&cut])
            .await?;
        if deleted > 0 {
            let mut cache = lock(&self.schemas);
            cache.by_hash.clear();
            cache.by_id.clear();
            cache.touched.clear();
        }
        stats.schemas_deleted += usize::try_from(deleted).unwrap_or(0);
        Ok(stats)
    }

    async fn range(
        &self,
        runner_id: &str,
        from: i64,
        to: i64,
        resolution: Resolution,
        filter: &SeriesFilter,
        max_rows: usize,
    ) -> Result<Vec<SeriesData>, RangeError> {
        let c = self.pool.get().await.map_err(StorageError::from)?;
        let src: Option<i64> = c
            .query_opt(
                "SELECT id FROM metric_sources WHERE runner_id = $1",
                &[&runner_id],
            )
            .await
            .map_err(StorageError::from)?
            .map(|r| r.get(0));
        let Some(src) = src else {
            return Ok(Vec::new());
        };
        let sql = match resolution {
            Resolution::Raw => {
                "SELECT ts, schema, vals FROM metrics_raw
                 WHERE src = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts LIMIT $4"
            }
            Resolution::Minute => {
                "SELECT ts, schema, aggs FROM metrics_1m
                 WHERE src = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts, schema LIMIT $4"
            }
            Resolution::Hour => {
                "SELECT ts, schema, aggs FROM metrics_1h
                 WHERE src = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts, schema LIMIT $4"
            }
        };
        let first = floor(from, resolution.bucket_ms());
        let limit = i64::try_from(max_rows)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let rows = c
            .query(sql, &[&src, &first, &to, &limit])
            .await
            .map_err(StorageError::from)?;
        if rows.len() > max_rows {
            return Err(RangeError::TooManyRows(max_rows));
        }
        let mut out = RangeBuilder::new(filter);
        let mut values = Vec::new();
        let mut aggs = Vec::new();
        for row in &rows {
            let ts: i64 = row.get(0);
            let schema_id: i64 = row.get(1);
            let blob: &[u8] = row.get(2);
            let schema = self.schema(&c, schema_id).await?;
            let plan = out.plan(schema_id, || Ok(schema))?;
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

    async fn latest(
        &self,
        runner_ids: &[&str],
    ) -> Result<Vec<(usize, LatestSample)>, StorageError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "SELECT r.ts, r.schema, r.vals FROM metric_sources s
                 JOIN metrics_raw r ON r.src = s.id
                 WHERE s.runner_id = $1 ORDER BY r.ts DESC LIMIT 1",
            )
            .await?;
        let mut out = Vec::new();
        let mut values = Vec::new();
        for (i, id) in runner_ids.iter().enumerate() {
            let Some(row) = c.query_opt(&stmt, &[id]).await? else {
                continue;
            };
            let (ts, schema_id, blob): (i64, i64, &[u8]) = (row.get(0), row.get(1), row.get(2));
            let schema = self.schema(&c, schema_id).await?;
            decode_values(blob, &mut values)?;
            let values = schema
                .iter()
                .zip(values.iter().chain(std::iter::repeat(&None)))
                .map(|(d, v)| v.map(|v| scaled(v as f64, d.scale)))
                .collect();
            out.push((i, LatestSample { ts, schema, values }));
        }
        Ok(out)
    }

    async fn count(&self, table: &str) -> i64 {
        // A test seam, but still never SQL from a string it was handed.
        if !table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return -1;
        }
        let Ok(c) = self.pool.get().await else {
            return -1;
        };
        match c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
        {
            Ok(r) => r.get(0),
            Err(_) => -1,
        }
    }
}
