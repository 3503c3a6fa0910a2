//! `alert rule|channel|silence|ack|history` and `alerts` (firing): alert
//! rules and notification channels over the API (`docs/api.md`, "Alerts").

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::{field, note, out, parse_ttl, segment, table, CliError, Client};

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Alert rules: add, list, rm
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Notification channels: add, list, rm, test, log
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Silences and maintenance windows: add, list, rm
    #[command(subcommand)]
    Silence(SilenceCommand),
    /// Acknowledge a firing alert (rule id and target as `alerts` shows them)
    Ack {
        rule: String,
        target: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// State changes, newest first
    History {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a rule. KIND: unreachable, metric, container_stopped,
    /// container_exit_nonzero, container_unhealthy, container_restarts,
    /// drift, job_failed, deploy_failed, update_failed, log_match.
    /// E.g. `alert rule add cpu metric --series cpu.busy --above 90
    /// --resolve 80 --for 5m --channel ac_…`
    Add(Box<RuleAdd>),
    /// The tenant's rules
    List,
    /// Remove a rule (id or name)
    Rm { rule: String },
}

#[derive(Debug, Args)]
pub struct RuleAdd {
    name: String,
    kind: String,
    /// Only runners of this group
    #[arg(long)]
    group: Option<String>,
    /// Only this runner (id or name)
    #[arg(long)]
    runner: Option<String>,
    /// Only containers whose name matches (`*` wildcards)
    #[arg(long)]
    container: Option<String>,
    /// Only containers with this label (key or key=value)
    #[arg(long)]
    label: Option<String>,
    /// How long the condition must hold (unreachable, metric): 30s, 5m
    #[arg(long = "for", value_parser = parse_ttl)]
    for_s: Option<u64>,
    /// Metric series, `*` for one part: cpu.busy, fs.*.avail, ctr.*.cpu
    #[arg(long)]
    series: Option<String>,
    /// Divide by this series (same `*`) and compare percent
    #[arg(long)]
    per: Option<String>,
    /// Fire above this value
    #[arg(long, conflicts_with = "below", allow_negative_numbers = true)]
    above: Option<f64>,
    /// Fire below this value
    #[arg(long, allow_negative_numbers = true)]
    below: Option<f64>,
    /// Resolve only once back past this value (hysteresis)
    #[arg(long, allow_negative_numbers = true)]
    resolve: Option<f64>,
    /// container_restarts: more than this many exits ...
    #[arg(long)]
    count: Option<u32>,
    /// ... within this long
    #[arg(long, value_parser = parse_ttl)]
    within: Option<u64>,
    /// drift: path prefixes (listening, firewall, kernel), comma-separated
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    /// job_failed: only these scripts; deploy_failed: only these apps
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
    /// log_match: the text a line must contain
    #[arg(long)]
    pattern: Option<String>,
    /// One-shot kinds: quiet this long before the alert resolves
    #[arg(long, value_parser = parse_ttl)]
    quiet: Option<u64>,
    /// Channel id to notify (repeatable)
    #[arg(long = "channel")]
    channels: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Add a channel (tenant admins). KIND: webhook, slack, discord, teams,
    /// ntfy (--url), email (--host --from --to)
    Add(Box<ChannelAdd>),
    /// The tenant's channels (where they send; never their secrets)
    List,
    /// Remove a channel (id or name)
    Rm { channel: String },
    /// Send a test message
    Test { channel: String },
    /// The delivery log: every attempt, newest first
    Log {
        channel: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Args)]
pub struct ChannelAdd {
    name: String,
    kind: String,
    #[arg(long)]
    url: Option<String>,
    /// webhook: the HMAC-SHA256 key, read from this environment variable
    #[arg(long)]
    secret_env: Option<String>,
    /// ntfy: an access token, read from this environment variable
    #[arg(long)]
    token_env: Option<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    username: Option<String>,
    /// email: the SMTP password, read from this environment variable
    #[arg(long)]
    password_env: Option<String>,
    #[arg(long)]
    from: Option<String>,
    /// Recipient (repeatable)
    #[arg(long)]
    to: Vec<String>,
    /// email: a CA certificate (PEM file) for a private SMTP server
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SilenceCommand {
    /// Silence notifications by rule, runner and/or group for a while
    Add {
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        runner: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// How long, from --in (default now): 30m, 2h, 1d
        #[arg(long = "for", value_parser = parse_ttl)]
        for_s: u64,
        /// Starts this far from now (default 0)
        #[arg(long = "in", value_parser = parse_ttl)]
        in_s: Option<u64>,
        #[arg(long, default_value = "")]
        comment: String,
        /// A maintenance window of --group
        #[arg(long)]
        maintenance: bool,
    },
    List,
    Rm {
        silence: String,
    },
}

fn env_value(var: &Option<String>) -> Result<Option<String>, CliError> {
    match var {
        None => Ok(None),
        Some(v) => std::env::var(v)
            .map(Some)
            .map_err(|_| CliError::Usage(format!("environment variable {v} is not set"))),
    }
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.into(), v);
    }
}

/// `alerts`: the firing alerts.
pub fn firing(client: &Client, json: bool) -> Result<(), CliError> {
    let (raw, v) = client.call("GET", "/api/v1/alerts", None)?;
    if json {
        return out(&raw);
    }
    let rows = &v["alerts"];
    if rows.as_array().is_none_or(Vec::is_empty) {
        return note("no alert is firing");
    }
    let rows: Vec<Value> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            json!({"rule": a["rule_id"], "target": a["target"], "since": crate::common::clock::rfc3339(a["since_ms"].as_i64().unwrap_or(0)),
               "ack": a["ack"]["by"], "summary": a["summary"]})
        })
        .collect();
    out(&table(
        &["RULE", "TARGET", "SINCE", "ACK", "SUMMARY"],
        &Value::Array(rows),
        &["rule", "target", "since", "ack", "summary"],
    ))
}

pub fn alert(client: &Client, cmd: AlertCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        AlertCommand::Rule(c) => rule(client, c, json),
        AlertCommand::Channel(c) => channel(client, c, json),
        AlertCommand::Silence(c) => silence(client, c, json),
        AlertCommand::Ack {
            rule,
            target,
            comment,
        } => {
            let body = json!({"rule_id": rule, "target": target, "comment": comment});
            client.call("POST", "/api/v1/alerts/ack", Some(body))?;
            note("acknowledged")
        }
        AlertCommand::History { limit } => {
            let (raw, v) = client.call(
                "GET",
                &format!("/api/v1/alerts/history?limit={limit}"),
                None,
            )?;
            if json {
                return out(&raw);
            }
            let rows: Vec<Value> = v["history"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    let mut h = h.clone();
                    h["at"] =
                        crate::common::clock::rfc3339(h["at_ms"].as_i64().unwrap_or(0)).into();
                    h
                })
                .collect();
            out(&table(
                &["AT", "STATE", "RULE", "SILENCED", "SUMMARY"],
                &Value::Array(rows),
                &["at", "state", "rule_id", "silenced", "summary"],
            ))
        }
    }
}

fn rule(client: &Client, cmd: RuleCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        RuleCommand::Add(add) => {
            let RuleAdd {
                name,
                kind,
                group,
                runner,
                container,
                label,
                for_s,
                series,
                per,
                above,
                below,
                resolve,
                count,
                within,
                paths,
                names,
                pattern,
                quiet,
                channels,
            } = *add;
            let mut m = Map::new();
            m.insert("name".into(), name.into());
            m.insert("kind".into(), kind.clone().into());
            m.insert("channels".into(), channels.into());
            let scope = match (group, runner) {
                (Some(_), Some(_)) => {
                    return Err(CliError::Usage("--group or --runner, not both".into()))
                }
                (Some(g), None) => json!({"group": g}),
                (None, Some(r)) => json!({"runner": r}),
                (None, None) => json!("all"),
            };
            m.insert("scope".into(), scope);
            if container.is_some() || label.is_some() {
                let mut f = Map::new();
                put(&mut f, "name", container.map(Value::from));
                put(&mut f, "label", label.map(Value::from));
                m.insert("containers".into(), Value::Object(f));
            }
            match kind.as_str() {
                "unreachable" => put(&mut m, "for_s", Some(for_s.unwrap_or(60).into())),
                "metric" => {
                    let (op, threshold) = match (above, below) {
                        (Some(a), None) => ("above", a),
                        (None, Some(b)) => ("below", b),
                        _ => {
                            return Err(CliError::Usage(
                                "metric rules need --above or --below".into(),
                            ))
                        }
                    };
                    put(&mut m, "series", series.map(Value::from));
                    put(&mut m, "per", per.map(Value::from));
                    m.insert("op".into(), op.into());
                    m.insert("threshold".into(), threshold.into());
                    put(&mut m, "resolve", resolve.map(Value::from));
                    put(&mut m, "for_s", for_s.map(Value::from));
                }
                "container_restarts" => {
                    put(&mut m, "count", count.map(Value::from));
                    put(&mut m, "within_s", within.map(Value::from));
                }
                "drift" => {
                    m.insert("paths".into(), paths.into());
                }
                "job_failed" => {
                    m.insert("scripts".into(), names.into());
                }
                "deploy_failed" => {
                    m.insert("apps".into(), names.into());
                }
                "log_match" => put(&mut m, "pattern", pattern.map(Value::from)),
                _ => {}
            }
            if matches!(
                kind.as_str(),
                "container_stopped" | "container_exit_nonzero" | "drift" | "log_match"
            ) {
                put(&mut m, "quiet_s", quiet.map(Value::from));
            }
            let (raw, v) = client.call("POST", "/api/v1/alerts/rules", Some(Value::Object(m)))?;
            if json {
                return out(&raw);
            }
            out(&field(&v, "id"))
        }
        RuleCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/alerts/rules", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["ID", "NAME", "KIND", "ENABLED"],
                &v["rules"],
                &["id", "name", "kind", "enabled"],
            ))
        }
        RuleCommand::Rm { rule } => {
            client.call(
                "DELETE",
                &format!("/api/v1/alerts/rules/{}", segment(&rule)),
                None,
            )?;
            note(&format!("removed rule {rule}"))
        }
    }
}

fn channel(client: &Client, cmd: ChannelCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        ChannelCommand::Add(add) => {
            let ChannelAdd {
                name,
                kind,
                url,
                secret_env,
                token_env,
                host,
                port,
                username,
                password_env,
                from,
                to,
                ca_file,
            } = *add;
            let mut c = Map::new();
            c.insert("kind".into(), kind.into());
            put(&mut c, "url", url.map(Value::from));
            put(&mut c, "secret", env_value(&secret_env)?.map(Value::from));
            put(&mut c, "token", env_value(&token_env)?.map(Value::from));
            put(&mut c, "host", host.map(Value::from));
            put(&mut c, "port", port.map(Value::from));
            put(&mut c, "username", username.map(Value::from));
            put(
                &mut c,
                "password",
                env_value(&password_env)?.map(Value::from),
            );
            put(&mut c, "from", from.map(Value::from));
            if !to.is_empty() {
                c.insert("to".into(), to.into());
            }
            if let Some(path) = ca_file {
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
                c.insert("ca_pem".into(), pem.into());
            }
            let body = json!({"name": name, "config": Value::Object(c)});
            let (raw, v) = client.call("POST", "/api/v1/alerts/channels", Some(body))?;
            if json {
                return out(&raw);
            }
            out(&field(&v, "id"))
        }
        ChannelCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/alerts/channels", None)?;
            if json {
                return out(&raw);
            }
            let rows: Vec<Value> = v["channels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"id": c["id"], "name": c["name"], "kind": c["kind"], "to": c["target"]["host"]}))
                .collect();
            out(&table(
                &["ID", "NAME", "KIND", "HOST"],
                &Value::Array(rows),
                &["id", "name", "kind", "to"],
            ))
        }
        ChannelCommand::Rm { channel } => {
            client.call(
                "DELETE",
                &format!("/api/v1/alerts/channels/{}", segment(&channel)),
                None,
            )?;
            note(&format!("removed channel {channel}"))
        }
        ChannelCommand::Test { channel } => {
            let (raw, _) = client.call(
                "POST",
                &format!("/api/v1/alerts/channels/{}/test", segment(&channel)),
                None,
            )?;
            if json {
                return out(&raw);
            }
            note(&format!(
                "test message queued; `alert channel log {channel}` shows how it went"
            ))
        }
        ChannelCommand::Log { channel, limit } => {
            let (raw, v) = client.call(
                "GET",
                &format!(
                    "/api/v1/alerts/channels/{}/deliveries?limit={limit}",
                    segment(&channel)
                ),
                None,
            )?;
            if json {
                return out(&raw);
            }
            let rows: Vec<Value> = v["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let mut d = d.clone();
                    d["at"] =
                        crate::common::clock::rfc3339(d["at_ms"].as_i64().unwrap_or(0)).into();
                    d
                })
                .collect();
            out(&table(
                &["AT", "ATTEMPT", "OK", "DETAIL"],
                &Value::Array(rows),
                &["at", "attempt", "ok", "detail"],
            ))
        }
    }
}

fn silence(client: &Client, cmd: SilenceCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        SilenceCommand::Add {
            rule,
            runner,
            group,
            for_s,
            in_s,
            comment,
            maintenance,
        } => {
            let now = crate::common::clock::now_ms();
            let starts = now + in_s.unwrap_or(0) as i64 * 1000;
            let body = json!({
                "rule": rule, "runner": runner, "group": group,
                "starts_ms": starts, "ends_ms": starts + for_s as i64 * 1000,
                "comment": comment, "maintenance": maintenance,
            });
            let (raw, v) = client.call("POST", "/api/v1/alerts/silences", Some(body))?;
            if json {
                return out(&raw);
            }
            out(&field(&v, "id"))
        }
        SilenceCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/alerts/silences", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["ID", "RULE", "RUNNER", "GROUP", "ENDS", "BY", "COMMENT"],
                &v["silences"],
                &[
                    "id",
                    "rule",
                    "runner",
                    "group",
                    "ends_ms",
                    "created_by",
                    "comment",
                ],
            ))
        }
        SilenceCommand::Rm { silence } => {
            client.call(
                "DELETE",
                &format!("/api/v1/alerts/silences/{}", segment(&silence)),
                None,
            )?;
            note(&format!("removed silence {silence}"))
        }
    }
}
