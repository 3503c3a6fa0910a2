//! `sso`: a tenant's single sign-on providers (`users/sso.rs`) and whether
//! its users may still log in with a password. Takes a tenant's API token
//! (the routes want a tenant admin). The client secret comes from stdin,
//! never from the command line (where `ps` would show it).

use std::io::Read;

use clap::Subcommand;
use serde_json::{json, Map, Value};

use super::{out, segment, table};
use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum SsoCommand {
    /// OpenID Connect providers: add (client secret from stdin), list, rm
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Whether the tenant's users may log in with a password: on or off
    /// (off needs a provider, and ends the password users' sessions)
    PasswordLogin {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Add a provider; the client secret is read from stdin. Register the
    /// redirect URI it prints at the provider
    Add {
        /// The login page's button and the API's key (a-z A-Z 0-9 . _ -)
        name: String,
        /// The issuer URL (https; http on loopback only)
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        client_id: String,
        /// The ID token claim that carries the role
        #[arg(long, default_value = "groups")]
        role_claim: String,
        /// VALUE=ROLE (a claim value and the role it gives), repeatable
        #[arg(long = "map", value_name = "VALUE=ROLE")]
        role_map: Vec<String>,
        /// The role of a user whose claim maps to none (default: refused)
        #[arg(long)]
        default_role: Option<String>,
    },
    /// The tenant's providers (without their secrets)
    List,
    /// Remove a provider: its users stay but can no longer sign in with it
    Rm { name: String },
}

fn secret_from_stdin() -> Result<String, CliError> {
    let mut value = String::new();
    // Bounded: the server takes at most 512 bytes.
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut value)
        .map_err(|e| CliError::Usage(format!("reading the client secret from stdin: {e}")))?;
    // `echo secret | …` adds a newline nobody means.
    Ok(value.strip_suffix('\n').unwrap_or(&value).to_owned())
}

pub fn sso(client: &Client, c: SsoCommand, json: bool) -> Result<(), CliError> {
    match c {
        SsoCommand::Provider(ProviderCommand::Add {
            name,
            issuer,
            client_id,
            role_claim,
            role_map,
            default_role,
        }) => {
            let mut map = Map::new();
            for pair in &role_map {
                let (value, role) = pair
                    .rsplit_once('=')
                    .ok_or_else(|| CliError::Usage(format!("--map {pair:?}: VALUE=ROLE")))?;
                map.insert(value.to_owned(), json!(role));
            }
            let secret = secret_from_stdin()?;
            let (raw, v) = client.call(
                "POST",
                "/api/v1/sso/providers",
                Some(json!({
                    "name": name,
                    "issuer": issuer,
                    "client_id": client_id,
                    "client_secret": secret,
                    "role_claim": role_claim,
                    "role_map": Value::Object(map),
                    "default_role": default_role,
                })),
            )?;
            if json {
                return out(&raw);
            }
            out(&format!(
                "provider {name} added; register this redirect URI at the provider: {}",
                v["redirect_uri"].as_str().unwrap_or_default()
            ))
        }
        SsoCommand::Provider(ProviderCommand::List) => {
            let (raw, v) = client.call("GET", "/api/v1/sso/providers", None)?;
            if json {
                return out(&raw);
            }
            out(&table(
                &["NAME", "ISSUER", "CLIENT", "ROLE CLAIM", "DEFAULT ROLE"],
                &v,
                &["name", "issuer", "client_id", "role_claim", "default_role"],
            ))
        }
        SsoCommand::Provider(ProviderCommand::Rm { name }) => {
            client.call(
                "DELETE",
                &format!("/api/v1/sso/providers/{}", segment(&name)),
                None,
            )?;
            out(&format!("provider {name} removed"))
        }
        SsoCommand::PasswordLogin { state } => {
            let (raw, _) = client.call(
                "PUT",
                "/api/v1/sso/password-login",
                Some(json!({ "password_login": state == "on" })),
            )?;
            if json {
                return out(&raw);
            }
            out(&format!("password login {state}"))
        }
    }
}
