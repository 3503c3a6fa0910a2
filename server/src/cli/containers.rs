//! Container subcommands: `containers`, `container …`, `prune`, `docker`.
//!
//! Docker's own error message is printed as it came (the server passes it
//! through with code `docker`); a missing container exits 3, any other
//! Docker error 1.
//!
//! With `--sign-key` an operation that changes a container (start, stop,
//! restart, kill, rm, prune) is signed here first, over the
//! `docker_request` the server's own code makes of it
//! (`containers::api::action_request`; `protocol/signed.rs`), for hosts
//! that require signed container operations.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};
use tether::protocol::signed::{container_bytes, Kind};
use tether::protocol::{DockerOp, DockerRequest};

use super::keys::{SignArgs, Signer};

use super::{field, fmt_value, grid, note, out, pairs, query, resolve_runner, segment};
use super::{CliError, Client};

/// The API's error code for a Docker error passed through.
pub const DOCKER_CODE: &str = "docker";

/// How long a container command waits for the server: the server waits 30 s
/// for the runner (plus the stop timeout), this a little longer.
pub const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Docker's full JSON of one container
    Inspect {
        /// Runner id (rn_…) or name
        runner: String,
        /// Container id or name
        container: String,
    },
    /// Start a container
    Start {
        runner: String,
        container: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Stop a container (SIGTERM, then SIGKILL after the timeout)
    Stop {
        runner: String,
        container: String,
        /// Seconds to wait before killing (Docker's default: 10)
        #[arg(long)]
        timeout: Option<u32>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Restart a container
    Restart {
        runner: String,
        container: String,
        /// Seconds to wait before killing (Docker's default: 10)
        #[arg(long)]
        timeout: Option<u32>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Send a signal to a container (default SIGKILL)
    Kill {
        runner: String,
        container: String,
        /// Signal name or number, e.g. SIGHUP, 9
        #[arg(long)]
        signal: Option<String>,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Remove a container
    Rm {
        runner: String,
        container: String,
        /// Kill it first if it runs
        #[arg(long)]
        force: bool,
        /// Also remove its anonymous volumes
        #[arg(long)]
        volumes: bool,
        #[command(flatten)]
        sign: SignArgs,
    },
}

impl ContainerCommand {
    /// Extra seconds the call may take (a stop waits its timeout first).
    pub fn extra_wait(&self) -> Duration {
        match self {
            ContainerCommand::Stop { timeout, .. } | ContainerCommand::Restart { timeout, .. } => {
                Duration::from_secs(u64::from(timeout.unwrap_or(10)))
            }
            _ => Duration::ZERO,
        }
    }
}

impl ContainerCommand {
    /// The operation, its signing flags and the parameters the server
    /// turns into its `docker_request`; `None` for inspect (read only).
    fn signable(&self) -> Option<(DockerOp, &SignArgs, crate::containers::api::ActionParams)> {
        use crate::containers::api::ActionParams;
        use ContainerCommand as C;
        let none = ActionParams::default();
        Some(match self {
            C::Inspect { .. } => return None,
            C::Start { sign, .. } => (DockerOp::Start, sign, none),
            C::Stop { timeout, sign, .. } => (
                DockerOp::Stop,
                sign,
                ActionParams {
                    timeout: *timeout,
                    ..none
                },
            ),
            C::Restart { timeout, sign, .. } => (
                DockerOp::Restart,
                sign,
                ActionParams {
                    timeout: *timeout,
                    ..none
                },
            ),
            C::Kill { signal, sign, .. } => (
                DockerOp::Kill,
                sign,
                ActionParams {
                    signal: signal.clone(),
                    ..none
                },
            ),
            C::Rm {
                force,
                volumes,
                sign,
                ..
            } => (
                DockerOp::Remove,
                sign,
                ActionParams {
                    force: force.then_some(true),
                    volumes: volumes.then_some(true),
                    ..none
                },
            ),
        })
    }
}

/// The signature (`{"action_id", "not_after_ms", "signature"}`) of
/// `req` for runner `runner`.
fn sign_request(signer: &Signer, runner: &str, req: &DockerRequest) -> Result<Value, CliError> {
    let action_id = Signer::action_id()?;
    let bytes = container_bytes(runner, &action_id, signer.not_after_ms(), req);
    Ok(signer.sign(Kind::Container, &action_id, &bytes))
}

pub fn containers(
    client: &Client,
    runner: &str,
    all: bool,
    cached: bool,
    json: bool,
) -> Result<(), CliError> {
    let id = resolve_runner(client, runner)?;
    let cached_q = cached.then_some("true");
    let (raw, v) = client.call(
        "GET",
        &format!(
            "/api/v1/runners/{}/containers{}",
            segment(&id),
            query(&[("cached", cached_q)])
        ),
        None,
    )?;
    if json {
        return out(&raw);
    }
    let items = v["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let shown: Vec<&Value> = items
        .iter()
        .filter(|c| all || c["state"] == "running")
        .collect();
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|c| {
            vec![
                field(c, "name"),
                field(c, "image"),
                field(c, "state"),
                field(c, "status"),
                ports_text(&c["ports"]),
            ]
        })
        .collect();
    out(&grid(&["NAME", "IMAGE", "STATE", "STATUS", "PORTS"], &rows))?;
    if cached {
        note(&match v["as_of"].as_str() {
            Some(at) => format!("the server's cached view, as of {at}"),
            None => "the runner has not sent its containers yet".to_owned(),
        })?;
    }
    if !all && shown.len() < items.len() {
        note(&format!(
            "{} stopped containers not shown (--all shows them)",
            items.len() - shown.len()
        ))?;
    }
    Ok(())
}

/// Docker's `Ports` as `docker ps` shows them: `0.0.0.0:8080->80/tcp, 443/tcp`.
pub fn ports_text(ports: &Value) -> String {
    let mut seen: Vec<String> = Vec::new();
    for p in ports.as_array().map(Vec::as_slice).unwrap_or_default() {
        let private = p["PrivatePort"].as_u64().unwrap_or(0);
        let proto = p["Type"].as_str().unwrap_or("tcp");
        let text = match (p["IP"].as_str(), p["PublicPort"].as_u64()) {
            (Some(ip), Some(public)) if ip.contains(':') => {
                format!("[{ip}]:{public}->{private}/{proto}")
            }
            (Some(ip), Some(public)) => format!("{ip}:{public}->{private}/{proto}"),
            (None, Some(public)) => format!("{public}->{private}/{proto}"),
            (_, None) => format!("{private}/{proto}"),
        };
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    if seen.is_empty() {
        "-".to_owned()
    } else {
        seen.join(", ")
    }
}

pub fn container(client: &Client, command: ContainerCommand, json: bool) -> Result<(), CliError> {
    use ContainerCommand as C;
    let (runner, container) = match &command {
        C::Inspect { runner, container }
        | C::Start {
            runner, container, ..
        }
        | C::Stop {
            runner, container, ..
        }
        | C::Restart {
            runner, container, ..
        }
        | C::Kill {
            runner, container, ..
        }
        | C::Rm {
            runner, container, ..
        } => (runner.clone(), container.clone()),
    };
    let id = resolve_runner(client, &runner)?;
    let base = format!(
        "/api/v1/runners/{}/containers/{}",
        segment(&id),
        segment(&container)
    );
    let timeout_q = |t: &Option<u32>| t.map(|t| t.to_string());
    let (method, path, done, unchanged) = match &command {
        C::Inspect { .. } => {
            let (raw, v) = client.call("GET", &base, None)?;
            if json {
                return out(&raw);
            }
            return out(&serde_json::to_string_pretty(&v).unwrap_or(raw));
        }
        C::Start { .. } => (
            "POST",
            format!("{base}/start"),
            "started",
            "already running",
        ),
        C::Stop { timeout, .. } => (
            "POST",
            format!(
                "{base}/stop{}",
                query(&[("timeout", timeout_q(timeout).as_deref())])
            ),
            "stopped",
            "already stopped",
        ),
        C::Restart { timeout, .. } => (
            "POST",
            format!(
                "{base}/restart{}",
                query(&[("timeout", timeout_q(timeout).as_deref())])
            ),
            "restarted",
            "not changed",
        ),
        C::Kill { signal, .. } => (
            "POST",
            format!("{base}/kill{}", query(&[("signal", signal.as_deref())])),
            "killed",
            "not changed",
        ),
        C::Rm { force, volumes, .. } => (
            "DELETE",
            format!(
                "{base}{}",
                query(&[
                    ("force", force.then_some("true")),
                    ("volumes", volumes.then_some("true")),
                ])
            ),
            "removed",
            "not changed",
        ),
    };
    let mut path = path;
    if let Some((op, sign, p)) = command.signable() {
        if let Some(signer) = Signer::from_args(sign)? {
            let req = crate::containers::api::action_request(op, &container, &p);
            let s = sign_request(&signer, &id, &req)?;
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(&format!(
                "action_id={}&not_after_ms={}&signature={}",
                segment(&field(&s, "action_id")),
                s["not_after_ms"],
                segment(&field(&s, "signature"))
            ));
        }
    }
    let (raw, v) = client.call(method, &path, None)?;
    if json {
        return out(&raw);
    }
    if v["changed"] == false {
        out(&format!("{container}: {unchanged} (no change)"))
    } else {
        out(&format!("{done} {container}"))
    }
}

pub fn prune(
    client: &Client,
    runner: &str,
    images: bool,
    filters: &[String],
    sign: &SignArgs,
    json: bool,
) -> Result<(), CliError> {
    let mut map = serde_json::Map::new();
    for f in filters {
        let Some((k, v)) = f.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--filter {f:?}: use KEY=VALUE, e.g. until=24h or label=app=web"
            )));
        };
        let values = map.entry(k.to_owned()).or_insert_with(|| json!([]));
        if let Value::Array(a) = values {
            a.push(Value::String(v.to_owned()));
        }
    }
    let mut body = if map.is_empty() {
        None
    } else {
        Some(json!({ "filters": map }))
    };
    let id = resolve_runner(client, runner)?;
    if let Some(signer) = Signer::from_args(sign)? {
        let filters = (!map.is_empty()).then(|| Value::Object(map.clone()));
        let req = crate::containers::api::prune_request(images, filters);
        let s = sign_request(&signer, &id, &req)?;
        let b = body.get_or_insert_with(|| json!({}));
        for k in ["action_id", "not_after_ms", "signature"] {
            b[k] = s[k].clone();
        }
    }
    let what = if images { "images" } else { "containers" };
    let (raw, v) = client.call(
        "POST",
        &format!("/api/v1/runners/{}/{what}/prune", segment(&id)),
        body,
    )?;
    if json {
        return out(&raw);
    }
    let deleted_key = if images {
        "ImagesDeleted"
    } else {
        "ContainersDeleted"
    };
    let deleted = v[deleted_key].as_array().map_or(0, Vec::len);
    let reclaimed = v["SpaceReclaimed"].as_f64().unwrap_or(0.0);
    out(&format!(
        "deleted {deleted} {what}, reclaimed {}",
        fmt_value(reclaimed, "bytes")
    ))
}

pub fn docker(client: &Client, runner: &str, json: bool) -> Result<(), CliError> {
    let id = resolve_runner(client, runner)?;
    let (raw, v) = client.call(
        "GET",
        &format!("/api/v1/runners/{}/docker", segment(&id)),
        None,
    )?;
    if json {
        return out(&raw);
    }
    out(&pairs(&[
        ("available", field(&v, "available")),
        ("version", field(&v, "version")),
        ("api version", field(&v, "api_version")),
        ("reason", field(&v, "reason")),
        ("updated", field(&v, "updated_at")),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_like_docker_ps() {
        let ports = json!([
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"PrivatePort": 443, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}
        ]);
        assert_eq!(
            ports_text(&ports),
            "0.0.0.0:8080->80/tcp, [::]:8080->80/tcp, 443/tcp"
        );
        assert_eq!(ports_text(&json!([])), "-");
        assert_eq!(ports_text(&Value::Null), "-");
    }

    #[test]
    fn docker_errors_print_verbatim_and_exit_by_status() {
        let e = |status| CliError::Api {
            status,
            code: "docker".into(),
            message: "No such container: web".into(),
        };
        assert_eq!(e(404).to_string(), "No such container: web");
        assert_eq!(e(404).exit_code(), std::process::ExitCode::from(3));
        for status in [409, 500, 403] {
            assert_eq!(e(status).exit_code(), std::process::ExitCode::from(1));
        }
    }
}
