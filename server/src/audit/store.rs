//! The audit trail at rest (`<data-dir>/audit.db`): one append-only,
//! hash-chained table behind the [`TrailStore`] trait.
//!
//! ```text
//! audit_entries (seq) at_ms, tenant_id, actor_kind, actor_id, actor_label,
//!                     client, action, target, params, result, detail,
//!                     prev_hash, hash
//! audit_anchor  (id = 1) seq, hash     the last entry retention removed
//! ```
//!
//! Each entry's `hash` is SHA-256 over its own fields and `prev_hash`, the
//! hash of the entry before it (64 zeros before the first). Changing a
//! field breaks that entry's hash; rewriting the hash too breaks the next
//! entry's link; deleting an entry leaves a gap in `seq`. [`verify_chain`]
//! walks the table and names the first entry that does not hold. Triggers
//! refuse UPDATE and any DELETE above the anchor, so only retention removes
//! rows (oldest first, moving the anchor in the same transaction); someone
//! with the file can drop the triggers, which is what the chain is for.
//! Removing the newest entries is caught only against a head kept
//! elsewhere: the running server keeps its own in memory
//! ([`SqliteAudit::verify`] compares), and `audit verify` prints the head
//! so an operator can write it down.
//!
//! The schema is a list of numbered steps ([`MIGRATIONS`], `user_version`
//! says how many ran), so it can join `db/`'s migrations as it stands.
//! The trait is synchronous like the other stores of this build; one insert
//! costs tens of microseconds (`audit_write_cost` in the tests prints it).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::db::StorageError;

/// The schema, one step per element; never edit a step that shipped.
pub const MIGRATIONS: &[&str] = &["CREATE TABLE audit_entries (
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
     BEGIN SELECT RAISE(ABORT, 'only retention removes audit entries'); END;"];

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry to append: everything but its place in the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NewEntry {
    pub at_ms: i64,
    pub tenant_id: Option<String>,
    /// `admin`, `token`, `user`, `runner` or `none` (not authenticated).
    pub actor_kind: String,
    /// Token or user id (empty for admin and none).
    pub actor_id: String,
    /// Token label or user name.
    pub actor_label: String,
    /// The client's IP address.
    pub client: String,
    /// `METHOD /route/{template}`, or a host event's name.
    pub action: String,
    /// What it acted on: the request path, or the object's id.
    pub target: String,
    /// JSON: the request's parameters with secret values replaced.
    pub params: String,
    /// The HTTP status of the answer (or 0 for events without one).
    pub result: u16,
    /// A short word on the result (error code, refusal reason).
    pub detail: String,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: NewEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters of a query; every one optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// `None`: every tenant (the admin token).
    pub tenant: Option<String>,
    /// Actor id or label, exactly.
    pub actor: Option<String>,
    /// A substring of the action.
    pub action: Option<String>,
    /// A substring of the target.
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Entries after this sequence number (paging).
    pub after_seq: Option<i64>,
    pub limit: usize,
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub entries: u64,
    /// The last entry's seq and hash (the head to write down).
    pub head_seq: i64,
    pub head_hash: String,
    /// The first entry that does not hold, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The audit trail's storage. `db/` will hold it as an async trait with
/// SQLite and PostgreSQL behind it; today SQLite only.
pub trait TrailStore: Send + Sync {
    fn append(&self, e: NewEntry) -> Result<Entry, StorageError>;
    fn query(&self, q: &AuditQuery) -> Result<Vec<Entry>, StorageError>;
    fn verify(&self) -> Result<Verification, StorageError>;
    /// Remove entries older than `before_ms`; returns how many.
    fn prune(&self, before_ms: i64) -> Result<usize, StorageError>;
    /// Housekeeping off the request path, every few seconds.
    fn checkpoint(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// SHA-256 hex of an entry's fields and the previous hash, in a fixed
/// order (a JSON array: unambiguous, whatever the fields contain).
pub fn entry_hash(seq: i64, e: &NewEntry, prev_hash: &str) -> String {
    let fields = serde_json::json!([
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
        prev_hash
    ]);
    let digest = Sha256::digest(fields.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Walk entries in `seq` order from the anchor; name the first that breaks
/// the chain. Pure: the store feeds it rows.
pub fn verify_chain(anchor: (i64, &str), rows: impl IntoIterator<Item = Entry>) -> Verification {
    let (mut want_seq, mut want_prev) = (anchor.0 + 1, anchor.1.to_owned());
    let mut count = 0u64;
    let bad = |seq: i64, why: String, count: u64, head: (i64, String)| Verification {
        ok: false,
        entries: count,
        head_seq: head.0,
        head_hash: head.1,
        first_bad: Some(seq),
        reason: Some(why),
    };
    let mut last: Option<Entry> = None;
    for row in rows {
        count += 1;
        let head = (row.seq, row.hash.clone());
        if row.seq != want_seq {
            return bad(
                want_seq,
                format!(
                    "entry {want_seq} is missing (deleted): the next entry is {}",
                    row.seq
                ),
                count,
                head,
            );
        }
        if row.prev_hash != want_prev {
            // The entry before held together by itself, yet this one links
            // to something else: the one before had its hash rewritten.
            return match last {
                Some(prev) => bad(
                    prev.seq,
                    format!(
                        "entry {} was changed and its hash rewritten: entry {} links to another",
                        prev.seq, row.seq
                    ),
                    count,
                    head,
                ),
                None => bad(
                    row.seq,
                    format!("entry {} does not link to the retention anchor", row.seq),
                    count,
                    head,
                ),
            };
        }
        if entry_hash(row.seq, &row.entry, &row.prev_hash) != row.hash {
            return bad(
                row.seq,
                format!(
                    "entry {} was changed: its fields do not match its hash",
                    row.seq
                ),
                count,
                head,
            );
        }
        want_seq = row.seq + 1;
        want_prev = row.hash.clone();
        last = Some(row);
    }
    let (head_seq, head_hash) = last
        .map(|l| (l.seq, l.hash))
        .unwrap_or((anchor.0, anchor.1.to_owned()));
    Verification {
        ok: true,
        entries: count,
        head_seq,
        head_hash,
        first_bad: None,
        reason: None,
    }
}

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

fn migrate(conn: &Connection) -> Result<(), StorageError> {
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let done = usize::try_from(done).unwrap_or(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(done) {
        conn.execute_batch(&format!(
            "BEGIN; {step}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
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

    fn with(conn: Connection) -> Result<SqliteAudit, StorageError> {
        migrate(&conn)?;
        let head = stored_head(&conn)?;
        Ok(SqliteAudit {
            conn: Mutex::new(conn),
            checkpointer: None,
            head: Mutex::new(head),
        })
    }
}

impl TrailStore for SqliteAudit {
    fn append(&self, e: NewEntry) -> Result<Entry, StorageError> {
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

    fn query(&self, q: &AuditQuery) -> Result<Vec<Entry>, StorageError> {
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

    fn verify(&self) -> Result<Verification, StorageError> {
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

    fn prune(&self, before_ms: i64) -> Result<usize, StorageError> {
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

    fn checkpoint(&self) -> Result<(), StorageError> {
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
