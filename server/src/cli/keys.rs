//! `key generate`: an operator's signing key pair in minisign's format
//! (`signing/`), made on the operator's machine; no server is asked. And
//! [`SignArgs`]/[`Signer`], the `--sign-key` of every command that signs an
//! action (`run`, `app deploy|rollback`, `terminal`, `container …`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tether::protocol::signed::{self, Kind};

use super::{note, out, CliError};
use crate::common::clock;
use crate::signing::SecretKey;

/// `--sign-key` and `--sign-valid`, for commands that sign an action.
#[derive(Debug, Args, Clone)]
pub struct SignArgs {
    /// Sign the action with this operator key (minisign format, `key
    /// generate`), for hosts that require signatures; the key stays here,
    /// only the signature is sent
    #[arg(long, env = "TETHER_SIGN_KEY", hide_env_values = true)]
    pub sign_key: Option<PathBuf>,
    /// How long a signature stays valid (the host refuses it after)
    #[arg(long, default_value = "10m")]
    pub sign_valid: String,
}

/// An operator's key, read, and the not-after of what it signs now.
pub struct Signer {
    key: SecretKey,
    not_after_ms: u64,
}

impl Signer {
    /// `None` without `--sign-key`.
    pub fn from_args(a: &SignArgs) -> Result<Option<Signer>, CliError> {
        match &a.sign_key {
            None => Ok(None),
            Some(path) => Signer::load(path, &a.sign_valid).map(Some),
        }
    }

    pub fn load(key_file: &Path, valid: &str) -> Result<Signer, CliError> {
        let text = std::fs::read_to_string(key_file)
            .map_err(|e| CliError::Usage(format!("--sign-key {}: {e}", key_file.display())))?;
        let key = SecretKey::parse(&text)
            .map_err(|e| CliError::Usage(format!("--sign-key {}: {e}", key_file.display())))?;
        let valid = clock::parse_duration_ms(valid)
            .filter(|ms| *ms > 0 && *ms as u64 <= signed::MAX_VALIDITY_MS)
            .ok_or_else(|| CliError::Usage(format!("--sign-valid {valid:?}: 1s to 7d")))?;
        Ok(Signer {
            key,
            not_after_ms: u64::try_from(clock::now_ms() + valid).unwrap_or(0),
        })
    }

    /// A new action id: `sa_` and 16 hex digits (also a valid image tag).
    pub fn action_id() -> Result<String, CliError> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| CliError::Other(format!("random source: {e}")))?;
        Ok(format!(
            "sa_{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }

    pub fn not_after_ms(&self) -> u64 {
        self.not_after_ms
    }

    /// The `signed` object of a request: `bytes` are the canonical bytes
    /// of the action under `action_id` (`protocol/signed.rs`).
    pub fn sign(&self, kind: Kind, action_id: &str, bytes: &[u8]) -> Value {
        json!({
            "action_id": action_id,
            "not_after_ms": self.not_after_ms,
            "signature": self.key.sign(bytes, &signed::trusted_comment(kind, action_id)),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key pair: FILE (secret, unencrypted, 0600) and FILE.pub
    /// (public: append it to each host's <state-dir>/operator-keys.pub)
    Generate {
        /// Where the secret key goes (the public key beside it, .pub)
        #[arg(long, default_value = "tether-operator.key")]
        out: PathBuf,
    },
}

fn create_new(path: &Path, text: &str, mode: u32) -> Result<(), CliError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::Other(format!("writing {}: {e}", path.display())))
}

pub fn key(c: KeyCommand) -> Result<(), CliError> {
    match c {
        KeyCommand::Generate { out: path } => {
            let public = PathBuf::from(format!("{}.pub", path.display()));
            if public.exists() {
                return Err(CliError::Usage(format!(
                    "{} exists: not overwritten",
                    public.display()
                )));
            }
            let k = SecretKey::generate().map_err(|e| CliError::Other(e.to_string()))?;
            create_new(&path, &k.secret_file(), 0o600)?;
            create_new(&public, &k.public_file(), 0o644)?;
            out(&format!(
                "secret key  {}\npublic key  {}\nkey id      {}",
                path.display(),
                public.display(),
                k.key_id_hex()
            ))?;
            note(
                "the secret key file is NOT encrypted (mode 0600): keep it on this machine only; \
                 sign with `tether-server run --sign-key FILE` (or TETHER_SIGN_KEY)",
            )
        }
    }
}
