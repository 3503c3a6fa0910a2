//! `tether-server migrate --from <data dir> --to postgres://…`: moving up
//! from the embedded SQLite files to PostgreSQL (issue 18).
//!
//! Every table of every SQLite file (`*.db`) in the data dir is copied
//! into the table of the same name in PostgreSQL (`db/sqlite/backup.rs`
//! reads, `db/postgres/import.rs` writes, in one transaction), then each
//! table's rows are counted on both sides and printed; a difference is
//! exit 4. Runner credentials, token hashes and sealed secrets are rows
//! like any other, so runners reconnect with the credentials they have and
//! secrets open with the same key.
//!
//! The releases (`<data-dir>/releases/<version>/<file>`, files with SQLite)
//! are copied into the database's release tables (`db/postgres/releases.rs`)
//! after the rows, streamed file by file; each is then read back from
//! PostgreSQL and hashed: the file count and every SHA-256 must be equal
//! (else exit 4). With PostgreSQL every replica serves them from there.
//!
//! What is not in the databases stays in the data dir and goes on being
//! read from there: the sealing key (`secret.key`), `admin.token` and the
//! dev CA (`tls/`). So the server on PostgreSQL is started with the same
//! `--data-dir` (or a copy of those files, or `TETHER_SECRET_KEY`). The
//! audit trail is copied entry for entry (seq, hashes, anchor): it verifies
//! in PostgreSQL as it did in `audit.db`.
//!
//! Refused (exit 3, nothing written): a source whose server answers at its
//! `server.url` (the copy must not race its writes), and a target that
//! already holds rows, unless `--force` (which empties it first).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::backup::{exit, server_running};
use crate::db::copy::{Cell, SourceTable};
use crate::db::postgres::import::{Importer, TargetColumn};
use crate::db::postgres::{is_postgres_url, redacted, Postgres};
use crate::db::sqlite::backup::{can_derive, read_table, table_counts, tables};
use crate::db::StorageError;

const EXIT_HELP: &str = "Exit status: 0 copied, every count equal; 1 failed (the target is \
left as it was); 2 usage; 3 refused (the source server is running, or the target holds rows \
and there is no --force); 4 copied but a table's count differs.\n\n\
Afterwards start the server with the same --data-dir and --database: the sealing key \
(secret.key), admin.token and tls/ stay in the data dir.";

#[derive(Debug, Args)]
#[command(after_help = EXIT_HELP)]
pub struct MigrateArgs {
    /// The SQLite data directory to copy (its server stopped)
    #[arg(long)]
    pub from: PathBuf,

    /// The PostgreSQL database: postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// (its schema is made or brought up to date; it must hold no rows)
    #[arg(long, env = "TETHER_DATABASE", hide_env_values = true)]
    pub to: String,

    /// Empty the target first if it already holds rows
    #[arg(long)]
    pub force: bool,
}

/// Why a migration stopped.
#[derive(Debug)]
pub enum MigrateError {
    /// Nothing written: the source is live or the target is not empty.
    Refused(String),
    Failed(String),
    /// Copied, but these tables' counts differ.
    Mismatch(Vec<String>),
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrateError::Refused(m) | MigrateError::Failed(m) => f.write_str(m),
            MigrateError::Mismatch(t) => write!(f, "counts differ in: {}", t.join(", ")),
        }
    }
}

impl From<StorageError> for MigrateError {
    fn from(e: StorageError) -> Self {
        MigrateError::Failed(e.to_string())
    }
}

/// One table's count on both sides.
#[derive(Debug, Clone)]
pub struct TableCount {
    pub file: String,
    pub table: String,
    pub sqlite: u64,
    pub postgres: u64,
}

pub fn main(args: MigrateArgs) -> ExitCode {
    super::serve::init_logging(&std::env::var("TETHER_LOG").unwrap_or_else(|_| "info".into()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("migrate: starting the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let mut counts = Vec::new();
    let mut releases = ReleaseCopy::default();
    let result = rt.block_on(migrate(&args, &mut counts, &mut releases));
    if !counts.is_empty() {
        println!(
            "{:<12} {:<22} {:>10} {:>10}",
            "file", "table", "sqlite", "postgres"
        );
        for c in &counts {
            let mark = if c.postgres == c.sqlite {
                ""
            } else {
                "  MISMATCH"
            };
            println!(
                "{:<12} {:<22} {:>10} {:>10}{mark}",
                c.file, c.table, c.sqlite, c.postgres
            );
        }
    }
    if releases.versions > 0 || !releases.differ.is_empty() {
        println!(
            "releases: {} versions, {} files, {} bytes copied; {} read back with the same sha256",
            releases.versions,
            releases.files,
            releases.bytes,
            releases.files.saturating_sub(releases.differ.len())
        );
    }
    for d in &releases.differ {
        println!("release {d}: MISMATCH");
    }
    match result {
        Ok(()) => {
            let copied = counts.len();
            let rows: u64 = counts.iter().map(|c| c.sqlite).sum();
            println!(
                "migrated {} to {}: {copied} tables, {rows} rows, every count equal",
                args.from.display(),
                redacted(&args.to)
            );
            println!(
                "next: tether-server serve --data-dir {} --database <the URL> \
                 (secret.key, admin.token and tls/ are read from there)",
                args.from.display()
            );
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            tracing::error!("migrate: {e}");
            ExitCode::from(match e {
                MigrateError::Refused(_) => exit::REFUSED,
                MigrateError::Failed(_) => exit::FAILED,
                MigrateError::Mismatch(_) => exit::MISMATCH,
            })
        }
    }
}

/// A table to copy: its file, and the columns in the order both sides use.
struct Plan {
    file: String,
    path: PathBuf,
    table: String,
    columns: Vec<TargetColumn>,
}

/// What goes where; a table or column that would be lost is an error here,
/// before anything is written.
fn plan(
    sources: &[(String, PathBuf, Vec<SourceTable>)],
    targets: &BTreeMap<String, Vec<TargetColumn>>,
) -> Result<Vec<Plan>, MigrateError> {
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for (file, path, tables) in sources {
        for t in tables {
            let Some(target) = targets.get(&t.name) else {
                problems.push(format!("{file}: table {} has no PostgreSQL table", t.name));
                continue;
            };
            if plans.iter().any(|p: &Plan| p.table == t.name) {
                problems.push(format!("table {} is in two files", t.name));
                continue;
            }
            for c in &t.columns {
                if !target.iter().any(|tc| &tc.name == c) {
                    problems.push(format!("{file}: {}.{c} has no PostgreSQL column", t.name));
                }
            }
            let mut columns = Vec::new();
            for tc in target {
                if t.columns.contains(&tc.name) || can_derive(&t.name, &tc.name) {
                    columns.push(tc.clone());
                } else if !tc.optional {
                    problems.push(format!(
                        "{}.{} is required in PostgreSQL and absent in {file}",
                        t.name, tc.name
                    ));
                }
            }
            plans.push(Plan {
                file: file.clone(),
                path: path.clone(),
                table: t.name.clone(),
                columns,
            });
        }
    }
    if problems.is_empty() {
        Ok(plans)
    } else {
        Err(MigrateError::Failed(format!(
            "this data dir does not map onto the PostgreSQL schema: {}",
            problems.join("; ")
        )))
    }
}

/// What the release copy did.
#[derive(Debug, Default)]
pub struct ReleaseCopy {
    pub versions: usize,
    pub files: usize,
    pub bytes: u64,
    /// `version/file`s missing in PostgreSQL or read back with another hash.
    pub differ: Vec<String>,
}

/// Copy every release of the data dir into PostgreSQL, then read each file
/// back from there and compare its SHA-256 with the source's; the file
/// counts must agree too.
async fn copy_releases(
    from: &std::path::Path,
    pg: &Postgres,
    done: &mut ReleaseCopy,
) -> Result<(), MigrateError> {
    use futures_util::StreamExt;
    let source = crate::db::sqlite::release_dir(&from.join("releases"));
    let target = pg.releases();
    let releases: Vec<_> = source
        .list()
        .await?
        .into_iter()
        .filter(|r| crate::updates::valid_version(&r.version))
        .collect();
    let mut hashes = Vec::new();
    for r in &releases {
        done.versions += 1;
        for f in r
            .files
            .iter()
            .filter(|f| crate::updates::valid_file_name(&f.name))
        {
            let Some(mut file) = source.open(&r.version, &f.name).await? else {
                continue;
            };
            let mut upload = target.upload(&r.version, &f.name).await?;
            while let Some(chunk) = file.chunks.next().await {
                upload.write(&chunk?).await?;
            }
            let stored = upload.finish().await?;
            done.files += 1;
            done.bytes += stored.size;
            hashes.push((r.version.clone(), f.name.clone(), stored.sha256));
        }
    }
    // Read back from PostgreSQL, whole, and hashed again.
    let mut copied = 0usize;
    for (version, name, sha256) in &hashes {
        let mut tally = crate::db::releases::Tally::default();
        let Some(mut file) = target.open(version, name).await? else {
            done.differ.push(format!("{version}/{name}"));
            continue;
        };
        while let Some(chunk) = file.chunks.next().await {
            tally.add(&chunk?);
        }
        if &tally.done().sha256 != sha256 {
            done.differ.push(format!("{version}/{name}"));
        }
    }
    for r in target.list().await? {
        copied += r.files.len();
    }
    if copied != done.files {
        done.differ.push(format!(
            "(count: {} files in the data dir, {copied} in PostgreSQL)",
            done.files
        ));
    }
    if done.files > 0 {
        tracing::info!(
            "releases: {} files of {} versions copied",
            done.files,
            done.versions
        );
    }
    Ok(())
}

async fn migrate(
    args: &MigrateArgs,
    counts: &mut Vec<TableCount>,
    releases: &mut ReleaseCopy,
) -> Result<(), MigrateError> {
    let from = &args.from;
    if !from.join("tether.db").is_file() {
        return Err(MigrateError::Failed(format!(
            "{} is not a data directory (no tether.db)",
            from.display()
        )));
    }
    if !is_postgres_url(&args.to) {
        return Err(MigrateError::Failed(
            "--to: only postgres:// or postgresql:// URLs are supported".into(),
        ));
    }
    if let Some(url) = server_running(from) {
        return Err(MigrateError::Refused(format!(
            "a server is running on {} (it answers at {url}): stop it first, \
             so the copy does not miss its writes",
            from.display()
        )));
    }
    let mut sources = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(from)
        .map_err(|e| MigrateError::Failed(format!("reading {}: {e}", from.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "db") && p.is_file())
        .collect();
    files.sort();
    for path in files {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let t = tables(&path).map_err(|e| MigrateError::Failed(format!("{file}: {e}")))?;
        sources.push((file, path, t));
    }

    let pg = Postgres::connect(&args.to).await?;
    tracing::info!("target: PostgreSQL {}", redacted(&args.to));
    let importer = pg.importer().await?;
    let targets = importer.tables().await?;
    let plans = plan(&sources, &targets)?;

    let full = importer.nonempty().await?;
    if !full.is_empty() {
        let listed: Vec<String> = full.iter().map(|(t, n)| format!("{t} ({n})")).collect();
        if !args.force {
            return Err(MigrateError::Refused(format!(
                "the target already holds rows: {}; migrate into an empty database, \
                 or --force to empty it first",
                listed.join(", ")
            )));
        }
        tracing::warn!("--force: emptying {}", listed.join(", "));
        importer.truncate_all().await?;
    }

    let order = importer
        .parents_first(&plans.iter().map(|p| p.table.clone()).collect::<Vec<_>>())
        .await?;
    importer.begin().await?;
    let copied = copy_all(&importer, &plans, &order).await;
    match copied {
        Ok(()) => importer.commit().await?,
        Err(e) => {
            let _ = importer.rollback().await;
            return Err(e);
        }
    }

    // Counted again on both sides, after the commit.
    let mut mismatched = Vec::new();
    for (file, path, _) in &sources {
        for (table, n) in table_counts(path)? {
            let pg_n = importer.count(&table).await?;
            if pg_n != n {
                mismatched.push(table.clone());
            }
            counts.push(TableCount {
                file: file.clone(),
                table,
                sqlite: n,
                postgres: pg_n,
            });
        }
    }
    copy_releases(from, &pg, releases).await?;
    if !releases.differ.is_empty() {
        mismatched.push("releases".into());
    }
    if mismatched.is_empty() {
        Ok(())
    } else {
        Err(MigrateError::Mismatch(mismatched))
    }
}

async fn copy_all(
    importer: &Importer,
    plans: &[Plan],
    order: &[String],
) -> Result<(), MigrateError> {
    for name in order {
        let Some(p) = plans.iter().find(|p| &p.table == name) else {
            continue;
        };
        let started = std::time::Instant::now();
        // The file is read on a thread of its own, a couple of batches
        // ahead of the inserts (bounded: at most 2 batches wait).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Vec<Cell>>>(2);
        let (path, table) = (p.path.clone(), p.table.clone());
        let names: Vec<String> = p.columns.iter().map(|c| c.name.clone()).collect();
        let reader = std::thread::spawn(move || {
            read_table(&path, &table, &names, |batch| {
                tx.blocking_send(batch)
                    .map_err(|_| StorageError::Backend("the copy stopped".into()))
            })
        });
        let mut written = 0u64;
        let mut failed = None;
        while let Some(batch) = rx.recv().await {
            if let Err(e) = importer.insert(&p.table, &p.columns, &batch).await {
                failed = Some(e);
                break;
            }
            written += batch.len() as u64;
        }
        // Dropping the receiver ends a reader still sending.
        drop(rx);
        let read = reader
            .join()
            .map_err(|_| MigrateError::Failed(format!("reading {}: panicked", p.table)))?;
        if let Some(e) = failed {
            return Err(MigrateError::Failed(format!(
                "{}: {}: {e}",
                p.file, p.table
            )));
        }
        let read =
            read.map_err(|e| MigrateError::Failed(format!("{}: {}: {e}", p.file, p.table)))?;
        if read != written {
            return Err(MigrateError::Failed(format!(
                "{}: read {read} rows, wrote {written}",
                p.table
            )));
        }
        tracing::info!(
            "{}: {}: {written} rows in {} ms",
            p.file,
            p.table,
            started.elapsed().as_millis()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(cols: &[(&str, bool)]) -> Vec<TargetColumn> {
        cols.iter()
            .map(|(n, optional)| TargetColumn {
                name: (*n).into(),
                data_type: "bigint".into(),
                optional: *optional,
            })
            .collect()
    }

    #[test]
    fn a_table_or_column_that_would_be_lost_stops_the_plan() {
        let src = |name: &str, cols: &[&str]| SourceTable {
            name: name.into(),
            columns: cols.iter().map(|c| (*c).to_owned()).collect(),
        };
        let mut targets = BTreeMap::new();
        targets.insert("a".to_owned(), target(&[("x", false), ("y", true)]));
        targets.insert(
            "job_output".to_owned(),
            target(&[("seq", false), ("job_ms", false)]),
        );
        let ok = vec![(
            "jobs.db".to_owned(),
            PathBuf::from("jobs.db"),
            vec![src("a", &["x"]), src("job_output", &["seq"])],
        )];
        let plans = plan(&ok, &targets).unwrap();
        assert_eq!(
            plans[0].columns.len(),
            1,
            "y is optional: left to its default"
        );
        assert_eq!(plans[1].columns.len(), 2, "job_ms is derived");

        for bad in [
            vec![src("b", &["x"])],
            vec![src("a", &["x", "z"])],
            vec![src("a", &["y"])],
        ] {
            let sources = vec![("t.db".to_owned(), PathBuf::from("t.db"), bad)];
            assert!(matches!(
                plan(&sources, &targets),
                Err(MigrateError::Failed(_))
            ));
        }
    }
}
