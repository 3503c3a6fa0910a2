//! Terminal recordings at rest in SQLite (`<data-dir>/recordings.db`, a
//! file of its own: event chunks are the bulk of it, and their writes
//! should not queue behind the control plane's). The
//! [`RecordingStore`](crate::db::recordings::RecordingStore) trait is
//! implemented here on [`Blocking`] rather than in `impls.rs`, beside the
//! only store it wraps. Schema: [`MIGRATIONS`] (`migrate.rs`).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::migrate::{migrate, Migration, Step};
use super::Blocking;
use crate::db::recordings::*;
use crate::db::StorageError;

/// recordings.db's schema, in order; never edit one that shipped.
const MIGRATIONS: &[Migration] = &[Migration {
    name: "recordings, chunks, policies",
    step: Step::Sql(
        "CREATE TABLE recordings (
            id          TEXT PRIMARY KEY,
            tenant_id   TEXT NOT NULL,
            runner_id   TEXT NOT NULL,
            target      TEXT NOT NULL,
            who         TEXT NOT NULL,
            started_ms  INTEGER NOT NULL,
            ended_ms    INTEGER,
            header      TEXT NOT NULL,
            bytes       INTEGER NOT NULL DEFAULT 0,
            truncated   INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX recordings_by_tenant ON recordings (tenant_id, started_ms);
         CREATE INDEX recordings_by_start ON recordings (started_ms);
         CREATE TABLE recording_chunks (
            recording_id TEXT NOT NULL,
            seq          INTEGER NOT NULL,
            data         BLOB NOT NULL,
            PRIMARY KEY (recording_id, seq));
         CREATE TABLE recording_policy (
            tenant_id      TEXT PRIMARY KEY,
            record         INTEGER NOT NULL,
            record_input   INTEGER NOT NULL,
            viewers_replay INTEGER NOT NULL,
            max_bytes      INTEGER NOT NULL);",
    ),
}];

pub struct SqliteRecordings {
    conn: Mutex<Connection>,
}

const COLUMNS: &str =
    "id, tenant_id, runner_id, target, who, started_ms, ended_ms, header, bytes, truncated";

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordingRow> {
    Ok(RecordingRow {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        runner_id: r.get(2)?,
        target: r.get(3)?,
        who: r.get(4)?,
        started_ms: r.get(5)?,
        ended_ms: r.get(6)?,
        header: r.get(7)?,
        bytes: r.get(8)?,
        truncated: r.get::<_, i64>(9)? != 0,
    })
}

impl SqliteRecordings {
    pub fn open(path: &Path) -> Result<SqliteRecordings, StorageError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL: a power cut may lose the last second of a
        // recording, never corrupt the file.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::setup(conn)
    }

    #[doc(hidden)] // a test seam
    pub fn open_in_memory() -> Result<SqliteRecordings, StorageError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<SqliteRecordings, StorageError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        migrate(&mut conn, "recordings.db", MIGRATIONS)?;
        Ok(SqliteRecordings {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn policy(&self, tenant_id: &str) -> Result<RecordingPolicy, StorageError> {
        let c = self.lock();
        let p = c
            .query_row(
                "SELECT record, record_input, viewers_replay, max_bytes
                 FROM recording_policy WHERE tenant_id = ?1",
                [tenant_id],
                |r| {
                    Ok(RecordingPolicy {
                        record: r.get::<_, i64>(0)? != 0,
                        record_input: r.get::<_, i64>(1)? != 0,
                        viewers_replay: r.get::<_, i64>(2)? != 0,
                        max_bytes: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                },
            )
            .optional()?;
        Ok(p.unwrap_or_default())
    }

    fn set_policy(&self, tenant_id: &str, p: &RecordingPolicy) -> Result<(), StorageError> {
        self.lock().execute(
            "INSERT INTO recording_policy (tenant_id, record, record_input, viewers_replay, max_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant_id) DO UPDATE SET record = ?2, record_input = ?3,
                viewers_replay = ?4, max_bytes = ?5",
            params![
                tenant_id,
                p.record,
                p.record_input,
                p.viewers_replay,
                p.max_bytes.min(i64::MAX as u64) as i64
            ],
        )?;
        Ok(())
    }

    fn start(&self, row: &RecordingRow) -> Result<(), StorageError> {
        self.lock().execute(
            "INSERT INTO recordings (id, tenant_id, runner_id, target, who, started_ms, header)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                row.id,
                row.tenant_id,
                row.runner_id,
                row.target,
                row.who,
                row.started_ms,
                row.header
            ],
        )?;
        Ok(())
    }

    fn append(
        &self,
        id: &str,
        seq: i64,
        data: &[u8],
        bytes: i64,
        truncated: bool,
    ) -> Result<(), StorageError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO recording_chunks (recording_id, seq, data) VALUES (?1, ?2, ?3)",
            params![id, seq, data],
        )?;
        // Totals only grow: a chunk written late does not move them back.
        tx.execute(
            "UPDATE recordings SET bytes = MAX(bytes, ?2), truncated = MAX(truncated, ?3)
             WHERE id = ?1",
            params![id, bytes, truncated],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn finish(&self, id: &str, ended_ms: i64) -> Result<(), StorageError> {
        self.lock().execute(
            "UPDATE recordings SET ended_ms = ?2 WHERE id = ?1 AND ended_ms IS NULL",
            params![id, ended_ms],
        )?;
        Ok(())
    }

    fn list(
        &self,
        tenant_id: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordingRow>, StorageError> {
        let c = self.lock();
        let mut st = c.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM recordings WHERE tenant_id = ?1 AND (?2 IS NULL OR runner_id = ?2)
             ORDER BY started_ms DESC, rowid DESC LIMIT ?3"
        ))?;
        let rows = st.query_map(params![tenant_id, runner, limit as i64], row_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn get(&self, tenant_id: &str, id: &str) -> Result<Option<RecordingRow>, StorageError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM recordings WHERE tenant_id = ?1 AND id = ?2"),
                params![tenant_id, id],
                row_of,
            )
            .optional()?)
    }

    fn events(&self, id: &str) -> Result<Vec<u8>, StorageError> {
        let c = self.lock();
        let mut st = c.prepare_cached(
            "SELECT data FROM recording_chunks WHERE recording_id = ?1 ORDER BY seq",
        )?;
        let mut out = Vec::new();
        let mut rows = st.query([id])?;
        while let Some(r) = rows.next()? {
            let data: Vec<u8> = r.get(0)?;
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    fn prune(&self, before_ms: i64) -> Result<usize, StorageError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.execute(
            "DELETE FROM recording_chunks WHERE recording_id IN
               (SELECT id FROM recordings WHERE started_ms < ?1)",
            [before_ms],
        )?;
        let n = tx.execute("DELETE FROM recordings WHERE started_ms < ?1", [before_ms])?;
        tx.commit()?;
        Ok(n)
    }
}

/// Owned copies of borrowed arguments, to move onto the blocking pool.
macro_rules! own {
    ($($a:ident),*) => { $(let $a = $a.to_owned();)* };
}

#[async_trait]
impl RecordingStore for Blocking<SqliteRecordings> {
    async fn policy(&self, tenant_id: &str) -> Result<RecordingPolicy, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.policy(&tenant_id)).await
    }
    async fn set_policy(&self, tenant_id: &str, p: &RecordingPolicy) -> Result<(), StorageError> {
        own!(tenant_id);
        let p = *p;
        self.run(move |s| s.set_policy(&tenant_id, &p)).await
    }
    async fn start(&self, row: &RecordingRow) -> Result<(), StorageError> {
        own!(row);
        self.run(move |s| s.start(&row)).await
    }
    async fn append(
        &self,
        id: &str,
        seq: i64,
        data: &[u8],
        bytes: i64,
        truncated: bool,
    ) -> Result<(), StorageError> {
        own!(id, data);
        self.run(move |s| s.append(&id, seq, &data, bytes, truncated))
            .await
    }
    async fn finish(&self, id: &str, ended_ms: i64) -> Result<(), StorageError> {
        own!(id);
        self.run(move |s| s.finish(&id, ended_ms)).await
    }
    async fn list(
        &self,
        tenant_id: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordingRow>, StorageError> {
        own!(tenant_id);
        let runner = runner.map(str::to_owned);
        self.run(move |s| s.list(&tenant_id, runner.as_deref(), limit))
            .await
    }
    async fn get(&self, tenant_id: &str, id: &str) -> Result<Option<RecordingRow>, StorageError> {
        own!(tenant_id, id);
        self.run(move |s| s.get(&tenant_id, &id)).await
    }
    async fn events(&self, id: &str) -> Result<Vec<u8>, StorageError> {
        own!(id);
        self.run(move |s| s.events(&id)).await
    }
    async fn prune(&self, before_ms: i64) -> Result<usize, StorageError> {
        self.run(move |s| s.prune(before_ms)).await
    }
}
