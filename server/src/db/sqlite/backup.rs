//! Copies out of the SQLite files: whole files online (`tether-server
//! backup`, `app/backup.rs`), and tables as rows of [`Cell`]s for
//! `tether-server migrate` (`app/migrate.rs`).
//!
//! `VACUUM INTO` reads the source inside one read transaction, so the copy
//! is the file as it was at one instant, while the server goes on writing
//! (WAL: readers and the writer do not wait on each other). The copy is a
//! plain, compacted database file with no `-wal` beside it; it is checked
//! (`PRAGMA quick_check`) before it counts.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::db::copy::{Cell, SourceTable, BATCH_ROWS};
use crate::db::StorageError;

/// Copy the database at `src` to `dst` (which must not exist) as one
/// consistent snapshot, and check the copy; returns its size in bytes.
pub fn snapshot(src: &Path, dst: &Path) -> Result<u64, StorageError> {
    // Read-write flags without CREATE: a missing source is an error, not a
    // new empty file; no migration runs (the copy is the file as it is).
    let conn = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The server may hold the write lock for a moment (a checkpoint).
    conn.busy_timeout(Duration::from_secs(10))?;
    let dst_text = dst
        .to_str()
        .ok_or_else(|| StorageError::Backend(format!("not UTF-8: {}", dst.display()).into()))?;
    conn.execute("VACUUM INTO ?1", [dst_text])?;
    drop(conn);
    let copy = Connection::open_with_flags(dst, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StorageError::Corrupt(format!(
            "{}: the copy fails its check: {check}",
            dst.display()
        )));
    }
    Ok(std::fs::metadata(dst)
        .map_err(|e| StorageError::Backend(Box::new(e)))?
        .len())
}

/// Rows per table of the SQLite file at `path` (tables in name order; the
/// database's own bookkeeping tables left out), opened read-only.
pub fn table_counts(path: &Path) -> Result<Vec<(String, u64)>, StorageError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let n: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM {}", quoted(&name)),
            [],
            |r| r.get(0),
        )?;
        out.push((name, n.max(0) as u64));
    }
    Ok(out)
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The tables of the file at `path` with their columns (name order; the
/// database's own bookkeeping tables left out), opened read-only.
pub fn tables(path: &Path) -> Result<Vec<SourceTable>, StorageError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let columns = conn
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([&name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        out.push(SourceTable { name, columns });
    }
    Ok(out)
}

/// A column PostgreSQL has and SQLite does not, computed from the SQLite
/// rows: job output's partition key is its job's creation time (the
/// job's own row; an orphan chunk falls back to its own time).
fn derived(table: &str, column: &str) -> Option<&'static str> {
    match (table, column) {
        ("job_output", "job_ms") => Some(
            "COALESCE((SELECT j.created_ms FROM jobs j WHERE j.seq = job_output.seq), \
             job_output.ts_ms)",
        ),
        _ => None,
    }
}

/// Whether [`read_table`] can give `column` of `table` though the SQLite
/// table lacks it.
pub fn can_derive(table: &str, column: &str) -> bool {
    derived(table, column).is_some()
}

/// Every row of `table` in the file at `path`, as `columns` (each the
/// table's own or one [`can_derive`] knows), handed to `each` in batches
/// of at most [`BATCH_ROWS`]. Read inside one read transaction: the rows
/// of one table are one snapshot.
pub fn read_table<E: From<StorageError>>(
    path: &Path,
    table: &str,
    columns: &[String],
    mut each: impl FnMut(Vec<Vec<Cell>>) -> Result<(), E>,
) -> Result<u64, E> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(StorageError::from)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(StorageError::from)?;
    let have = tables(path)?
        .into_iter()
        .find(|t| t.name == table)
        .ok_or_else(|| StorageError::Corrupt(format!("no table {table}")))?;
    let select: Vec<String> = columns
        .iter()
        .map(|c| {
            if have.columns.contains(c) {
                Ok(quoted(c))
            } else {
                derived(table, c).map(str::to_owned).ok_or_else(|| {
                    StorageError::Corrupt(format!("{table} has no column {c} to copy"))
                })
            }
        })
        .collect::<Result<_, _>>()?;
    let sql = format!("SELECT {} FROM {}", select.join(", "), quoted(table));
    let mut stmt = conn.prepare(&sql).map_err(StorageError::from)?;
    let mut rows = stmt.query([]).map_err(StorageError::from)?;
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let mut n = 0u64;
    while let Some(r) = rows.next().map_err(StorageError::from)? {
        let mut row = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            use rusqlite::types::ValueRef;
            row.push(match r.get_ref(i).map_err(StorageError::from)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::Int(v),
                ValueRef::Real(v) => Cell::Real(v),
                ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
            });
        }
        batch.push(row);
        n += 1;
        if batch.len() == BATCH_ROWS {
            each(std::mem::replace(
                &mut batch,
                Vec::with_capacity(BATCH_ROWS),
            ))?;
        }
    }
    if !batch.is_empty() {
        each(batch)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_taken_while_a_writer_holds_the_file_has_every_committed_row() {
        let dir = std::env::temp_dir().join(format!("tether-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("a.db");
        let w = Connection::open(&src).unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        w.execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        // Committed rows still in the WAL, and a write transaction open.
        w.execute_batch("BEGIN; INSERT INTO t VALUES (3);").unwrap();
        let bytes = snapshot(&src, &dir.join("copy.db")).unwrap();
        assert!(bytes > 0);
        w.execute_batch("COMMIT").unwrap();
        assert_eq!(
            table_counts(&dir.join("copy.db")).unwrap(),
            [("t".to_owned(), 2)]
        );
        // The target exists now: refused, not overwritten.
        assert!(snapshot(&src, &dir.join("copy.db")).is_err());
        // A missing source is an error, not a new empty file.
        assert!(snapshot(&dir.join("none.db"), &dir.join("none-copy.db")).is_err());
        assert!(!dir.join("none.db").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
