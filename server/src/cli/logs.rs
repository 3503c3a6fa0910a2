//! `logs` and `log-config`.
//!
//! `logs RUNNER CONTAINER` prints stored lines (as `docker logs` would:
//! stdout lines on stdout, stderr lines on stderr); `--follow` reads live
//! from the runner until the stream ends, and says why on stderr.

use std::io::BufRead;

use clap::Args;
use serde_json::{json, Value};

use super::{field, note, out, pairs, query, resolve_runner, segment};
use super::{CliError, Client};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Runner id (rn_…) or name
    pub runner: String,
    /// Container name (or id)
    pub container: String,
    /// Keep printing new lines, live from the runner (Ctrl-C to stop)
    #[arg(short, long)]
    pub follow: bool,
    /// From: a duration back from now (15m, 2h), RFC 3339, or Unix ms
    #[arg(long)]
    pub since: Option<String>,
    /// Until, same forms as --since
    #[arg(long)]
    pub until: Option<String>,
    /// Only the last N lines
    #[arg(long, short = 'n')]
    pub tail: Option<usize>,
    /// Only lines containing this text (case-insensitive)
    #[arg(long)]
    pub grep: Option<String>,
    /// stdout, stderr or both
    #[arg(long, default_value = "both")]
    pub stream: String,
    /// Prefix each line with Docker's timestamp
    #[arg(short, long)]
    pub timestamps: bool,
    /// Read from Docker on the runner now instead of the server's store
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, Args)]
pub struct LogConfigArgs {
    /// Runner id (rn_…) or name
    pub runner: String,
    /// Collect: all, none, label:KEY or label:KEY=VALUE ("default": the
    /// server's setting)
    #[arg(long)]
    pub collect: Option<String>,
    /// Retention for one container (default: for every container of the runner)
    #[arg(long)]
    pub container: Option<String>,
    /// Keep logs this long (90m, 7d); with --max-bytes
    #[arg(long, requires = "max_bytes")]
    pub max_age: Option<String>,
    /// Keep at most this much per container (512K, 64M, 1G); with --max-age
    #[arg(long, requires = "max_age")]
    pub max_bytes: Option<String>,
    /// Drop the retention set for the runner (or --container), back to the default
    #[arg(long, conflicts_with_all = ["max_age", "max_bytes"])]
    pub reset_retention: bool,
}

pub fn logs(client: &Client, a: &LogsArgs, json: bool) -> Result<(), CliError> {
    let id = resolve_runner(client, &a.runner)?;
    let tail = a.tail.map(|n| n.to_string());
    let path = format!(
        "/api/v1/runners/{}/containers/{}/logs{}",
        segment(&id),
        segment(&a.container),
        query(&[
            ("follow", a.follow.then_some("1")),
            ("source", (a.live && !a.follow).then_some("runner")),
            ("since", a.since.as_deref()),
            ("until", a.until.as_deref()),
            ("tail", tail.as_deref()),
            ("q", a.grep.as_deref()),
            ("stream", Some(a.stream.as_str())),
        ])
    );
    let reader = client.stream_get(&path, "application/x-ndjson")?;
    let mut lines = 0usize;
    for line in reader.lines() {
        let line = line.map_err(|e| CliError::Unreachable(format!("log stream: {e}")))?;
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let Some(end) = v["end"].as_str() {
            if a.follow {
                eprintln!("-- log stream ended: {end}");
            }
            if json {
                out(&line)?;
            }
            break;
        }
        lines += 1;
        if json {
            out(&line)?;
            continue;
        }
        let text = if a.timestamps {
            format!("{} {}", field(&v, "ts"), field(&v, "line"))
        } else {
            field(&v, "line")
        };
        if v["stream"] == "stderr" {
            eprintln!("{text}");
        } else {
            out(&text)?;
        }
    }
    if lines == 0 && !a.follow && !json {
        note(&format!(
            "no stored lines of {} on {id}{}",
            a.container,
            if a.live {
                ""
            } else {
                " (is it collected? see log-config; --live reads from the runner)"
            }
        ))?;
    }
    Ok(())
}

pub fn log_config(client: &Client, a: &LogConfigArgs, json: bool) -> Result<(), CliError> {
    let id = resolve_runner(client, &a.runner)?;
    let base = format!("/api/v1/runners/{}/logs", segment(&id));
    if let Some(policy) = &a.collect {
        let policy = (policy != "default").then_some(policy.as_str());
        client.call(
            "PUT",
            &format!("{base}/collect"),
            Some(json!({ "policy": policy })),
        )?;
    }
    if let (Some(age), Some(bytes)) = (&a.max_age, &a.max_bytes) {
        let body = json!({ "container": a.container, "max_age": age, "max_bytes": bytes });
        client.call("PUT", &format!("{base}/retention"), Some(body))?;
    }
    if a.reset_retention {
        let q = query(&[("container", a.container.as_deref())]);
        client.call("DELETE", &format!("{base}/retention{q}"), None)?;
    }
    let (raw, v) = client.call("GET", &base, None)?;
    if json {
        return out(&raw);
    }
    let age = |r: &Value| {
        let s = r["max_age_s"].as_i64().unwrap_or(0);
        if s % 86_400 == 0 {
            format!("{}d", s / 86_400)
        } else if s % 3600 == 0 {
            format!("{}h", s / 3600)
        } else {
            format!("{}m", s / 60)
        }
    };
    let size = |b: i64| {
        if b >= 1 << 20 {
            format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
        } else {
            format!("{:.1} KiB", b as f64 / 1024.0)
        }
    };
    let r = &v["retention"];
    let mut text = pairs(&[
        ("runner", id.clone()),
        ("collect", field(&v, "collect")),
        (
            "retention",
            format!(
                "{} or {} per container",
                age(r),
                size(r["max_bytes"].as_i64().unwrap_or(0))
            ),
        ),
    ]);
    for c in v["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let r = &c["retention"];
        text.push_str(&format!(
            "\n  {:<24} {:>10} stored, keep {} / {}",
            field(c, "name"),
            size(c["bytes"].as_i64().unwrap_or(0)),
            age(r),
            size(r["max_bytes"].as_i64().unwrap_or(0))
        ));
    }
    out(&text)
}
