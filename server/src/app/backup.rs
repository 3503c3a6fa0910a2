//! `tether-server backup`: a consistent online copy of a data directory.
//!
//! Every SQLite file (`*.db`) is copied with `VACUUM INTO`
//! (`db/sqlite/backup.rs`) while the server goes on running; beside them
//! go the files the databases cannot be used without: the sealing key
//! (`secret.key`, or `--secret-key-file`), `admin.token`, the dev CA and
//! certificate (`tls/`, which runners trust) and uploaded releases. Each
//! file is consistent by itself; the files are taken one after another, so
//! a row written between two copies is in one and not the other, as after
//! a crash, which the server already tolerates on start.
//!
//! The copy is built in a hidden sibling directory and renamed into place
//! at the end: a `--to` directory either holds a whole backup or nothing.
//! Restoring is copying it to a fresh data directory and serving from
//! there (README, "Backup and restore").

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::db::sqlite::backup::snapshot;

/// Exit codes of `backup` and `migrate` (said in their `--help`).
pub mod exit {
    /// Done (for `migrate`: every count matched).
    pub const OK: u8 = 0;
    /// Failed: I/O, a database error, an unreadable source.
    pub const FAILED: u8 = 1;
    // 2: a usage error (clap).
    /// Refused before writing anything: the target is not empty (no
    /// `--force`), or the source server is running.
    pub const REFUSED: u8 = 3;
    /// `migrate` copied, but a table's count differs between the two.
    pub const MISMATCH: u8 = 4;
}

const EXIT_HELP: &str = "Exit status: 0 done; 1 failed (nothing at --to is left half-written); \
2 usage; 3 refused (--to exists and is not empty)";

#[derive(Debug, Args)]
#[command(after_help = EXIT_HELP)]
pub struct BackupArgs {
    /// The server's data directory (the server may be running)
    #[arg(long, env = "TETHER_DATA_DIR", default_value = "./tether-data")]
    pub data_dir: PathBuf,

    /// Where to put the copy: a new or empty directory (made 0700)
    #[arg(long)]
    pub to: PathBuf,

    /// The sealing key when it is kept outside the data dir (as serve's
    /// flag); copied as secret.key
    #[arg(long, env = "TETHER_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
}

/// Why a backup stopped.
#[derive(Debug)]
pub enum BackupError {
    Refused(String),
    Failed(String),
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupError::Refused(m) | BackupError::Failed(m) => f.write_str(m),
        }
    }
}

fn failed(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> BackupError {
    move |e| BackupError::Failed(format!("{what}: {e}"))
}

/// One file of the backup: its path inside the backup and its size.
pub struct Copied {
    pub name: String,
    pub bytes: u64,
}

pub fn main(args: BackupArgs) -> ExitCode {
    super::serve::init_logging(&std::env::var("TETHER_LOG").unwrap_or_else(|_| "info".into()));
    match backup(&args) {
        Ok(files) => {
            let total: u64 = files.iter().map(|f| f.bytes).sum();
            for f in &files {
                println!("{:<24} {:>12}", f.name, f.bytes);
            }
            println!(
                "backup of {} complete: {} files, {total} bytes in {}",
                args.data_dir.display(),
                files.len(),
                args.to.display()
            );
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            tracing::error!("backup: {e}");
            ExitCode::from(match e {
                BackupError::Refused(_) => exit::REFUSED,
                BackupError::Failed(_) => exit::FAILED,
            })
        }
    }
}

/// Copy `args.data_dir` into `args.to`; the files copied, in order.
pub fn backup(args: &BackupArgs) -> Result<Vec<Copied>, BackupError> {
    let data = &args.data_dir;
    if !data.join("tether.db").is_file() {
        return Err(BackupError::Failed(format!(
            "{} is not a data directory (no tether.db)",
            data.display()
        )));
    }
    if is_nonempty_dir(&args.to) {
        return Err(BackupError::Refused(format!(
            "{} exists and is not empty; back up into a new directory",
            args.to.display()
        )));
    }
    super::config::private_umask();
    let parent = match args.to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = args
        .to
        .file_name()
        .ok_or_else(|| BackupError::Failed(format!("--to {}: no name", args.to.display())))?;
    let work = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&work);
    super::config::create_data_dir(&work)
        .map_err(failed(format!("creating {}", work.display())))?;
    let result = fill(args, &work).and_then(|files| {
        sync_dir(&work).map_err(failed("syncing the copy"))?;
        // An existing empty directory is replaced whole by the rename.
        fs::rename(&work, &args.to)
            .map_err(failed(format!("moving the copy to {}", args.to.display())))?;
        sync_dir(&parent).map_err(failed("syncing the target's directory"))?;
        Ok(files)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&work);
    }
    result
}

fn fill(args: &BackupArgs, work: &Path) -> Result<Vec<Copied>, BackupError> {
    let data = &args.data_dir;
    let mut files = Vec::new();
    // The databases: every *.db, so a file a later build adds is included.
    let mut dbs: Vec<PathBuf> = fs::read_dir(data)
        .map_err(failed(format!("reading {}", data.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "db") && p.is_file())
        .collect();
    dbs.sort();
    for db in dbs {
        let name = db
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let bytes = snapshot(&db, &work.join(&name))
            .map_err(|e| BackupError::Failed(format!("copying {}: {e}", db.display())))?;
        tracing::info!("{name}: {bytes} bytes");
        files.push(Copied { name, bytes });
    }

    // The sealing key: without it no sealed secret or channel opens.
    let key = args
        .secret_key_file
        .clone()
        .unwrap_or_else(|| data.join("secret.key"));
    if key.is_file() {
        files.push(copy_file(&key, work, "secret.key")?);
    } else if std::env::var_os("TETHER_SECRET_KEY").is_some() {
        tracing::warn!(
            "the sealing key is in TETHER_SECRET_KEY, not in a file: keep it with this \
             backup yourself (without it the sealed secrets in the copy cannot be opened)"
        );
    } else {
        tracing::warn!("no sealing key at {} (nothing sealed yet?)", key.display());
    }
    if data.join("admin.token").is_file() {
        files.push(copy_file(&data.join("admin.token"), work, "admin.token")?);
    }
    for dir in ["tls", "releases"] {
        let from = data.join(dir);
        if from.is_dir() {
            copy_tree(&from, &work.join(dir), dir, &mut files)?;
        }
    }
    Ok(files)
}

fn copy_file(from: &Path, work: &Path, name: &str) -> Result<Copied, BackupError> {
    let to = work.join(name);
    let bytes = fs::copy(from, &to).map_err(failed(format!("copying {}", from.display())))?;
    fs::File::open(&to)
        .and_then(|f| f.sync_all())
        .map_err(failed(format!("syncing {}", to.display())))?;
    Ok(Copied {
        name: name.to_owned(),
        bytes,
    })
}

/// Regular files of `from` (recursively), named `prefix/…` in the list.
fn copy_tree(
    from: &Path,
    to: &Path,
    prefix: &str,
    files: &mut Vec<Copied>,
) -> Result<(), BackupError> {
    super::config::create_data_dir(to).map_err(failed(format!("creating {}", to.display())))?;
    let mut entries: Vec<_> = fs::read_dir(from)
        .map_err(failed(format!("reading {}", from.display())))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let ty = e
            .file_type()
            .map_err(failed(format!("reading {}", path.display())))?;
        if ty.is_dir() {
            copy_tree(&path, &to.join(&name), &format!("{prefix}/{name}"), files)?;
        } else if ty.is_file() {
            let mut c = copy_file(&path, to, &name)?;
            c.name = format!("{prefix}/{name}");
            files.push(c);
        }
    }
    sync_dir(to).map_err(failed(format!("syncing {}", to.display())))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn is_nonempty_dir(p: &Path) -> bool {
    match fs::read_dir(p) {
        Ok(mut entries) => entries.next().is_some(),
        // Not a directory at all but something is there: not ours to replace.
        Err(_) => p.exists(),
    }
}

/// Whether a server answers at the address `<data>/server.url` names (the
/// file stays after a stop, so only a live answer counts).
pub fn server_running(data: &Path) -> Option<String> {
    let url = fs::read_to_string(data.join("server.url")).ok()?;
    let url = url.trim();
    let addr = url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let addr: std::net::SocketAddr = addr.trim_end_matches('/').parse().ok()?;
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
        .ok()
        .map(|_| url.to_owned())
}
