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

use crate::common::clock::parse_ttl;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

mod alerts;
mod audit;
mod containers;
mod deploy;
mod fleet;
mod jobs;
mod keys;
mod logs;
#[cfg(test)]
mod page_signing;
mod recordings;
mod sso;
mod terminal;
mod updates;
mod users;
use containers::ContainerCommand;
use updates::{ReleaseCommand, UpdateCommand};

/// Help heading of the flags every client subcommand shares (they are global,
/// so they may come before or after the subcommand).
const CLIENT_OPTIONS: &str = "Client options (all commands but serve)";
/// How long a call may take (a ping waits 5 s for the runner at most).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// API tokens of your tenant: create, list (who made each, last use), revoke
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCommand),
    /// List runners with their health (filtered by labels, health, a search)
    Runners {
        /// e.g. `role=db,region in (eu,us),!canary`
        #[arg(long)]
        selector: Option<String>,
        /// active, unreachable or revoked
        #[arg(long)]
        health: Option<String>,
        /// A piece of the name, id or a key=value label
        #[arg(long, short)]
        search: Option<String>,
        /// Only this architecture (x86_64, aarch64, …)
        #[arg(long)]
        arch: Option<String>,
        /// Only runners at this version
        #[arg(long = "runner-version", value_name = "VERSION")]
        runner_version: Option<String>,
        /// Update state against its desired version: none, current, pending, failed
        #[arg(long, value_name = "STATE")]
        update: Option<String>,
        /// name (default), health, version, arch, last_seen, created, id; -KEY reverses
        #[arg(long, allow_hyphen_values = true)]
        sort: Option<String>,
        /// Page (1-based) of --limit runners
        #[arg(long)]
        page: Option<usize>,
        /// Runners per page (at most 10000)
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Runner labels: show, set (one runner or by selector), accept proposals, policy
    #[command(subcommand)]
    Labels(fleet::LabelsCommand),
    /// Rollouts (`run --selector … --wave …`): list, show, watch, pause, resume, abort
    #[command(subcommand)]
    Rollout(fleet::RolloutCommand),
    /// Schedules (cron) of a script on a selector: add, list, show, rm, history
    #[command(subcommand)]
    Schedule(fleet::ScheduleCommand),
    /// One runner: show, health history, revoke, ping
    #[command(subcommand)]
    Runner(RunnerCommand),
    /// Follow health changes live (Ctrl-C to stop)
    Events,
    /// Host metrics of a runner: latest values with min/avg/max over a
    /// range, or with --series the points of those series
    Metrics(MetricsArgs),
    /// The host fingerprint a runner reported last (OS, kernel, CPU,
    /// listening sockets, firewall, versions)
    Fingerprint {
        /// Runner id (rn_…) or name
        runner: String,
    },
    /// Fingerprint changes of a runner, one line each, oldest first
    Drift {
        /// Runner id (rn_…) or name
        runner: String,
        /// Since when: a duration back from now (7d), RFC 3339, or Unix ms
        #[arg(long, default_value = "7d")]
        since: String,
    },
    /// Containers of a runner (running ones; --all for every one)
    Containers {
        /// Runner id (rn_…) or name
        runner: String,
        /// Also stopped containers
        #[arg(long)]
        all: bool,
        /// The server's view kept from the runner's events (works while the
        /// runner is offline)
        #[arg(long)]
        cached: bool,
    },
    /// One container: inspect, start, stop, restart, kill, rm
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Remove stopped containers, or with --images dangling images
    Prune {
        /// Runner id (rn_…) or name
        runner: String,
        /// Prune dangling images instead of stopped containers
        #[arg(long)]
        images: bool,
        /// Docker filter, repeatable: until=24h, label=app=web
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        #[command(flatten)]
        sign: keys::SignArgs,
    },
    /// Docker engine state of a runner
    Docker {
        /// Runner id (rn_…) or name
        runner: String,
    },
    /// Logs of a container: stored history (time range, --grep, --tail),
    /// or --follow live from the runner
    Logs(logs::LogsArgs),
    /// Log collection and retention of a runner: show, or change with flags
    LogConfig(logs::LogConfigArgs),
    /// Apps: definitions, deploy, rollback, history
    #[command(subcommand)]
    App(deploy::AppCommand),
    /// The tenant's saved scripts
    #[command(subcommand)]
    Script(jobs::ScriptCommand),
    /// Sealed secrets (write-only values, exported to the jobs that name them)
    #[command(subcommand)]
    Secret(jobs::SecretCommand),
    /// Run a saved script or a command on runners; with one runner, watch it
    // Boxed: its flags outweigh the other commands (clippy large_enum_variant).
    Run(Box<jobs::RunArgs>),
    /// Jobs: list, show, watch live, cancel
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Dashboard users: add (admin token), list, role, password, rm
    #[command(subcommand)]
    User(users::UserCommand),
    /// Signed runner releases on the server: upload (admin), list
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// The version runners should run: set (with a canary share), clear, show
    #[command(subcommand)]
    Update(UpdateCommand),
    /// An interactive shell on a runner's host, or in one of its containers
    Terminal(terminal::TerminalArgs),
    /// Terminal sessions: who opened which, where, when, for how long;
    /// their recordings (list, replay, download)
    Terminals(recordings::TerminalsArgs),
    /// Alerting: rules, channels, silences, acknowledgements, history
    #[command(subcommand)]
    Alert(alerts::AlertCommand),
    /// The alerts firing now
    Alerts,
    /// The audit trail: who did what, from where, with what result;
    /// `export` as NDJSON, `verify` the hash chain
    Audit(audit::AuditArgs),
    /// Operator signing keys (minisign format), made locally
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Single sign-on: provider add|list|rm, password-login on|off
    #[command(subcommand)]
    Sso(sso::SsoCommand),
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Runner id (rn_…) or name
    pub runner: String,
    /// Start: a duration back from now (15m, 1h, 7d), RFC 3339, or Unix ms
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// End (default now), same forms as --since
    #[arg(long)]
    pub until: Option<String>,
    /// auto (raw up to 6 h, 1m up to 7 d, else 1h), raw, 1m or 1h
    #[arg(long, default_value = "auto")]
    pub resolution: String,
    /// Series to print point by point: names or prefixes, e.g. cpu.busy,net.*
    #[arg(long)]
    pub series: Option<String>,
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
pub enum ApiTokenCommand {
    /// Create an API token (a tenant admin's authority); shown once
    Create {
        /// Lifetime: 30m, 12h, 90d (default: until revoked)
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// A note to tell tokens apart
        #[arg(long)]
        label: Option<String>,
    },
    /// List API tokens: who created each, when, last used, state
    List,
    /// Revoke an API token: refused at once, its open streams end
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
    /// Name a runner (the name apps and the CLI resolve; unique in the
    /// tenant). A runner's own hostname is only its reported name.
    Rename { id: String, name: String },
    /// Round trip through the runner's connection
    Ping { id: String },
    /// Put a runner in an update group (empty: none)
    Group { id: String, group: String },
    /// A runner's version, desired version and update reports
    Updates { id: String },
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
    /// A job watched to its end did not succeed: exit with its exit code
    /// (or 1), after saying why.
    Job(u8, String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Other(m) => f.write_str(m),
            // Docker's own message, verbatim.
            CliError::Api { code, message, .. } if code == containers::DOCKER_CODE => {
                f.write_str(message)
            }
            CliError::Api {
                status,
                code,
                message,
            } => write!(f, "{message} ({code}, HTTP {status})"),
            CliError::Unreachable(m) => write!(f, "server unreachable: {m}"),
            CliError::BrokenPipe => f.write_str("broken pipe"),
            CliError::Job(_, why) => f.write_str(why),
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
            CliError::Api { code, .. } if code == containers::DOCKER_CODE => 1,
            CliError::Api {
                status: 401 | 403, ..
            } => 4,
            CliError::Api { .. } => 1,
            CliError::Unreachable(_) => 5,
            CliError::Job(code, _) => *code,
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
    let timeout = match &command {
        ClientCommand::Events => None,
        ClientCommand::Logs(a) if a.follow => None,
        ClientCommand::Run(_) | ClientCommand::Jobs(jobs::JobsCommand::Watch { .. }) => None,
        ClientCommand::Rollout(fleet::RolloutCommand::Watch { .. }) => None,
        ClientCommand::App(c) if c.watches() => None,
        ClientCommand::Container(c) => Some(containers::DOCKER_CALL_TIMEOUT + c.extra_wait()),
        ClientCommand::Terminal(_) => Some(containers::DOCKER_CALL_TIMEOUT),
        ClientCommand::Containers { .. } | ClientCommand::Prune { .. } => {
            Some(containers::DOCKER_CALL_TIMEOUT)
        }
        _ => Some(DEFAULT_TIMEOUT),
    };
    let client = Client::new(args, timeout)?;
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
            let (raw, v) = client.call("POST", "/api/v1/tokens", Some(token_body(ttl, label)))?;
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
        ClientCommand::ApiToken(ApiTokenCommand::Create { ttl, label }) => {
            let (raw, v) =
                client.call("POST", "/api/v1/api-tokens", Some(token_body(ttl, label)))?;
            if json {
                return out(&raw);
            }
            out(&pairs(&[
                ("token", field(&v, "token")),
                ("id", field(&v, "id")),
                ("label", field(&v, "label")),
                ("created by", field(&v, "created_by")),
                ("expires", field(&v, "expires_at")),
            ]))?;
            note("the API token is shown only once: keep it safe")
        }
        ClientCommand::ApiToken(ApiTokenCommand::List) => {
            let (raw, v) = client.call("GET", "/api/v1/api-tokens", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &[
                    "ID",
                    "LABEL",
                    "CREATED BY",
                    "STATE",
                    "CREATED",
                    "LAST USED",
                    "EXPIRES",
                ],
                &v,
                &[
                    "id",
                    "label",
                    "created_by",
                    "state",
                    "created_at",
                    "last_used_at",
                    "expires_at",
                ],
            ))
        }
        ClientCommand::ApiToken(ApiTokenCommand::Revoke { id }) => {
            let (raw, v) = client.call(
                "DELETE",
                &format!("/api/v1/api-tokens/{}", segment(&id)),
                None,
            )?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "revoked API token {} (state {})",
                field(&v, "id"),
                field(&v, "state")
            ))
        }
        ClientCommand::Runners {
            selector,
            health,
            search,
            arch,
            runner_version,
            update,
            sort,
            page,
            limit,
        } => {
            let (page, limit) = (page.map(|p| p.to_string()), limit.map(|l| l.to_string()));
            let q = query(&[
                ("selector", selector.as_deref()),
                ("health", health.as_deref()),
                ("q", search.as_deref()),
                ("arch", arch.as_deref()),
                ("version", runner_version.as_deref()),
                ("update", update.as_deref()),
                ("sort", sort.as_deref()),
                ("page", page.as_deref()),
                ("limit", limit.as_deref()),
            ]);
            let (raw, v) = client.call("GET", &format!("/api/v1/runners{q}"), None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &[
                    "ID",
                    "NAME",
                    "REPORTED",
                    "HEALTH",
                    "VERSION",
                    "ARCH",
                    "OS",
                    "LAST SEEN",
                ],
                &v,
                &[
                    "id",
                    "name",
                    "reported_name",
                    "health",
                    "version",
                    "arch",
                    "os",
                    "last_seen",
                ],
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
        ClientCommand::Runner(RunnerCommand::Rename { id, name }) => {
            let id = resolve_runner(&client, &id)?;
            let (raw, v) = client.call(
                "PUT",
                &format!("/api/v1/runners/{}/name", segment(&id)),
                Some(json!({ "name": name })),
            )?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "runner {} is named {}",
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
        ClientCommand::Metrics(args) => metrics(&client, &args, json),
        ClientCommand::Fingerprint { runner } => {
            let id = resolve_runner(&client, &runner)?;
            let (raw, v) = client.call(
                "GET",
                &format!("/api/v1/runners/{}/fingerprint", segment(&id)),
                None,
            )?;
            if json {
                return out(&raw);
            }
            if v["updated_at"].is_null() {
                return note(&format!("runner {id} has not reported a fingerprint yet"));
            }
            out(&fingerprint_text(&v))
        }
        ClientCommand::Drift { runner, since } => {
            let id = resolve_runner(&client, &runner)?;
            let (raw, v) = client.call(
                "GET",
                &format!(
                    "/api/v1/runners/{}/drift{}",
                    segment(&id),
                    query(&[("since", Some(&since))])
                ),
                None,
            )?;
            if json {
                return out(&raw);
            }
            let events = v.as_array().map(Vec::as_slice).unwrap_or_default();
            if events.is_empty() {
                return note(&format!("no fingerprint changes of {id} since {since}"));
            }
            let lines: Vec<String> = events
                .iter()
                .map(|e| format!("{}  {}", field(e, "at"), field(e, "text")))
                .collect();
            out(&lines.join("\n"))
        }
        ClientCommand::Containers {
            runner,
            all,
            cached,
        } => containers::containers(&client, &runner, all, cached, json),
        ClientCommand::Container(c) => containers::container(&client, c, json),
        ClientCommand::Logs(a) => logs::logs(&client, &a, json),
        ClientCommand::LogConfig(a) => logs::log_config(&client, &a, json),
        ClientCommand::App(c) => deploy::app(&client, c, json),
        ClientCommand::Script(c) => jobs::script(&client, c, json),
        ClientCommand::Secret(c) => jobs::secret(&client, c, json),
        ClientCommand::Run(a) => jobs::run(&client, &a, json),
        ClientCommand::Jobs(c) => jobs::jobs(&client, c, json),
        ClientCommand::Labels(c) => fleet::labels(&client, c, json),
        ClientCommand::Rollout(c) => fleet::rollout(&client, c, json),
        ClientCommand::Schedule(c) => fleet::schedule(&client, c, json),
        ClientCommand::User(c) => users::user(&client, c, json),
        ClientCommand::Prune {
            runner,
            images,
            filters,
            sign,
        } => containers::prune(&client, &runner, images, &filters, &sign, json),
        ClientCommand::Docker { runner } => containers::docker(&client, &runner, json),
        ClientCommand::Release(c) => updates::release(&client, c, json),
        ClientCommand::Update(c) => updates::update(&client, c, json),
        ClientCommand::Runner(RunnerCommand::Group { id, group }) => {
            updates::set_group(&client, &id, &group, json)
        }
        ClientCommand::Runner(RunnerCommand::Updates { id }) => {
            updates::runner_updates(&client, &id, json)
        }
        ClientCommand::Terminal(a) => terminal::terminal(&client, args, &a),
        ClientCommand::Terminals(a) => recordings::terminals(&client, a, json),
        ClientCommand::Alert(c) => alerts::alert(&client, c, json),
        ClientCommand::Alerts => alerts::firing(&client, json),
        ClientCommand::Audit(a) => audit::audit(&client, a, json),
        ClientCommand::Key(c) => keys::key(c),
        ClientCommand::Sso(c) => sso::sso(&client, c, json),
    }
}

/// The body of a token create (enrollment or API token): the optional
/// lifetime and label.
fn token_body(ttl: Option<u64>, label: Option<String>) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(ttl) = ttl {
        body.insert("ttl_secs".into(), ttl.into());
    }
    if let Some(label) = label {
        body.insert("label".into(), label.into());
    }
    Value::Object(body)
}
/// A runner id as given, or the id of the one runner with that name.
fn resolve_runner(client: &Client, runner: &str) -> Result<String, CliError> {
    if runner.starts_with("rn_") {
        return Ok(runner.to_owned());
    }
    let (_, v) = client.call("GET", "/api/v1/runners", None)?;
    let ids: Vec<String> = v
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|r| r["name"] == runner)
        .map(|r| field(r, "id"))
        .collect();
    match ids.as_slice() {
        [id] => Ok(id.clone()),
        [] => Err(CliError::Api {
            status: 404,
            code: "not_found".into(),
            message: format!("no runner named {runner:?} in this tenant"),
        }),
        _ => Err(CliError::Usage(format!(
            "{} runners are named {runner:?}: use the id ({})",
            ids.len(),
            ids.join(", ")
        ))),
    }
}

/// `?a=1&b=2` of the pairs that have a value, percent-encoded.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push(if q.is_empty() { '?' } else { '&' });
            q.push_str(k);
            q.push('=');
            q.push_str(&segment(v));
        }
    }
    q
}

fn metrics(client: &Client, args: &MetricsArgs, json: bool) -> Result<(), CliError> {
    let id = resolve_runner(client, &args.runner)?;
    let range_path = |points: bool| {
        format!(
            "/api/v1/runners/{}/metrics{}",
            segment(&id),
            query(&[
                ("since", Some(&args.since)),
                ("until", args.until.as_deref()),
                ("resolution", Some(&args.resolution)),
                ("series", args.series.as_deref()),
                ("points", (!points).then_some("false")),
            ])
        )
    };
    if json {
        let (raw, _) = client.call("GET", &range_path(true), None)?;
        return out(&raw);
    }
    if args.series.is_some() {
        let (_, range) = client.call("GET", &range_path(true), None)?;
        if range["series"].as_array().is_none_or(Vec::is_empty) {
            return note(&format!("no stored points of {id} match in this range"));
        }
        return out(&points_table(&range));
    }
    let (_, latest) = client.call(
        "GET",
        &format!("/api/v1/runners/{}/metrics/latest", segment(&id)),
        None,
    )?;
    let (_, range) = client.call("GET", &range_path(false), None)?;
    if latest["ts_ms"].is_null() && range["series"].as_array().is_none_or(Vec::is_empty) {
        return note(&format!("no metrics stored for {id}"));
    }
    out(&summary_table(&latest, &range))
}

/// SERIES, LATEST, MIN, AVG, MAX: the latest sample's series first, then
/// any that only the range has.
fn summary_table(latest: &Value, range: &Value) -> String {
    let empty = Vec::new();
    let latest_series = latest["series"].as_array().unwrap_or(&empty);
    let range_series = range["series"].as_array().unwrap_or(&empty);
    let mut names: Vec<&str> = latest_series
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for s in range_series {
        if let Some(n) = s["name"].as_str() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    let find = |list: &[Value], name: &str| list.iter().find(|s| s["name"] == name).cloned();
    let mut rows = Vec::new();
    for name in names {
        let l = find(latest_series, name);
        let r = find(range_series, name);
        let unit = l
            .as_ref()
            .or(r.as_ref())
            .and_then(|s| s["unit"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let show = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| fmt_value(x, &unit));
        let summary = r.as_ref().map(|r| r["summary"].clone()).unwrap_or_default();
        rows.push(vec![
            name.to_owned(),
            l.as_ref().map_or("-".to_owned(), |l| show(&l["value"])),
            show(&summary["min"]),
            show(&summary["avg"]),
            show(&summary["max"]),
        ]);
    }
    let head = format!(
        "{} to {}, resolution {}; latest sample {}",
        field(range, "from"),
        field(range, "to"),
        field(range, "resolution"),
        field(latest, "at"),
    );
    format!(
        "{head}\n{}",
        grid(&["SERIES", "LATEST", "MIN", "AVG", "MAX"], &rows)
    )
}

/// TIME and one column per series.
fn points_table(range: &Value) -> String {
    let empty = Vec::new();
    let series = range["series"].as_array().unwrap_or(&empty);
    let mut times = std::collections::BTreeMap::<i64, Vec<String>>::new();
    for (i, s) in series.iter().enumerate() {
        let unit = s["unit"].as_str().unwrap_or_default();
        for p in s["points"].as_array().unwrap_or(&empty) {
            let (Some(ts), Some(v)) = (p[0].as_i64(), p[1].as_f64()) else {
                continue;
            };
            let row = times
                .entry(ts)
                .or_insert_with(|| vec!["-".to_owned(); series.len()]);
            row[i] = fmt_value(v, unit);
        }
    }
    let mut headers = vec!["TIME".to_owned()];
    headers.extend(series.iter().map(|s| field(s, "name")));
    let rows: Vec<Vec<String>> = times
        .into_iter()
        .map(|(ts, cells)| {
            let mut row = vec![crate::common::clock::rfc3339(ts)];
            row.extend(cells);
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    grid(&headers, &rows)
}

/// A value for people: 12.3%, 1.5 GiB, 2.0 MiB/s, 3d 4h.
fn fmt_value(v: f64, unit: &str) -> String {
    let bytes = |v: f64| {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut x = v;
        let mut i = 0;
        while x.abs() >= 1024.0 && i + 1 < UNITS.len() {
            x /= 1024.0;
            i += 1;
        }
        if i == 0 {
            format!("{x:.0} B")
        } else {
            format!("{x:.1} {}", UNITS[i])
        }
    };
    let plain = |v: f64| {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    match unit {
        "percent" => format!("{v:.1}%"),
        "bytes" => bytes(v),
        "bytes_per_second" => format!("{}/s", bytes(v)),
        "per_second" => format!("{}/s", plain(v)),
        "load" => format!("{v:.2}"),
        "seconds" => {
            let s = v.max(0.0) as u64;
            match (s / 86_400, s % 86_400 / 3600, s % 3600 / 60) {
                (0, 0, m) => format!("{m}m {}s", s % 60),
                (0, h, m) => format!("{h}h {m}m"),
                (d, h, _) => format!("{d}d {h}h"),
            }
        }
        _ => plain(v),
    }
}

fn fingerprint_text(v: &Value) -> String {
    use tether::fingerprint::Fingerprint;
    let fp: Fingerprint = match serde_json::from_value(v.clone()) {
        Ok(fp) => fp,
        // A shape this build does not know: show it as it came.
        Err(_) => return v.to_string(),
    };
    let s = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".to_owned());
    let kernel = match (&fp.kernel, &fp.kernel_version) {
        (Some(k), Some(v)) => format!("{k} ({v})"),
        (k, _) => s(k),
    };
    let os = fp
        .os
        .pretty_name
        .clone()
        .or_else(|| fp.os.id.clone())
        .unwrap_or_else(|| "-".to_owned());
    let cpu = match (&fp.cpu_model, fp.cpu_count) {
        (Some(m), Some(n)) => format!("{m} × {n}"),
        (None, Some(n)) => format!("{n} CPUs"),
        (m, None) => s(m),
    };
    let mut text = pairs(&[
        ("hostname", s(&fp.hostname)),
        ("os", os),
        ("kernel", kernel),
        ("arch", s(&fp.arch)),
        ("cpu", cpu),
        ("board", s(&fp.board)),
        (
            "memory",
            fp.mem_total
                .map_or("-".to_owned(), |m| fmt_value(m as f64, "bytes")),
        ),
        (
            "boot time",
            fp.boot_time.map_or("-".to_owned(), |t| {
                crate::common::clock::rfc3339(i64::try_from(t).unwrap_or(0).saturating_mul(1000))
            }),
        ),
        ("virtualization", s(&fp.virtualization)),
        ("container", s(&fp.container)),
        ("docker", s(&fp.docker_version)),
        ("runner version", s(&fp.runner_version)),
        ("collected", field(v, "collected_at")),
        ("updated", field(v, "updated_at")),
    ]);
    text.push_str(&format!("\nlistening ({}):", fp.listening.len()));
    for l in &fp.listening {
        text.push_str(&format!("\n  {l}"));
    }
    match &fp.firewall {
        Some(fw) => {
            text.push_str(&format!(
                "\nfirewall: {}, {} rules",
                fw.source,
                fw.rules.len()
            ));
            for r in &fw.rules {
                text.push_str(&format!("\n  {r}"));
            }
        }
        None => text.push_str("\nfirewall: -"),
    }
    let notes = v["notes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !notes.is_empty() {
        text.push_str("\nnotes:");
        for n in notes {
            text.push_str(&format!("\n  {}", n.as_str().unwrap_or_default()));
        }
    }
    text
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    /// `timeout`: for the whole of each call; `None` for a live stream.
    fn new(args: &ClientArgs, timeout: Option<Duration>) -> Result<Client, CliError> {
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
            // (a ping waits 5 s for the runner at most, a Docker call 30 s
            // plus a stop timeout).
            .timeout_global(timeout)
            // The server closes connections idle for 10 s (its header-read
            // timeout, which also bounds keep-alive); never reuse one that old.
            .max_idle_age(Duration::from_secs(5))
            .user_agent(format!("tether-server-cli/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent: config.new_agent(),
            base: args.api.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        })
    }

    /// POST raw bytes (a release file).
    fn upload(&self, path: &str, bytes: Vec<u8>) -> Result<(String, Value), CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/octet-stream");
        if let Some(a) = self.auth_header() {
            req = req.header("Authorization", a);
        }
        let response = req.send(&bytes[..])?;
        let status = response.status().as_u16();
        let raw = response.into_body().read_to_string()?;
        let value: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(api_error(status, &value, &raw));
        }
        Ok((raw, value))
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
                let mut req = match method {
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
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

    /// A GET whose answer is read as it comes (event and log streams).
    fn stream_get(&self, path: &str, accept: &str) -> Result<impl BufRead, CliError> {
        let mut req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Accept", accept);
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
        Ok(BufReader::new(response.into_body().into_reader()))
    }

    fn follow_events(&self, json: bool) -> Result<(), CliError> {
        let reader = self.stream_get("/api/v1/events", "text/event-stream")?;
        if !json {
            out(&format!(
                "{:<20}  {:<15}  {:<11}  REASON",
                "AT", "RUNNER", "HEALTH"
            ))?;
        }
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
        ("reported name", "reported_name"),
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
    grid(headers, &rows)
}

/// A left-aligned table of cells.
fn grid(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
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

    #[test]
    fn values_read_well() {
        assert_eq!(fmt_value(12.345, "percent"), "12.3%");
        assert_eq!(fmt_value(512.0, "bytes"), "512 B");
        assert_eq!(fmt_value(1536.0 * 1024.0, "bytes"), "1.5 MiB");
        assert_eq!(fmt_value(2048.0, "bytes_per_second"), "2.0 KiB/s");
        assert_eq!(fmt_value(3.5, "per_second"), "3.50/s");
        assert_eq!(fmt_value(90_061.0, "seconds"), "1d 1h");
        assert_eq!(fmt_value(3_700.0, "seconds"), "1h 1m");
        assert_eq!(fmt_value(42.0, "count"), "42");
        assert_eq!(fmt_value(0.5, "load"), "0.50");
        assert_eq!(
            query(&[
                ("since", Some("1h")),
                ("until", None),
                ("series", Some("net.*,a b"))
            ]),
            "?since=1h&series=net.%2A%2Ca%20b"
        );
    }

    #[test]
    fn fingerprints_and_summaries_print() {
        let v = json!({
            "hostname": "web-1", "os": {"id": "debian", "version_id": "12", "pretty_name": null},
            "kernel": "6.1.0", "kernel_version": null, "arch": "x86_64", "cpu_model": "EPYC",
            "board": null, "cpu_count": 4, "mem_total": 8589934592u64, "boot_time": 1700000000,
            "virtualization": "kvm", "container": null,
            "listening": [{"proto": "tcp", "addr": "::", "port": 22, "process": "sshd"}],
            "firewall": {"source": "nft", "rules": ["r1"]},
            "docker_version": null, "runner_version": "0.1.0",
            "runner_id": "rn_1", "collected_at": "2026-11-28T12:00:00Z", "updated_at": "2026-11-28T12:00:01Z",
            "notes": ["firewall: partial"]
        });
        let text = fingerprint_text(&v);
        for want in [
            "os              debian",
            "cpu             EPYC × 4",
            "memory          8.0 GiB",
            "boot time       2023-11-14T22:13:20Z",
            "listening (1):\n  tcp [::]:22 (sshd)",
            "firewall: nft, 1 rules\n  r1",
            "notes:\n  firewall: partial",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        let latest =
            json!({"at": "T", "series": [{"name": "cpu.busy", "unit": "percent", "value": 5.0}]});
        let range = json!({"from": "A", "to": "B", "resolution": "raw", "series": [
            {"name": "cpu.busy", "unit": "percent", "points": [],
             "summary": {"min": 1.0, "avg": 2.0, "max": 3.0, "count": 3}},
            {"name": "gone", "unit": "count", "points": [], "summary": null}]});
        assert_eq!(
            summary_table(&latest, &range),
            "A to B, resolution raw; latest sample T\n\
             SERIES    LATEST  MIN   AVG   MAX\n\
             cpu.busy  5.0%    1.0%  2.0%  3.0%\n\
             gone      -       -     -     -"
        );
        let range = json!({"series": [
            {"name": "a", "unit": "count", "points": [[0, 1.0], [1000, 2.0]]},
            {"name": "b", "unit": "count", "points": [[1000, 3.0]]}]});
        assert_eq!(
            points_table(&range),
            "TIME                  a  b\n\
             1970-01-01T00:00:00Z  1  -\n\
             1970-01-01T00:00:01Z  2  3"
        );
    }
}
