//! `labels`, `fleet-policy`, `rollout`, `schedule`, and `run --selector … --wave …`.
//!
//! A rollout started by `run` is followed live (a line per change of a
//! runner's state, then the totals); the command exits 0 when every runner
//! succeeded, 1 when the rollout halted, was aborted or a runner failed.

use std::collections::HashMap;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{field, grid, out, resolve_runner, segment, table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum LabelsCommand {
    /// A runner's labels and what its host proposes
    Show { runner: String },
    /// Set (KEY=VALUE) and remove (--remove KEY) labels of one runner, or of
    /// every runner a --selector names
    Set {
        /// A runner id or name (or use --selector)
        #[arg(required_unless_present = "selector")]
        runner: Option<String>,
        #[arg(long, conflicts_with = "runner")]
        selector: Option<String>,
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Accept the labels a runner's host proposed (all, or these keys)
    Accept { runner: String, keys: Vec<String> },
    /// The tenant's fleet policy: default job deadline, keys accepted without review
    Policy {
        /// How long a job waits for an offline runner (e.g. 10m; `none`)
        #[arg(long)]
        deadline: Option<String>,
        /// Label key a host may set without review (repeatable; `*`: all)
        #[arg(long = "auto-accept", value_name = "KEY")]
        auto_accept: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    List,
    Show {
        id: String,
    },
    /// Follow a rollout until it is over; non-zero exit if it did not succeed
    Watch {
        id: String,
    },
    /// Start nothing new; what runs finishes
    Pause {
        id: String,
    },
    /// Go on after a pause or a halt (failures counted afresh)
    Resume {
        id: String,
    },
    /// Skip the runners not started and cancel the running jobs; an update
    /// is taken back from the started runners not at it yet (their previous
    /// desired version), but an install a runner already took finishes
    Abort {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create (or replace) a schedule: a saved script or a command on the
    /// runners of a selector, at the times of a cron expression (UTC)
    Add {
        name: String,
        /// Five fields: minute hour day-of-month month day-of-week, e.g. "0 3 * * *"
        #[arg(long)]
        cron: String,
        /// Which runners, at each run, e.g. `role=db` ("" for every runner)
        #[arg(long, default_value = "")]
        selector: String,
        /// A saved script
        #[arg(long, conflicts_with = "command", required_unless_present = "command")]
        script: Option<String>,
        /// A shell command (run with /bin/sh -c)
        #[arg(long, short = 'c')]
        command: Option<String>,
        /// Start each run up to this long after its time (e.g. 10m), the
        /// same delay on every server
        #[arg(long, value_parser = super::parse_ttl)]
        jitter: Option<u64>,
        /// What a server that was down does with missed runs: skip, or
        /// run-once (the latest)
        #[arg(long, default_value = "skip")]
        missed: String,
        /// How long a job waits for an offline runner (e.g. 30m)
        #[arg(long, value_parser = super::parse_ttl)]
        deadline: Option<u64>,
        /// Run as a rollout in waves: N runners or N% per wave
        #[arg(long)]
        wave: Option<String>,
        /// Rollout: runners of a wave running at once
        #[arg(long, requires = "wave")]
        concurrency: Option<u32>,
        /// Rollout: halt once this many runners failed [default 1]
        #[arg(long, requires = "wave", conflicts_with = "max_failure_rate")]
        max_failures: Option<u32>,
        /// Rollout: halt when more than this percent of a wave failed
        #[arg(long, requires = "wave")]
        max_failure_rate: Option<u8>,
    },
    /// Schedules with their next run and the last one
    List,
    /// One schedule: its definition, next runs and latest runs
    Show { name: String },
    /// Remove a schedule (and its history)
    Rm { name: String },
    /// Runs of a schedule, newest first: occurrence, status, jobs
    History {
        name: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

pub fn schedule(client: &Client, c: ScheduleCommand, json: bool) -> Result<(), CliError> {
    let path = |name: &str| format!("/api/v1/schedules/{}", segment(name));
    match c {
        ScheduleCommand::Add {
            name,
            cron,
            selector,
            script,
            command,
            jitter,
            missed,
            deadline,
            wave,
            concurrency,
            max_failures,
            max_failure_rate,
        } => {
            let job = match (script, command) {
                (Some(s), None) => json!({ "script": s }),
                (None, Some(c)) => json!({ "command": c }),
                _ => return Err(CliError::Usage("give --script or --command".into())),
            };
            let mut body = json!({
                "cron": cron,
                "selector": selector,
                "job": job,
                "jitter_s": jitter.unwrap_or(0),
                "missed": missed,
            });
            if let Some(d) = deadline {
                body["deadline_s"] = json!(d);
            }
            if let Some(w) = wave {
                let mut waves = json!({ "wave": w });
                for (k, v) in [
                    ("concurrency", concurrency.map(u64::from)),
                    ("max_failures", max_failures.map(u64::from)),
                    ("max_failure_rate", max_failure_rate.map(u64::from)),
                ] {
                    if let Some(v) = v {
                        waves[k] = json!(v);
                    }
                }
                body["waves"] = waves;
            }
            let (raw, v) = client.call("PUT", &path(&name), Some(body))?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "schedule {name}: {} on {:?}, next run {}\n",
                field(&v, "cron"),
                field(&v, "selector"),
                field(&v, "next_run")
            ))
        }
        ScheduleCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/schedules", None)?;
            if json {
                return out(&raw);
            }
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    vec![
                        field(s, "name"),
                        field(s, "cron"),
                        field(s, "selector"),
                        field(s, "next_run"),
                        s["last_run"]["status"].as_str().unwrap_or("-").to_owned(),
                        s["last_run"]["occurrence"]
                            .as_str()
                            .unwrap_or("-")
                            .to_owned(),
                    ]
                })
                .collect();
            out(&grid(
                &["NAME", "CRON", "SELECTOR", "NEXT RUN", "LAST", "LAST AT"],
                &rows,
            ))
        }
        ScheduleCommand::Show { name } => {
            let (raw, v) = client.call("GET", &path(&name), None)?;
            if json {
                return out(&raw);
            }
            let next: Vec<&str> = v["next_runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            out(&format!(
                "schedule {name}: {} on {:?}, jitter {}s, missed runs: {}\njob: {}\nnext: {}\n",
                field(&v, "cron"),
                field(&v, "selector"),
                field(&v, "jitter_s"),
                field(&v, "missed"),
                v["job"],
                next.join(", ")
            ))?;
            out(&runs_table(&v["runs"]))
        }
        ScheduleCommand::Rm { name } => {
            client.call("DELETE", &path(&name), None)?;
            if json {
                return out("{}\n");
            }
            out(&format!("schedule {name} removed\n"))
        }
        ScheduleCommand::History { name, limit } => {
            let (raw, v) =
                client.call("GET", &format!("{}/runs?limit={limit}", path(&name)), None)?;
            if json {
                return out(&raw);
            }
            out(&runs_table(&v))
        }
    }
}

fn runs_table(runs: &Value) -> String {
    let rows: Vec<Vec<String>> = runs
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let jobs: Vec<&str> = r["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            vec![
                field(r, "occurrence"),
                field(r, "status"),
                field(r, "at"),
                if jobs.len() > 3 {
                    format!("{} … ({} jobs)", jobs[..3].join(" "), jobs.len())
                } else {
                    jobs.join(" ")
                },
            ]
        })
        .collect();
    grid(&["OCCURRENCE", "STATUS", "AT", "JOBS"], &rows)
}

/// `run` options that make it a rollout.
#[derive(Debug, Clone, Default)]
pub struct WaveArgs {
    pub wave: Option<String>,
    pub concurrency: Option<u32>,
    pub max_failures: Option<u32>,
    pub max_failure_rate: Option<u8>,
}

fn parse_labels(labels: &[String]) -> Result<serde_json::Map<String, Value>, CliError> {
    let mut set = serde_json::Map::new();
    for kv in labels {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("{kv:?}: use KEY=VALUE")))?;
        set.insert(k.to_owned(), json!(v));
    }
    Ok(set)
}

fn show_labels(raw: &str, v: &Value, json: bool) -> Result<(), CliError> {
    if json {
        return out(raw);
    }
    let mut text = String::new();
    for (what, key) in [("label", "labels"), ("proposed", "proposed")] {
        if let Some(m) = v[key].as_object() {
            for (k, val) in m {
                text.push_str(&format!("{what:<9} {k}={}\n", val.as_str().unwrap_or("")));
            }
        }
    }
    out(if text.is_empty() {
        "no labels\n"
    } else {
        &text
    })
}

pub fn labels(client: &Client, c: LabelsCommand, json: bool) -> Result<(), CliError> {
    match c {
        LabelsCommand::Show { runner } => {
            let id = resolve_runner(client, &runner)?;
            let (raw, v) = client.call(
                "GET",
                &format!("/api/v1/runners/{}/labels", segment(&id)),
                None,
            )?;
            show_labels(&raw, &v, json)
        }
        LabelsCommand::Set {
            runner,
            selector,
            labels,
            remove,
        } => {
            let set = parse_labels(&labels)?;
            if let Some(sel) = selector {
                let body = json!({"selector": sel, "set": set, "remove": remove});
                let (raw, v) = client.call("POST", "/api/v1/labels", Some(body))?;
                return if json {
                    out(&raw)
                } else {
                    out(&format!("changed {} runner(s)\n", field(&v, "changed")))
                };
            }
            let id = resolve_runner(client, runner.as_deref().unwrap_or_default())?;
            let body = json!({"set": set, "remove": remove});
            let (raw, v) = client.call(
                "PATCH",
                &format!("/api/v1/runners/{}/labels", segment(&id)),
                Some(body),
            )?;
            show_labels(&raw, &v, json)
        }
        LabelsCommand::Accept { runner, keys } => {
            let id = resolve_runner(client, &runner)?;
            let body = if keys.is_empty() {
                json!({})
            } else {
                json!({ "keys": keys })
            };
            let (raw, v) = client.call(
                "POST",
                &format!("/api/v1/runners/{}/labels/accept", segment(&id)),
                Some(body),
            )?;
            show_labels(&raw, &v, json)
        }
        LabelsCommand::Policy {
            deadline,
            auto_accept,
        } => {
            let (raw, v) = if deadline.is_none() && auto_accept.is_empty() {
                client.call("GET", "/api/v1/fleet-policy", None)?
            } else {
                let deadline_s = match deadline.as_deref() {
                    None | Some("none") => None,
                    Some(d) => Some(super::parse_ttl(d).map_err(CliError::Usage)?),
                };
                let body = json!({"job_deadline_s": deadline_s, "auto_accept": auto_accept});
                client.call("PUT", "/api/v1/fleet-policy", Some(body))?
            };
            if json {
                return out(&raw);
            }
            out(&format!(
                "job deadline: {}\nauto-accept: {}\n",
                v["job_deadline_s"]
                    .as_u64()
                    .map_or("none".into(), |s| format!("{s}s")),
                field(&v, "auto_accept")
            ))
        }
    }
}

/// `run --selector S --wave …`: start a rollout and follow it.
pub fn start_rollout(
    client: &Client,
    selector: &str,
    wave: &WaveArgs,
    job: Value,
    detach: bool,
    json: bool,
) -> Result<(), CliError> {
    let body = json!({
        "selector": selector,
        "wave": wave.wave,
        "concurrency": wave.concurrency,
        "max_failures": wave.max_failures,
        "max_failure_rate": wave.max_failure_rate,
        "job": job,
    });
    start_rollout_body(client, body, detach, json)
}

/// Start a rollout (`POST /rollouts` with this body: jobs or an update)
/// and follow it unless detached.
pub fn start_rollout_body(
    client: &Client,
    body: Value,
    detach: bool,
    json: bool,
) -> Result<(), CliError> {
    let (raw, v) = client.call("POST", "/api/v1/rollouts", Some(body))?;
    if detach {
        return if json {
            out(&raw)
        } else {
            out(&format!("{}\n", field(&v, "id")))
        };
    }
    follow(client, &field(&v, "id"), json)
}

/// Print each runner's changes until the rollout is over; the exit says
/// how it ended.
fn follow(client: &Client, id: &str, json: bool) -> Result<(), CliError> {
    let path = format!("/api/v1/rollouts/{}", segment(id));
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut last_state = String::new();
    loop {
        let (raw, v) = client.call("GET", &path, None)?;
        let state = field(&v, "state");
        if !json {
            let soaking = v["soaking_until"].as_str().map(str::to_owned);
            let shown = format!("{state} {soaking:?}");
            if shown != last_state {
                out(&format!(
                    "rollout {id}: {state} (wave {} of {}){}\n",
                    field(&v, "wave"),
                    field(&v, "waves"),
                    soaking
                        .map(|u| format!(", soaking until {u}"))
                        .unwrap_or_default()
                ))?;
                last_state = shown;
            }
            for t in v["targets"].as_array().into_iter().flatten() {
                let key = field(t, "runner_id");
                let now = format!("{} {}", field(t, "state"), field(t, "status"));
                if seen.get(&key) != Some(&now) {
                    // An update's target has no job: its status says how it went.
                    let what = match t["job_id"].as_str() {
                        Some(job) => format!("exit {:<4} {job}", field(t, "exit_code")),
                        None if v["kind"] == "update" => field(t, "status"),
                        None => format!("exit {:<4} -", field(t, "exit_code")),
                    };
                    out(&format!(
                        "  wave {:<3} {:<24} {:<10} {what}\n",
                        field(t, "wave"),
                        field(t, "name"),
                        field(t, "state"),
                    ))?;
                    seen.insert(key, now);
                }
            }
        }
        if v["over"] == true || v["live"] == false {
            let t = &v["totals"];
            if json {
                out(&raw)?;
            } else {
                out(&format!(
                    "{state}: {} succeeded, {} failed, {} skipped, {} not started of {}\n",
                    field(t, "succeeded"),
                    field(t, "failed"),
                    field(t, "skipped"),
                    field(t, "waiting"),
                    field(t, "targets"),
                ))?;
            }
            let failed = t["failed"].as_u64().unwrap_or(0);
            return match state.as_str() {
                "done" if failed == 0 => Ok(()),
                "done" => Err(CliError::Job(1, format!("{failed} runner(s) failed"))),
                other => Err(CliError::Job(1, format!("rollout {id} {other}"))),
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn rollout(client: &Client, c: RolloutCommand, json: bool) -> Result<(), CliError> {
    let one = |id: &str, action: &str| -> Result<(), CliError> {
        let (raw, v) = client.call(
            "POST",
            &format!("/api/v1/rollouts/{}/{action}", segment(id)),
            None,
        )?;
        if json {
            out(&raw)
        } else {
            out(&format!("rollout {id}: {}\n", field(&v, "state")))
        }
    };
    match c {
        RolloutCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/rollouts", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["ID", "STATE", "SELECTOR", "JOB", "WAVE", "CREATED"],
                &v,
                &["id", "state", "selector", "job", "wave", "created_at"],
            ))
        }
        RolloutCommand::Show { id } => {
            let (raw, v) =
                client.call("GET", &format!("/api/v1/rollouts/{}", segment(&id)), None)?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "rollout {id}: {} (wave {} of {}), selector {}\n",
                field(&v, "state"),
                field(&v, "wave"),
                field(&v, "waves"),
                field(&v, "selector")
            ))?;
            out(&table(
                &["WAVE", "RUNNER", "STATE", "STATUS", "EXIT", "MS", "JOB"],
                &v["targets"],
                &[
                    "wave",
                    "name",
                    "state",
                    "status",
                    "exit_code",
                    "duration_ms",
                    "job_id",
                ],
            ))
        }
        RolloutCommand::Watch { id } => follow(client, &id, json),
        RolloutCommand::Pause { id } => one(&id, "pause"),
        RolloutCommand::Resume { id } => one(&id, "resume"),
        RolloutCommand::Abort { id } => one(&id, "abort"),
    }
}
