//! Container logs at rest (`<data-dir>/logs.db`): blocks of lines, the
//! collection cursor of each container, retention and collection settings.
//!
//! A block is one DATA frame's payload as the runner sent it: whole lines of
//! one stream (stdout or stderr), each `RFC3339Nano-timestamp SP message LF`,
//! at most 32 KiB. Storing frames whole keeps ingest to one row per 32 KiB
//! (the collection of a noisy container costs a few inserts a second), and
//! a query reads the blocks that overlap its time range and filters their
//! lines in memory.
//!
//! ```text
//! log_streams  (id) runner, container name, bytes       one per (runner, container name)
//! log_blocks   (id) stream, container_id, tag, ts_first, ts_last, lines, data
//!                   index (stream, ts_last): a time range is one index walk
//! log_cursors  (runner, container_id) → ts, skip        where collection resumes
//! log_retention (runner, container or '') → max_age_s, max_bytes
//! log_collect  (runner) → policy                        which containers are collected
//! ```
//!
//! The cursor is written in the same transaction as the blocks it follows,
//! so after any crash the stored lines and the cursor agree: a resumed
//! stream neither repeats nor skips a line (see `docs/protocol.md` §4b).
//! Blocks are kept under a stream's name rather than its container id, so
//! the history of `web` survives the container being recreated by a deploy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::migrate::{migrate, Migration, Step};
use crate::db::logs::*;
use crate::db::logs::{block_lines, CollectPolicy, LogLine};
use crate::db::StorageError;

/// Blocks removed per statement when expiring, so the writer is never held long.
const EXPIRE_CHUNK: i64 = 512;

pub struct SqliteLogs {
    write: Mutex<Connection>,
    read: Option<Mutex<Connection>>,
    defaults: LogRetention,
    default_policy: CollectPolicy,
    /// (runner, container) → stream id.
    streams: Mutex<HashMap<(String, String), i64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // SQLite rolls back what a panic left open; the cache only maps names to
    // ids that exist.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// logs.db's schema, in order (`migrate.rs`). Files of earlier builds have
/// version 0 and made migration 1 on every start (`IF NOT EXISTS`).
const MIGRATIONS: &[Migration] = &[Migration {
    name: "streams, blocks, cursors, retention, policy",
    step: Step::Sql(
        "CREATE TABLE IF NOT EXISTS log_streams (
             id INTEGER PRIMARY KEY,
             runner_id TEXT NOT NULL,
             container TEXT NOT NULL,
             bytes INTEGER NOT NULL DEFAULT 0,
             UNIQUE (runner_id, container));
         CREATE TABLE IF NOT EXISTS log_blocks (
             id INTEGER PRIMARY KEY,
             stream INTEGER NOT NULL,
             container_id TEXT NOT NULL,
             tag INTEGER NOT NULL,
             ts_first INTEGER NOT NULL,
             ts_last INTEGER NOT NULL,
             lines INTEGER NOT NULL,
             data BLOB NOT NULL);
         CREATE INDEX IF NOT EXISTS log_blocks_time ON log_blocks (stream, ts_last);
         CREATE TABLE IF NOT EXISTS log_cursors (
             runner_id TEXT NOT NULL,
             container_id TEXT NOT NULL,
             ts INTEGER NOT NULL,
             skip INTEGER NOT NULL,
             PRIMARY KEY (runner_id, container_id)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS log_retention (
             runner_id TEXT NOT NULL,
             container TEXT NOT NULL,
             max_age_s INTEGER NOT NULL,
             max_bytes INTEGER NOT NULL,
             PRIMARY KEY (runner_id, container)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS log_collect (
             runner_id TEXT PRIMARY KEY,
             policy TEXT NOT NULL) WITHOUT ROWID;",
    ),
}];

fn setup(mut conn: Connection) -> Result<Connection, StorageError> {
    migrate(&mut conn, "logs.db", MIGRATIONS)?;
    Ok(conn)
}

impl SqliteLogs {
    pub fn open(
        path: &Path,
        defaults: LogRetention,
        default_policy: CollectPolicy,
    ) -> Result<SqliteLogs, StorageError> {
        let write = Connection::open(path)?;
        write.pragma_update(None, "journal_mode", "WAL")?;
        // A power cut may lose the last unsynced blocks; their cursor goes
        // with them, so the runner sends those lines again.
        write.pragma_update(None, "synchronous", "NORMAL")?;
        super::steady_plans(&write)?;
        let write = setup(write)?;
        let read = Connection::open(path)?;
        read.busy_timeout(Duration::from_secs(5))?;
        read.pragma_update(None, "query_only", true)?;
        super::steady_plans(&read)?;
        Ok(SqliteLogs {
            write: Mutex::new(write),
            read: Some(Mutex::new(read)),
            defaults,
            default_policy,
            streams: Mutex::default(),
        })
    }

    /// A private in-memory database, for tests.
    #[doc(hidden)] // a test seam: the integration tests' databases
    pub fn open_in_memory(defaults: LogRetention) -> Result<SqliteLogs, StorageError> {
        Ok(SqliteLogs {
            write: Mutex::new(setup(Connection::open_in_memory()?)?),
            read: None,
            defaults,
            default_policy: CollectPolicy::All,
            streams: Mutex::default(),
        })
    }

    fn write(&self) -> MutexGuard<'_, Connection> {
        lock(&self.write)
    }

    fn read(&self) -> MutexGuard<'_, Connection> {
        self.read.as_ref().map_or_else(|| self.write(), lock)
    }

    fn stream_id(
        &self,
        conn: &Connection,
        runner_id: &str,
        container: &str,
    ) -> Result<i64, StorageError> {
        let key = (runner_id.to_owned(), container.to_owned());
        if let Some(id) = lock(&self.streams).get(&key) {
            return Ok(*id);
        }
        conn.execute(
            "INSERT OR IGNORE INTO log_streams (runner_id, container) VALUES (?1, ?2)",
            params![runner_id, container],
        )?;
        let id = conn.query_row(
            "SELECT id FROM log_streams WHERE runner_id = ?1 AND container = ?2",
            params![runner_id, container],
            |r| r.get(0),
        )?;
        lock(&self.streams).insert(key, id);
        Ok(id)
    }

    // ---- ingest ------------------------------------------------------------

    /// Store blocks and move their cursors, in one transaction.
    pub fn insert<'a>(
        &self,
        blocks: impl IntoIterator<Item = &'a BlockIn>,
    ) -> Result<(), StorageError> {
        let mut conn = self.write();
        let tx = conn.transaction()?;
        for b in blocks {
            let stream = self.stream_id(&tx, &b.runner_id, &b.container)?;
            tx.prepare_cached(
                "INSERT INTO log_blocks (stream, container_id, tag, ts_first, ts_last, lines, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                stream,
                b.container_id,
                b.tag,
                b.ts_first,
                b.ts_last,
                b.lines,
                b.data
            ])?;
            tx.prepare_cached("UPDATE log_streams SET bytes = bytes + ?2 WHERE id = ?1")?
                .execute(params![stream, b.data.len() as i64])?;
            if let Some((ts, skip)) = b.cursor {
                tx.prepare_cached(
                    "INSERT INTO log_cursors (runner_id, container_id, ts, skip) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (runner_id, container_id) DO UPDATE SET ts = ?3, skip = ?4",
                )?
                .execute(params![b.runner_id, b.container_id, ts, skip])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Where collection of a container resumes: `(ts_ns, lines at ts)`.
    pub fn cursor(
        &self,
        runner_id: &str,
        container_id: &str,
    ) -> Result<Option<(i64, u32)>, StorageError> {
        Ok(self
            .read()
            .query_row(
                "SELECT ts, skip FROM log_cursors WHERE runner_id = ?1 AND container_id = ?2",
                params![runner_id, container_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    // ---- queries -----------------------------------------------------------

    /// Lines of a container (by name) matching `q`, oldest first.
    pub fn query(
        &self,
        runner_id: &str,
        container: &str,
        q: &LogQuery,
    ) -> Result<Vec<LogLine>, StorageError> {
        let conn = self.read();
        let stream: Option<i64> = conn
            .query_row(
                "SELECT id FROM log_streams WHERE runner_id = ?1 AND container = ?2",
                params![runner_id, container],
                |r| r.get(0),
            )
            .optional()?;
        let Some(stream) = stream else {
            return Ok(Vec::new());
        };
        let since = q.since_ns.unwrap_or(i64::MIN);
        let until = q.until_ns.unwrap_or(i64::MAX);
        let needle = q.contains.as_ref().map(|s| s.to_lowercase());
        let order = if q.from_end { "DESC" } else { "ASC" };
        let mut stmt = conn.prepare(&format!(
            "SELECT tag, data FROM log_blocks
             WHERE stream = ?1 AND ts_last >= ?2 AND ts_first <= ?3 ORDER BY id {order}"
        ))?;
        let mut rows = stmt.query(params![stream, since, until])?;
        let mut out: Vec<LogLine> = Vec::new();
        while let Some(row) = rows.next()? {
            let tag: u8 = row.get(0)?;
            if !q.streams.wants(tag) {
                continue;
            }
            let data: Vec<u8> = row.get(1)?;
            let block = block_lines(&data, tag, since, until, needle.as_deref(), q.from_end);
            for line in block {
                if out.len() >= q.limit {
                    break;
                }
                out.push(line);
            }
            if out.len() >= q.limit {
                break;
            }
        }
        if q.from_end {
            out.reverse();
        }
        Ok(out)
    }

    /// Containers with stored logs for a runner: (name, bytes).
    pub fn containers(&self, runner_id: &str) -> Result<Vec<(String, i64)>, StorageError> {
        let conn = self.read();
        let mut stmt = conn.prepare(
            "SELECT container, bytes FROM log_streams WHERE runner_id = ?1 ORDER BY container",
        )?;
        let rows = stmt.query_map(params![runner_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- settings ----------------------------------------------------------

    /// The retention of one container: its own, else its runner's, else
    /// the server's default.
    pub fn retention(
        &self,
        runner_id: &str,
        container: &str,
    ) -> Result<LogRetention, StorageError> {
        let conn = self.read();
        let row: Option<(i64, i64)> = conn
            .query_row(
                "SELECT max_age_s, max_bytes FROM log_retention
                 WHERE runner_id = ?1 AND container IN (?2, '')
                 ORDER BY container = '' LIMIT 1",
                params![runner_id, container],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(
            row.map_or(self.defaults, |(max_age_s, max_bytes)| LogRetention {
                max_age_s,
                max_bytes,
            }),
        )
    }

    /// Set (or with `None` clear) the retention of a runner (`container`
    /// empty) or of one of its containers.
    pub fn set_retention(
        &self,
        runner_id: &str,
        container: &str,
        r: Option<LogRetention>,
    ) -> Result<(), StorageError> {
        let conn = self.write();
        match r {
            Some(r) => conn.execute(
                "INSERT INTO log_retention (runner_id, container, max_age_s, max_bytes)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (runner_id, container) DO UPDATE SET max_age_s = ?3, max_bytes = ?4",
                params![runner_id, container, r.max_age_s, r.max_bytes],
            )?,
            None => conn.execute(
                "DELETE FROM log_retention WHERE runner_id = ?1 AND container = ?2",
                params![runner_id, container],
            )?,
        };
        Ok(())
    }

    /// The collection policy of a runner (its own, else the server's).
    pub fn policy(&self, runner_id: &str) -> Result<CollectPolicy, StorageError> {
        let text: Option<String> = self
            .read()
            .prepare_cached("SELECT policy FROM log_collect WHERE runner_id = ?1")?
            .query_row(params![runner_id], |r| r.get(0))
            .optional()?;
        Ok(text
            .and_then(|t| CollectPolicy::parse(&t).ok())
            .unwrap_or_else(|| self.default_policy.clone()))
    }

    pub fn set_policy(
        &self,
        runner_id: &str,
        p: Option<&CollectPolicy>,
    ) -> Result<(), StorageError> {
        let conn = self.write();
        match p {
            Some(p) => conn.execute(
                "INSERT INTO log_collect (runner_id, policy) VALUES (?1, ?2)
                 ON CONFLICT (runner_id) DO UPDATE SET policy = ?2",
                params![runner_id, p.to_string()],
            )?,
            None => conn.execute(
                "DELETE FROM log_collect WHERE runner_id = ?1",
                params![runner_id],
            )?,
        };
        Ok(())
    }

    // ---- retention ---------------------------------------------------------

    /// Drop blocks older than each stream's max age and the oldest beyond
    /// its max bytes. A block goes whole (≤ 32 KiB), so a stream may keep a
    /// little more than its limit, never less.
    pub fn expire(&self, now_ms: i64) -> Result<ExpireStats, StorageError> {
        let streams: Vec<(i64, String, String)> = {
            let conn = self.read();
            let mut stmt = conn.prepare("SELECT id, runner_id, container FROM log_streams")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut stats = ExpireStats::default();
        for (stream, runner_id, container) in streams {
            let r = self.retention(&runner_id, &container)?;
            let cutoff_ns = (now_ms - r.max_age_s.saturating_mul(1000)).saturating_mul(1_000_000);
            loop {
                let conn = self.write();
                let (n, bytes) = delete_blocks(
                    &conn,
                    stream,
                    "SELECT id, length(data) FROM log_blocks WHERE stream = ?1 AND ts_last < ?2 ORDER BY id LIMIT ?3",
                    params![stream, cutoff_ns, EXPIRE_CHUNK],
                )?;
                stats.blocks += n;
                stats.bytes += bytes;
                if (n as i64) < EXPIRE_CHUNK {
                    break;
                }
            }
            loop {
                let conn = self.write();
                let used: i64 = conn.query_row(
                    "SELECT bytes FROM log_streams WHERE id = ?1",
                    params![stream],
                    |r| r.get(0),
                )?;
                let over = used - r.max_bytes;
                if over <= 0 {
                    break;
                }
                // The oldest blocks whose sizes add up to at least `over`.
                let mut ids = Vec::new();
                let mut freed = 0i64;
                {
                    let mut stmt = conn.prepare_cached(
                        "SELECT id, length(data) FROM log_blocks WHERE stream = ?1 ORDER BY id LIMIT ?2",
                    )?;
                    let mut rows = stmt.query(params![stream, EXPIRE_CHUNK])?;
                    while let Some(row) = rows.next()? {
                        if freed >= over {
                            break;
                        }
                        ids.push(row.get::<_, i64>(0)?);
                        freed += row.get::<_, i64>(1)?;
                    }
                }
                if ids.is_empty() {
                    // The counter drifted from the rows: set it right.
                    conn.execute("UPDATE log_streams SET bytes = (SELECT coalesce(sum(length(data)), 0) FROM log_blocks WHERE stream = ?1) WHERE id = ?1", params![stream])?;
                    break;
                }
                let last = *ids.last().unwrap_or(&0);
                let (n, bytes) = delete_blocks(
                    &conn,
                    stream,
                    "SELECT id, length(data) FROM log_blocks WHERE stream = ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
                    params![stream, last, EXPIRE_CHUNK],
                )?;
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

/// Delete the blocks `select` names (id, size) and take their bytes off
/// the stream's counter, in one transaction.
fn delete_blocks(
    conn: &Connection,
    stream: i64,
    select: &str,
    args: impl rusqlite::Params,
) -> Result<(usize, i64), StorageError> {
    let victims: Vec<(i64, i64)> = {
        let mut stmt = conn.prepare_cached(select)?;
        let rows = stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    if victims.is_empty() {
        return Ok((0, 0));
    }
    let bytes: i64 = victims.iter().map(|v| v.1).sum();
    conn.execute_batch("BEGIN")?;
    let result = (|| -> Result<(), StorageError> {
        let mut del = conn.prepare_cached("DELETE FROM log_blocks WHERE id = ?1")?;
        for (id, _) in &victims {
            del.execute(params![id])?;
        }
        conn.execute(
            "UPDATE log_streams SET bytes = max(0, bytes - ?2) WHERE id = ?1",
            params![stream, bytes],
        )?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok((victims.len(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::logs::StreamSel;

    fn block(container: &str, tag: u8, first_ns: i64, lines: &[&str]) -> BlockIn {
        let mut data = Vec::new();
        let mut ts = first_ns;
        for l in lines {
            let stamp = crate::db::logs::format_ts(ts);
            data.extend_from_slice(format!("{stamp} {l}\n").as_bytes());
            ts += 1_000_000;
        }
        BlockIn {
            runner_id: "r1".into(),
            container: container.into(),
            container_id: format!("{container}-id"),
            tag,
            ts_first: first_ns,
            ts_last: ts - 1_000_000,
            lines: lines.len() as i64,
            data,
            cursor: Some((ts - 1_000_000, 1)),
        }
    }

    const T0: i64 = 1_795_867_200_000_000_000;

    #[test]
    fn stores_and_queries_by_time_text_and_stream() {
        let s = SqliteLogs::open_in_memory(LogRetention::default()).unwrap();
        s.insert(&[
            block("web", 1, T0, &["GET /a 200", "GET /b 500"]),
            block("web", 2, T0 + 10_000_000, &["error: disk full"]),
            block("db", 1, T0, &["ready"]),
        ])
        .unwrap();
        let all = LogQuery {
            limit: 100,
            ..Default::default()
        };
        let lines = s.query("r1", "web", &all).unwrap();
        let text: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["GET /a 200", "GET /b 500", "error: disk full"]);
        assert_eq!(lines[2].stream, "stderr");

        let q = LogQuery {
            contains: Some("500".into()),
            limit: 100,
            ..Default::default()
        };
        assert_eq!(s.query("r1", "web", &q).unwrap().len(), 1);
        let q = LogQuery {
            since_ns: Some(T0 + 1_000_000),
            until_ns: Some(T0 + 5_000_000),
            limit: 100,
            ..Default::default()
        };
        let text: Vec<String> = s
            .query("r1", "web", &q)
            .unwrap()
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(text, ["GET /b 500"]);
        let q = LogQuery {
            streams: StreamSel::Stderr,
            limit: 100,
            ..Default::default()
        };
        assert_eq!(s.query("r1", "web", &q).unwrap().len(), 1);
        let q = LogQuery {
            limit: 2,
            from_end: true,
            ..Default::default()
        };
        let text: Vec<String> = s
            .query("r1", "web", &q)
            .unwrap()
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(text, ["GET /b 500", "error: disk full"]);
        assert!(s.query("r1", "nope", &all).unwrap().is_empty());
        assert_eq!(
            s.cursor("r1", "web-id").unwrap(),
            Some((T0 + 10_000_000, 1))
        );
    }

    #[test]
    fn retention_by_age_and_bytes_per_container_then_runner() {
        let s = SqliteLogs::open_in_memory(LogRetention::default()).unwrap();
        let now_ms = T0 / 1_000_000;
        let day_ns = 86_400 * 1_000_000_000i64;
        for i in 0..10 {
            s.insert(&[block("web", 1, T0 - (10 - i) * day_ns, &["x"; 100])])
                .unwrap();
            s.insert(&[block("db", 1, T0 - (10 - i) * day_ns, &["y"; 100])])
                .unwrap();
        }
        // web: 3 days; db: the runner's default of 1 block's worth of bytes.
        s.set_retention(
            "r1",
            "web",
            Some(LogRetention {
                max_age_s: 3 * 86_400 + 60,
                max_bytes: i64::MAX,
            }),
        )
        .unwrap();
        let block_bytes = block("db", 1, 0, &["y"; 100]).data.len() as i64;
        s.set_retention(
            "r1",
            "",
            Some(LogRetention {
                max_age_s: 365 * 86_400,
                max_bytes: block_bytes * 2,
            }),
        )
        .unwrap();
        assert_eq!(s.retention("r1", "web").unwrap().max_age_s, 3 * 86_400 + 60);
        assert_eq!(s.retention("r1", "db").unwrap().max_bytes, block_bytes * 2);
        assert_eq!(s.retention("r2", "db").unwrap(), LogRetention::default());
        let stats = s.expire(now_ms).unwrap();
        assert_eq!(stats.blocks, 7 + 8);
        let all = LogQuery {
            limit: 10_000,
            ..Default::default()
        };
        assert_eq!(s.query("r1", "web", &all).unwrap().len(), 300);
        assert_eq!(s.query("r1", "db", &all).unwrap().len(), 200);
        let sizes = s.containers("r1").unwrap();
        assert_eq!(
            sizes,
            vec![
                ("db".to_owned(), block_bytes * 2),
                ("web".to_owned(), block_bytes * 3)
            ]
        );
        // Nothing more to do.
        assert_eq!(s.expire(now_ms).unwrap(), ExpireStats::default());
    }
}
