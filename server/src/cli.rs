//! The operator CLI: every subcommand but `serve`, over the HTTP API.
//!
//! Because it only calls the REST API (`docs/api.md`), it works against a
//! remote server as well as a local one. It is synchronous (ureq over rustls
//! with the ring provider); a private CA is trusted with `--ca-file`.
//!
//! Output is a readable table or key/value block, or with `--json` the
//! server's JSON as it came (one object per line for `events`), for scripts.
//! Errors print the server's message on stderr and map to exit codes:
//! 0 ok, 1 other, 2 usage, 3 not found, 4 unauthorized or forbidden,
//! 5 server unreachable.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// Help heading of the flags every client subcommand shares (they are global,
/// so they may come before or after the subcommand).
const CLIENT_OPTIONS: &str = "Client options (all commands but serve)";

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server URL
    #[arg(
        long,
        env = "TETHER_API",
        global = true,
        default_value = "https://127.0.0.1:8443",
        help_heading = CLIENT_OPTIONS
    )]
    pub api: String,

    /// Admin token (tenant commands) or a tenant's API token (all others)
    #[arg(long, env = "TETHER_TOKEN", global = true, hide_env_values = true, help_heading = CLIENT_OPTIONS)]
    pub token: Option<String>,

    /// PEM file of a CA to trust (e.g. <data-dir>/tls/ca.pem of a dev server)
    #[arg(long, env = "TETHER_CA_FILE", global = true, help_heading = CLIENT_OPTIONS)]
    pub ca_file: Option<PathBuf>,

    /// Print the server's JSON instead of tables
    #[arg(long, global = true, help_heading = CLIENT_OPTIONS)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create and list tenants (admin token)
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Enrollment tokens of your tenant
    #[command(subcommand)]
    Token(TokenCommand),
    /// List runners with their health
    Runners,
    /// One runner: show, health history, revoke, ping
    #[command(subcommand)]
    Runner(RunnerCommand),
    /// Follow health changes live (Ctrl-C to stop)
    Events,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its id and first API token
    Create { name: String },
    /// List tenants
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time enrollment token
    Create {
        /// Lifetime: 30s, 10m, 1h, 2d (default 1h)
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// A note to tell tokens apart
        #[arg(long)]
        label: Option<String>,
    },
    /// List enrollment tokens and their state
    List,
    /// Revoke an enrollment token
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// Show one runner
    Show { id: String },
    /// History of a runner's health changes
    Health { id: String },
    /// Revoke a runner: drops its connection and refuses it afterwards
    Revoke { id: String },
    /// Round trip through the runner's connection
    Ping { id: String },
}

/// `30s`, `10m`, `1h`, `2d` or plain seconds, to seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 30s, 10m, 1h, 2d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("duration {s:?} out of range")),
        Some(secs) => Ok(secs),
    }
}

#[derive(Debug)]
pub enum CliError {
    Usage(String),
    /// The server answered with an error.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    Unreachable(String),
    /// stdout closed (e.g. `| head`): not a failure.
    BrokenPipe,
    Other(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Other(m) => f.write_str(m),
            CliError::Api {
                status,
                code,
                message,
            } => write!(f, "{message} ({code}, HTTP {status})"),
            CliError::Unreachable(m) => write!(f, "server unreachable: {m}"),
            CliError::BrokenPipe => f.write_str("broken pipe"),
        }
    }
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::BrokenPipe => 0,
            CliError::Other(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Api { status: 404, .. } => 3,
            CliError::Api {
                status: 401 | 403, ..
            } => 4,
            CliError::Api { .. } => 1,
            CliError::Unreachable(_) => 5,
        })
    }
}

impl From<ureq::Error> for CliError {
    fn from(e: ureq::Error) -> Self {
        use ureq::Error as E;
        match e {
            E::BadUri(m) => CliError::Usage(format!("invalid --api URL: {m}")),
            E::Io(_)
            | E::Timeout(_)
            | E::HostNotFound
            | E::ConnectionFailed
            | E::Tls(_)
            | E::Rustls(_) => CliError::Unreachable(e.to_string()),
            other => CliError::Other(other.to_string()),
        }
    }
}

pub fn run(args: &ClientArgs, command: ClientCommand) -> ExitCode {
    match execute(args, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(e, CliError::BrokenPipe) {
                eprintln!("error: {e}");
            }
            e.exit_code()
        }
    }
}

fn execute(args: &ClientArgs, command: ClientCommand) -> Result<(), CliError> {
    let client = Client::new(args, matches!(command, ClientCommand::Events))?;
    let json = args.json;
    match command {
        ClientCommand::Tenant(TenantCommand::Create { name }) => {
            let (raw, v) = client.call("POST", "/api/v1/tenants", Some(json!({ "name": name })))?;
            if json {
                return out(&raw);
            }
            out(&pairs(&[
                ("tenant", field(&v, "id")),
                ("name", field(&v, "name")),
                ("api token", field(&v, "api_token")),
            ]))?;
            note("the API token is shown only once: keep it safe")
        }
        ClientCommand::Tenant(TenantCommand::List) => {
            let (raw, v) = client.call("GET", "/api/v1/tenants", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["ID", "NAME", "CREATED"],
                &v,
                &["id", "name", "created_at"],
            ))
        }
        ClientCommand::Token(TokenCommand::Create { ttl, label }) => {
            let mut body = serde_json::Map::new();
            if let Some(ttl) = ttl {
                body.insert("ttl_secs".into(), ttl.into());
            }
            if let Some(label) = label {
                body.insert("label".into(), label.into());
            }
            let (raw, v) = client.call("POST", "/api/v1/tokens", Some(Value::Object(body)))?;
            if json {
                return out(&raw);
            }
            out(&pairs(&[
                ("token", field(&v, "token")),
                ("id", field(&v, "id")),
                ("label", field(&v, "label")),
                ("expires", field(&v, "expires_at")),
            ]))?;
            note("one use only; enroll a runner with it before it expires")
        }
        ClientCommand::Token(TokenCommand::List) => {
            let (raw, v) = client.call("GET", "/api/v1/tokens", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["ID", "LABEL", "STATE", "CREATED", "EXPIRES"],
                &v,
                &["id", "label", "state", "created_at", "expires_at"],
            ))
        }
        ClientCommand::Token(TokenCommand::Revoke { id }) => {
            let (raw, v) =
                client.call("DELETE", &format!("/api/v1/tokens/{}", segment(&id)), None)?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "revoked enrollment token {} (state {})",
                field(&v, "id"),
                field(&v, "state")
            ))
        }
        ClientCommand::Runners => {
            let (raw, v) = client.call("GET", "/api/v1/runners", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["ID", "NAME", "HEALTH", "VERSION", "ARCH", "OS", "LAST SEEN"],
                &v,
                &["id", "name", "health", "version", "arch", "os", "last_seen"],
            ))
        }
        ClientCommand::Runner(RunnerCommand::Show { id }) => {
            let (raw, v) =
                client.call("GET", &format!("/api/v1/runners/{}", segment(&id)), None)?;
            if json {
                return out(&raw);
            }
            out(&runner_pairs(&v))
        }
        ClientCommand::Runner(RunnerCommand::Health { id }) => {
            let (raw, v) = client.call(
                "GET",
                &format!("/api/v1/runners/{}/health", segment(&id)),
                None,
            )?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["AT", "HEALTH", "REASON"],
                &v,
                &["at", "health", "reason"],
            ))
        }
        ClientCommand::Runner(RunnerCommand::Revoke { id }) => {
            let (raw, v) = client.call(
                "POST",
                &format!("/api/v1/runners/{}/revoke", segment(&id)),
                None,
            )?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "revoked runner {} ({})",
                field(&v, "id"),
                field(&v, "name")
            ))
        }
        ClientCommand::Runner(RunnerCommand::Ping { id }) => {
            let (raw, v) = client.call(
                "POST",
                &format!("/api/v1/runners/{}/ping", segment(&id)),
                None,
            )?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "pong from {id} in {} ms (runner version {})",
                field(&v, "rtt_ms"),
                field(&v, "runner_version")
            ))
        }
        ClientCommand::Events => client.follow_events(json),
    }
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ClientArgs, streaming: bool) -> Result<Client, CliError> {
        let mut tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()));
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("--ca-file {}: {e}", path.display())))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<Certificate<'static>>, _>>()
                .map_err(|e| CliError::Usage(format!("--ca-file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(CliError::Usage(format!(
                    "--ca-file {}: no certificate in it",
                    path.display()
                )));
            }
            tls = tls.root_certs(RootCerts::Specific(Arc::new(certs)));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            .timeout_connect(Some(Duration::from_secs(10)))
            // A live event stream has no end; everything else answers quickly
            // (a ping waits 5 s for the runner at most).
            .timeout_global(if streaming {
                None
            } else {
                Some(Duration::from_secs(30))
            })
            .user_agent(format!("tether-server-cli/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent: config.new_agent(),
            base: args.api.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        })
    }

    fn auth_header(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {}", t.trim()))
    }

    /// One request; the raw body and its JSON, or the server's error.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(String, Value), CliError> {
        let url = format!("{}{path}", self.base);
        let auth = self.auth_header();
        let response = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()?
            }
            _ => {
                let mut req = self.agent.post(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                match body {
                    Some(b) => req
                        .header("Content-Type", "application/json")
                        .send(b.to_string())?,
                    None => req.send_empty()?,
                }
            }
        };
        let status = response.status().as_u16();
        let raw = response.into_body().read_to_string()?;
        let value: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(api_error(status, &value, &raw));
        }
        Ok((raw, value))
    }

    fn follow_events(&self, json: bool) -> Result<(), CliError> {
        let mut req = self
            .agent
            .get(format!("{}/api/v1/events", self.base))
            .header("Accept", "text/event-stream");
        if let Some(a) = self.auth_header() {
            req = req.header("Authorization", a);
        }
        let response = req.call()?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let raw = response.into_body().read_to_string()?;
            let value = serde_json::from_str(&raw).unwrap_or(Value::Null);
            return Err(api_error(status, &value, &raw));
        }
        if !json {
            out(&format!(
                "{:<20}  {:<15}  {:<11}  REASON",
                "AT", "RUNNER", "HEALTH"
            ))?;
        }
        let reader = BufReader::new(response.into_body().into_reader());
        let (mut event, mut data) = (String::new(), String::new());
        for line in reader.lines() {
            let line = line.map_err(|e| CliError::Unreachable(format!("event stream: {e}")))?;
            if line.is_empty() {
                // A blank line ends one event.
                if event == "health" && !data.is_empty() {
                    if json {
                        out(&data)?;
                    } else {
                        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        out(&format!(
                            "{:<20}  {:<15}  {:<11}  {}",
                            field(&v, "at"),
                            field(&v, "runner_id"),
                            field(&v, "health"),
                            field(&v, "reason")
                        ))?;
                    }
                }
                event.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        Err(CliError::Unreachable(
            "the server closed the event stream".into(),
        ))
    }
}

fn api_error(status: u16, value: &Value, raw: &str) -> CliError {
    let code = value["error"]["code"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    let message = match value["error"]["message"].as_str() {
        Some(m) => m.to_owned(),
        None if raw.trim().is_empty() => format!("HTTP {status}"),
        None => raw.trim().chars().take(200).collect(),
    };
    CliError::Api {
        status,
        code,
        message,
    }
}

/// Percent-encode an id for a path segment (ids are plain, but a typo must
/// not change the path).
fn segment(id: &str) -> String {
    let mut s = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A JSON field for display: strings bare, null as "-".
fn field(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pairs(items: &[(&str, String)]) -> String {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn runner_pairs(v: &Value) -> String {
    let keys = [
        ("id", "id"),
        ("name", "name"),
        ("tenant", "tenant_id"),
        ("health", "health"),
        ("version", "version"),
        ("arch", "arch"),
        ("os", "os"),
        ("protocol", "protocol"),
        ("created", "created_at"),
        ("last seen", "last_seen"),
        ("connected since", "connected_since"),
        ("revoked", "revoked_at"),
    ];
    pairs(
        &keys
            .iter()
            .map(|(label, key)| (*label, field(v, key)))
            .collect::<Vec<_>>(),
    )
}

/// A left-aligned table of `keys` of each object in the array `v`.
fn table(headers: &[&str], v: &Value, keys: &[&str]) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| keys.iter().map(|k| field(item, k)).collect())
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s
    };
    let mut lines = vec![line(
        &headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    )];
    lines.extend(rows.iter().map(|r| line(r)));
    lines.join("\n")
}

/// Print a line to stdout; a closed pipe ends the program quietly.
fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    let result = writeln!(stdout, "{}", text.trim_end()).and_then(|()| stdout.flush());
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(CliError::BrokenPipe),
        Err(e) => Err(CliError::Other(format!("writing output: {e}"))),
    }
}

/// A hint for people, on stderr so it never mixes into parsed output.
fn note(text: &str) -> Result<(), CliError> {
    eprintln!("note: {text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("30s"), Ok(30));
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert_eq!(parse_ttl("45"), Ok(45));
        for bad in ["", "h", "1x", "0s", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exit_codes() {
        let api = |status| CliError::Api {
            status,
            code: "x".into(),
            message: "m".into(),
        };
        assert_eq!(api(404).exit_code(), ExitCode::from(3));
        assert_eq!(api(401).exit_code(), ExitCode::from(4));
        assert_eq!(api(403).exit_code(), ExitCode::from(4));
        assert_eq!(api(409).exit_code(), ExitCode::from(1));
        assert_eq!(
            CliError::Unreachable("x".into()).exit_code(),
            ExitCode::from(5)
        );
        assert_eq!(CliError::Usage("x".into()).exit_code(), ExitCode::from(2));
    }

    #[test]
    fn tables_align() {
        let v = json!([{"id": "rn_1", "health": "active"}, {"id": "rn_22", "health": null}]);
        assert_eq!(
            table(&["ID", "HEALTH"], &v, &["id", "health"]),
            "ID     HEALTH\nrn_1   active\nrn_22  -"
        );
        assert_eq!(segment("rn_1/../x"), "rn_1%2F..%2Fx");
    }
}
