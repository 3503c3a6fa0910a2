//! `terminal RUNNER [CONTAINER]`: an interactive shell on a runner's host or
//! in one of its containers, in this terminal.
//!
//! ```text
//!  POST /runners/{id}/terminals (local size) ─▶ raw mode ─▶ attach (WebSocket)
//!     stdin ─▶ binary messages        binary messages ─▶ stdout
//!     size changed (checked every 100 ms) ─▶ {"type":"resize"}
//!     {"type":"end"} ─▶ restore the terminal, print why, exit 0
//!     connection lost ─▶ reattach from the last offset for up to 30 s
//! ```
//!
//! With `--sign-key` the terminal is signed here first: its target,
//! command and user as the server's own code puts them in `term_open`
//! (`terminals::api::term_open`; `protocol/signed.rs`), for hosts that
//! require signed terminals.
//!
//! The local terminal is restored on every way out (a guard restores the
//! saved termios on drop). Everything typed goes to the remote shell,
//! Ctrl-C and Ctrl-D included; `exit` ends the session.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use tether::protocol::signed::{terminal_bytes, Kind};

use super::keys::{SignArgs, Signer};
use super::{field, out, resolve_runner, segment, CliError, Client, ClientArgs};

/// How long a lost connection is retried before giving up.
const REATTACH_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct TerminalArgs {
    /// Runner id (rn_…) or name
    pub runner: String,
    /// Container name or id; without it, a login shell on the host
    pub container: Option<String>,
    /// Run this instead of the shell (through `sh -c`)
    #[arg(long)]
    pub command: Option<String>,
    /// User inside the container
    #[arg(long, short)]
    pub user: Option<String>,
    /// Hang up after this many seconds without input or output (0: never)
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    #[command(flatten)]
    pub sign: SignArgs,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Raw mode on stdin while alive.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a local termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawMode(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the termios saved from fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// The local terminal's (cols, rows), or 80x24.
fn local_size() -> (u16, u16) {
    // SAFETY: TIOCGWINSZ into a local winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return (ws.ws_col, ws.ws_row);
        }
    }
    (80, 24)
}

pub fn terminal(client: &Client, args: &ClientArgs, a: &TerminalArgs) -> Result<(), CliError> {
    let runner = resolve_runner(client, &a.runner)?;
    let (cols, rows) = local_size();
    let mut body = json!({"cols": cols, "rows": rows});
    if let Some(c) = &a.container {
        body["container"] = json!(c);
    }
    if let Some(c) = &a.command {
        body["command"] = json!(c);
    }
    if let Some(u) = &a.user {
        body["user"] = json!(u);
    }
    if let Some(t) = a.idle_timeout {
        body["idle_timeout"] = json!(t);
    }
    if let Some(signer) = Signer::from_args(&a.sign)? {
        let open = crate::terminals::api::term_open(
            a.container.as_deref(),
            a.command.as_deref(),
            a.user.as_deref(),
        );
        let action_id = Signer::action_id()?;
        let bytes = terminal_bytes(&runner, &action_id, signer.not_after_ms(), &open);
        let s = signer.sign(Kind::Terminal, &action_id, &bytes);
        for k in ["action_id", "not_after_ms", "signature"] {
            body[k] = s[k].clone();
        }
    }
    let path = format!("/api/v1/runners/{}/terminals", segment(&runner));
    let (_, v) = client.call("POST", &path, Some(body))?;
    let session = field(&v, "id");
    let tls = tls_config(args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("runtime: {e}")))?;
    let raw = RawMode::enter();
    let result = rt.block_on(run(client, tls, &session, (cols, rows)));
    drop(raw);
    match result {
        Ok(reason) => {
            eprintln!("\r\n[terminal ended: {reason}]");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn tls_config(args: &ClientArgs) -> Result<Arc<rustls::ClientConfig>, CliError> {
    let provider = crate::common::tls::provider();
    let store = match &args.ca_file {
        Some(path) => crate::common::tls::roots_from_pem(path)
            .map_err(|e| CliError::Usage(format!("--ca-file {e}")))?,
        None => crate::common::tls::public_roots(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::Other(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

async fn connect(
    client: &Client,
    tls: &Arc<rustls::ClientConfig>,
    session: &str,
    offset: u64,
) -> Result<Ws, CliError> {
    let base = client.base.trim_end_matches('/');
    let (https, rest) = if let Some(r) = base.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = base.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(CliError::Usage(format!(
            "--api {base}: use https:// or http://"
        )));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    // A port is after the last ':' unless that ':' is inside [ipv6].
    let (host, addr) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], authority.to_owned()),
        _ => (
            authority,
            format!("{authority}:{}", if https { 443 } else { 80 }),
        ),
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| CliError::Unreachable(format!("{addr}: timed out")))?
    .map_err(|e| CliError::Unreachable(format!("{addr}: {e}")))?;
    tcp.set_nodelay(true).ok();
    let stream: Box<dyn Io> = if https {
        let name = rustls::pki_types::ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| CliError::Usage(format!("--api: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| CliError::Unreachable(format!("TLS: {e}")))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let url = format!(
        "{}://{authority}/api/v1/terminals/{}/attach?offset={offset}",
        if https { "wss" } else { "ws" },
        segment(session)
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| CliError::Other(e.to_string()))?;
    if let Some(a) = client.auth_header() {
        let v = a.parse().map_err(|_| CliError::Usage("bad token".into()))?;
        request.headers_mut().insert("Authorization", v);
    }
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| CliError::Unreachable(format!("attach: {e}")))?;
    Ok(ws)
}

/// Attach and relay until the terminal ends; reattach after a lost
/// connection. Returns the end's reason.
async fn run(
    client: &Client,
    tls: Arc<rustls::ClientConfig>,
    session: &str,
    mut size: (u16, u16),
) -> Result<String, CliError> {
    let mut stdin = tokio::io::stdin();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 4096];
    let mut lost_at: Option<tokio::time::Instant> = None;
    let mut stdin_open = true;
    loop {
        let mut ws = match connect(client, &tls, session, offset).await {
            Ok(ws) => ws,
            Err(e) => match lost_at {
                Some(t) if t.elapsed() < REATTACH_FOR => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                _ => return Err(e),
            },
        };
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(WsMessage::Binary(b))) => {
                        offset += b.len() as u64;
                        let mut out = std::io::stdout().lock();
                        if out.write_all(&b).and_then(|_| out.flush()).is_err() {
                            return Ok("stdout closed".into());
                        }
                    }
                    Some(Ok(WsMessage::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        match v["type"].as_str() {
                            Some("attached") => offset = v["offset"].as_u64().unwrap_or(offset),
                            Some("end") => {
                                return Ok(v["reason"].as_str().unwrap_or("ended").to_owned())
                            }
                            Some("detached") => return Ok("attached elsewhere".into()),
                            Some("runner") => {
                                let s = v["state"].as_str().unwrap_or("?");
                                eprint!("\r\n[runner {s}]\r\n");
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) | None => return Ok("closed".into()),
                    Some(Ok(_)) => {}
                    Some(Err(_)) => break,
                },
                n = stdin.read(&mut buf), if stdin_open => match n {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => {
                        if ws.send(WsMessage::Binary(buf[..n].to_vec().into())).await.is_err() {
                            break;
                        }
                    }
                },
                _ = tick.tick() => {
                    let now = local_size();
                    if now != size {
                        size = now;
                        let m = json!({"type": "resize", "cols": now.0, "rows": now.1});
                        if ws.send(WsMessage::Text(m.to_string().into())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        eprint!("\r\n[connection lost; reattaching]\r\n");
        lost_at = Some(tokio::time::Instant::now());
    }
}

/// `terminals [RUNNER]`: the audit trail, newest first.
pub fn audit(client: &Client, runner: Option<&str>, json: bool) -> Result<(), CliError> {
    let path = match runner {
        Some(r) => format!(
            "/api/v1/terminals?runner={}",
            segment(&resolve_runner(client, r)?)
        ),
        None => "/api/v1/terminals".to_owned(),
    };
    let (raw, v) = client.call("GET", &path, None)?;
    if json {
        return out(&raw);
    }
    out(&format!(
        "{:<20}  {:<15}  {:<20}  {:<20}  {:>8}  {:<24}  WHO",
        "ID", "RUNNER", "TARGET", "OPENED", "SECONDS", "END"
    ))?;
    for t in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let end = if t["open"] == true {
            "(open)".to_owned()
        } else {
            field(t, "reason")
        };
        out(&format!(
            "{:<20}  {:<15}  {:<20}  {:<20}  {:>8}  {:<24}  {}",
            field(t, "id"),
            field(t, "runner_id"),
            field(t, "target"),
            field(t, "opened_at"),
            field(t, "duration_s"),
            end,
            field(t, "who"),
        ))?;
    }
    Ok(())
}
