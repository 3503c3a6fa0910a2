//! `terminals list|replay|download`: terminal recordings (asciicast v2).
//!
//! ```text
//!  list [--runner R]            GET /recordings            a table, newest first
//!  download ID [--output FILE]  GET /recordings/{id}/cast  the file (or stdout)
//!  replay ID [--speed X]        GET /recordings/{id}/cast  "o" events to stdout,
//!                                                          each at its time / X
//! ```
//!
//! Replay writes exactly the recorded output, so what scrolls by is what
//! the session's client saw; markers (the size cap) go to stderr. A pause
//! longer than `--idle-limit` is cut to it (asciinema's idle limit).

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{field, out, resolve_runner, segment, CliError, Client};

/// The largest `.cast` read (the server's largest cap is 64 MiB).
const MAX_CAST: u64 = 80 * 1024 * 1024;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TerminalsArgs {
    #[command(subcommand)]
    pub command: Option<TerminalsCommand>,
    /// Without a subcommand: who opened which terminal, where, when, for
    /// how long; only this runner's (id or name)
    pub runner: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TerminalsCommand {
    /// Sessions with a recording, newest first
    List {
        /// Only this runner's (id or name)
        #[arg(long)]
        runner: Option<String>,
        /// At most this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Play a recording in this terminal with its timing
    Replay {
        /// The session's id (tm_…)
        id: String,
        /// Faster (2) or slower (0.5) than it happened
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Pauses longer than this many seconds are cut to it
        #[arg(long, default_value_t = 3.0)]
        idle_limit: f64,
    },
    /// Write a recording as an asciicast v2 file (`.cast`)
    Download {
        /// The session's id (tm_…)
        id: String,
        /// The file to write (default: ID.cast; `-` for stdout)
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// The `.cast` file of recording `id`.
fn cast(client: &Client, id: &str) -> Result<Vec<u8>, CliError> {
    let path = format!("/api/v1/recordings/{}/cast", segment(id));
    let mut body = Vec::new();
    client
        .stream_get(&path, "application/x-asciicast")?
        .take(MAX_CAST)
        .read_to_end(&mut body)
        .map_err(|e| CliError::Other(format!("reading the recording: {e}")))?;
    Ok(body)
}

pub fn terminals(client: &Client, a: TerminalsArgs, json: bool) -> Result<(), CliError> {
    match a.command {
        None => super::terminal::audit(client, a.runner.as_deref(), json),
        Some(TerminalsCommand::List { runner, limit }) => {
            let mut q = vec![format!("limit={}", limit.unwrap_or(100))];
            if let Some(r) = runner {
                q.push(format!("runner={}", segment(&resolve_runner(client, &r)?)));
            }
            let (raw, v) =
                client.call("GET", &format!("/api/v1/recordings?{}", q.join("&")), None)?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "{:<20}  {:<15}  {:<20}  {:<20}  {:>8}  {:>10}  WHO",
                "ID", "RUNNER", "TARGET", "STARTED", "SECONDS", "BYTES"
            ))?;
            for r in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                let bytes = if r["truncated"] == true {
                    format!("{} (cap)", field(r, "bytes"))
                } else {
                    field(r, "bytes")
                };
                let secs = match r["duration_s"].as_f64() {
                    Some(s) => format!("{s:.0}"),
                    None => "(open)".into(),
                };
                out(&format!(
                    "{:<20}  {:<15}  {:<20}  {:<20}  {:>8}  {:>10}  {}",
                    field(r, "id"),
                    field(r, "runner_id"),
                    field(r, "target"),
                    field(r, "started_at"),
                    secs,
                    bytes,
                    field(r, "who"),
                ))?;
            }
            Ok(())
        }
        Some(TerminalsCommand::Download { id, output }) => {
            let body = cast(client, &id)?;
            let path = output.unwrap_or_else(|| PathBuf::from(format!("{id}.cast")));
            if path.as_os_str() == "-" {
                return write_all(&body);
            }
            std::fs::write(&path, &body)
                .map_err(|e| CliError::Other(format!("writing {}: {e}", path.display())))?;
            eprintln!("{} bytes written to {}", body.len(), path.display());
            Ok(())
        }
        Some(TerminalsCommand::Replay {
            id,
            speed,
            idle_limit,
        }) => {
            if !(speed.is_finite() && speed > 0.0) {
                return Err(CliError::Usage(format!(
                    "--speed must be above 0, not {speed}"
                )));
            }
            replay(&cast(client, &id)?, speed, idle_limit.max(0.0))
        }
    }
}

fn write_all(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::BrokenPipe),
        Err(e) => Err(CliError::Other(format!("stdout: {e}"))),
    }
}

/// Play the events of a `.cast` file to stdout with their timing.
fn replay(cast: &[u8], speed: f64, idle_limit: f64) -> Result<(), CliError> {
    let mut lines = cast.lines();
    let header = lines.next().transpose().ok().flatten().unwrap_or_default();
    let header: Value = serde_json::from_str(&header)
        .map_err(|e| CliError::Other(format!("not an asciicast file: {e}")))?;
    if header["version"] != 2 {
        return Err(CliError::Other(format!(
            "asciicast version {} (this plays version 2)",
            header["version"]
        )));
    }
    let mut last = 0.0f64;
    for line in lines {
        let line = line.map_err(|e| CliError::Other(format!("reading the recording: {e}")))?;
        let Ok(Value::Array(e)) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let (Some(t), Some(kind), Some(data)) = (
            e.first().and_then(Value::as_f64),
            e.get(1).and_then(Value::as_str),
            e.get(2).and_then(Value::as_str),
        ) else {
            continue;
        };
        let wait = (t - last).clamp(0.0, idle_limit) / speed;
        last = t;
        match kind {
            "o" => {
                if wait > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
                write_all(data.as_bytes())?;
            }
            "m" => eprintln!("\r\n[{data}]"),
            _ => {}
        }
    }
    Ok(())
}
