//! `user`: dashboard users of a tenant.
//!
//! `user add TENANT NAME` takes the admin token, so it makes a tenant's
//! first user; the other subcommands take a tenant's API token. Passwords
//! come from stdin, never from the command line (where `ps` would show them).

use std::io::Read;

use clap::Subcommand;
use serde_json::json;

use super::{out, segment, table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user to a tenant (admin token); the password is read from stdin
    Add {
        /// Tenant id or name
        tenant: String,
        name: String,
        /// admin (also manages users), operator (acts) or viewer (only looks)
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// List the tenant's users (API token)
    List,
    /// Change a user's role (API token)
    Role { name: String, role: String },
    /// Set a user's password from stdin, ending their sessions (API token)
    Password { name: String },
    /// Remove a user (API token)
    Rm { name: String },
}

fn password_from_stdin() -> Result<String, CliError> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .map_err(|e| CliError::Usage(format!("reading the password from stdin: {e}")))?;
    // `echo pw | …` adds a newline nobody means.
    Ok(value.strip_suffix('\n').unwrap_or(&value).to_owned())
}

pub fn user(client: &Client, c: UserCommand, json: bool) -> Result<(), CliError> {
    match c {
        UserCommand::Add { tenant, name, role } => {
            let password = password_from_stdin()?;
            let (raw, _) = client.call(
                "POST",
                &format!("/api/v1/tenants/{}/users", segment(&tenant)),
                Some(json!({ "name": name, "password": password, "role": role })),
            )?;
            if json {
                return out(&raw);
            }
            out(&format!("user {name} ({role}) added to {tenant}"))
        }
        UserCommand::List => {
            let (raw, v) = client.call("GET", "/api/v1/users", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["NAME", "ROLE", "CREATED"],
                &v,
                &["name", "role", "created_at"],
            ))
        }
        UserCommand::Role { name, role } => {
            client.call(
                "PATCH",
                &format!("/api/v1/users/{}", segment(&name)),
                Some(json!({ "role": role })),
            )?;
            out(&format!("user {name} is now {role}"))
        }
        UserCommand::Password { name } => {
            let password = password_from_stdin()?;
            client.call(
                "PATCH",
                &format!("/api/v1/users/{}", segment(&name)),
                Some(json!({ "password": password })),
            )?;
            out(&format!("password of {name} changed; their sessions ended"))
        }
        UserCommand::Rm { name } => {
            client.call("DELETE", &format!("/api/v1/users/{}", segment(&name)), None)?;
            out(&format!("removed user {name}"))
        }
    }
}
