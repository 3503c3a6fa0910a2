//! Filling an empty PostgreSQL database with the rows of a SQLite data dir
//! (`tether-server migrate`, `app/migrate.rs`).
//!
//! Each SQLite table goes into the table of the same name here (the
//! schemas mirror each other column for column, `schema.rs`); each
//! [`Cell`] is converted to the column's type (INTEGER → BIGINT, INTEGER,
//! SMALLINT or BOOLEAN; BLOB → BYTEA). Tables are filled parents first
//! (the order of their foreign keys, read from the catalog), rows as
//! multi-row INSERTs, the whole copy in one transaction: a failed copy
//! leaves the database as it was (only empty time partitions stay). The
//! partitions the rows need are made first; identity sequences are moved
//! past the copied ids at the end, so new rows do not collide.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::partitions::{Partitions, Table};
use crate::db::copy::Cell;
use crate::db::StorageError;

/// Bind parameters per INSERT (PostgreSQL's limit is 65,535).
const MAX_PARAMS: usize = 30_000;

/// The partitioned tables and the column their partitions are keyed by.
const PARTITIONED: [(Table, &str); 5] = [
    (super::metrics::RAW, "ts"),
    (super::metrics::MINUTES_T, "ts"),
    (super::metrics::HOURS_T, "ts"),
    (super::logs::BLOCKS, "ts_last"),
    (super::jobs::OUTPUT, "job_ms"),
];

/// A column of a table here: its name and type (`information_schema`'s
/// `data_type`), and whether it may be left out (nullable or defaulted).
#[derive(Debug, Clone)]
pub struct TargetColumn {
    pub name: String,
    pub data_type: String,
    pub optional: bool,
}

/// The import side of `migrate`: a connection from [`super::Postgres`].
pub struct Importer {
    pool: Pool,
    partitions: Partitions,
    client: deadpool_postgres::Object,
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn convert(
    table: &str,
    col: &TargetColumn,
    cell: &Cell,
) -> Result<Box<dyn ToSql + Sync + Send>, StorageError> {
    let bad = || {
        StorageError::Corrupt(format!(
            "{table}.{}: {cell:?} does not fit {}",
            col.name, col.data_type
        ))
    };
    let int = |v: i64| -> Result<Box<dyn ToSql + Sync + Send>, StorageError> {
        Ok(match col.data_type.as_str() {
            "bigint" => Box::new(v),
            "integer" => Box::new(i32::try_from(v).map_err(|_| bad())?),
            "smallint" => Box::new(i16::try_from(v).map_err(|_| bad())?),
            "boolean" => Box::new(v != 0),
            "double precision" => Box::new(v as f64),
            _ => return Err(bad()),
        })
    };
    Ok(match cell {
        Cell::Null => match col.data_type.as_str() {
            "bigint" => Box::new(None::<i64>),
            "integer" => Box::new(None::<i32>),
            "smallint" => Box::new(None::<i16>),
            "boolean" => Box::new(None::<bool>),
            "double precision" => Box::new(None::<f64>),
            "bytea" => Box::new(None::<Vec<u8>>),
            _ => Box::new(None::<String>),
        },
        Cell::Int(v) => int(*v)?,
        Cell::Real(v) if col.data_type == "double precision" => Box::new(*v),
        Cell::Real(_) => return Err(bad()),
        Cell::Text(t) => match col.data_type.as_str() {
            "text" | "character varying" => Box::new(t.clone()),
            "bytea" => Box::new(t.as_bytes().to_vec()),
            _ => return Err(bad()),
        },
        Cell::Blob(b) => match col.data_type.as_str() {
            "bytea" => Box::new(b.clone()),
            "text" => Box::new(String::from_utf8(b.clone()).map_err(|_| bad())?),
            _ => return Err(bad()),
        },
    })
}

impl Importer {
    pub(super) async fn new(pool: Pool) -> Result<Importer, StorageError> {
        let client = pool.get().await?;
        Ok(Importer {
            pool,
            partitions: Partitions::default(),
            client,
        })
    }

    /// The tables here (but the migration history) with their columns.
    pub async fn tables(&self) -> Result<BTreeMap<String, Vec<TargetColumn>>, StorageError> {
        let rows = self
            .client
            .query(
                "SELECT c.table_name::TEXT, c.column_name::TEXT, c.data_type::TEXT,
                        (c.is_nullable = 'YES' OR c.column_default IS NOT NULL)
                 FROM information_schema.columns c
                 JOIN pg_namespace n ON n.nspname = c.table_schema
                 JOIN pg_class k ON k.relnamespace = n.oid AND k.relname = c.table_name
                 WHERE c.table_schema = current_schema() AND c.table_name <> 'schema_migrations'
                   AND k.relkind IN ('r', 'p') AND NOT k.relispartition
                 ORDER BY c.table_name, c.ordinal_position",
                &[],
            )
            .await?;
        let mut out: BTreeMap<String, Vec<TargetColumn>> = BTreeMap::new();
        for r in rows {
            out.entry(r.get(0)).or_default().push(TargetColumn {
                name: r.get(1),
                data_type: r.get(2),
                optional: r.get(3),
            });
        }
        Ok(out)
    }

    /// `tables` ordered so that every table comes after those its foreign
    /// keys point to.
    pub async fn parents_first(&self, tables: &[String]) -> Result<Vec<String>, StorageError> {
        let rows = self
            .client
            .query(
                "SELECT conrelid::regclass::TEXT, confrelid::regclass::TEXT
                 FROM pg_constraint WHERE contype = 'f'",
                &[],
            )
            .await?;
        let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in rows {
            let (child, parent): (String, String) = (r.get(0), r.get(1));
            if child != parent {
                parents.entry(child).or_default().insert(parent);
            }
        }
        let wanted: BTreeSet<&String> = tables.iter().collect();
        let mut done: Vec<String> = Vec::with_capacity(tables.len());
        let mut left: Vec<String> = tables.to_vec();
        while !left.is_empty() {
            let before = left.len();
            left.retain(|t| {
                let ready = parents
                    .get(t)
                    .is_none_or(|ps| ps.iter().all(|p| !wanted.contains(p) || done.contains(p)));
                if ready {
                    done.push(t.clone());
                }
                !ready
            });
            if left.len() == before {
                // A cycle (none in the schema): the rest in name order.
                done.append(&mut left);
            }
        }
        Ok(done)
    }

    /// Tables here that hold rows, with their counts (a target must be
    /// empty unless `migrate --force`).
    pub async fn nonempty(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut out = Vec::new();
        for t in self.tables().await?.into_keys() {
            let n = self.count(&t).await?;
            if n > 0 {
                out.push((t, n));
            }
        }
        Ok(out)
    }

    /// Empty every table (`migrate --force`), in one statement.
    pub async fn truncate_all(&self) -> Result<(), StorageError> {
        let tables: Vec<String> = self.tables().await?.keys().map(|t| quoted(t)).collect();
        if tables.is_empty() {
            return Ok(());
        }
        self.client
            .batch_execute(&format!(
                "TRUNCATE {} RESTART IDENTITY CASCADE",
                tables.join(", ")
            ))
            .await?;
        Ok(())
    }

    pub async fn count(&self, table: &str) -> Result<u64, StorageError> {
        let n: i64 = self
            .client
            .query_one(&format!("SELECT COUNT(*) FROM {}", quoted(table)), &[])
            .await?
            .get(0);
        Ok(n.max(0) as u64)
    }

    /// Open the one transaction the whole copy runs in.
    pub async fn begin(&self) -> Result<(), StorageError> {
        self.client.batch_execute("BEGIN").await?;
        Ok(())
    }

    /// Commit the copy, after moving every identity sequence past the
    /// largest id copied.
    pub async fn commit(&self) -> Result<(), StorageError> {
        let serials = self
            .client
            .query(
                "SELECT table_name::TEXT, column_name::TEXT FROM information_schema.columns
                 WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'",
                &[],
            )
            .await?;
        for r in serials {
            let (t, c): (String, String) = (r.get(0), r.get(1));
            self.client
                .execute(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence($1, $2),
                                COALESCE((SELECT MAX({c}) FROM {t}), 0) + 1, false)",
                        c = quoted(&c),
                        t = quoted(&t)
                    ),
                    &[&quoted(&t), &c],
                )
                .await?;
        }
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// Give the copy up: nothing of it stays.
    pub async fn rollback(&self) -> Result<(), StorageError> {
        self.client.batch_execute("ROLLBACK").await?;
        Ok(())
    }

    /// Insert `rows` (values in the order of `columns`) into `table`.
    pub async fn insert(
        &self,
        table: &str,
        columns: &[TargetColumn],
        rows: &[Vec<Cell>],
    ) -> Result<(), StorageError> {
        if rows.is_empty() || columns.is_empty() {
            return Ok(());
        }
        // The partitions the rows need, in their own short transactions
        // (outside the copy's, so its locks stay on the rows alone).
        if let Some((t, key)) = PARTITIONED.iter().find(|(t, _)| t.name == table) {
            let i = columns
                .iter()
                .position(|c| c.name == *key)
                .ok_or_else(|| StorageError::Corrupt(format!("{table}: no {key} to copy")))?;
            let keys: Vec<i64> = rows
                .iter()
                .filter_map(|r| match r.get(i) {
                    Some(Cell::Int(v)) => Some(*v),
                    _ => None,
                })
                .collect();
            self.partitions.ensure(&self.pool, t, &keys).await?;
        }
        let names: Vec<String> = columns.iter().map(|c| quoted(&c.name)).collect();
        let per_insert = (MAX_PARAMS / columns.len()).max(1);
        for chunk in rows.chunks(per_insert) {
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
                Vec::with_capacity(chunk.len() * columns.len());
            let mut values = Vec::with_capacity(chunk.len());
            for row in chunk {
                if row.len() != columns.len() {
                    return Err(StorageError::Corrupt(format!(
                        "{table}: a row of {} values for {} columns",
                        row.len(),
                        columns.len()
                    )));
                }
                let mut marks = Vec::with_capacity(columns.len());
                for (col, cell) in columns.iter().zip(row) {
                    params.push(convert(table, col, cell)?);
                    marks.push(format!("${}", params.len()));
                }
                values.push(format!("({})", marks.join(", ")));
            }
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {}",
                quoted(table),
                names.join(", "),
                values.join(", ")
            );
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            self.client.execute(&sql, &refs).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(t: &str) -> TargetColumn {
        TargetColumn {
            name: "c".into(),
            data_type: t.into(),
            optional: true,
        }
    }

    #[test]
    fn cells_convert_to_the_column_type_or_are_refused() {
        assert!(convert("t", &col("integer"), &Cell::Int(1 << 40)).is_err());
        assert!(convert("t", &col("smallint"), &Cell::Int(7)).is_ok());
        assert!(convert("t", &col("boolean"), &Cell::Int(1)).is_ok());
        assert!(convert("t", &col("bigint"), &Cell::Text("x".into())).is_err());
        assert!(convert("t", &col("bytea"), &Cell::Blob(vec![0, 1])).is_ok());
        assert!(convert("t", &col("text"), &Cell::Blob(vec![0xff])).is_err());
        assert!(convert("t", &col("bigint"), &Cell::Real(1.5)).is_err());
        let e = convert("runners", &col("bigint"), &Cell::Text("x".into()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("runners.c"), "{e}");
    }
}
