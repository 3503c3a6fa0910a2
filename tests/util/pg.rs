//! A private PostgreSQL cluster for the workspace tests and benchmarks:
//! Debian's server binaries (`/usr/lib/postgresql/*/bin`, package
//! `postgresql`, installed by `packaging/dev-setup.sh`), initdb'd in a temp
//! dir and listening on a free loopback port; stopped and removed on drop.
//! As root (the dev container) it runs as `nobody`: PostgreSQL refuses root.

use super::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
    /// The server options of the first start, kept for [`Postgres::start_again`].
    opts: String,
}

impl Postgres {
    /// initdb (trust on loopback, user `tether`) and start; panics with
    /// PostgreSQL's own log when it cannot.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = TempDir::new("pg");
        if is_root() {
            let ok = Command::new("chown")
                .arg("nobody:")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown nobody {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let data_arg = data.to_str().unwrap();
        let out = run(
            &bin,
            "initdb",
            &["-D", data_arg, "-A", "trust", "-U", "tether", "--no-sync"],
        );
        assert!(out.status.success(), "initdb: {}", stderr(&out));
        // A port taken between choosing and binding: choose again.
        for _ in 0..3 {
            let port = super::free_port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                dir.path().display()
            );
            let log = dir.path().join("log");
            let out = run(
                &bin,
                "pg_ctl",
                &[
                    "-D",
                    data_arg,
                    "-o",
                    &opts,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "start",
                ],
            );
            if out.status.success() {
                return Postgres {
                    bin,
                    dir,
                    port,
                    opts,
                };
            }
        }
        panic!(
            "pg_ctl start failed: {}",
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
    }

    /// The cluster's default database, for one server (or several replicas).
    pub fn url(&self) -> String {
        format!("postgres://tether@127.0.0.1:{}/postgres", self.port)
    }

    /// A new, empty database `name`; its URL.
    pub fn database(&self, name: &str) -> String {
        let port = self.port.to_string();
        let out = run(
            &self.bin,
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "tether", name],
        );
        assert!(out.status.success(), "createdb: {}", stderr(&out));
        format!("postgres://tether@127.0.0.1:{}/{name}", self.port)
    }

    /// `psql -tAc SQL` on database `db`: its output, trimmed.
    pub fn query(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = run(
            &self.bin,
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "tether",
                "-d",
                db,
                "-tAc",
                sql,
            ],
        );
        assert!(out.status.success(), "psql: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Postgres {
    /// Stop the cluster now (`-m immediate`: as if the machine were lost).
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        run(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

impl Postgres {
    /// `pg_ctl stop -m fast`: sessions ended, a clean shutdown (an
    /// operator's restart), waiting until it is down.
    pub fn stop_fast(&self) {
        let data = self.dir.path().join("data");
        let out = run(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
        assert!(out.status.success(), "pg_ctl stop: {}", stderr(&out));
    }

    /// Start again after a stop, on the same port and options.
    pub fn start_again(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let out = run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &self.opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start again: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        run(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

/// The newest installed server's bin dir.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (packaging/dev-setup.sh: postgresql)")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let version = path.file_name()?.to_str()?.parse::<u32>().ok()?;
            Some((version, path.join("bin")))
        })
        .filter(|(_, b)| b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql/*/bin")
        .1
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `bin/tool args…`, as `nobody` when we are root.
fn run(bin: &Path, tool: &str, args: &[&str]) -> Output {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).output().expect("run a PostgreSQL tool")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
