//! The audit trail at rest in SQLite (`<data-dir>/audit.db`): the
//! [`TrailStore`](crate::db::trail::TrailStore) of the embedded backend
//! (the chain itself, its hashing and checking: `db/trail.rs`).
//!
//! The schema is [`MIGRATIONS`] (`migrate.rs`: `user_version` counts the
//! ones applied; files of earlier builds counted the same way). Triggers
//! refuse UPDATE and any DELETE above the anchor. One insert costs tens of
//! microseconds (`audit_write_cost` in the tests prints it); the WAL is
//! moved into the file by [`SqliteAudit::checkpoint`] from the retention
//! task, not inside a request's append.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

use super::migrate::{migrate, Migration, Step};
use crate::db::trail::*;
use crate::db::StorageError;

/// audit.db's schema, in order (`migrate.rs`); never edit one that shipped.
const MIGRATIONS: &[Migration] = &[Migration {
    name: "entries, anchor, append-only triggers",
    step: Step::Sql(
        "CREATE TABLE audit_entries (
         seq INTEGER PRIMARY KEY,
         at_ms INTEGER NOT NULL,
         tenant_id TEXT,
         actor_kind TEXT NOT NULL,
         actor_id TEXT NOT NULL,
         actor_label TEXT NOT NULL,
         client TEXT NOT NULL,
         action TEXT NOT NULL,
         target TEXT NOT NULL,
         params TEXT NOT NULL,
         result INTEGER NOT NULL,
         detail TEXT NOT NULL,
         prev_hash TEXT NOT NULL,
         hash TEXT NOT NULL);
     CREATE INDEX audit_by_tenant ON audit_entries (tenant_id, seq);
     CREATE TABLE audit_anchor (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         seq INTEGER NOT NULL,
         hash TEXT NOT NULL);
     CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_entries
     BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
     CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_entries
     WHEN OLD.seq > COALESCE((SELECT seq FROM audit_anchor WHERE id = 1), 0)
     BEGIN SELECT RAISE(ABORT, 'only retention removes audit entries'); END;",
    ),
}];

/// [`TrailStore`] over one SQLite file.
pub struct SqliteAudit {
    conn: Mutex<Connection>,
    /// A second connection that moves the WAL into the file: in WAL mode
    /// a passive checkpoint does not hold up the writer.
    checkpointer: Option<Mutex<Connection>>,
    /// The newest entry as this process wrote it: (seq, hash).
    head: Mutex<(i64, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // SQLite rolls back what a panic left open; the head is re-read below.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const COLUMNS: &str = "seq, at_ms, tenant_id, actor_kind, actor_id, actor_label, client, \
     action, target, params, result, detail, prev_hash, hash";

fn entry_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get(0)?,
        entry: NewEntry {
            at_ms: r.get(1)?,
            tenant_id: r.get(2)?,
            actor_kind: r.get(3)?,
            actor_id: r.get(4)?,
            actor_label: r.get(5)?,
            client: r.get(6)?,
            action: r.get(7)?,
            target: r.get(8)?,
            params: r.get(9)?,
            result: r.get(10)?,
            detail: r.get(11)?,
        },
        prev_hash: r.get(12)?,
        hash: r.get(13)?,
    })
}

fn anchor(conn: &Connection) -> Result<(i64, String), StorageError> {
    Ok(conn
        .query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .unwrap_or((0, GENESIS.to_owned())))
}

fn stored_head(conn: &Connection) -> Result<(i64, String), StorageError> {
    let last = conn
        .query_row(
            "SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match last {
        Some(h) => Ok(h),
        None => anchor(conn),
    }
}

impl SqliteAudit {
    pub fn open(path: &Path) -> Result<SqliteAudit, StorageError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL: a power cut may lose the last entries, never
        // corrupt the chain; FULL would put an fsync on every mutating call.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // No checkpoint inside a request's append (it writes and fsyncs
        // the database file: milliseconds); [`SqliteAudit::checkpoint`]
        // runs them from the retention task instead.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut store = SqliteAudit::with(conn)?;
        store.checkpointer = Some(Mutex::new(Connection::open(path)?));
        Ok(store)
    }

    pub fn open_in_memory() -> Result<SqliteAudit, StorageError> {
        SqliteAudit::with(Connection::open_in_memory()?)
    }

    fn with(mut conn: Connection) -> Result<SqliteAudit, StorageError> {
        migrate(&mut conn, "audit.db", MIGRATIONS)?;
        let head = stored_head(&conn)?;
        Ok(SqliteAudit {
            conn: Mutex::new(conn),
            checkpointer: None,
            head: Mutex::new(head),
        })
    }
}

impl SqliteAudit {
    pub fn append(&self, e: NewEntry) -> Result<Entry, StorageError> {
        // One lock over head and insert: the chain is a total order.
        let mut head = lock(&self.head);
        let conn = lock(&self.conn);
        let seq = head.0 + 1;
        let hash = entry_hash(seq, &e, &head.1);
        conn.prepare_cached(&format!(
            "INSERT INTO audit_entries ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))?
        .execute(params![
            seq,
            e.at_ms,
            e.tenant_id,
            e.actor_kind,
            e.actor_id,
            e.actor_label,
            e.client,
            e.action,
            e.target,
            e.params,
            e.result,
            e.detail,
            head.1,
            hash
        ])?;
        let entry = Entry {
            seq,
            entry: e,
            prev_hash: std::mem::replace(&mut head.1, hash.clone()),
            hash,
        };
        head.0 = seq;
        Ok(entry)
    }

    pub fn query(&self, q: &AuditQuery) -> Result<Vec<Entry>, StorageError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit_entries
             WHERE (?1 IS NULL OR tenant_id = ?1)
               AND (?2 IS NULL OR actor_id = ?2 OR actor_label = ?2)
               AND (?3 IS NULL OR instr(action, ?3) > 0)
               AND (?4 IS NULL OR instr(target, ?4) > 0)
               AND (?5 IS NULL OR at_ms >= ?5)
               AND (?6 IS NULL OR at_ms < ?6)
               AND seq > COALESCE(?7, 0)
             ORDER BY seq LIMIT ?8"
        ))?;
        let rows = stmt.query_map(
            params![
                q.tenant,
                q.actor,
                q.action,
                q.target,
                q.since_ms,
                q.until_ms,
                q.after_seq,
                q.limit as i64
            ],
            entry_of,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn verify(&self) -> Result<Verification, StorageError> {
        let head = lock(&self.head).clone();
        let conn = lock(&self.conn);
        let anchor = anchor(&conn)?;
        let mut stmt =
            conn.prepare(&format!("SELECT {COLUMNS} FROM audit_entries ORDER BY seq"))?;
        let rows = stmt.query_map([], entry_of)?;
        let mut found = verify_chain((anchor.0, &anchor.1), rows.map_while(|r| r.ok()));
        if found.ok && (found.head_seq, &found.head_hash) != (head.0, &head.1) {
            found.ok = false;
            found.first_bad = Some(found.head_seq + 1);
            found.reason = Some(format!(
                "the newest entries were removed: this server wrote up to entry {}, \
                 the table ends at {}",
                head.0, found.head_seq
            ));
        }
        Ok(found)
    }

    pub fn prune(&self, before_ms: i64) -> Result<usize, StorageError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        // Oldest first and contiguous: the anchor moves to the last removed.
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM audit_entries WHERE seq <= (
                     SELECT COALESCE(MAX(seq), 0) FROM audit_entries WHERE at_ms < ?1
                 ) ORDER BY seq DESC LIMIT 1",
                [before_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((seq, hash)) = last else {
            return Ok(0);
        };
        tx.execute(
            "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            params![seq, hash],
        )?;
        let n = tx.execute("DELETE FROM audit_entries WHERE seq <= ?1", [seq])?;
        tx.commit()?;
        Ok(n)
    }

    pub fn checkpoint(&self) -> Result<(), StorageError> {
        if let Some(c) = &self.checkpointer {
            lock(c).query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, at_ms: i64) -> NewEntry {
        NewEntry {
            at_ms,
            tenant_id: Some("tn_1".into()),
            actor_kind: "token".into(),
            actor_id: "tk_1".into(),
            actor_label: "ci".into(),
            client: "127.0.0.1".into(),
            action: action.into(),
            target: "/x".into(),
            params: "{}".into(),
            result: 200,
            detail: String::new(),
        }
    }

    fn raw(store: &SqliteAudit, sql: &str) {
        let conn = lock(&store.conn);
        conn.execute_batch(sql).unwrap();
    }

    #[test]
    fn chain_holds_and_filters_work() {
        let s = SqliteAudit::open_in_memory().unwrap();
        for i in 0..5 {
            s.append(entry(if i % 2 == 0 { "POST /a" } else { "PUT /b" }, i))
                .unwrap();
        }
        let v = s.verify().unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.entries, v.head_seq), (5, 5));
        let q = AuditQuery {
            action: Some("PUT".into()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(s.query(&q).unwrap().len(), 2);
        let q = AuditQuery {
            tenant: Some("tn_2".into()),
            limit: 10,
            ..Default::default()
        };
        assert!(s.query(&q).unwrap().is_empty());
    }

    #[test]
    fn triggers_refuse_update_and_delete() {
        let s = SqliteAudit::open_in_memory().unwrap();
        s.append(entry("POST /a", 1)).unwrap();
        let conn = lock(&s.conn);
        assert!(conn
            .execute("UPDATE audit_entries SET action = 'x'", [])
            .is_err());
        assert!(conn.execute("DELETE FROM audit_entries", []).is_err());
    }

    #[test]
    fn edits_and_deletes_name_the_first_bad_entry() {
        let s = SqliteAudit::open_in_memory().unwrap();
        for i in 0..6 {
            s.append(entry("POST /a", i)).unwrap();
        }
        raw(
            &s,
            "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;",
        );
        raw(&s, "UPDATE audit_entries SET result = 500 WHERE seq = 3");
        let v = s.verify().unwrap();
        assert_eq!(v.first_bad, Some(3), "{v:?}");
        assert!(v.reason.unwrap().contains("changed"));

        let s = SqliteAudit::open_in_memory().unwrap();
        for i in 0..6 {
            s.append(entry("POST /a", i)).unwrap();
        }
        raw(
            &s,
            "DROP TRIGGER audit_no_delete; DELETE FROM audit_entries WHERE seq = 4",
        );
        let v = s.verify().unwrap();
        assert_eq!(v.first_bad, Some(4), "{v:?}");
        assert!(v.reason.unwrap().contains("missing"));

        // The tail removed: only the running server's own head knows.
        raw(&s, "DELETE FROM audit_entries WHERE seq >= 4");
        let v = s.verify().unwrap();
        assert_eq!(v.first_bad, Some(4), "{v:?}");
    }

    #[test]
    fn rewritten_hash_names_the_entry_before_the_broken_link() {
        let s = SqliteAudit::open_in_memory().unwrap();
        for i in 0..4 {
            s.append(entry("POST /a", i)).unwrap();
        }
        let mut rows = s
            .query(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        rows[1].entry.result = 204;
        rows[1].hash = entry_hash(2, &rows[1].entry, &rows[1].prev_hash);
        let v = verify_chain((0, GENESIS), rows);
        assert_eq!(v.first_bad, Some(2), "{v:?}");
    }

    #[test]
    fn retention_moves_the_anchor_and_the_chain_still_holds() {
        let s = SqliteAudit::open_in_memory().unwrap();
        for i in 0..10 {
            s.append(entry("POST /a", i * 1000)).unwrap();
        }
        assert_eq!(s.prune(4500).unwrap(), 5);
        let v = s.verify().unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.entries, 5);
        s.append(entry("POST /a", 20_000)).unwrap();
        assert!(s.verify().unwrap().ok);
    }
}
