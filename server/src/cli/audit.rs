//! `audit`: the audit trail — list with filters, export as NDJSON, verify
//! the hash chain (through the server, or a copy of `audit.db` offline).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{out, segment, table};
use super::{CliError, Client};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    #[command(flatten)]
    pub filters: AuditFilters,
}

#[derive(Debug, Args, Clone, Default)]
pub struct AuditFilters {
    /// Only this actor: a token or user id, or its label/name
    #[arg(long, global = true)]
    pub actor: Option<String>,
    /// Only actions containing this text (e.g. POST, /jobs, signed)
    #[arg(long, global = true)]
    pub action: Option<String>,
    /// Only targets containing this text (a runner id, a path)
    #[arg(long, global = true)]
    pub target: Option<String>,
    /// From: a duration back from now (7d), RFC 3339, or Unix ms
    #[arg(long, global = true)]
    pub since: Option<String>,
    /// Until, same forms as --since
    #[arg(long, global = true)]
    pub until: Option<String>,
    /// Only this tenant (admin token only)
    #[arg(long, global = true)]
    pub tenant: Option<String>,
    /// At most this many entries
    #[arg(long, global = true)]
    pub limit: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Every matching entry as one JSON object per line (NDJSON)
    Export,
    /// Check the hash chain; names the first entry that was changed or
    /// removed (admin token; or --db to check a copy of audit.db offline)
    Verify {
        /// An audit.db file to check here, without a server
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

fn query_string(f: &AuditFilters) -> String {
    let mut q = Vec::new();
    let mut add = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            q.push(format!("{k}={}", segment(v)));
        }
    };
    add("actor", &f.actor);
    add("action", &f.action);
    add("target", &f.target);
    add("since", &f.since);
    add("until", &f.until);
    add("tenant", &f.tenant);
    if let Some(l) = f.limit {
        q.push(format!("limit={l}"));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub fn audit(client: &Client, a: AuditArgs, json: bool) -> Result<(), CliError> {
    let q = query_string(&a.filters);
    match a.command {
        None => {
            let (raw, v) = client.call("GET", &format!("/api/v1/audit{q}"), None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &[
                    "SEQ", "AT", "ACTOR", "CLIENT", "ACTION", "TARGET", "RESULT", "DETAIL",
                ],
                &v,
                &[
                    "seq",
                    "at",
                    "actor_label",
                    "client",
                    "action",
                    "target",
                    "result",
                    "detail",
                ],
            ))
        }
        Some(AuditCommand::Export) => {
            let (raw, _) = client.call("GET", &format!("/api/v1/audit/export{q}"), None)?;
            out(&raw)
        }
        Some(AuditCommand::Verify { db }) => {
            let found = match db {
                Some(path) => {
                    if !path.is_file() {
                        return Err(CliError::Usage(format!("no file {}", path.display())));
                    }
                    let found = crate::db::sqlite::verify_trail_file(&path)
                        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
                    serde_json::to_value(found).unwrap_or(Value::Null)
                }
                None => client.call("GET", "/api/v1/audit/verify", None)?.1,
            };
            if json {
                out(&found.to_string())?;
            } else if found["ok"] == Value::Bool(true) {
                out(&format!(
                    "ok: {} entries, head {} {}",
                    found["entries"],
                    found["head_seq"],
                    found["head_hash"].as_str().unwrap_or("")
                ))?;
            } else {
                out(&format!(
                    "BROKEN at entry {}: {}",
                    found["first_bad"],
                    found["reason"].as_str().unwrap_or("")
                ))?;
            }
            if found["ok"] == Value::Bool(true) {
                Ok(())
            } else {
                Err(CliError::Other("the audit trail does not verify".into()))
            }
        }
    }
}
