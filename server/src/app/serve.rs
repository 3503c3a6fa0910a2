//! `tether-server serve`: start-up, the accept loop, and shutdown.
//!
//! ```text
//! data dir ─▶ storage, metrics store ─▶ admin token ─▶ TLS identity ─▶ bind
//!   ─▶ "server restarted" ─▶ server.url + "listening on" ─▶ accept loop
//!   ──SIGTERM/SIGINT──▶ close every runner with 1001, wait for them (bounded) ─▶ exit 0
//! ```
//!
//! Beside the accept loop: last-seen flushes every 5 s, the scheduler, the
//! audit WAL checkpoint, and the once-only work: metrics maintenance
//! (rollups, retention) and container log retention every minute, job
//! retention, audit trail retention, job deadlines, the rollout driver and
//! health alert evaluation (on a replica of several: only while it holds
//! the once-only lease, `cluster/lease.rs`, and on the next holder when it
//! dies; its links are kept by `app/cluster.rs`).
//!
//! Each accepted TCP connection gets its own task: TLS handshake under a 10 s
//! timeout, then hyper (HTTP/1.1 with upgrades) with a header-read timeout; the body's deadline is a layer of the app (`common/edge.rs`). A silent
//! or broken client costs one task and is dropped on time; nothing it does
//! reaches the accept loop or other connections. Connections over the caps
//! of `common/edge.rs` (in all, per address) are closed as soon as accepted.

use std::fmt;
use std::future::Future;
use std::io::{self, IsTerminal};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::alerts::notify::Tuning as AlertTuning;
use crate::app::config::{self, AdminToken, ServeArgs};
use crate::app::forward::ForwardCtx;
use crate::app::tls::{self, TlsError};
use crate::app::{app, AppState, Tuning};
use crate::cluster::internal::Peers;
use crate::common::edge::{Edge, EdgeConfig, PeerAddr};
use crate::common::secrets::SecretBox;
use crate::db::logs::LogRetention;
use crate::db::metrics::Retention;
use crate::db::StorageError;
use crate::link::registry::CloseOrder;
use crate::updates::ReleaseConfig;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Also the idle limit of a kept-alive HTTP/1.1 connection: hyper starts
/// this timer when it waits for the next request, so a client must not reuse
/// a connection idle for longer (our CLI and test clients stop at 5 s).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often last-seen times of connected runners are written to storage.
const LAST_SEEN_FLUSH: Duration = Duration::from_secs(5);
/// How often metrics are rolled up and expired.
const METRICS_MAINTENANCE: Duration = Duration::from_secs(60);
/// How long shutdown waits for runner connections to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum ServeError {
    Io(String, io::Error),
    Storage(StorageError),
    Tls(TlsError),
    Secrets(crate::common::secrets::SecretError),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Io(what, e) => write!(f, "{what}: {e}"),
            ServeError::Storage(e) => write!(f, "storage: {e}"),
            ServeError::Tls(e) => write!(f, "{e}"),
            ServeError::Secrets(e) => write!(f, "sealed secrets: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

impl From<StorageError> for ServeError {
    fn from(e: StorageError) -> Self {
        ServeError::Storage(e)
    }
}

impl From<TlsError> for ServeError {
    fn from(e: TlsError) -> Self {
        ServeError::Tls(e)
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServeError {
    let what = what.into();
    move |e| ServeError::Io(what, e)
}

pub fn main(args: ServeArgs) -> ExitCode {
    // A usage error, as clap's: before anything is opened or logged.
    let cluster = match crate::cluster::config::resolve(&args.cluster, args.database.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    bound_malloc_arenas();
    init_logging(&args.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, cluster)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (`serve`, `backup`, `migrate`).
pub(crate) fn init_logging(filter: &str) {
    // tokio-postgres logs every statement at DEBUG: `TETHER_LOG=debug` means
    // this server's debug lines, so its own stay at INFO unless named.
    let quieted = if filter.contains("tokio_postgres") {
        filter.to_owned()
    } else {
        format!("{filter},tokio_postgres=info")
    };
    let env_filter = tracing_subscriber::EnvFilter::try_new(&quieted);
    let bad_filter = env_filter.is_err();
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .with_env_filter(env_filter.unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
        .init();
    if bad_filter {
        tracing::warn!("invalid log filter {filter:?}; using info");
    }
}

async fn serve(
    args: ServeArgs,
    cluster: Option<crate::cluster::config::ClusterConfig>,
) -> Result<(), ServeError> {
    let data = args.data_dir.clone();
    // Before anything is created: job output, scripts, sessions and keys
    // are nobody else's business on this host.
    config::private_umask();
    config::create_data_dir(&data).map_err(io_err(format!("creating {}", data.display())))?;
    let options = crate::db::sqlite::Options {
        metrics_retention: Retention::from_durations(
            args.metrics_raw_retention,
            args.metrics_1m_retention,
            args.metrics_1h_retention,
        ),
        log_retention: LogRetention {
            max_age_s: i64::try_from(args.log_retention.as_secs()).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(args.log_max_bytes).unwrap_or(i64::MAX),
        },
        log_collect: args.log_collect.clone(),
    };
    let mut cluster_store = None;
    let db = match args.database.as_deref() {
        None => crate::db::sqlite::open(&data, &options)?,
        Some(url) if crate::db::postgres::is_postgres_url(url) => {
            let pg = crate::db::postgres::Postgres::connect(url).await?;
            tracing::info!(
                "database: PostgreSQL {}",
                crate::db::postgres::redacted(url)
            );
            cluster_store = Some(pg.cluster());
            pg.db(&options)
        }
        Some(_) => {
            return Err(ServeError::Storage(crate::db::StorageError::Backend(
                "--database: only postgres:// or postgresql:// URLs are supported".into(),
            )))
        }
    };

    let admin =
        config::admin_token(args.admin_token.as_deref(), &data).map_err(io_err("admin token"))?;
    match &admin {
        AdminToken::Configured(_) => tracing::info!("admin token: from configuration"),
        AdminToken::File {
            path,
            created: true,
            ..
        } => {
            tracing::info!("admin token: created {} (0600)", path.display())
        }
        AdminToken::File {
            path,
            created: false,
            ..
        } => tracing::info!("admin token: {}", path.display()),
    }

    // The internal listener of a replica speaks TLS even when the public
    // one does not (`cluster/internal.rs`).
    let tls_files = if args.plain_http && cluster.is_none() {
        None
    } else {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let dev = tls::ensure_dev_certs(&data)?;
                if dev.created {
                    tracing::info!(
                        "created a dev certificate; runners and the CLI trust it with --ca-file {}",
                        dev.ca.display()
                    );
                } else {
                    tracing::info!(
                        "dev certificate: {} (CA {})",
                        dev.cert.display(),
                        dev.ca.display()
                    );
                }
                (dev.cert, dev.key)
            }
        };
        Some((cert, key))
    };
    let acceptor = match &tls_files {
        _ if args.plain_http => {
            tracing::warn!("serving plain HTTP: only behind a TLS-terminating reverse proxy");
            None
        }
        Some((cert, key)) => Some(TlsAcceptor::from(tls::server_config(cert, key)?)),
        None => None,
    };

    // Handlers before anything announces the server, so a SIGTERM sent as
    // soon as server.url appears is a clean shutdown, not a kill.
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("SIGTERM handler"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("SIGINT handler"))?;

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(io_err(format!("listening on {}", args.listen)))?;
    let local = listener.local_addr().map_err(io_err("local address"))?;

    let key_file = args
        .secret_key_file
        .clone()
        .unwrap_or_else(|| data.join("secret.key"));
    let secrets = SecretBox::load(
        std::env::var("TETHER_SECRET_KEY").ok().as_deref(),
        &key_file,
    )
    .map_err(ServeError::Secrets)?;
    let install_keys = match &args.release_keys {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(io_err(format!("reading --release-keys {}", p.display())))?,
        ),
        None => None,
    };
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", url_addr(local));
    let releases = ReleaseConfig {
        install_keys,
        public_url: args.public_url.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
        listen_url: Some(url.clone()),
    };
    let edge = EdgeConfig {
        max_connections: connection_budget(args.max_connections),
        max_connections_per_address: args.max_connections_per_address,
        body_timeout: args.body_timeout,
        login_per_minute: args.login_rate,
        enroll_per_minute: args.enroll_rate,
        hash_queue: args.hash_queue,
        tls: acceptor.is_some(),
        ..EdgeConfig::default()
    };
    let mut state = AppState::new(db, Arc::new(secrets), admin.secret(), Tuning::default())
        .with_releases(releases)
        .with_alert_tuning(AlertTuning {
            allow_private: args.alert_private_targets,
            ..AlertTuning::default()
        })
        .with_quotas(args.quotas.quotas())
        .with_edge(edge);
    crate::audit::spawn_checkpoints(state.audit.clone());
    match crate::fleet::labels::migrate_groups(&FromRef::from_ref(&state)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("{n} runner group(s) became group labels"),
        Err(e) => tracing::error!("turning runner groups into labels: {}", e.message),
    }
    let mut replica_tasks = Vec::new();
    let mut replica = None;
    let mut internal = None;
    if let (Some(config), Some(store), Some((cert, key))) = (&cluster, cluster_store, &tls_files) {
        let (joined, tasks) = super::cluster::join(&state, config, store.clone()).await?;
        replica_tasks = tasks;
        replica = Some(joined.clone());
        let der = tls::load_certs(cert)?.into_iter().next().ok_or_else(|| {
            io_err(format!("{}", cert.display()))(io::Error::other("no certificate"))
        })?;
        let peers = Arc::new(Peers::new(&config.replica_id, &config.key, der.as_ref()));
        state.forward = Some(Arc::new(ForwardCtx {
            peers: peers.clone(),
            replica: joined.clone(),
            store,
            registry: state.registry.clone(),
            auth: FromRef::from_ref(&state),
            db: state.db.clone(),
        }));
        let listener = TcpListener::bind(&config.internal_addr)
            .await
            .map_err(io_err(format!(
                "listening on --internal-addr {}",
                config.internal_addr
            )))?;
        let acceptor = TlsAcceptor::from(tls::server_config(cert, key)?);
        internal = Some((listener, acceptor, peers));
        tracing::info!(
            "replica {} of a cluster (internal address {})",
            config.replica_id,
            config.internal_addr
        );
    }
    let stale = state.health.server_restarted().await?;
    if stale > 0 {
        tracing::info!("{stale} runner(s) were active before the restart: now unreachable until they reconnect");
    }

    // Keys kept outside the data dir are checked too.
    let extra: Vec<&std::path::Path> = [Some(key_file.as_path()), args.tls_key.as_deref()]
        .into_iter()
        .flatten()
        .filter(|p| !p.starts_with(&data))
        .collect();
    for (path, mode) in config::readable_by_others(&data, &extra) {
        tracing::warn!(
            "{} is mode {mode:o}: group or others can read it (chmod go-rwx {0})",
            path.display()
        );
    }
    let url_file: PathBuf = data.join("server.url");
    crate::common::files::write_atomic(&url_file, url.as_bytes(), 0o644)
        .map_err(io_err(format!("writing {}", url_file.display())))?;
    tracing::info!("listening on {url}");

    let flusher = tokio::spawn(flush_last_seen(state.clone()));
    // Work on the shared data done once: here, or on the replica that
    // holds the lease (`cluster/lease.rs`), moving when it dies: metrics
    // and job retention, audit trail retention, job deadlines, rollouts
    // (driven from their stored state: the next holder goes on where the
    // last one was, `fleet/rollout.rs`), and the evaluation of health
    // alerts (only the holder's engine hears health changes, every
    // replica's, so one notification goes out; `runners/health.rs`).
    // Not here: schedules are claimed per occurrence in the store; alert
    // rules on what a runner reports are evaluated where it is linked (its
    // reports arrive there and nowhere else); the audit WAL checkpoint is
    // each process's own SQLite file.
    let audit_retention = args.audit_retention;
    let once_only = {
        let state = state.clone();
        move || {
            let mut tasks = vec![
                tokio::spawn(maintain_metrics(state.clone())),
                tokio::spawn(crate::common::quotas::retain_jobs(
                    state.db.clone(),
                    state.quotas,
                )),
                tokio::spawn(crate::audit::retain(state.audit.clone(), audit_retention)),
                tokio::spawn(evaluate_health_alerts(
                    state.health.clone(),
                    state.alerts.clone(),
                )),
            ];
            tasks.extend(crate::fleet::spawn_once_only(&FromRef::from_ref(&state)));
            tasks
        }
    };
    let once_only_tasks = match &replica {
        Some(r) => vec![r.once_only(once_only)],
        None => once_only(),
    };
    let fleet = crate::fleet::spawn(&FromRef::from_ref(&state));
    // Per process: the runners held here are nudged if a job waits for them.
    let jobs_sweep = tokio::spawn(crate::jobs::link::sweep(
        state.db.jobs.clone(),
        state.registry.clone(),
    ));
    // Other replicas' requests: the same routes behind the gate (`app/forward.rs`).
    let internal_task = internal.map(|(listener, acceptor, peers)| {
        // Plus the internal-only routes: the terminal relay between
        // replicas (`terminals/relay.rs`).
        let routes = app(state.clone())
            .merge(crate::terminals::relay::routes().with_state(state.clone()))
            .layer(axum::middleware::from_fn_with_state(
                peers,
                super::forward::gate,
            ));
        // Its own connection caps: every forwarded request comes from a
        // replica's one address, which the public per-address cap would
        // throttle; the whole budget is the bound here.
        let config = state.edge.config.clone();
        let edge = Arc::new(Edge::new(EdgeConfig {
            max_connections_per_address: config.max_connections,
            ..config
        }));
        tokio::spawn(async move {
            accept_loop(
                listener,
                Some(acceptor),
                routes,
                edge,
                std::future::pending(),
            )
            .await
        })
    });
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    accept_loop(
        listener,
        acceptor,
        app(state.clone()),
        state.edge.clone(),
        shutdown,
    )
    .await;

    flusher.abort();
    jobs_sweep.abort();
    if let Some(t) = internal_task {
        t.abort();
    }
    for task in fleet
        .into_iter()
        .chain(replica_tasks)
        .chain(once_only_tasks)
    {
        task.abort();
    }
    if let Some(r) = &replica {
        let released = r.stopping().await;
        tracing::info!(
            "released {} link(s): their runners reconnect to another replica",
            released.len()
        );
        state.health.announce(released);
    }
    if let Err(e) = state.registry.flush_last_seen().await {
        tracing::warn!("saving last-seen times: {e}");
    }
    let closing = state
        .registry
        .close_all(CloseOrder {
            code: tether::protocol::close::GOING_AWAY,
            reason: "server shutting down",
        })
        .await;
    let left = state.registry.wait_idle(SHUTDOWN_GRACE).await;
    tracing::info!("closed {closing} runner connection(s); {left} did not finish in time; bye");
    Ok(())
}

/// The address to put in server.url: a wildcard bind is reached on loopback.
fn url_addr(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local.port())
        }
        _ => local,
    }
}

async fn flush_last_seen(state: AppState) {
    let mut tick = tokio::time::interval(LAST_SEEN_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.registry.flush_last_seen().await {
            tracing::warn!("saving last-seen times: {e}");
        }
    }
}

/// This process's alert engine evaluates health alerts while this runs
/// (on a replica: while it holds the once-only lease; the task is aborted
/// when the lease is lost, and the guard turns it off). Turned on, the
/// engine first takes the health alerts' states over from the store
/// (`alerts/mod.rs`): the previous holder may have changed them.
async fn evaluate_health_alerts(
    health: Arc<crate::runners::health::HealthLog>,
    alerts: Arc<crate::alerts::Alerts>,
) {
    struct Off(
        Arc<crate::runners::health::HealthLog>,
        Arc<crate::alerts::Alerts>,
    );
    impl Drop for Off {
        fn drop(&mut self) {
            self.0.evaluate_alerts_here(false);
            self.1.evaluate_health(false);
        }
    }
    alerts.evaluate_health(true);
    health.evaluate_alerts_here(true);
    let _off = Off(health, alerts);
    std::future::pending::<()>().await;
}

async fn maintain_metrics(state: AppState) {
    let mut tick = tokio::time::interval(METRICS_MAINTENANCE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let pass = state
            .db
            .metrics
            .maintain(crate::common::clock::now_ms())
            .await;
        match pass {
            Ok(stats) => {
                failing = false;
                let took = started.elapsed();
                tracing::debug!(?stats, ?took, "metrics maintenance");
            }
            Err(e) => {
                // Everything is retried on the next pass (dirty buckets stay).
                if !failing {
                    tracing::warn!("metrics maintenance: {e}");
                    failing = true;
                }
            }
        }
        match state.db.logs.expire(crate::common::clock::now_ms()).await {
            Ok(stats) if stats.blocks > 0 => {
                tracing::debug!(
                    blocks = stats.blocks,
                    bytes = stats.bytes,
                    "container logs expired"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("container log retention: {e}"),
        }
    }
}

/// Accept connections until `shutdown` resolves, one task per connection,
/// within the edge's connection caps.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    edge: Arc<Edge>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_failing = false;
                a
            }
            Err(e) => {
                // Out of file descriptors, typically: log once, back off a
                // little instead of spinning, keep serving the others.
                if !accept_failing {
                    tracing::warn!("accept failed: {e}");
                    accept_failing = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a cap: closed now (dropped), so it holds no descriptor,
        // task or buffer, and the backlog stays free for others.
        let Some(slot) = edge.connections.admit(peer.ip()) else {
            continue;
        };
        // Pings and pongs are tiny and latency-bound.
        let _ = stream.set_nodelay(true);
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            serve_connection(stream, peer, tls, app).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
) {
    let Some(acceptor) = tls else {
        return serve_http(stream, peer, app, false).await;
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => serve_http(tls_stream, peer, app, true).await,
        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Sent on every answer over TLS: browsers then refuse plain HTTP to this
/// host for a year (a first visit typed without https:// is not
/// downgraded after that).
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

async fn serve_http<I>(io: I, peer: SocketAddr, app: Router, tls: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app
        .map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            req
        })
        .map_response(move |mut res: Response| {
            if tls {
                res.headers_mut()
                    .insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
            }
            res
        });
    // HTTP/1.1 only: no client of ours speaks HTTP/2 (TLS offers no ALPN
    // h2, so only a prior-knowledge h2c client on --plain-http could), and
    // hyper's HTTP/2 has no header-read or idle timeout: a silent h2c
    // connection would hold its slot for ever.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
        .await
    {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// glibc gives each new thread a malloc arena of its own, up to eight per
/// core, and an arena keeps what is freed in it. Every storage call runs on
/// the blocking pool (`db/sqlite`), so after a thousand runners connect at
/// once a dozen arenas each held a few hundred KiB of SQLite pages and freed
/// buffers: 2.6 KiB of RSS per runner (issue 16). Two per core are plenty
/// for a server that mostly waits on sockets. `MALLOC_ARENA_MAX`, if set,
/// wins (glibc reads it itself).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = libc::c_int::try_from(2 * cores).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets a parameter of the allocator, here before
    // any thread but this one exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_malloc_arenas() {}

/// `wanted` connections, within the open-file limit: the soft limit is
/// raised to the hard one first (often 1024 → 1M), and 256 descriptors
/// stay for databases, log files and the rest.
fn connection_budget(wanted: usize) -> usize {
    const RESERVED: u64 = 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own; setrlimit reads it.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let fit = usize::try_from(soft.saturating_sub(RESERVED).max(16)).unwrap_or(usize::MAX);
    if fit < wanted {
        tracing::warn!(
            "--max-connections {wanted} does not fit the open-file limit {soft}: using {fit}"
        );
    }
    wanted.min(fit)
}
