//! `script`, `secret`, `run` and `jobs`.
//!
//! `run` with one runner and `jobs watch` print the job's output live
//! (stdout to stdout, stderr and tether's own notes to stderr) and exit
//! with the job's exit code (1 if it has none: cancelled, timed out, lost).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tether::protocol::signed;
use tether::protocol::JobStart;

use super::keys::Signer;

use super::{field, note, out, query, resolve_runner, segment, table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum ScriptCommand {
    /// Save (or replace) a script; the body from --file, or stdin with `-`
    Put {
        name: String,
        /// File with the script body (`-`: stdin)
        #[arg(long, short)]
        file: String,
        /// Absolute path of the interpreter (default /bin/sh)
        #[arg(long)]
        interpreter: Option<String>,
        /// Argument passed to the script, repeatable
        #[arg(long = "arg")]
        args: Vec<String>,
        /// Seconds before the job is stopped (0: none)
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    List,
    Show {
        name: String,
    },
    Rm {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret; the value is read from stdin (never from the command line)
    Set {
        name: String,
    },
    /// Names only: values cannot be read back
    List,
    Rm {
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Runner ids (rn_…) or names
    #[arg(required_unless_present = "selector")]
    pub runners: Vec<String>,
    /// Every runner whose labels match, e.g. `role=db,region in (eu,us),!canary`
    #[arg(long, conflicts_with = "runners")]
    pub selector: Option<String>,
    /// How long a job waits for an offline runner before it expires (e.g. 10m)
    #[arg(long)]
    pub deadline: Option<String>,
    /// Run as a rollout in waves: N runners or N% per wave (needs --selector)
    #[arg(long, requires = "selector")]
    pub wave: Option<String>,
    /// Rollout: runners of a wave running at once [default: the whole wave]
    #[arg(long, requires = "wave")]
    pub concurrency: Option<u32>,
    /// Rollout: halt once this many runners failed [default 1]
    #[arg(long, requires = "wave", conflicts_with = "max_failure_rate")]
    pub max_failures: Option<u32>,
    /// Rollout: halt when more than this percent of a wave failed
    #[arg(long, requires = "wave")]
    pub max_failure_rate: Option<u8>,
    /// A saved script
    #[arg(long, conflicts_with = "command")]
    pub script: Option<String>,
    /// A shell command (run with /bin/sh -c)
    #[arg(long, short = 'c')]
    pub command: Option<String>,
    /// KEY=VALUE, repeatable
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Secret exported under its name, repeatable
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Seconds before the job is stopped
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Print the job ids and return at once
    #[arg(long, short)]
    pub detach: bool,
    /// Sign the job for each runner with this operator key (minisign
    /// format, `key generate`), for hosts that require signatures; the
    /// key stays here, only signatures are sent
    #[arg(long, env = "TETHER_SIGN_KEY", hide_env_values = true)]
    pub sign_key: Option<PathBuf>,
    /// How long a signature stays valid (the host refuses it after)
    #[arg(long, default_value = "10m")]
    pub sign_valid: String,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Recent jobs (of one runner with --runner)
    List {
        #[arg(long)]
        runner: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    Show {
        id: String,
    },
    /// Print the job's output live until it ends; exit with its exit code
    Watch {
        id: String,
    },
    Cancel {
        id: String,
    },
}

pub fn script(client: &Client, c: ScriptCommand, json: bool) -> Result<(), CliError> {
    match c {
        ScriptCommand::Put {
            name,
            file,
            interpreter,
            args,
            timeout,
        } => {
            let body = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| CliError::Usage(format!("reading the script from stdin: {e}")))?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| CliError::Usage(format!("--file {file}: {e}")))?
            };
            let b = json!({ "body": body, "interpreter": interpreter, "args": args, "timeout_s": timeout });
            let (raw, v) = client.call(
                "PUT",
                &format!("/api/v1/scripts/{}", segment(&name)),
                Some(b),
            )?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "saved script {} ({})",
                field(&v, "name"),
                field(&v, "interpreter")
            ))
        }
        ScriptCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/scripts", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["NAME", "INTERPRETER", "TIMEOUT_S"],
                &v,
                &["name", "interpreter", "timeout_s"],
            ))
        }
        ScriptCommand::Show { name } => {
            let (raw, v) =
                client.call("GET", &format!("/api/v1/scripts/{}", segment(&name)), None)?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "# {} ({})\n{}",
                field(&v, "name"),
                field(&v, "interpreter"),
                field(&v, "body")
            ))
        }
        ScriptCommand::Rm { name } => {
            client.call(
                "DELETE",
                &format!("/api/v1/scripts/{}", segment(&name)),
                None,
            )?;
            out(&format!("removed script {name}"))
        }
    }
}

pub fn secret(client: &Client, c: SecretCommand, json: bool) -> Result<(), CliError> {
    match c {
        SecretCommand::Set { name } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(|e| CliError::Usage(format!("reading the value from stdin: {e}")))?;
            // `echo value | …` adds a newline nobody means.
            let value = value.strip_suffix('\n').unwrap_or(&value);
            client.call(
                "PUT",
                &format!("/api/v1/secrets/{}", segment(&name)),
                Some(json!({ "value": value })),
            )?;
            out(&format!("secret {name} set"))
        }
        SecretCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/secrets", None)?;
            if json {
                return out(&raw);
            }
            out(&table(&["NAME", "UPDATED"], &v, &["name", "updated_at"]))
        }
        SecretCommand::Rm { name } => {
            client.call(
                "DELETE",
                &format!("/api/v1/secrets/{}", segment(&name)),
                None,
            )?;
            out(&format!("removed secret {name}"))
        }
    }
}

pub fn run(client: &Client, a: &RunArgs, json: bool) -> Result<(), CliError> {
    if a.script.is_none() == a.command.is_none() {
        return Err(CliError::Usage("give --script NAME or -c COMMAND".into()));
    }
    let mut env = serde_json::Map::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--env {kv:?}: use KEY=VALUE")))?;
        env.insert(k.to_owned(), json!(v));
    }
    let mut body = json!({
        "script": a.script,
        "command": a.command,
        "env": env,
        "secrets": a.secrets,
        "timeout_s": a.timeout,
    });
    if let (Some(sel), Some(wave)) = (&a.selector, &a.wave) {
        let w = super::fleet::WaveArgs {
            wave: Some(wave.clone()),
            concurrency: a.concurrency,
            max_failures: a.max_failures,
            max_failure_rate: a.max_failure_rate,
        };
        return super::fleet::start_rollout(client, sel, &w, body, a.detach, json);
    }
    if let Some(d) = &a.deadline {
        body["deadline_s"] = json!(super::parse_ttl(d).map_err(CliError::Usage)?);
    }
    if let Some(sel) = &a.selector {
        body["selector"] = json!(sel);
    } else {
        let mut runners = Vec::new();
        for r in &a.runners {
            runners.push(resolve_runner(client, r)?);
        }
        if let Some(path) = &a.sign_key {
            body["signatures"] = signatures(client, a, path, &runners, &env)?;
        }
        body["runners"] = json!(runners);
    }
    let (raw, v) = client.call("POST", "/api/v1/jobs", Some(body))?;
    let jobs = v.as_array().cloned().unwrap_or_default();
    if json && (a.detach || jobs.len() != 1) {
        return out(&raw);
    }
    if a.detach || jobs.len() != 1 {
        return out(&table(
            &["JOB", "RUNNER", "STATUS"],
            &v,
            &["id", "runner_id", "status"],
        ));
    }
    watch(client, &field(&jobs[0], "id"))
}

/// One signature per runner over the job as the server will send it
/// (`protocol/signed.rs`): the same fields the server fills in from the
/// request (a saved script's interpreter, body, arguments and timeout are
/// read from the server first and signed as read; if the server sends
/// anything else, the host refuses it).
fn signatures(
    client: &Client,
    a: &RunArgs,
    key_file: &Path,
    runners: &[String],
    env: &serde_json::Map<String, Value>,
) -> Result<Value, CliError> {
    let signer = Signer::load(key_file, &a.sign_valid)?;
    let (program, script, args, timeout_s) = match (&a.script, &a.command) {
        (Some(name), _) => {
            let (_, s) = client.call("GET", &format!("/api/v1/scripts/{}", segment(name)), None)?;
            let args = s["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (
                s["interpreter"].as_str().unwrap_or_default().to_owned(),
                s["body"].as_str().map(str::to_owned),
                args,
                a.timeout.unwrap_or(s["timeout_s"].as_u64().unwrap_or(0)),
            )
        }
        (None, command) => (
            "/bin/sh".to_owned(),
            command.clone(),
            Vec::new(),
            a.timeout.unwrap_or(0),
        ),
    };
    let start = JobStart {
        job_id: String::new(),
        channel: 0,
        program,
        args,
        script,
        env: env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        // Names only: the values are the server's and are not signed.
        secrets: a
            .secrets
            .iter()
            .map(|n| (n.clone(), String::new()))
            .collect(),
        timeout_s,
        deploy: None,
        signed: None,
    };
    let mut out = serde_json::Map::new();
    for runner in runners {
        let action_id = Signer::action_id()?;
        let bytes = signed::job_bytes(runner, &action_id, signer.not_after_ms(), &start);
        let kind = signed::job_kind(&start);
        out.insert(runner.clone(), signer.sign(kind, &action_id, &bytes));
    }
    Ok(Value::Object(out))
}

pub fn jobs(client: &Client, c: JobsCommand, json: bool) -> Result<(), CliError> {
    match c {
        JobsCommand::List { runner, limit } => {
            let runner = runner.map(|r| resolve_runner(client, &r)).transpose()?;
            let limit = limit.to_string();
            let (raw, v) = client.call(
                "GET",
                &format!(
                    "/api/v1/jobs{}",
                    query(&[("runner", runner.as_deref()), ("limit", Some(&limit))])
                ),
                None,
            )?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["JOB", "RUNNER", "STATUS", "EXIT", "CREATED", "WHAT"],
                &v,
                &[
                    "id",
                    "runner_id",
                    "status",
                    "exit_code",
                    "created_at",
                    "label",
                ],
            ))
        }
        JobsCommand::Show { id } => {
            let (raw, v) = client.call("GET", &format!("/api/v1/jobs/{}", segment(&id)), None)?;
            if json {
                return out(&raw);
            }
            out(&super::pairs(&[
                ("job", field(&v, "id")),
                ("runner", field(&v, "runner_id")),
                ("what", field(&v, "label")),
                ("status", field(&v, "status")),
                ("exit code", field(&v, "exit_code")),
                ("reason", field(&v, "reason")),
                ("created", field(&v, "created_at")),
                ("duration ms", field(&v, "duration_ms")),
                ("output bytes", field(&v, "stored_bytes")),
            ]))
        }
        JobsCommand::Watch { id } => watch(client, &id),
        JobsCommand::Cancel { id } => {
            let (_, v) = client.call(
                "POST",
                &format!("/api/v1/jobs/{}/cancel", segment(&id)),
                None,
            )?;
            out(&format!(
                "cancel requested for {} ({})",
                field(&v, "id"),
                field(&v, "status")
            ))
        }
    }
}

/// Follow a job's output to its end; the job's outcome becomes ours.
pub(super) fn watch(client: &Client, id: &str) -> Result<(), CliError> {
    let path = format!("/api/v1/jobs/{}/output?follow=1&format=ndjson", segment(id));
    let reader = client.stream_get(&path, "application/x-ndjson")?;
    for line in reader.lines() {
        let line = line.map_err(|e| CliError::Unreachable(format!("job output: {e}")))?;
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        // The server ended the follow early (the token was revoked).
        if let Some(reason) = v["end"].as_str() {
            note(&format!("job {id}: output stream ended: {reason}"))?;
            break;
        }
        let data = v["data"].as_str().unwrap_or("");
        if v["stream"] == "stdout" {
            use std::io::Write;
            let mut so = std::io::stdout().lock();
            if so
                .write_all(data.as_bytes())
                .and_then(|()| so.flush())
                .is_err()
            {
                return Err(CliError::BrokenPipe);
            }
        } else {
            eprint!("{data}");
        }
    }
    let (_, v) = client.call("GET", &format!("/api/v1/jobs/{}", segment(id)), None)?;
    match v["status"].as_str() {
        Some("succeeded") => Ok(()),
        Some(status) => {
            let code = v["exit_code"]
                .as_i64()
                .and_then(|c| u8::try_from(c).ok())
                .filter(|c| *c != 0)
                .unwrap_or(1);
            let reason = field(&v, "reason");
            Err(CliError::Job(
                code,
                format!(
                    "job {id} {status}{}",
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ),
            ))
        }
        None => {
            note(&format!("job {id}: no status"))?;
            Err(CliError::Job(1, format!("job {id}: status unknown")))
        }
    }
}
