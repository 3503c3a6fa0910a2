//! Sealed secrets: values encrypted at rest with ChaCha20-Poly1305, the key
//! outside the database.
//!
//! The key is 32 bytes, from `TETHER_SECRET_KEY` (64 hex digits), else the
//! file `--secret-key-file` (default `<data-dir>/secret.key`, made 0600 on
//! first start). Each value is sealed with a fresh random nonce and with
//! `tenant \0 name` as associated data, so a sealed value copied to another
//! row (another tenant, another name) does not open. Values are write-only
//! in the API; they are opened only to be put into the job that needs them.

use std::fmt;
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

pub struct SecretBox {
    key: LessSafeKey,
}

#[derive(Debug)]
pub enum SecretError {
    BadKey(String),
    Io(String, std::io::Error),
    /// The value does not open with this key (wrong key, or tampered).
    Open,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::BadKey(why) => write!(f, "secret key: {why}"),
            SecretError::Io(what, e) => write!(f, "{what}: {e}"),
            SecretError::Open => write!(
                f,
                "a sealed secret does not open with this key (another key, or tampered)"
            ),
        }
    }
}

impl std::error::Error for SecretError {}

fn aad(tenant: &str, name: &str) -> Vec<u8> {
    let mut a = tenant.as_bytes().to_vec();
    a.push(0);
    a.extend_from_slice(name.as_bytes());
    a
}

fn parse_hex(s: &str) -> Result<[u8; 32], SecretError> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SecretError::BadKey(
            "expected 64 hex digits (32 bytes)".into(),
        ));
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| SecretError::BadKey("not hex".into()))?;
    }
    Ok(key)
}

impl SecretBox {
    pub fn from_key(key: [u8; 32]) -> SecretBox {
        // A 32-byte key is exactly what ChaCha20-Poly1305 takes.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key)
            .unwrap_or_else(|_| unreachable!("32-byte key"));
        SecretBox {
            key: LessSafeKey::new(unbound),
        }
    }

    /// From `env_key` (hex) if set, else from `file`, made on first use.
    pub fn load(env_key: Option<&str>, file: &Path) -> Result<SecretBox, SecretError> {
        if let Some(hex) = env_key {
            return Ok(SecretBox::from_key(parse_hex(hex)?));
        }
        match std::fs::read_to_string(file) {
            Ok(text) => Ok(SecretBox::from_key(parse_hex(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| SecretError::BadKey(format!("no randomness: {e}")))?;
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                crate::common::files::write_private(file, format!("{hex}\n").as_bytes())
                    .map_err(|e| SecretError::Io(format!("writing {}", file.display()), e))?;
                tracing::info!(
                    "secret key: created {} (0600); back it up apart from the database",
                    file.display()
                );
                Ok(SecretBox::from_key(key))
            }
            Err(e) => Err(SecretError::Io(format!("reading {}", file.display()), e)),
        }
    }

    /// `(nonce, ciphertext with tag)`.
    pub fn seal(
        &self,
        tenant: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| SecretError::BadKey(format!("no randomness: {e}")))?;
        let mut data = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tenant, name)),
                &mut data,
            )
            .map_err(|_| SecretError::Open)?;
        Ok((nonce.to_vec(), data))
    }

    pub fn open(
        &self,
        tenant: &str,
        name: &str,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, SecretError> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Open)?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tenant, name)),
                &mut data,
            )
            .map_err(|_| SecretError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let b = SecretBox::from_key([7; 32]);
        let (n, c) = b.seal("tn_a", "DB_PASSWORD", b"hunter2").unwrap();
        assert!(!c.windows(7).any(|w| w == b"hunter2"), "not in the clear");
        assert_eq!(b.open("tn_a", "DB_PASSWORD", &n, &c).unwrap(), b"hunter2");
        assert!(
            b.open("tn_b", "DB_PASSWORD", &n, &c).is_err(),
            "another tenant"
        );
        assert!(b.open("tn_a", "OTHER", &n, &c).is_err(), "another name");
        let mut t = c.clone();
        t[0] ^= 1;
        assert!(b.open("tn_a", "DB_PASSWORD", &n, &t).is_err(), "tampered");
        assert!(SecretBox::from_key([8; 32])
            .open("tn_a", "DB_PASSWORD", &n, &c)
            .is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(parse_hex(&"01".repeat(32)).unwrap(), [1; 32]);
    }
}
