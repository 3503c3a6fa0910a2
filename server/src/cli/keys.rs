//! `key generate`: an operator's signing key pair in minisign's format
//! (`signing/`), made on the operator's machine; no server is asked.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{note, out, CliError};
use crate::signing::SecretKey;

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
