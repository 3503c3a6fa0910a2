//! `app`: app definitions, deploys, rollbacks and their history.
//!
//! `app deploy` and `app rollback` watch the deployment's output live (each
//! step's output as it comes) and exit like `run`: 0 when it succeeded,
//! else 1 after saying why (`--detach` returns at once).

use std::io::Read;

use clap::Subcommand;
use serde_json::{json, Value};

use super::jobs::watch;
use super::{field, out, segment, table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Save (or replace) an app; the JSON definition from --file, or stdin with `-`
    Put {
        name: String,
        #[arg(long, short)]
        file: String,
    },
    List,
    Show {
        name: String,
    },
    /// Remove the definition (its deployments stay in the history)
    Rm {
        name: String,
    },
    /// Fetch, build and replace the app's container; watch it
    Deploy {
        name: String,
        /// Branch, tag or commit instead of the app's git_ref
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// Print the deployment and return at once
        #[arg(long, short)]
        detach: bool,
    },
    /// Run an earlier deployment's image again (default: the one before the current)
    Rollback {
        name: String,
        /// Deployment (job) id to go back to
        #[arg(long)]
        to: Option<String>,
        #[arg(long, short)]
        detach: bool,
    },
    /// Deployments of the app, newest first
    History {
        name: String,
    },
}

impl AppCommand {
    /// Whether the command follows a deployment to its end (no deadline).
    pub fn watches(&self) -> bool {
        matches!(
            self,
            AppCommand::Deploy { detach: false, .. } | AppCommand::Rollback { detach: false, .. }
        )
    }
}

pub fn app(client: &Client, c: AppCommand, json: bool) -> Result<(), CliError> {
    match c {
        AppCommand::Put { name, file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map_err(|e| {
                    CliError::Usage(format!("reading the definition from stdin: {e}"))
                })?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| CliError::Usage(format!("--file {file}: {e}")))?
            };
            let def: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("the definition is not JSON: {e}")))?;
            let (raw, v) = client.call(
                "PUT",
                &format!("/api/v1/apps/{}", segment(&name)),
                Some(def),
            )?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "saved app {} (runner {}, image {})",
                field(&v, "name"),
                field(&v, "runner"),
                field(&v, "image")
            ))
        }
        AppCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/apps", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["NAME", "RUNNER", "IMAGE", "CONTAINER", "SOURCE"],
                &with_source(v),
                &["name", "runner", "image", "container", "source"],
            ))
        }
        AppCommand::Show { name } => {
            let (raw, v) = client.call("GET", &format!("/api/v1/apps/{}", segment(&name)), None)?;
            if json {
                return out(&raw);
            }
            out(&serde_json::to_string_pretty(&v).unwrap_or(raw))
        }
        AppCommand::Rm { name } => {
            client.call("DELETE", &format!("/api/v1/apps/{}", segment(&name)), None)?;
            out(&format!("removed app {name}"))
        }
        AppCommand::Deploy {
            name,
            git_ref,
            detach,
        } => {
            let body = git_ref.map(|r| json!({ "ref": r }));
            let path = format!("/api/v1/apps/{}/deploy", segment(&name));
            let (raw, v) = client.call("POST", &path, body)?;
            started(client, &raw, &v, detach, json)
        }
        AppCommand::Rollback { name, to, detach } => {
            let body = to.map(|t| json!({ "to": t }));
            let path = format!("/api/v1/apps/{}/rollback", segment(&name));
            let (raw, v) = client.call("POST", &path, body)?;
            started(client, &raw, &v, detach, json)
        }
        AppCommand::History { name } => {
            let path = format!("/api/v1/apps/{}/deployments", segment(&name));
            let (raw, v) = client.call("GET", &path, None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &[
                    "DEPLOYMENT",
                    "KIND",
                    "STATUS",
                    "IMAGE",
                    "REF",
                    "CREATED",
                    "REASON",
                ],
                &v,
                &[
                    "id",
                    "kind",
                    "status",
                    "image",
                    "git_ref",
                    "created_at",
                    "reason",
                ],
            ))
        }
    }
}

fn started(
    client: &Client,
    raw: &str,
    v: &Value,
    detach: bool,
    json: bool,
) -> Result<(), CliError> {
    if json {
        return out(raw);
    }
    let id = field(v, "id");
    if detach {
        return out(&format!("{id} {} {}", field(v, "kind"), field(v, "image")));
    }
    eprintln!("{} {id}: {}", field(v, "kind"), field(v, "image"));
    watch(client, &id)
}

/// A SOURCE column: the git URL and ref, or the host path.
fn with_source(mut v: Value) -> Value {
    if let Some(list) = v.as_array_mut() {
        for a in list {
            let src = match (a["git_url"].as_str(), a["path"].as_str()) {
                (Some(u), _) => format!("{u}@{}", a["git_ref"].as_str().unwrap_or("HEAD")),
                (None, Some(p)) => p.to_owned(),
                _ => String::new(),
            };
            a["source"] = json!(src);
        }
    }
    v
}
