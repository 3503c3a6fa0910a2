//! [`RecordingStore`] on PostgreSQL (migration 8; the same tables as
//! `sqlite/recordings.rs`). Chunks go with their recording
//! (`ON DELETE CASCADE`), so retention deletes recordings only.

use async_trait::async_trait;
use deadpool_postgres::Pool;

use crate::db::recordings::*;
use crate::db::StorageError;

pub struct PgRecordings {
    pool: Pool,
}

impl PgRecordings {
    pub(super) fn new(pool: Pool) -> PgRecordings {
        PgRecordings { pool }
    }
}

const COLUMNS: &str =
    "id, tenant_id, runner_id, target, who, started_ms, ended_ms, header, bytes, truncated";

fn row_of(r: &tokio_postgres::Row) -> RecordingRow {
    RecordingRow {
        id: r.get(0),
        tenant_id: r.get(1),
        runner_id: r.get(2),
        target: r.get(3),
        who: r.get(4),
        started_ms: r.get(5),
        ended_ms: r.get(6),
        header: r.get(7),
        bytes: r.get(8),
        truncated: r.get(9),
    }
}

#[async_trait]
impl RecordingStore for PgRecordings {
    async fn policy(&self, tenant_id: &str) -> Result<RecordingPolicy, StorageError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT record, record_input, viewers_replay, max_bytes
                 FROM recording_policy WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await?;
        Ok(row
            .map(|r| RecordingPolicy {
                record: r.get(0),
                record_input: r.get(1),
                viewers_replay: r.get(2),
                max_bytes: r.get::<_, i64>(3).max(0) as u64,
            })
            .unwrap_or_default())
    }

    async fn set_policy(&self, tenant_id: &str, p: &RecordingPolicy) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        let max = p.max_bytes.min(i64::MAX as u64) as i64;
        c.execute(
            "INSERT INTO recording_policy (tenant_id, record, record_input, viewers_replay, max_bytes)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id) DO UPDATE SET record = $2, record_input = $3,
                viewers_replay = $4, max_bytes = $5",
            &[&tenant_id, &p.record, &p.record_input, &p.viewers_replay, &max],
        )
        .await?;
        Ok(())
    }

    async fn start(&self, row: &RecordingRow) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO recordings (id, tenant_id, runner_id, target, who, started_ms, header)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &row.id,
                &row.tenant_id,
                &row.runner_id,
                &row.target,
                &row.who,
                &row.started_ms,
                &row.header,
            ],
        )
        .await?;
        Ok(())
    }

    async fn append(
        &self,
        id: &str,
        seq: i64,
        data: &[u8],
        bytes: i64,
        truncated: bool,
    ) -> Result<(), StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO recording_chunks (recording_id, seq, data) VALUES ($1, $2, $3)
             ON CONFLICT (recording_id, seq) DO UPDATE SET data = $3",
            &[&id, &seq, &data],
        )
        .await?;
        // Totals only grow: a chunk written late does not move them back.
        tx.execute(
            "UPDATE recordings SET bytes = GREATEST(bytes, $2), truncated = truncated OR $3
             WHERE id = $1",
            &[&id, &bytes, &truncated],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish(&self, id: &str, ended_ms: i64) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE recordings SET ended_ms = $2 WHERE id = $1 AND ended_ms IS NULL",
            &[&id, &ended_ms],
        )
        .await?;
        Ok(())
    }

    async fn list(
        &self,
        tenant_id: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordingRow>, StorageError> {
        let c = self.pool.get().await?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM recordings
                     WHERE tenant_id = $1 AND ($2::TEXT IS NULL OR runner_id = $2)
                     ORDER BY started_ms DESC, id DESC LIMIT $3"
                ),
                &[&tenant_id, &runner, &limit],
            )
            .await?;
        Ok(rows.iter().map(row_of).collect())
    }

    async fn get(&self, tenant_id: &str, id: &str) -> Result<Option<RecordingRow>, StorageError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                &format!("SELECT {COLUMNS} FROM recordings WHERE tenant_id = $1 AND id = $2"),
                &[&tenant_id, &id],
            )
            .await?;
        Ok(row.as_ref().map(row_of))
    }

    async fn events(&self, id: &str) -> Result<Vec<u8>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT data FROM recording_chunks WHERE recording_id = $1 ORDER BY seq",
                &[&id],
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(r.get::<_, &[u8]>(0));
        }
        Ok(out)
    }

    async fn prune(&self, before_ms: i64) -> Result<usize, StorageError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "DELETE FROM recordings WHERE started_ms < $1",
                &[&before_ms],
            )
            .await?;
        Ok(n as usize)
    }
}
