//! [`TrailStore`] on PostgreSQL: the audit trail with the same columns and
//! the same hashing as SQLite (`db/trail.rs`), so a trail copied over by
//! `tether-server migrate` verifies the same here.
//!
//! Several replicas append to one chain: each append reads the head and
//! inserts the next entry under a transaction-scoped advisory lock, so
//! `seq` has no gaps and every entry links to the one before, whoever
//! wrote it. Triggers (migration 6) refuse UPDATE and any DELETE above the
//! anchor, as in SQLite.

use std::sync::Mutex;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};

use crate::db::trail::*;
use crate::db::StorageError;

/// The advisory lock appends and retention hold ("audt" in ASCII).
const TRAIL_LOCK: i64 = 0x6175_6474;

const COLUMNS: &str = "seq, at_ms, tenant_id, actor_kind, actor_id, actor_label, client, \
     action, target, params, result, detail, prev_hash, hash";

pub struct PgTrail {
    pool: Pool,
    /// The newest entry this process wrote (seq, hash): what `verify`
    /// holds the table to.
    head: Mutex<(i64, String)>,
}

impl PgTrail {
    pub(super) fn new(pool: Pool) -> PgTrail {
        PgTrail {
            pool,
            head: Mutex::new((0, GENESIS.to_owned())),
        }
    }
}

fn entry_of(r: &tokio_postgres::Row) -> Result<Entry, StorageError> {
    let result: i32 = r.get(10);
    Ok(Entry {
        seq: r.get(0),
        entry: NewEntry {
            at_ms: r.get(1),
            tenant_id: r.get(2),
            actor_kind: r.get(3),
            actor_id: r.get(4),
            actor_label: r.get(5),
            client: r.get(6),
            action: r.get(7),
            target: r.get(8),
            params: r.get(9),
            result: u16::try_from(result)
                .map_err(|_| StorageError::Corrupt(format!("audit result {result}")))?,
            detail: r.get(11),
        },
        prev_hash: r.get(12),
        hash: r.get(13),
    })
}

async fn anchor(c: &impl GenericClient) -> Result<(i64, String), StorageError> {
    Ok(
        c.query_opt("SELECT seq, hash FROM audit_anchor WHERE id = 1", &[])
            .await?
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or((0, GENESIS.to_owned())),
    )
}

async fn stored_head(c: &impl GenericClient) -> Result<(i64, String), StorageError> {
    match c
        .query_opt(
            "SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?
    {
        Some(r) => Ok((r.get(0), r.get(1))),
        None => anchor(c).await,
    }
}

#[async_trait]
impl TrailStore for PgTrail {
    async fn append(&self, e: NewEntry) -> Result<Entry, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TRAIL_LOCK])
            .await?;
        let (last, prev) = stored_head(&tx).await?;
        let seq = last + 1;
        let hash = entry_hash(seq, &e, &prev);
        tx.execute(
            &format!(
                "INSERT INTO audit_entries ({COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            &[
                &seq,
                &e.at_ms,
                &e.tenant_id,
                &e.actor_kind,
                &e.actor_id,
                &e.actor_label,
                &e.client,
                &e.action,
                &e.target,
                &e.params,
                &i32::from(e.result),
                &e.detail,
                &prev,
                &hash,
            ],
        )
        .await?;
        tx.commit().await?;
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if seq > head.0 {
            *head = (seq, hash.clone());
        }
        Ok(Entry {
            seq,
            entry: e,
            prev_hash: prev,
            hash,
        })
    }

    async fn query(&self, q: &AuditQuery) -> Result<Vec<Entry>, StorageError> {
        let c = self.pool.get().await?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM audit_entries
                     WHERE ($1::TEXT IS NULL OR tenant_id = $1)
                       AND ($2::TEXT IS NULL OR actor_id = $2 OR actor_label = $2)
                       AND ($3::TEXT IS NULL OR strpos(action, $3) > 0)
                       AND ($4::TEXT IS NULL OR strpos(target, $4) > 0)
                       AND ($5::BIGINT IS NULL OR at_ms >= $5)
                       AND ($6::BIGINT IS NULL OR at_ms < $6)
                       AND seq > COALESCE($7::BIGINT, 0)
                     ORDER BY seq LIMIT $8"
                ),
                &[
                    &q.tenant,
                    &q.actor,
                    &q.action,
                    &q.target,
                    &q.since_ms,
                    &q.until_ms,
                    &q.after_seq,
                    &limit,
                ],
            )
            .await?;
        rows.iter().map(entry_of).collect()
    }

    async fn verify(&self) -> Result<Verification, StorageError> {
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut c = self.pool.get().await?;
        // One snapshot: the anchor and the entries as of one instant.
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let anchor = anchor(&tx).await?;
        let rows = tx
            .query(
                &format!("SELECT {COLUMNS} FROM audit_entries ORDER BY seq"),
                &[],
            )
            .await?;
        tx.commit().await?;
        let entries = rows.iter().map(entry_of).collect::<Result<Vec<_>, _>>()?;
        let found = verify_chain((anchor.0, &anchor.1), entries);
        Ok(check_head(found, (head.0, &head.1)))
    }

    async fn prune(&self, before_ms: i64) -> Result<usize, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TRAIL_LOCK])
            .await?;
        // Oldest first and contiguous: the anchor moves to the last removed.
        let last = tx
            .query_opt(
                "SELECT seq, hash FROM audit_entries WHERE seq <= (
                     SELECT COALESCE(MAX(seq), 0) FROM audit_entries WHERE at_ms < $1
                 ) ORDER BY seq DESC LIMIT 1",
                &[&before_ms],
            )
            .await?;
        let Some(last) = last else {
            return Ok(0);
        };
        let (seq, hash): (i64, String) = (last.get(0), last.get(1));
        tx.execute(
            "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
            &[&seq, &hash],
        )
        .await?;
        let n = tx
            .execute("DELETE FROM audit_entries WHERE seq <= $1", &[&seq])
            .await?;
        tx.commit().await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
