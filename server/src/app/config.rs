//! `serve` settings (flags and environment) and the data directory's files.
//!
//! The data directory holds everything a server instance keeps:
//!
//! ```text
//! <data-dir>/tether.db     SQLite (WAL: also tether.db-wal, tether.db-shm)
//!            metrics.db    host metrics (SQLite, WAL), apart from the control plane
//!            logs.db       container logs, collection cursors and settings
//!            jobs.db       scripts, sealed secrets, jobs and their output
//!            alerts.db     alert rules, channels (sealed), states, history
//!            fleet.db      labels, fleet policy, job deadlines, rollouts, schedules
//!            audit.db      the audit trail (append-only, hash-chained)
//!            secret.key    the key that opens sealed secrets (0600), unless
//!                          TETHER_SECRET_KEY is set; never in a database
//!            admin.token   the admin token, 0600, made on first start
//!            server.url    where this instance listens (rewritten each start)
//!            tls/          dev CA and leaf, when no certificate is configured
//!            releases/     uploaded releases, SQLite backend only (with
//!                          PostgreSQL they are rows: `db/releases.rs`)
//! ```
//!
//! All of it is private to the server's user: `serve` sets the umask to
//! 077 before it creates anything (directories 0700, files 0600, SQLite's
//! `-wal` and `-shm` included), and warns at start about any of these that
//! group or others can read (made by an older version, or by hand).

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};

use crate::common::auth;
use crate::common::files::write_private;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; see <data-dir>/server.url)
    #[arg(long, env = "TETHER_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,

    /// Directory for the database, the admin token and dev certificates
    #[arg(long, env = "TETHER_DATA_DIR", default_value = "./tether-data")]
    pub data_dir: PathBuf,

    /// Database: postgres://USER[:PASSWORD]@HOST[:PORT]/DB (default: the
    /// embedded SQLite files in --data-dir). The sealing key and the TLS
    /// files stay in --data-dir even with PostgreSQL (replicas: give each
    /// the same key and certificate)
    #[arg(long, env = "TETHER_DATABASE", hide_env_values = true)]
    pub database: Option<String>,

    /// PEM certificate chain (default: a dev CA under <data-dir>/tls)
    #[arg(long, env = "TETHER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(long, env = "TETHER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve plain HTTP, for use behind a TLS-terminating reverse proxy
    #[arg(
        long,
        env = "TETHER_PLAIN_HTTP",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new(),
        conflicts_with = "tls_cert"
    )]
    pub plain_http: bool,

    /// Admin token (default: read or create <data-dir>/admin.token)
    #[arg(long, env = "TETHER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// How long full-resolution metrics are kept (e.g. 24h, 2d)
    #[arg(long, env = "TETHER_METRICS_RAW_RETENTION", default_value = "24h", value_parser = parse_retention)]
    pub metrics_raw_retention: Duration,

    /// How long 1-minute metrics rollups are kept
    #[arg(long, env = "TETHER_METRICS_1M_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub metrics_1m_retention: Duration,

    /// How long 1-hour metrics rollups are kept
    #[arg(long, env = "TETHER_METRICS_1H_RETENTION", default_value = "90d", value_parser = parse_retention)]
    pub metrics_1h_retention: Duration,

    /// Container logs kept per container (default; per runner and per
    /// container through the API): max age
    #[arg(long, env = "TETHER_LOG_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub log_retention: Duration,

    /// How long audit trail entries are kept (`db/trail.rs`); older ones
    /// are removed hourly, oldest first, and the chain stays verifiable
    #[arg(long, env = "TETHER_AUDIT_RETENTION", default_value = "365d", value_parser = parse_retention)]
    pub audit_retention: Duration,

    /// Container logs kept per container: max bytes (K, M, G suffixes)
    #[arg(long, env = "TETHER_LOG_MAX_BYTES", default_value = "64M", value_parser = crate::common::http::parse_bytes)]
    pub log_max_bytes: u64,

    /// Which containers' logs runners collect by default: all, none,
    /// label:KEY or label:KEY=VALUE (per runner through the API)
    #[arg(long, env = "TETHER_LOG_COLLECT", default_value = "all", value_parser = parse_policy)]
    pub log_collect: crate::logs::CollectPolicy,

    /// Key file for sealed secrets (64 hex digits; made on first start).
    /// TETHER_SECRET_KEY (the hex key itself) takes precedence.
    #[arg(long, env = "TETHER_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,

    /// Minisign public keys (a .pub file, several for rotation) that the
    /// served install.sh writes on new hosts as their trusted update keys.
    #[arg(long, env = "TETHER_RELEASE_KEYS")]
    pub release_keys: Option<PathBuf>,

    /// The URL hosts and browsers reach this server at: install.sh's server
    /// URL, and the dashboard's WebSocket Origin behind a TLS-terminating
    /// proxy (default: the listening address; see --allowed-hosts)
    #[arg(long, env = "TETHER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Log level or filter (error, warn, info, debug, trace; or tracing directives)
    #[arg(long, env = "TETHER_LOG", default_value = "info")]
    pub log: String,

    /// Host names (host or host:port, comma-separated) whose Host header
    /// install.sh may use as the server URL when --public-url is unset
    /// (default: none; install.sh gets the listening address)
    #[arg(long, env = "TETHER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Open connections at most; more are closed as soon as accepted
    /// (also capped by the open-file limit)
    #[arg(long, env = "TETHER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Open connections at most from one client address (IPv6: one /64);
    /// behind a reverse proxy every connection comes from the proxy
    #[arg(
        long,
        env = "TETHER_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 512
    )]
    pub max_connections_per_address: usize,

    /// A request body must arrive within this, all of it (release uploads:
    /// 30 s between chunks instead)
    #[arg(long, env = "TETHER_BODY_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub body_timeout: Duration,

    /// Dashboard logins per minute from one client address (bursts of 10; 0: no limit)
    #[arg(long, env = "TETHER_LOGIN_RATE", default_value_t = 30)]
    pub login_rate: u32,

    /// Runner enrollments per minute from one client address (bursts of 60,
    /// for a fleet behind one NAT; 0: no limit)
    #[arg(long, env = "TETHER_ENROLL_RATE", default_value_t = 120)]
    pub enroll_rate: u32,

    /// Password checks that may wait (5 s at most) for one of the 2
    /// hashing slots; more are answered 503 with Retry-After
    #[arg(long, env = "TETHER_HASH_QUEUE", default_value_t = 16)]
    pub hash_queue: usize,

    /// Let alert channels reach loopback and private addresses (refused
    /// by default: a tenant admin could otherwise make the server probe
    /// its own network; see alerts/notify.rs)
    #[arg(long, env = "TETHER_ALERT_PRIVATE_TARGETS")]
    pub alert_private_targets: bool,
    #[command(flatten)]
    pub quotas: QuotaArgs,

    /// One replica of several (`cluster/config.rs`)
    #[command(flatten)]
    pub cluster: crate::cluster::config::ClusterArgs,
}

/// A timeout in whole seconds or minutes (`30s`, `2m`), 1 s to 1 h.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs = crate::common::clock::parse_ttl(s)?;
    if !(1..=3600).contains(&secs) {
        return Err(format!("timeout {s:?} must be between 1s and 1h"));
    }
    Ok(Duration::from_secs(secs))
}

/// Per-tenant limits and job retention (`common/quotas.rs`): what one tenant may
/// take of what all share.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    /// Terminal sessions open (or opening) at once per tenant
    #[arg(long, env = "TETHER_MAX_TERMINALS_PER_TENANT", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_terminals_per_tenant: u32,

    /// Jobs and deploys pending, queued or running at once per tenant
    #[arg(long, env = "TETHER_MAX_JOBS_PER_TENANT", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_jobs_per_tenant: u32,

    /// Output stored per job (K, M, G suffixes); the rest is dropped and
    /// a `[tether] output truncated` line marks the cut
    #[arg(long, env = "TETHER_JOB_OUTPUT_MAX_BYTES", default_value = "64M", value_parser = crate::common::http::parse_bytes)]
    pub job_output_max_bytes: u64,

    /// Finished jobs and their output are deleted after this long (deploys
    /// keep their row for rollback)
    #[arg(long, env = "TETHER_JOB_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub job_retention: Duration,

    /// Job output kept per tenant; the oldest finished jobs' output goes first
    #[arg(long, env = "TETHER_JOB_MAX_BYTES_PER_TENANT", default_value = "1G", value_parser = crate::common::http::parse_bytes)]
    pub job_max_bytes_per_tenant: u64,

    /// Terminal recordings are deleted this long after their session started
    #[arg(long, env = "TETHER_RECORDING_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub recording_retention: Duration,
}

impl QuotaArgs {
    pub fn quotas(&self) -> crate::common::quotas::Quotas {
        crate::common::quotas::Quotas {
            terminals_per_tenant: self.max_terminals_per_tenant as usize,
            active_jobs_per_tenant: self.max_jobs_per_tenant as usize,
            job_output_bytes: self.job_output_max_bytes,
            job_retention: self.job_retention,
            job_bytes_per_tenant: self.job_max_bytes_per_tenant,
            recording_retention: self.recording_retention,
        }
    }
}

/// A retention: `30m`, `24h`, `7d`, at least a minute.
fn parse_retention(s: &str) -> Result<Duration, String> {
    let secs = crate::common::clock::parse_ttl(s)?;
    if secs < 60 {
        return Err(format!("retention {s:?} is shorter than a minute"));
    }
    Ok(Duration::from_secs(secs))
}

fn parse_policy(s: &str) -> Result<crate::logs::CollectPolicy, String> {
    crate::logs::CollectPolicy::parse(s)
}

/// From here on, everything this process creates is its user's alone
/// (directories 0700, files 0600), whatever mode the code asks for:
/// databases, their `-wal`/`-shm`, keys, and files written later.
pub fn private_umask() {
    // SAFETY: umask only swaps the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Make the data directory (and missing parents) 0700.
pub fn create_data_dir(data: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
}

/// The data directory, its databases, keys and TLS files, and `extra`
/// (a key file kept elsewhere), each with its mode, if group or others may
/// read or enter it. Releases and `server.url` are public anyway.
pub fn readable_by_others(data: &Path, extra: &[&Path]) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut paths = vec![data.to_owned()];
    for dir in [data.to_owned(), data.join("tls")] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        paths.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| !p.ends_with("releases") && !p.ends_with("server.url")),
        );
    }
    paths.extend(extra.iter().map(|p| p.to_path_buf()));
    paths
        .into_iter()
        .filter_map(|p| {
            let mode = fs::metadata(&p).ok()?.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then_some((p, mode))
        })
        .collect()
}

/// Where the admin token came from.
pub enum AdminToken {
    Configured(String),
    File {
        token: String,
        path: PathBuf,
        created: bool,
    },
}

impl AdminToken {
    pub fn secret(&self) -> &str {
        match self {
            AdminToken::Configured(t) | AdminToken::File { token: t, .. } => t,
        }
    }
}

/// The configured admin token, or the one in `<data>/admin.token` (made if missing).
pub fn admin_token(configured: Option<&str>, data_dir: &Path) -> io::Result<AdminToken> {
    if let Some(t) = configured.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(AdminToken::Configured(t.to_owned()));
    }
    let path = data_dir.join("admin.token");
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => {
            return Ok(AdminToken::File {
                token: s.trim().to_owned(),
                path,
                created: false,
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = auth::new_secret(auth::ADMIN_PREFIX).map_err(io::Error::other)?;
    write_private(&path, token.as_bytes())?;
    Ok(AdminToken::File {
        token,
        path,
        created: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_readable_by_others_are_found() {
        let dir = std::env::temp_dir().join(format!("tether-modes-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        create_data_dir(&dir.join("data")).unwrap();
        let data = dir.join("data");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert!(readable_by_others(&data, &[]).is_empty());
        fs::write(data.join("tether.db"), "x").unwrap();
        fs::set_permissions(data.join("tether.db"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(data.join("server.url"), "x").unwrap();
        fs::set_permissions(data.join("server.url"), fs::Permissions::from_mode(0o644)).unwrap();
        let found = readable_by_others(&data, &[]);
        assert_eq!(found, vec![(data.join("tether.db"), 0o644)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn admin_token_is_made_once_and_private() {
        let dir = std::env::temp_dir().join(format!("tether-config-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let a = admin_token(None, &dir).unwrap();
        assert!(matches!(a, AdminToken::File { created: true, .. }));
        assert!(a.secret().starts_with("tadm_"));
        let b = admin_token(None, &dir).unwrap();
        assert!(matches!(b, AdminToken::File { created: false, .. }));
        assert_eq!(a.secret(), b.secret());
        let mode = fs::metadata(dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let c = admin_token(Some("tadm_configured"), &dir).unwrap();
        assert_eq!(c.secret(), "tadm_configured");
        fs::remove_dir_all(&dir).unwrap();
    }
}
