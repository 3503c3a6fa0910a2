//! `app`: app definitions, deploys, rollbacks and their history.
//!
//! `app deploy` and `app rollback` watch the deployment's output live (each
//! step's output as it comes) and exit like `run`: 0 when it succeeded,
//! else 1 after saying why (`--detach` returns at once).
//!
//! With `--sign-key` they sign the deploy first, here: the app's definition
//! is read from the server and turned into the `job_start` the server will
//! send by the server's own code (`deploy::api::job_spec`), and that is
//! what is signed (`protocol/signed.rs`). The git ref is signed as given
//! (or the app's): the host fetches and resolves it itself, so a branch
//! signs "whatever the branch is when the host fetches it"; give a commit
//! id with `--ref` to sign one exact tree. The definition comes from the
//! server: the operator signs what the server says the app is (`app show`
//! prints it), and the host refuses anything else.

use std::io::Read;

use clap::Subcommand;
use serde_json::{json, Value};
use tether::protocol::signed::{self, Kind};

use super::jobs::watch;
use super::keys::{SignArgs, Signer};
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
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Run an earlier deployment's image again (default: the one before the current)
    Rollback {
        name: String,
        /// Deployment (job) id to go back to
        #[arg(long)]
        to: Option<String>,
        #[arg(long, short)]
        detach: bool,
        #[command(flatten)]
        sign: SignArgs,
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
            sign,
        } => {
            let mut body = git_ref.as_ref().map(|r| json!({ "ref": r }));
            if let Some(signer) = Signer::from_args(&sign)? {
                let s = sign_deploy(client, &signer, &name, Launch::Deploy(git_ref))?;
                body.get_or_insert_with(|| json!({}))["signed"] = s;
            }
            let path = format!("/api/v1/apps/{}/deploy", segment(&name));
            let (raw, v) = client.call("POST", &path, body)?;
            started(client, &raw, &v, detach, json)
        }
        AppCommand::Rollback {
            name,
            to,
            detach,
            sign,
        } => {
            let body = match Signer::from_args(&sign)? {
                None => to.map(|t| json!({ "to": t })),
                Some(signer) => {
                    // The target named, so the server cannot pick another.
                    let (id, image, git_ref) = rollback_target(client, &name, to.as_deref())?;
                    let s = sign_deploy(client, &signer, &name, Launch::Rollback(image, git_ref))?;
                    Some(json!({ "to": id, "signed": s }))
                }
            };
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

/// What is signed: a deploy of a ref (`None`: the app's), or a rollback
/// to an image (with its deployment's ref).
enum Launch {
    Deploy(Option<String>),
    Rollback(String, Option<String>),
}

/// The `signed` object of a deploy or rollback of `name`: the app's
/// definition, as the server has it, made into the `job_start` the server
/// will send (its own `job_spec`, the image tagged with the action id).
fn sign_deploy(
    client: &Client,
    signer: &Signer,
    name: &str,
    what: Launch,
) -> Result<Value, CliError> {
    let (_, mut v) = client.call("GET", &format!("/api/v1/apps/{}", segment(name)), None)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("name");
        o.remove("updated_at");
    }
    let def: crate::deploy::api::AppDef = serde_json::from_value(v)
        .map_err(|e| CliError::Other(format!("the server's app {name}: {e}")))?;
    let action_id = Signer::action_id()?;
    let (image, git_ref) = match what {
        Launch::Deploy(r) => (None, r.or_else(|| def.git_ref.clone())),
        Launch::Rollback(image, r) => (Some(image), r),
    };
    let (spec, _) = crate::deploy::api::job_spec(name, &def, &action_id, image, git_ref);
    let start = crate::deploy::api::signed_start(spec);
    let bytes = signed::job_bytes(&def.runner, &action_id, signer.not_after_ms(), &start);
    Ok(signer.sign(Kind::Deploy, &action_id, &bytes))
}

/// The deployment a rollback goes to, as the server picks it: `to`, or the
/// newest successful one with another image than the current one. Its id,
/// image and ref.
fn rollback_target(
    client: &Client,
    name: &str,
    to: Option<&str>,
) -> Result<(String, String, Option<String>), CliError> {
    let path = format!("/api/v1/apps/{}/deployments", segment(name));
    let (_, v) = client.call("GET", &path, None)?;
    let list = v.as_array().cloned().unwrap_or_default();
    let ok: Vec<&Value> = list.iter().filter(|d| d["status"] == "succeeded").collect();
    let target = match to {
        Some(id) => ok.iter().find(|d| d["id"] == id).copied().ok_or_else(|| {
            CliError::Usage(format!(
                "no successful deployment {id:?} of {name} to roll back to"
            ))
        })?,
        None => {
            let current = ok.first().map(|d| &d["image"]);
            ok.iter()
                .find(|d| Some(&d["image"]) != current)
                .copied()
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "{name} has no earlier successful deployment to roll back to"
                    ))
                })?
        }
    };
    Ok((
        field(target, "id"),
        field(target, "image"),
        target["git_ref"].as_str().map(str::to_owned),
    ))
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
