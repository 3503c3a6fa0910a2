//! [`LogStore`] on PostgreSQL: the model of `sqlite/logs.rs` (streams per
//! (runner, container name), blocks of whole lines, the cursor written in
//! the same transaction as the blocks it follows), with `log_blocks`
//! partitioned by its newest line's time (`ts_last`, nanoseconds, one
//! partition a day; `partitions.rs`).
//!
//! Retention has two parts. A partition whose every block is older than
//! the longest age any stream keeps (the server default or any setting in
//! `log_retention`) is dropped whole, its bytes taken off the streams'
//! counters in the same transaction. Shorter per-stream ages and the byte
//! caps then delete blocks, oldest first, as SQLite does.
//!
//! A batch of blocks is one multi-row `INSERT … SELECT FROM unnest(…)`; a
//! query reads its blocks through a portal a few at a time, so a tail of a
//! container with 64 MiB of history never holds it all in memory.

use std::collections::HashMap;
use std::sync::Mutex;

use deadpool_postgres::Pool;

use super::partitions::{Partitions, Table, WriteError};
use crate::db::logs::*;
use crate::db::StorageError;

/// One day, in nanoseconds.
const DAY_NS: i64 = 86_400 * 1_000_000_000;

pub(super) const BLOCKS: Table = Table {
    name: "log_blocks",
    width: DAY_NS,
};

/// Blocks removed per statement when expiring.
const EXPIRE_CHUNK: i64 = 512;
/// Blocks fetched per round trip by a query (≤ 32 KiB each).
const QUERY_BATCH: i32 = 64;
/// Stream ids remembered at most; then the cache starts over.
const STREAM_CACHE_MAX: usize = 65_536;

pub struct PgLogs {
    pool: Pool,
    defaults: LogRetention,
    default_policy: CollectPolicy,
    streams: Mutex<HashMap<(String, String), i64>>,
    parts: Partitions,
}

impl PgLogs {
    pub(super) fn new(pool: Pool, defaults: LogRetention, default_policy: CollectPolicy) -> PgLogs {
        PgLogs {
            pool,
            defaults,
            default_policy,
            streams: Mutex::default(),
            parts: Partitions::default(),
        }
    }

    async fn stream_id(
        &self,
        c: &tokio_postgres::Client,
        runner_id: &str,
        container: &str,
    ) -> Result<i64, StorageError> {
        let key = (runner_id.to_owned(), container.to_owned());
        if let Some(id) = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(*id);
        }
        c.execute(
            "INSERT INTO log_streams (runner_id, container) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&runner_id, &container],
        )
        .await?;
        let id: i64 = c
            .query_one(
                "SELECT id FROM log_streams WHERE runner_id = $1 AND container = $2",
                &[&runner_id, &container],
            )
            .await?
            .get(0);
        let mut cache = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= STREAM_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, id);
        Ok(id)
    }

    async fn insert_once(&self, blocks: &[BlockIn]) -> Result<(), WriteError> {
        // Streams are made outside the transaction (an id that exists is
        // harmless if the blocks then fail).
        let c = self.pool.get().await?;
        let mut ids = Vec::with_capacity(blocks.len());
        for b in blocks {
            ids.push(
                self.stream_id(&c, &b.runner_id, &b.container)
                    .await
                    .map_err(WriteError::Storage)?,
            );
        }
        drop(c);
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let container_ids: Vec<&str> = blocks.iter().map(|b| b.container_id.as_str()).collect();
        let tags: Vec<i16> = blocks.iter().map(|b| i16::from(b.tag)).collect();
        let firsts: Vec<i64> = blocks.iter().map(|b| b.ts_first).collect();
        let lasts: Vec<i64> = blocks.iter().map(|b| b.ts_last).collect();
        let lines: Vec<i64> = blocks.iter().map(|b| b.lines).collect();
        let data: Vec<&[u8]> = blocks.iter().map(|b| b.data.as_slice()).collect();
        tx.execute(
            "INSERT INTO log_blocks (stream, container_id, tag, ts_first, ts_last, lines, data)
             SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::SMALLINT[], $4::BIGINT[],
                                  $5::BIGINT[], $6::BIGINT[], $7::BYTEA[])",
            &[&ids, &container_ids, &tags, &firsts, &lasts, &lines, &data],
        )
        .await?;
        let mut bytes: HashMap<i64, i64> = HashMap::new();
        for (id, b) in ids.iter().zip(blocks) {
            *bytes.entry(*id).or_default() += b.data.len() as i64;
        }
        let (sids, sbytes): (Vec<i64>, Vec<i64>) = bytes.into_iter().unzip();
        tx.execute(
            "UPDATE log_streams s SET bytes = s.bytes + v.b
             FROM unnest($1::BIGINT[], $2::BIGINT[]) AS v(id, b) WHERE s.id = v.id",
            &[&sids, &sbytes],
        )
        .await?;
        // The last cursor of each container wins, as row by row would.
        let mut cursors: HashMap<(&str, &str), (i64, u32)> = HashMap::new();
        for b in blocks {
            if let Some(c) = b.cursor {
                cursors.insert((&b.runner_id, &b.container_id), c);
            }
        }
        if !cursors.is_empty() {
            let mut runners = Vec::new();
            let mut cids = Vec::new();
            let mut ts = Vec::new();
            let mut skips = Vec::new();
            for ((r, cid), (t, skip)) in cursors {
                runners.push(r);
                cids.push(cid);
                ts.push(t);
                skips.push(i64::from(skip));
            }
            tx.execute(
                "INSERT INTO log_cursors (runner_id, container_id, ts, skip)
                 SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[])
                 ON CONFLICT (runner_id, container_id)
                 DO UPDATE SET ts = excluded.ts, skip = excluded.skip",
                &[&runners, &cids, &ts, &skips],
            )
            .await?;
        }
        Ok(tx.commit().await?)
    }

    /// The longest age any stream keeps, in seconds.
    async fn longest_age_s(&self, c: &tokio_postgres::Client) -> Result<i64, StorageError> {
        let set: Option<i64> = c
            .query_one("SELECT max(max_age_s) FROM log_retention", &[])
            .await?
            .get(0);
        Ok(set.unwrap_or(0).max(self.defaults.max_age_s))
    }

    /// Delete blocks of `stream` chosen by `filter` (a condition on the
    /// block, `$1` the stream, `$2` its bound) up to a chunk, and take
    /// their bytes off the stream; (blocks, bytes).
    async fn delete_chunk(
        &self,
        stream: i64,
        filter: &str,
        bound: i64,
    ) -> Result<(usize, i64), StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_one(
                &format!(
                    "WITH gone AS (
                         DELETE FROM log_blocks WHERE stream = $1 AND id IN (
                             SELECT id FROM log_blocks WHERE stream = $1 AND {filter}
                             ORDER BY id LIMIT {EXPIRE_CHUNK})
                         RETURNING length(data) AS n)
                     SELECT count(*), coalesce(sum(n), 0)::BIGINT FROM gone"
                ),
                &[&stream, &bound],
            )
            .await?;
        let (n, bytes): (i64, i64) = (row.get(0), row.get(1));
        if n > 0 {
            tx.execute(
                "UPDATE log_streams SET bytes = greatest(0, bytes - $2) WHERE id = $1",
                &[&stream, &bytes],
            )
            .await?;
        }
        tx.commit().await?;
        Ok((usize::try_from(n).unwrap_or(0), bytes))
    }
}

#[async_trait::async_trait]
impl LogStore for PgLogs {
    async fn insert(&self, blocks: Vec<BlockIn>) -> Result<(), StorageError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let keys: Vec<i64> = blocks.iter().map(|b| b.ts_last).collect();
        self.parts.ensure(&self.pool, &BLOCKS, &keys).await?;
        match self.insert_once(&blocks).await {
            Err(WriteError::NoPartition) => {
                // A partition another replica dropped: make it again, once.
                self.parts.forget_all();
                self.parts.ensure(&self.pool, &BLOCKS, &keys).await?;
                Ok(self.insert_once(&blocks).await?)
            }
            r => Ok(r?),
        }
    }

    async fn cursor(
        &self,
        runner_id: &str,
        container_id: &str,
    ) -> Result<Option<(i64, u32)>, StorageError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT ts, skip FROM log_cursors WHERE runner_id = $1 AND container_id = $2",
                &[&runner_id, &container_id],
            )
            .await?;
        Ok(row.map(|r| {
            (
                r.get(0),
                u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX),
            )
        }))
    }

    async fn query(
        &self,
        runner_id: &str,
        container: &str,
        q: &LogQuery,
    ) -> Result<Vec<LogLine>, StorageError> {
        let mut c = self.pool.get().await?;
        let stream: Option<i64> = c
            .query_opt(
                "SELECT id FROM log_streams WHERE runner_id = $1 AND container = $2",
                &[&runner_id, &container],
            )
            .await?
            .map(|r| r.get(0));
        let Some(stream) = stream else {
            return Ok(Vec::new());
        };
        let since = q.since_ns.unwrap_or(i64::MIN);
        let until = q.until_ns.unwrap_or(i64::MAX);
        let needle = q.contains.as_ref().map(|s| s.to_lowercase());
        let order = if q.from_end { "DESC" } else { "ASC" };
        let tx = c.transaction().await?;
        let stmt = tx
            .prepare(&format!(
                "SELECT tag, data FROM log_blocks
                 WHERE stream = $1 AND ts_last >= $2 AND ts_first <= $3 ORDER BY id {order}"
            ))
            .await?;
        let portal = tx.bind(&stmt, &[&stream, &since, &until]).await?;
        let mut out: Vec<LogLine> = Vec::new();
        'fetch: loop {
            let rows = tx.query_portal(&portal, QUERY_BATCH).await?;
            let last_batch = rows.len() < QUERY_BATCH as usize;
            for row in rows {
                let tag = u8::try_from(row.get::<_, i16>(0)).unwrap_or(0);
                if !q.streams.wants(tag) {
                    continue;
                }
                let data: &[u8] = row.get(1);
                let block = block_lines(data, tag, since, until, needle.as_deref(), q.from_end);
                for line in block {
                    if out.len() >= q.limit {
                        break 'fetch;
                    }
                    out.push(line);
                }
                if out.len() >= q.limit {
                    break 'fetch;
                }
            }
            if last_batch {
                break;
            }
        }
        // Read only: nothing to commit.
        drop(tx);
        if q.from_end {
            out.reverse();
        }
        Ok(out)
    }

    async fn containers(&self, runner_id: &str) -> Result<Vec<(String, i64)>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT container, bytes FROM log_streams WHERE runner_id = $1 ORDER BY container",
            &[&runner_id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    async fn retention(
        &self,
        runner_id: &str,
        container: &str,
    ) -> Result<LogRetention, StorageError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT max_age_s, max_bytes FROM log_retention
                 WHERE runner_id = $1 AND container IN ($2, '')
                 ORDER BY container = '' LIMIT 1",
                &[&runner_id, &container],
            )
            .await?;
        Ok(row.map_or(self.defaults, |r| LogRetention {
            max_age_s: r.get(0),
            max_bytes: r.get(1),
        }))
    }

    async fn set_retention(
        &self,
        runner_id: &str,
        container: &str,
        r: Option<LogRetention>,
    ) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        match r {
            Some(r) => {
                c.execute(
                    "INSERT INTO log_retention (runner_id, container, max_age_s, max_bytes)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (runner_id, container)
                     DO UPDATE SET max_age_s = excluded.max_age_s, max_bytes = excluded.max_bytes",
                    &[&runner_id, &container, &r.max_age_s, &r.max_bytes],
                )
                .await?
            }
            None => {
                c.execute(
                    "DELETE FROM log_retention WHERE runner_id = $1 AND container = $2",
                    &[&runner_id, &container],
                )
                .await?
            }
        };
        Ok(())
    }

    async fn policy(&self, runner_id: &str) -> Result<CollectPolicy, StorageError> {
        let c = self.pool.get().await?;
        let text: Option<String> = c
            .query_opt(
                "SELECT policy FROM log_collect WHERE runner_id = $1",
                &[&runner_id],
            )
            .await?
            .map(|r| r.get(0));
        Ok(text
            .and_then(|t| CollectPolicy::parse(&t).ok())
            .unwrap_or_else(|| self.default_policy.clone()))
    }

    async fn set_policy(
        &self,
        runner_id: &str,
        p: Option<&CollectPolicy>,
    ) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        match p {
            Some(p) => {
                c.execute(
                    "INSERT INTO log_collect (runner_id, policy) VALUES ($1, $2)
                     ON CONFLICT (runner_id) DO UPDATE SET policy = excluded.policy",
                    &[&runner_id, &p.to_string()],
                )
                .await?
            }
            None => {
                c.execute(
                    "DELETE FROM log_collect WHERE runner_id = $1",
                    &[&runner_id],
                )
                .await?
            }
        };
        Ok(())
    }

    async fn expire(&self, now_ms: i64) -> Result<ExpireStats, StorageError> {
        let mut stats = ExpireStats::default();
        // Today's and tomorrow's partitions, made ahead.
        let now_ns = now_ms.saturating_mul(1_000_000);
        self.parts
            .ensure(
                &self.pool,
                &BLOCKS,
                &[now_ns, now_ns.saturating_add(DAY_NS)],
            )
            .await?;
        // Whole partitions past every stream's age.
        {
            let mut c = self.pool.get().await?;
            let longest = self.longest_age_s(&c).await?;
            let cut = now_ms
                .saturating_sub(longest.saturating_mul(1000))
                .saturating_mul(1_000_000);
            for n in self.parts.list(&c, &BLOCKS).await? {
                let (_, hi) = BLOCKS.bounds(n);
                if hi > cut {
                    break;
                }
                let row = c
                    .query_one(
                        &format!(
                            "SELECT count(*), coalesce(sum(length(data)), 0)::BIGINT FROM {}",
                            self.parts.name(&BLOCKS, n)
                        ),
                        &[],
                    )
                    .await?;
                self.parts
                    .drop(
                        &mut c,
                        &BLOCKS,
                        n,
                        Some(
                            "UPDATE log_streams s SET bytes = greatest(0, s.bytes - x.b)
                             FROM (SELECT stream, sum(length(data))::BIGINT AS b FROM {part}
                                   GROUP BY stream) x
                             WHERE s.id = x.stream",
                        ),
                    )
                    .await?;
                stats.blocks += usize::try_from(row.get::<_, i64>(0)).unwrap_or(0);
                stats.bytes += row.get::<_, i64>(1);
            }
        }
        // Then each stream's own age and byte cap, block by block.
        let streams: Vec<(i64, String, String)> = {
            let c = self.pool.get().await?;
            c.query("SELECT id, runner_id, container FROM log_streams", &[])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        };
        for (stream, runner_id, container) in streams {
            let r = self.retention(&runner_id, &container).await?;
            let cutoff_ns = now_ms
                .saturating_sub(r.max_age_s.saturating_mul(1000))
                .saturating_mul(1_000_000);
            loop {
                let (n, bytes) = self.delete_chunk(stream, "ts_last < $2", cutoff_ns).await?;
                stats.blocks += n;
                stats.bytes += bytes;
                if (n as i64) < EXPIRE_CHUNK {
                    break;
                }
            }
            loop {
                let c = self.pool.get().await?;
                let used: i64 = c
                    .query_one("SELECT bytes FROM log_streams WHERE id = $1", &[&stream])
                    .await?
                    .get(0);
                let over = used - r.max_bytes;
                if over <= 0 {
                    break;
                }
                // The newest of the oldest blocks whose sizes add up to `over`.
                let last: Option<i64> = c
                    .query_opt(
                        "SELECT id FROM (
                             SELECT id, sum(length(data)) OVER (ORDER BY id) AS upto
                             FROM (SELECT id, data FROM log_blocks WHERE stream = $1
                                   ORDER BY id LIMIT $3) oldest) s
                         WHERE upto >= $2 ORDER BY id LIMIT 1",
                        &[&stream, &over, &EXPIRE_CHUNK],
                    )
                    .await?
                    .map(|r| r.get(0));
                let last = match last {
                    Some(id) => id,
                    None => {
                        // Not enough in one chunk: the whole chunk.
                        match c
                            .query_opt(
                                "SELECT max(id) FROM (SELECT id FROM log_blocks WHERE stream = $1
                                 ORDER BY id LIMIT $2) oldest",
                                &[&stream, &EXPIRE_CHUNK],
                            )
                            .await?
                            .and_then(|r| r.get::<_, Option<i64>>(0))
                        {
                            Some(id) => id,
                            None => {
                                // The counter drifted from the rows: set it right.
                                c.execute(
                                    "UPDATE log_streams SET bytes = (SELECT coalesce(sum(length(data)), 0)
                                     FROM log_blocks WHERE stream = $1) WHERE id = $1",
                                    &[&stream],
                                )
                                .await?;
                                break;
                            }
                        }
                    }
                };
                drop(c);
                let (n, bytes) = self.delete_chunk(stream, "id <= $2", last).await?;
                stats.blocks += n;
                stats.bytes += bytes;
                if n == 0 {
                    break;
                }
            }
        }
        Ok(stats)
    }
}
