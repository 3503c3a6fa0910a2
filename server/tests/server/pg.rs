//! A real PostgreSQL for the tests: Debian's server binaries
//! (`/usr/lib/postgresql/*/bin`, package `postgresql`), a private cluster
//! in a temp dir on a free loopback port, started once per test process
//! (nextest runs each test in its own) and stopped when the process exits.
//! Each test gets its own database (`CREATE DATABASE`), so tests never see
//! each other's rows.
//!
//! As root (the dev container) the cluster runs as `nobody`: PostgreSQL
//! refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::util::free_port;

struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
/// What the exit hook stops: (bin dir, data dir).
static STOP: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The newest installed server's bin dir.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (packaging/dev-setup.sh: postgresql)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("pg_ctl").exists())
        .collect();
    // Versions are whole numbers: compare them as numbers.
    found.sort_by_key(|b| {
        b.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `bin/tool args…`, as `nobody` when we are root.
fn run(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
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

extern "C" fn stop_at_exit() {
    let stop = STOP.lock().map(|mut s| s.take()).unwrap_or(None);
    if let Some((bin, dir)) = stop {
        let data = dir.join("data");
        run(
            &bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A new directory for a cluster, owned by the user it runs as.
fn cluster_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tether-pg{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    chown_nobody(&dir);
    dir
}

fn chown_nobody(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["nobody:"])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success(), "chown nobody {}", path.display());
    }
}

fn initdb(bin: &Path, dir: &Path) {
    let data = dir.join("data");
    let out = run(
        bin,
        "initdb",
        &[
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "tether",
            "--no-sync",
        ],
    );
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start on a free port (chosen again if taken between choosing and
/// binding); the port.
fn start_on_a_free_port(bin: &Path, dir: &Path, extra: &str) -> u16 {
    for _ in 0..3 {
        let port = free_port();
        if pg_ctl_start(bin, dir, port, extra).status.success() {
            return port;
        }
    }
    panic!(
        "pg_ctl start failed: {}",
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
}

fn start() -> Cluster {
    let bin = bin_dir();
    let dir = cluster_dir("");
    initdb(&bin, &dir);
    *STOP.lock().unwrap() = Some((bin.clone(), dir.clone()));
    // SAFETY: registers a plain extern "C" function, once per process.
    unsafe { libc::atexit(stop_at_exit) };
    let port = start_on_a_free_port(&bin, &dir, "");
    Cluster { dir, bin, port }
}

fn pg_ctl_start(bin: &Path, dir: &Path, port: u16, extra: &str) -> std::process::Output {
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {extra}",
        dir.display()
    );
    let data = dir.join("data");
    let log = dir.join("log");
    run(
        bin,
        "pg_ctl",
        &[
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ],
    )
}

/// Stop this process's cluster (fast: open connections are cut), as a
/// database outage looks to the server.
pub fn stop() {
    let c = CLUSTER.get().expect("the cluster was started");
    let data = c.dir.join("data");
    let out = run(
        &c.bin,
        "pg_ctl",
        &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
    );
    assert!(
        out.status.success(),
        "pg_ctl stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start the stopped cluster again on its port.
pub fn restart() {
    let c = CLUSTER.get().expect("the cluster was started");
    let out = pg_ctl_start(&c.bin, &c.dir, c.port, "");
    assert!(
        out.status.success(),
        "pg_ctl start: {}",
        std::fs::read_to_string(c.dir.join("log")).unwrap_or_default()
    );
}

/// The URL of a new, empty database of this process's cluster.
pub async fn fresh_database() -> String {
    let c = CLUSTER.get_or_init(start);
    let _ = (&c.dir, &c.bin);
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    let name = format!("t{}_{n}", std::process::id());
    let admin = format!("postgres://tether@127.0.0.1:{}/postgres", c.port);
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    format!("postgres://tether@127.0.0.1:{}/{name}", c.port)
}

/// A cluster of its own that takes TLS only (pg_hba: `hostssl` trust,
/// `hostnossl` reject), its certificate for `localhost` (not 127.0.0.1)
/// signed by the CA in `ca`; `other_ca` signed nothing here. Stopped and
/// removed on drop.
pub struct TlsCluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
}

impl TlsCluster {
    pub fn start() -> TlsCluster {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let bin = bin_dir();
        let dir = cluster_dir("tls");
        initdb(&bin, &dir);
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("tether test database CA");
        let (other_pem, _) = ca("another CA");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let data = dir.join("data");
        for (name, text) in [
            ("server.crt", leaf.pem()),
            ("server.key", leaf_key.serialize_pem()),
        ] {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            chown_nobody(&path);
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        let (ca, other_ca) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&other_ca, other_pem).unwrap();
        let port = start_on_a_free_port(&bin, &dir, "-c ssl=on");
        TlsCluster {
            dir,
            bin,
            port,
            ca,
            other_ca,
        }
    }

    /// A database URL of this cluster (`host`: localhost or 127.0.0.1)
    /// with `params` after the `?`.
    pub fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://tether@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        run(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
