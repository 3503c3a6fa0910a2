//! `release upload|list`, `update set|show|clear|rollout|desired`,
//! `runner group`, `runner updates`: releases and self-update over the API.
//!
//! `update rollout` updates the runners of a selector in waves (the
//! fleet's rollouts, `cli/fleet.rs` follows it live; exit 1 if it halted);
//! `update desired` sets the own desired version of runners.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{field, out, resolve_runner, segment, table, CliError, Client};

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Upload a release made by `build.sh release` (admin token): every
    /// file in the directory (manifest.json, binaries, .minisig files)
    Upload {
        /// The directory, e.g. dist/release
        dir: PathBuf,
    },
    /// List the releases the server holds
    List,
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Set the version runners should run, for the tenant or one group,
    /// to a canary share first (e.g. --canary 10), then everyone
    Set {
        version: String,
        /// Percent of the runners (stable by runner id) that get it
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
        canary: u8,
        /// A group of runners (`runner group`); default: the whole tenant
        #[arg(long, default_value = "")]
        group: String,
    },
    /// Remove the desired version of the tenant or a group
    Clear {
        #[arg(long, default_value = "")]
        group: String,
    },
    /// The desired versions
    Show,
    /// Update the runners of a selector in waves, halting when updates
    /// fail (rejected, rolled back, not reconnected); followed live
    Rollout {
        version: String,
        /// Which runners, e.g. `env=prod` ("" for every runner)
        #[arg(long, default_value = "")]
        selector: String,
        /// N runners or N% per wave [default: all at once]
        #[arg(long)]
        wave: Option<String>,
        /// Runners of a wave updating at once
        #[arg(long)]
        concurrency: Option<u32>,
        /// Halt once this many runners failed [default 1]
        #[arg(long, conflicts_with = "max_failure_rate")]
        max_failures: Option<u32>,
        /// Halt when more than this percent of a wave failed
        #[arg(long)]
        max_failure_rate: Option<u8>,
        /// Wait this long after each wave before the next (e.g. 5m)
        #[arg(long, value_parser = super::parse_ttl)]
        soak: Option<u64>,
        /// How long an updated runner has to come back at the version (e.g. 2m)
        #[arg(long, value_parser = super::parse_ttl)]
        reconnect: Option<u64>,
        /// Print the rollout's id and return (follow it with `rollout watch`)
        #[arg(long)]
        detach: bool,
    },
    /// A runner's own desired version (over its policy), or that of
    /// every runner a --selector names; `none` drops it
    Desired {
        /// A runner id or name (or use --selector)
        #[arg(required_unless_present = "selector")]
        runner: Option<String>,
        #[arg(long, conflicts_with = "runner")]
        selector: Option<String>,
        /// The version, or `none`
        #[arg(long)]
        version: String,
    },
}

pub fn release(client: &Client, cmd: ReleaseCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        ReleaseCommand::Upload { dir } => {
            let manifest_path = dir.join("manifest.json");
            let manifest = std::fs::read(&manifest_path)
                .map_err(|e| CliError::Usage(format!("{}: {e}", manifest_path.display())))?;
            let m: Value = serde_json::from_slice(&manifest)
                .map_err(|e| CliError::Usage(format!("{}: {e}", manifest_path.display())))?;
            let version = m
                .get("version")
                .and_then(Value::as_str)
                .ok_or_else(|| CliError::Usage("manifest.json has no version".into()))?
                .to_owned();
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))?
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            // The manifest last: a release is complete once it is there.
            names.sort_by_key(|n| (n.starts_with("manifest.json"), n.clone()));
            for name in &names {
                let bytes = std::fs::read(dir.join(name))
                    .map_err(|e| CliError::Other(format!("{name}: {e}")))?;
                client.upload(
                    &format!("/api/v1/releases/{}/{}", segment(&version), segment(name)),
                    bytes,
                )?;
                if !json {
                    println!("uploaded {version}/{name}");
                }
            }
            if json {
                return out(&json!({"version": version, "files": names}).to_string());
            }
            Ok(())
        }
        ReleaseCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/releases", None)?;
            if json {
                return out(&raw);
            }
            let rows: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let files: Vec<String> = r["files"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| field(f, "name"))
                        .collect();
                    json!({"version": r["version"], "signed": r["signed_manifest"], "files": files.join(" ")})
                })
                .collect();
            out(&table(
                &["VERSION", "SIGNED MANIFEST", "FILES"],
                &Value::Array(rows),
                &["version", "signed", "files"],
            ))
        }
    }
}

pub fn update(client: &Client, cmd: UpdateCommand, json: bool) -> Result<(), CliError> {
    let body = match cmd {
        UpdateCommand::Rollout {
            version,
            selector,
            wave,
            concurrency,
            max_failures,
            max_failure_rate,
            soak,
            reconnect,
            detach,
        } => {
            let body = json!({
                "selector": selector,
                "wave": wave,
                "concurrency": concurrency,
                "max_failures": max_failures,
                "max_failure_rate": max_failure_rate,
                "soak_s": soak,
                "update": {"version": version, "reconnect_s": reconnect},
            });
            return super::fleet::start_rollout_body(client, body, detach, json);
        }
        UpdateCommand::Desired {
            runner,
            selector,
            version,
        } => {
            let version = (version != "none").then_some(version);
            let (raw, v) = match (runner, selector) {
                (Some(r), _) => {
                    let id = resolve_runner(client, &r)?;
                    client.call(
                        "PUT",
                        &format!("/api/v1/runners/{}/desired-version", segment(&id)),
                        Some(json!({ "version": version })),
                    )?
                }
                (None, sel) => client.call(
                    "POST",
                    "/api/v1/desired-version",
                    Some(json!({"selector": sel.unwrap_or_default(), "version": version})),
                )?,
            };
            if json {
                return out(&raw);
            }
            let to = version.as_deref().unwrap_or("its policy's");
            return match v["changed"].as_u64() {
                Some(n) => out(&format!("{n} runner(s) now want {to}\n")),
                None => out(&format!(
                    "runner {} wants {to} (desired: {})\n",
                    field(&v, "runner_id"),
                    field(&v, "desired")
                )),
            };
        }
        UpdateCommand::Set {
            version,
            canary,
            group,
        } => Some(json!({"version": version, "canary_percent": canary, "group": group})),
        UpdateCommand::Clear { group } => Some(json!({"version": null, "group": group})),
        UpdateCommand::Show => None,
    };
    let (raw, v) = match body {
        Some(b) => client.call("PUT", "/api/v1/update-policy", Some(b))?,
        None => client.call("GET", "/api/v1/update-policy", None)?,
    };
    if json {
        return out(&raw);
    }
    out(&table(
        &["GROUP", "VERSION", "CANARY %", "UPDATED"],
        &v,
        &["group", "version", "canary_percent", "updated_at"],
    ))
}

pub fn set_group(client: &Client, runner: &str, group: &str, json: bool) -> Result<(), CliError> {
    let id = resolve_runner(client, runner)?;
    let (raw, _) = client.call(
        "PUT",
        &format!("/api/v1/runners/{}/group", segment(&id)),
        Some(json!({ "group": group })),
    )?;
    if json {
        return out(&raw);
    }
    out(&format!("runner {id} is in group {group:?}"))
}

pub fn runner_updates(client: &Client, runner: &str, json: bool) -> Result<(), CliError> {
    let id = resolve_runner(client, runner)?;
    let (raw, v) = client.call(
        "GET",
        &format!("/api/v1/runners/{}/updates", segment(&id)),
        None,
    )?;
    if json {
        return out(&raw);
    }
    let mut text = format!(
        "runner:   {}\nversion:  {}\ngroup:    {}\ndesired:  {}{}\n\n",
        field(&v, "runner_id"),
        field(&v, "version"),
        field(&v, "group"),
        field(&v, "desired"),
        if v["desired_version"].is_string() {
            " (the runner's own)"
        } else {
            ""
        }
    );
    text.push_str(&table(
        &["AT", "VERSION", "STATE", "FROM", "REASON"],
        &v["reports"],
        &["at", "version", "state", "from_version", "reason"],
    ));
    out(&text)
}
