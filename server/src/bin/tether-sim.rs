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
//! Exit 0 if every runner connected and stayed connected, 1 otherwise.
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
use tether::protocol::{self, decode_control, encode_control, Decoded, Hello, Message, Pong};
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
}

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
    let ok = tally.connected.load(Ordering::Relaxed) == args.count
        && tally.dropped.load(Ordering::Relaxed) == 0;
    println!(
        "tether-sim: {}/{} connected, {} failed, {} dropped while held, {} server pings answered; held {}s at heartbeat {}ms",
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
    failed: AtomicUsize,
    dropped: AtomicUsize,
    pongs: AtomicUsize,
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
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let ws = tokio::time::timeout(
                PHASE_TIMEOUT * 3,
                open(&target, &name, &credential, heartbeat),
            )
            .await;
            drop(permit);
            let _ = attempted_tx.send(()).await;
            match ws {
                Ok(Ok(ws)) => hold(ws, heartbeat, stop, &tally).await,
                Ok(Err(e)) => {
                    if tally.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("tether-sim: first connect failure: {e}");
                    }
                }
                Err(_) => {
                    if tally.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("tether-sim: first connect failure: timed out");
                    }
                }
            }
        }));
    }
    drop(attempted_tx);
    for _ in 0..args.count {
        if attempted.recv().await.is_none() {
            break;
        }
    }
    eprintln!(
        "tether-sim: {} connected ({} failed) in {:.1}s; holding for {}s",
        tally.connected.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
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
    upgrade(stream, target, name, credential, heartbeat).await
}

async fn upgrade(
    stream: Box<dyn Io>,
    target: &Target,
    name: &str,
    credential: &str,
    heartbeat: Duration,
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

/// Keep one connection alive like a runner until told to stop.
async fn hold(mut ws: Ws, heartbeat: Duration, mut stop: watch::Receiver<bool>, tally: &Tally) {
    tally.connected.fetch_add(1, Ordering::Relaxed);
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let lost = |why: String| {
        if tally.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("tether-sim: first dropped connection: {why}");
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return;
            }
            _ = tick.tick() => {
                if let Err(e) = ws.send(WsMessage::Ping(Default::default())).await {
                    return lost(format!("ping: {e}"));
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    if let Ok(Decoded::Known(env)) = decode_control(t.as_str()) {
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

fn sim_name(i: usize) -> String {
    format!("sim-{i:05}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
