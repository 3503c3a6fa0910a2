//! `tether-sim`: many simulated runners against a real server, for benchmarks.
//!
//! ```text
//! tether-sim --api URL --token API_TOKEN --ca-file PEM --count 1000 --heartbeat 5s --duration 60s
//! ```
//!
//! 1. creates `count` enrollment tokens and enrolls `count` runners over the
//!    REST API (a few threads, blocking HTTP);
//! 2. opens `count` real TLS WebSocket connections to `/v1/runner/connect`,
//!    at most `--parallel` handshakes at a time, each sending `hello` and
//!    waiting for `welcome`;
//! 3. holds them all for `duration` once every connect attempt is done: each
//!    sends a WebSocket Ping every heartbeat and answers the server's `ping`
//!    with `pong`, like the real runner;
//! 4. closes them (1000) and prints one summary line.
//!
//! With `--metrics`, each runner also sends a metrics schema of 65 series
//! (like a small host's: CPUs, memory, a filesystem, a disk, an interface)
//! and then one record every `--metrics-interval`, as a METRICS frame,
//! spread evenly over the interval across runners; the summary counts the
//! records sent and the `metrics_ack`s received.
//!
//! With `--retries N`, a failed connect is tried again up to N times after a
//! backoff, as a runner would; the summary counts failed attempts and the
//! runners that gave up.
//!
//! With `--spike-every N` too, every Nth record of each runner (runners
//! staggered) says `cpu.busy` = 99 %, the next one is back to normal: load
//! for alert rules (`make bench`'s alerts part). `--spike-log PATH` writes
//! `<runner name> <unix ms>` for each spike as it is sent.
//!
//! With `--reconnect`, a connection lost while held is opened again under
//! the runner's own backoff policy (`tether::conn::backoff`, the same code:
//! three retries at 1 s ± 10 %, then full jitter in [1 s, 2^n s] for the
//! n-th after them, at most 60 s), as long as
//! the hold lasts; the summary says how many runners lost their link, the
//! reconnect attempts they made (failed ones included) and the time from
//! the first loss until the last of them was linked again (`make bench`'s
//! cluster part: a replica killed under 3,000 runners).
//!
//! Exit 0 if every runner connected and stayed connected (with
//! `--reconnect`: was connected again at the end), 1 otherwise.
//! One small current-thread runtime: the point is to load the server, not
//! to measure this process.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tether::conn::backoff::Backoff;
use tether::metrics::wire::{push_to_batch, Encoder, SeriesSource, Unit, Visitor};
use tether::protocol::{
    self, decode_control, encode_control, Decoded, FrameHeader, FrameKind, Hello, Message,
    MetricsSchema, Pong, StreamTag,
};
use tether::rand::SplitMix64;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

const PHASE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "tether-sim",
    version,
    about = "Simulate many runners against a tether-server"
)]
struct Args {
    /// Server URL (https://host:port or http://host:port)
    #[arg(long, env = "TETHER_API")]
    api: String,
    /// A tenant's API token (to create enrollment tokens)
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    token: String,
    /// PEM file of the CA that signed the server certificate
    #[arg(long, env = "TETHER_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Number of runners
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Ping interval per runner (e.g. 500ms, 5s)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// How long to hold all connections once they are up (e.g. 60s, 2m)
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Connection handshakes in flight at once
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Also send host metrics (a 65-series schema, then records)
    #[arg(long)]
    metrics: bool,
    /// Interval between metrics records per runner
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    metrics_interval: Duration,
    /// Attempts after a failed connect, each after a backoff (1 s doubling
    /// to 30 s, jittered), as a runner retries; 0: one attempt only
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// A connection lost while held is opened again (the runner's backoff)
    #[arg(long)]
    reconnect: bool,
    /// With --metrics: every Nth record of a runner has cpu.busy at 99 % (0: never)
    #[arg(long, default_value_t = 0)]
    spike_every: u64,
    /// Where to write `<runner name> <unix ms>` for each spike sent
    #[arg(long)]
    spike_log: Option<PathBuf>,
}

/// Spikes sent, `(runner name, unix ms)`; written to `--spike-log` at the end.
type SpikeLog = std::sync::Mutex<Vec<(String, u64)>>;

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    })
}

#[derive(Debug)]
struct SimError(String);

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(e: impl std::fmt::Display) -> SimError {
    SimError(e.to_string())
}

/// Where to connect, parsed from `--api`.
#[derive(Clone)]
struct Target {
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    authority: String,
    ws_url: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tether-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool, SimError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = load_roots(args.ca_file.as_ref())?;

    let started = Instant::now();
    let credentials = enroll_all(args, provider.clone(), &roots)?;
    eprintln!(
        "tether-sim: enrolled {} runners in {:.1}s",
        credentials.len(),
        started.elapsed().as_secs_f64()
    );

    let target = target(&args.api, provider, roots)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    let tally = runtime.block_on(connect_all(args, target, credentials));
    if let Some(path) = &args.spike_log {
        let spikes = tally.spikes.lock().unwrap_or_else(|p| p.into_inner());
        let text: String = spikes.iter().map(|(n, ms)| format!("{n} {ms}\n")).collect();
        std::fs::write(path, text).map_err(|e| SimError(format!("{}: {e}", path.display())))?;
    }
    let lost = tally.lost.load(Ordering::Relaxed);
    let back = tally.back.load(Ordering::Relaxed);
    let ok = tally.connected.load(Ordering::Relaxed) == args.count
        && if args.reconnect {
            back == lost
        } else {
            tally.dropped.load(Ordering::Relaxed) == 0
        };
    if args.reconnect {
        let span = tally.span.lock().unwrap_or_else(|p| p.into_inner());
        let all_back_ms = match *span {
            Some((first_loss, last_back)) if back == lost && lost > 0 => {
                last_back.saturating_duration_since(first_loss).as_millis() as i64
            }
            _ => -1,
        };
        // One line for scripts: `make bench` parses it.
        println!(
            "tether-sim: reconnect lost={lost} back={back} attempts={} failed={} all_back_ms={all_back_ms}",
            tally.reattempts.load(Ordering::Relaxed),
            tally.refailed.load(Ordering::Relaxed),
        );
    }
    let metrics = if args.metrics {
        format!(
            "; {} metrics records sent, {} acks received (interval {}ms)",
            tally.records.load(Ordering::Relaxed),
            tally.acks.load(Ordering::Relaxed),
            args.metrics_interval.as_millis()
        )
    } else {
        String::new()
    };
    println!(
        "tether-sim: {}/{} connected, {} attempts failed, {} dropped while held, {} server pings answered; held {}s at heartbeat {}ms{metrics}",
        tally.connected.load(Ordering::Relaxed),
        args.count,
        tally.failed.load(Ordering::Relaxed),
        tally.dropped.load(Ordering::Relaxed),
        tally.pongs.load(Ordering::Relaxed),
        args.duration.as_secs(),
        args.heartbeat.as_millis(),
    );
    let _ = std::io::stdout().flush();
    Ok(ok)
}

fn load_roots(
    ca_file: Option<&PathBuf>,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, SimError> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path).map_err(|e| SimError(format!("{}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SimError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(SimError(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn target(
    api: &str,
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Target, SimError> {
    let uri: hyper::Uri = api
        .parse()
        .map_err(|e| SimError(format!("--api {api}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| SimError(format!("--api {api}: no host")))?
        .to_owned();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(SimError(format!("--api {api}: use https:// or http://"))),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let authority = if bare_host.contains(':') {
        format!("[{bare_host}]:{port}")
    } else {
        format!("{bare_host}:{port}")
    };
    let ws_url = format!(
        "{}://{authority}{}",
        if https { "wss" } else { "ws" },
        protocol::RUNNER_CONNECT_PATH
    );
    let tls = if https {
        if roots.is_empty() {
            return Err(SimError(
                "https needs --ca-file (the CA that signed the server certificate)".into(),
            ));
        }
        let mut store = rustls::RootCertStore::empty();
        for c in roots {
            store.add(c).map_err(err)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_root_certificates(store)
            .with_no_client_auth();
        let name = ServerName::try_from(bare_host).map_err(err)?;
        Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    Ok(Target {
        tls,
        authority,
        ws_url,
    })
}

/// Create one enrollment token per runner and enroll it; a few threads.
fn enroll_all(
    args: &Args,
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Vec<String>, SimError> {
    let mut tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider);
    if !roots.is_empty() {
        let certs = roots
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned());
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(
            &certs.collect::<Vec<_>>(),
        ));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .timeout_global(Some(Duration::from_secs(30)))
        // Under the server's 10 s idle close (see app/serve.rs).
        .max_idle_age(Duration::from_secs(5))
        .build()
        .new_agent();
    let base = args.api.trim_end_matches('/').to_owned();
    let threads = args.count.clamp(1, 8);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<(usize, String)>, SimError> {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= args.count {
                            return Ok(mine);
                        }
                        mine.push((i, enroll_one(&agent, &base, &args.token, i)?));
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(args.count);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| SimError("an enrollment thread panicked".into()))??,
            );
        }
        // Runner i keeps the name it enrolled with.
        all.sort_unstable_by_key(|(i, _)| *i);
        Ok(all.into_iter().map(|(_, credential)| credential).collect())
    })
}

fn enroll_one(
    agent: &ureq::Agent,
    base: &str,
    api_token: &str,
    i: usize,
) -> Result<String, SimError> {
    let post = |path: &str, auth: Option<&str>, body: Value| -> Result<Value, SimError> {
        let mut req = agent
            .post(format!("{base}{path}"))
            .header("Content-Type", "application/json");
        if let Some(a) = auth {
            req = req.header("Authorization", format!("Bearer {a}"));
        }
        let mut resp = req
            .send(body.to_string())
            .map_err(|e| SimError(format!("POST {path}: {e}")))?;
        let text = resp.body_mut().read_to_string().map_err(err)?;
        serde_json::from_str(&text).map_err(|e| SimError(format!("POST {path}: {e}: {text}")))
    };
    let token = post(
        "/api/v1/tokens",
        Some(api_token),
        json!({ "ttl_secs": 3600, "label": "tether-sim" }),
    )?;
    let token = token["token"]
        .as_str()
        .ok_or_else(|| SimError(format!("no token in {token}")))?;
    let enrolled = post(
        protocol::ENROLL_PATH,
        None,
        json!({ "token": token, "hostname": sim_name(i), "arch": std::env::consts::ARCH,
                "os": std::env::consts::OS, "version": env!("CARGO_PKG_VERSION") }),
    )?;
    enrolled["credential"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| SimError(format!("no credential in {enrolled}")))
}

#[derive(Default)]
struct Tally {
    connected: AtomicUsize,
    /// Connect attempts that failed (a runner retried may fail several).
    failed: AtomicUsize,
    /// Runners that failed every attempt.
    gave_up: AtomicUsize,
    dropped: AtomicUsize,
    pongs: AtomicUsize,
    records: AtomicUsize,
    acks: AtomicUsize,
    spikes: SpikeLog,
    /// --reconnect: runners whose held link was lost, and linked again.
    lost: AtomicUsize,
    back: AtomicUsize,
    /// Their connect attempts, and of those the failed ones.
    reattempts: AtomicUsize,
    refailed: AtomicUsize,
    /// The first loss and the last link again.
    span: std::sync::Mutex<Option<(Instant, Instant)>>,
}

impl Tally {
    fn lost_at(&self, at: Instant) {
        let mut span = self.span.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *span {
            Some((first, _)) => *first = (*first).min(at),
            None => *span = Some((at, at)),
        }
    }

    fn back_at(&self, at: Instant) {
        let mut span = self.span.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, last)) = &mut *span {
            *last = (*last).max(at);
        }
    }
}

/// The runner's reconnect policy itself (`src/conn/backoff.rs`), its
/// random draws seeded by the runner's index (the same index, the same
/// waits: runs compare).
fn reconnect_policy(i: usize) -> (Backoff, SplitMix64) {
    let seed = 0x9e37_79b9_7f4a_7c15 ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (Backoff::new(), SplitMix64::seeded(seed))
}

async fn connect_all(args: &Args, target: Target, credentials: Vec<String>) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let (stop_tx, stop) = watch::channel(false);
    let (attempted_tx, mut attempted) = tokio::sync::mpsc::channel::<()>(args.count.max(1));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(credentials.len());
    for (i, credential) in credentials.into_iter().enumerate() {
        let name = sim_name(i);
        let (target, tally, gate, stop, attempted_tx) = (
            target.clone(),
            tally.clone(),
            gate.clone(),
            stop.clone(),
            attempted_tx.clone(),
        );
        let heartbeat = args.heartbeat;
        // Runner i spikes on records i, i + N, i + 2N, ... (never the first).
        let spike = (args.spike_every > 0).then(|| (args.spike_every, i as u64 % args.spike_every));
        // Runners' records spread evenly over one interval.
        let metrics = args.metrics.then(|| {
            let offset = args
                .metrics_interval
                .mul_f64(i as f64 / args.count.max(1) as f64);
            (args.metrics_interval, offset)
        });
        let (retries, reconnect) = (args.retries, args.reconnect);
        tasks.push(tokio::spawn(async move {
            let mut stop = stop;
            let interval_ms = metrics.map_or(0, |(every, _)| every.as_millis() as u64);
            let mut backoff = Duration::from_secs(1);
            for attempt in 0..=retries {
                if attempt > 0 {
                    // Jitter from the runner's index: no herd, no RNG needed.
                    let jitter = backoff.mul_f64((i % 97) as f64 / 97.0 * 0.5);
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                let permit = gate.clone().acquire_owned().await;
                let ws = tokio::time::timeout(
                    PHASE_TIMEOUT * 3,
                    open(&target, &name, &credential, heartbeat, interval_ms),
                )
                .await;
                drop(permit);
                let why = match ws {
                    Ok(Ok(ws)) => {
                        let _ = attempted_tx.send(()).await;
                        let load = (metrics, spike);
                        if !hold(ws, &name, heartbeat, load, stop.clone(), &tally).await
                            || !reconnect
                        {
                            return;
                        }
                        // Lost while held: linked again as a runner would.
                        let lost = Instant::now();
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        tally.lost_at(lost);
                        let (mut policy, mut rng) = reconnect_policy(i);
                        loop {
                            tokio::select! {
                                _ = tokio::time::sleep(policy.next_delay(&mut rng)) => {}
                                _ = stop.changed() => return,
                            }
                            tally.reattempts.fetch_add(1, Ordering::Relaxed);
                            let ws = tokio::time::timeout(
                                PHASE_TIMEOUT * 3,
                                open(&target, &name, &credential, heartbeat, interval_ms),
                            )
                            .await;
                            let Ok(Ok(ws)) = ws else {
                                tally.refailed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            tally.back.fetch_add(1, Ordering::Relaxed);
                            tally.back_at(Instant::now());
                            // Counted once: a second loss is not measured.
                            tally.connected.fetch_sub(1, Ordering::Relaxed);
                            hold(ws, &name, heartbeat, load, stop, &tally).await;
                            return;
                        }
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                if tally.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("tether-sim: first connect failure: {why}");
                }
            }
            tally.gave_up.fetch_add(1, Ordering::Relaxed);
            let _ = attempted_tx.send(()).await;
        }));
    }
    drop(attempted_tx);
    for _ in 0..args.count {
        if attempted.recv().await.is_none() {
            break;
        }
    }
    eprintln!(
        "tether-sim: {} connected ({} attempts failed, {} gave up) in {:.1}s; holding for {}s",
        tally.connected.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.gave_up.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        args.duration.as_secs()
    );
    tokio::time::sleep(args.duration).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tally
}

/// A TLS or a plain TCP stream, so one WebSocket type serves both.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

/// TCP, TLS, upgrade, hello, welcome.
async fn open(
    target: &Target,
    name: &str,
    credential: &str,
    heartbeat: Duration,
    metrics_interval_ms: u64,
) -> Result<Ws, SimError> {
    let tcp = TcpStream::connect(&target.authority)
        .await
        .map_err(|e| SimError(format!("tcp: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = match &target.tls {
        Some((connector, server_name)) => Box::new(
            connector
                .connect(server_name.clone(), tcp)
                .await
                .map_err(|e| SimError(format!("tls: {e}")))?,
        ),
        None => Box::new(tcp),
    };
    upgrade(
        stream,
        target,
        name,
        credential,
        heartbeat,
        metrics_interval_ms,
    )
    .await
}

async fn upgrade(
    stream: Box<dyn Io>,
    target: &Target,
    name: &str,
    credential: &str,
    heartbeat: Duration,
    metrics_interval_ms: u64,
) -> Result<Ws, SimError> {
    let mut request = target.ws_url.as_str().into_client_request().map_err(err)?;
    let auth = format!("Bearer {credential}").parse().map_err(err)?;
    request.headers_mut().insert("Authorization", auth);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(protocol::MAX_WS_MESSAGE));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| SimError(format!("upgrade: {e}")))?;
    let hello = Message::Hello(Hello {
        protocol: vec![protocol::PROTOCOL_VERSION],
        runner_version: env!("CARGO_PKG_VERSION").to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        os: std::env::consts::OS.to_owned(),
        hostname: name.to_owned(),
        heartbeat_ms: u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX),
        capabilities: Vec::new(),
        open_channels: Vec::new(),
        metrics_interval_ms,
        labels: Vec::new(),
    });
    ws.send(WsMessage::text(encode_control(1, hello)))
        .await
        .map_err(|e| SimError(format!("hello: {e}")))?;
    loop {
        let msg = tokio::time::timeout(PHASE_TIMEOUT, ws.next())
            .await
            .map_err(|_| SimError("no welcome in time".into()))?;
        match msg {
            Some(Ok(WsMessage::Text(t))) => match decode_control(t.as_str()) {
                Ok(Decoded::Known(env)) if matches!(env.body, Message::Welcome(_)) => {
                    return Ok(ws)
                }
                Ok(Decoded::Known(env)) => {
                    if let Message::Error(e) = env.body {
                        return Err(SimError(format!("server error: {}: {}", e.code, e.message)));
                    }
                }
                _ => {}
            },
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(SimError(format!("closed before welcome: {frame:?}")));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(SimError(format!("before welcome: {e}"))),
            None => return Err(SimError("closed before welcome".into())),
        }
    }
}

/// What one runner sends besides pings: metrics (interval, first offset)
/// and spikes (every, phase).
type Load = (Option<(Duration, Duration)>, Option<(u64, u64)>);

/// Keep one connection alive like a runner until told to stop (false) or
/// the connection is lost (true); with
/// `metrics` (interval, first offset) also send a record every interval,
/// and with `spike` (every, phase) a high `cpu.busy` on some of them.
async fn hold(
    mut ws: Ws,
    name: &str,
    heartbeat: Duration,
    (metrics, spike): Load,
    mut stop: watch::Receiver<bool>,
    tally: &Tally,
) -> bool {
    let mut records = 0u64;
    tally.connected.fetch_add(1, Ordering::Relaxed);
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let (every, offset) = metrics.unwrap_or((Duration::from_secs(3600), Duration::ZERO));
    let mut sample_tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut host = metrics.map(|_| (SimHost::new(name), Encoder::new()));
    let lost = |why: String| {
        if tally.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("tether-sim: first dropped connection: {why}");
        }
        true
    };
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return false;
            }
            _ = tick.tick() => {
                if let Err(e) = ws.send(WsMessage::Ping(Default::default())).await {
                    return lost(format!("ping: {e}"));
                }
            }
            _ = sample_tick.tick(), if host.is_some() => {
                let Some((host, enc)) = host.as_mut() else { continue };
                host.step(now_ms());
                let spiked = spike.is_some_and(|(every, phase)| records > 0 && records % every == phase);
                if spiked {
                    host.set("cpu.busy", 9900);
                }
                records += 1;
                let mut record = Vec::new();
                if let Some(schema) = enc.encode(host, &mut record) {
                    let text = encode_control(2, Message::MetricsSchema(MetricsSchema { schema: schema.clone() }));
                    if let Err(e) = ws.send(WsMessage::text(text)).await {
                        return lost(format!("metrics schema: {e}"));
                    }
                }
                let mut batch = Vec::with_capacity(record.len() + 2);
                push_to_batch(&mut batch, &record);
                let header = FrameHeader { kind: FrameKind::Metrics, tag: StreamTag::None, channel: 0, seq: 0 };
                let sent_ms = now_ms();
                if let Err(e) = ws.send(WsMessage::binary(protocol::encode_frame(header, &batch))).await {
                    return lost(format!("metrics: {e}"));
                }
                tally.records.fetch_add(1, Ordering::Relaxed);
                if spiked {
                    // Back to normal on the next record (a steady series would keep it).
                    host.set("cpu.busy", 1500);
                    let mut log = tally.spikes.lock().unwrap_or_else(|p| p.into_inner());
                    // Bounded: a day of spikes at one a second.
                    if log.len() < 100_000 {
                        log.push((name.to_owned(), sent_ms));
                    }
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    if let Ok(Decoded::Known(env)) = decode_control(t.as_str()) {
                        if let Message::MetricsAck(_) = env.body {
                            tally.acks.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Message::Ping(p) = env.body {
                            let pong = Message::Pong(Pong { sent_ms: p.sent_ms, now_ms: now_ms(), version: env!("CARGO_PKG_VERSION").to_owned() });
                            if let Err(e) = ws.send(WsMessage::text(encode_control(env.id, pong))).await {
                                return lost(format!("pong: {e}"));
                            }
                            tally.pongs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => return lost(format!("closed by server: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return lost(e.to_string()),
                None => return lost("connection ended".into()),
            }
        }
    }
}

/// 65 series shaped like a small host's, each with a noisy value around
/// a base (a third of them steady from one record to the next). The
/// interface is named after the runner, so every runner has its own
/// schema, as real hosts mostly do.
struct SimHost {
    ts: u64,
    series: Vec<(String, Unit, f64, i64, i64)>,
    rng: u64,
}

impl SimHost {
    fn new(runner: &str) -> SimHost {
        let mut series = Vec::new();
        let mut add = |name: String, unit, scale, base: i64| {
            series.push((name, unit, scale, base, base));
        };
        add("uptime".into(), Unit::Seconds, 1.0, 3_000_000);
        for cpu in ["cpu", "cpu0", "cpu1", "cpu2", "cpu3"] {
            for (m, v) in [("busy", 1500), ("iowait", 20), ("steal", 0)] {
                add(format!("{cpu}.{m}"), Unit::Percent, 0.01, v);
            }
        }
        for (m, v) in [("1", 45), ("5", 60), ("15", 70)] {
            add(format!("load.{m}"), Unit::Load, 0.01, v);
        }
        for (m, v) in [("tasks", 310), ("running", 2), ("blocked", 0)] {
            add(format!("proc.{m}"), Unit::Count, 1.0, v);
        }
        add("proc.forks".into(), Unit::PerSecond, 0.01, 350);
        for (m, v) in [
            ("mem.total", 16_000_000),
            ("mem.available", 9_000_000),
            ("mem.used", 6_000_000),
            ("mem.cache", 4_000_000),
            ("swap.total", 2_000_000),
            ("swap.used", 10_000),
        ] {
            add(m.into(), Unit::Bytes, 1024.0, v);
        }
        for (m, v) in [
            ("size", 100_000_000),
            ("used", 40_000_000),
            ("avail", 60_000_000),
        ] {
            add(format!("fs./.{m}"), Unit::Bytes, 1024.0, v);
        }
        for (m, v) in [("inodes", 6_000_000), ("inodes_used", 400_000)] {
            add(format!("fs./.{m}"), Unit::Count, 1.0, v);
        }
        for (m, u, s, v) in [
            ("read_bps", Unit::BytesPerSecond, 1.0, 20_000),
            ("write_bps", Unit::BytesPerSecond, 1.0, 150_000),
            ("read_ops", Unit::PerSecond, 0.01, 300),
            ("write_ops", Unit::PerSecond, 0.01, 2500),
        ] {
            add(format!("disk.sda.{m}"), u, s, v);
        }
        for (m, u, s, v) in [
            ("rx_bps", Unit::BytesPerSecond, 1.0, 50_000),
            ("tx_bps", Unit::BytesPerSecond, 1.0, 30_000),
            ("rx_pps", Unit::PerSecond, 0.01, 9000),
            ("tx_pps", Unit::PerSecond, 0.01, 7000),
            ("rx_errs", Unit::PerSecond, 0.01, 0),
            ("tx_errs", Unit::PerSecond, 0.01, 0),
            ("rx_drop", Unit::PerSecond, 0.01, 0),
            ("tx_drop", Unit::PerSecond, 0.01, 0),
        ] {
            add(format!("net.{runner}.{m}"), u, s, v);
        }
        for fam in ["ip4", "ip6"] {
            for (m, u, v) in [
                ("in_bytes", Unit::Bytes, 80_000_000_000i64),
                ("out_bytes", Unit::Bytes, 50_000_000_000),
                ("in_bps", Unit::BytesPerSecond, 45_000),
                ("out_bps", Unit::BytesPerSecond, 28_000),
            ] {
                add(format!("{fam}.{m}"), u, 1.0, v);
            }
        }
        for (m, v) in [
            ("established", 40),
            ("syn_sent", 0),
            ("syn_recv", 0),
            ("fin_wait1", 0),
            ("fin_wait2", 1),
            ("time_wait", 25),
            ("close", 0),
            ("close_wait", 0),
            ("last_ack", 0),
            ("listen", 12),
            ("closing", 0),
        ] {
            add(format!("tcp.{m}"), Unit::Count, 1.0, v);
        }
        SimHost {
            ts: 0,
            series,
            rng: 0x2545_F491_4F6C_DD1D ^ now_ms(),
        }
    }

    fn step(&mut self, ts: u64) {
        self.ts = ts;
        for (_, _, _, base, v) in &mut self.series {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            if self.rng % 3 == 0 {
                continue;
            }
            let spread = (*base / 10).max(2);
            *v = (*base + ((self.rng >> 8) % spread as u64) as i64 - spread / 2).max(0);
        }
    }
}

impl SimHost {
    /// Set one series' current (stored, unscaled) value.
    fn set(&mut self, name: &str, value: i64) {
        if let Some(s) = self.series.iter_mut().find(|s| s.0 == name) {
            s.4 = value;
        }
    }
}

impl SeriesSource for SimHost {
    fn timestamp_ms(&self) -> u64 {
        self.ts
    }
    fn for_each_series(&self, f: Visitor<'_>) {
        for (name, unit, scale, _, v) in &self.series {
            f(name, *unit, *scale, Some(*v));
        }
    }
}

fn sim_name(i: usize) -> String {
    format!("sim-{i:05}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
