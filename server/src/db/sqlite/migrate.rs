//! Numbered schema migrations: the one mechanism of every SQLite file.
//!
//! Each file has a list of [`Migration`]s, applied in order, each once. The
//! file's `PRAGMA user_version` is the number applied (the count two of the
//! files already kept before this module; the other two started at 0, and
//! their migration 1 is the schema they made with `IF NOT EXISTS`, so a file
//! of any earlier build is brought up to date without losing a row).
//!
//! Everything pending runs in one `IMMEDIATE` transaction with the new
//! version: a migration that fails leaves the file exactly as it was (the
//! server refuses to start, saying which one), and two processes opening the
//! same file cannot both apply it. A file newer than this build (a
//! downgrade) is refused rather than used with a schema this code does not
//! know.
//!
//! Adding a change: append a migration to the file's list (never edit or
//! reorder a released one); `migrations_are_applied_once_in_order` and the
//! old-data-dir test (`mod.rs`) keep the rule honest.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::db::StorageError;

/// One step of a file's schema.
pub(super) enum Step {
    /// Statements, run as one batch.
    Sql(&'static str),
    /// Code, for a change SQL alone cannot make idempotent (adding a column
    /// that files of an older build may already have).
    Code(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

pub(super) struct Migration {
    /// Said in the log and in the error of a failing migration.
    pub name: &'static str,
    pub step: Step,
}

/// Bring `conn` up to `list`; how many migrations were applied now.
pub(super) fn migrate(
    conn: &mut Connection,
    file: &str,
    list: &[Migration],
) -> Result<usize, StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let done = usize::try_from(version)
        .map_err(|_| StorageError::Corrupt(format!("{file}: schema version {version}")))?;
    if done > list.len() {
        return Err(StorageError::Corrupt(format!(
            "{file}: schema version {done} is newer than this build knows ({}); \
             run the newer tether-server",
            list.len()
        )));
    }
    for (i, m) in list.iter().enumerate().skip(done) {
        let applied = match m.step {
            Step::Sql(sql) => tx.execute_batch(sql),
            Step::Code(f) => f(&tx),
        };
        applied.map_err(|e| {
            StorageError::Corrupt(format!("{file}: migration {} ({}): {e}", i + 1, m.name))
        })?;
        tracing::info!("{file}: migration {} ({}) applied", i + 1, m.name);
    }
    tx.pragma_update(None, "user_version", list.len() as i64)?;
    tx.commit()?;
    Ok(list.len() - done)
}

/// Whether `table` has `column` (for [`Step::Code`] migrations).
pub(super) fn has_column(
    tx: &Transaction<'_>,
    table: &str,
    column: &str,
) -> rusqlite::Result<bool> {
    tx.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    const FIRST: Migration = Migration {
        name: "log table",
        step: Step::Sql("CREATE TABLE log (n INTEGER NOT NULL); INSERT INTO log VALUES (1);"),
    };
    const SECOND: Migration = Migration {
        name: "second",
        step: Step::Sql("INSERT INTO log VALUES (2);"),
    };
    fn third(tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if !has_column(tx, "log", "note")? {
            tx.execute_batch("ALTER TABLE log ADD COLUMN note TEXT")?;
        }
        tx.execute_batch("INSERT INTO log (n, note) VALUES (3, 'code')")
    }
    const THIRD: Migration = Migration {
        name: "third, in code",
        step: Step::Code(third),
    };

    fn log(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT n FROM log ORDER BY rowid").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn migrations_are_applied_once_in_order() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn, "t.db", &[FIRST, SECOND]).unwrap(), 2);
        assert_eq!(version(&conn), 2);
        assert_eq!(log(&conn), [1, 2]);
        // Again: nothing to do, nothing run twice.
        assert_eq!(migrate(&mut conn, "t.db", &[FIRST, SECOND]).unwrap(), 0);
        assert_eq!(log(&conn), [1, 2]);
        // A later build appends one: only that one runs.
        assert_eq!(
            migrate(&mut conn, "t.db", &[FIRST, SECOND, THIRD]).unwrap(),
            1
        );
        assert_eq!(version(&conn), 3);
        assert_eq!(log(&conn), [1, 2, 3]);
    }

    #[test]
    fn a_failing_migration_leaves_the_file_unchanged() {
        let bad = Migration {
            name: "broken",
            step: Step::Sql("INSERT INTO log VALUES (9); INSERT INTO nowhere VALUES (1);"),
        };
        // On a new file: not even the good first one stays.
        let mut conn = Connection::open_in_memory().unwrap();
        let e = migrate(&mut conn, "t.db", &[FIRST, bad]).unwrap_err();
        assert!(e.to_string().contains("migration 2 (broken)"), "{e}");
        assert_eq!(version(&conn), 0);
        assert!(tables(&conn).is_empty());
        // On a file at version 1: still at 1, its rows as they were.
        migrate(&mut conn, "t.db", &[FIRST]).unwrap();
        let bad = Migration {
            name: "broken",
            step: Step::Sql("INSERT INTO log VALUES (9); INSERT INTO nowhere VALUES (1);"),
        };
        assert!(migrate(&mut conn, "t.db", &[FIRST, bad]).is_err());
        assert_eq!(version(&conn), 1);
        assert_eq!(log(&conn), [1]);
        assert_eq!(tables(&conn), ["log"]);
    }

    #[test]
    fn a_file_newer_than_the_build_is_refused_untouched() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "t.db", &[FIRST, SECOND]).unwrap();
        let e = migrate(&mut conn, "t.db", &[FIRST]).unwrap_err();
        assert!(e.to_string().contains("newer than this build"), "{e}");
        assert_eq!(version(&conn), 2);
        assert_eq!(log(&conn), [1, 2]);
    }
}
