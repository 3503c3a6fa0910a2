//! Rows as plain values, for moving a data dir from one backend to the
//! other (`tether-server migrate`, `app/migrate.rs`): the SQLite side reads
//! a table into [`Cell`]s (`sqlite/backup.rs`), the PostgreSQL side writes
//! them into the table of the same name (`postgres/import.rs`), converting
//! each to the column's type there.

/// One value as SQLite stores it (its five storage classes).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A table of one SQLite file as the copy sees it.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub name: String,
    /// Its columns, in declaration order.
    pub columns: Vec<String>,
}

/// Rows per read batch: bounds what a table's copy holds in memory (job
/// output and log blocks are at most a few hundred KiB a row batch).
pub const BATCH_ROWS: usize = 256;
