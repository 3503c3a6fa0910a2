//! Operator keys in minisign's format, and signing on the operator's side
//! (the CLI's `key generate` and `run --sign-key`). Nothing here runs in the
//! server process: a private key never reaches the server.
//!
//! ```text
//! public key file   untrusted comment: minisign public key <KEYID>
//!                   base64("Ed" keyid[8] pk[32])
//! secret key file   untrusted comment: minisign secret key (unencrypted)
//!                   base64("Ed" kdf[2]=0,0 "B2" salt[32] ops[8] mem[8]
//!                          keyid[8] sk[64] chk[32])     chk = BLAKE2b-256("Ed" keyid sk)
//! signature         untrusted comment: …
//!                   base64("ED" keyid[8] Ed25519(BLAKE2b-512(message)))
//!                   trusted comment: <text>
//!                   base64(Ed25519(signature ‖ text))
//! ```
//!
//! These are the files Debian's `minisign` reads and writes (a test signs
//! with each and verifies with the other). The secret key file is written
//! **unencrypted** (minisign's `-W`): scrypt would need another crate and a
//! passphrase prompt; the file is made 0600 and `key generate` says so.
//! An encrypted minisign key is refused with that reason (decrypt it with
//! `minisign -C -W`... or generate one here). Ed25519 is ring's (already in
//! the tree for TLS); BLAKE2b the `blake2` crate (already there for Argon2).

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use blake2::digest::consts::U32;
use blake2::{Blake2b, Blake2b512, Digest};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The secret key file's bytes after base64.
const SECRET_LEN: usize = 158;
const PUBLIC_LEN: usize = 42;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Random(String),
    Format(String),
    Encrypted,
    Checksum,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Random(e) => write!(f, "random source: {e}"),
            KeyError::Format(e) => write!(f, "not a minisign secret key: {e}"),
            KeyError::Encrypted => f.write_str(
                "this minisign secret key is encrypted (scrypt): tether reads unencrypted keys \
                 only; make one with `tether-server key generate` (or minisign -G -W)",
            ),
            KeyError::Checksum => f.write_str("the secret key's checksum does not match: damaged"),
        }
    }
}

impl std::error::Error for KeyError {}

/// An operator's Ed25519 key pair.
pub struct SecretKey {
    key_id: [u8; 8],
    seed: [u8; 32],
    public: [u8; 32],
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.key_id_hex())
    }
}

fn checksum(key_id: &[u8; 8], sk: &[u8]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update(b"Ed");
    h.update(key_id);
    h.update(sk);
    h.finalize().into()
}

impl SecretKey {
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        let mut key_id = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        getrandom::fill(&mut key_id).map_err(|e| KeyError::Random(e.to_string()))?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| KeyError::Format(e.to_string()))?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(SecretKey {
            key_id,
            seed,
            public,
        })
    }

    /// minisign's key id as it prints it (the 8 bytes little-endian, hex).
    pub fn key_id_hex(&self) -> String {
        format!("{:016X}", u64::from_le_bytes(self.key_id))
    }

    /// The `.pub` file.
    pub fn public_file(&self) -> String {
        let mut bin = Vec::with_capacity(PUBLIC_LEN);
        bin.extend_from_slice(b"Ed");
        bin.extend_from_slice(&self.key_id);
        bin.extend_from_slice(&self.public);
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id_hex(),
            B64.encode(bin)
        )
    }

    /// The secret key file, unencrypted (see the module doc).
    pub fn secret_file(&self) -> String {
        let mut sk = [0u8; 64];
        sk[..32].copy_from_slice(&self.seed);
        sk[32..].copy_from_slice(&self.public);
        let mut bin = Vec::with_capacity(SECRET_LEN);
        bin.extend_from_slice(b"Ed");
        bin.extend_from_slice(&[0, 0]);
        bin.extend_from_slice(b"B2");
        bin.extend_from_slice(&[0u8; 32 + 8 + 8]);
        bin.extend_from_slice(&self.key_id);
        bin.extend_from_slice(&sk);
        bin.extend_from_slice(&checksum(&self.key_id, &sk));
        format!(
            "untrusted comment: minisign secret key {} (unencrypted: keep this file private)\n{}\n",
            self.key_id_hex(),
            B64.encode(bin)
        )
    }

    /// Read a secret key file.
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| KeyError::Format("no key line".into()))?;
        let bin = B64
            .decode(line)
            .map_err(|e| KeyError::Format(e.to_string()))?;
        if bin.len() != SECRET_LEN {
            return Err(KeyError::Format(format!(
                "{} bytes, not {SECRET_LEN}",
                bin.len()
            )));
        }
        if &bin[0..2] != b"Ed" || &bin[4..6] != b"B2" {
            return Err(KeyError::Format("unknown algorithm".into()));
        }
        match &bin[2..4] {
            [0, 0] => {}
            b"Sc" => return Err(KeyError::Encrypted),
            _ => return Err(KeyError::Format("unknown key derivation".into())),
        }
        let rest = &bin[54..];
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&rest[..8]);
        let sk = &rest[8..72];
        if checksum(&key_id, sk) != rest[72..104] {
            return Err(KeyError::Checksum);
        }
        let mut seed = [0u8; 32];
        let mut public = [0u8; 32];
        seed.copy_from_slice(&sk[..32]);
        public.copy_from_slice(&sk[32..]);
        // The public half must belong to the seed.
        Ed25519KeyPair::from_seed_and_public_key(&seed, &public)
            .map_err(|_| KeyError::Format("the public half does not match".into()))?;
        Ok(SecretKey {
            key_id,
            seed,
            public,
        })
    }

    /// A minisign signature (prehashed, as minisign makes by default) of
    /// `message` with `trusted_comment` (one line).
    pub fn sign(&self, message: &[u8], trusted_comment: &str) -> String {
        let pair = Ed25519KeyPair::from_seed_and_public_key(&self.seed, &self.public)
            .expect("checked when the key was made or read");
        let digest = Blake2b512::digest(message);
        let sig = pair.sign(&digest);
        let comment = trusted_comment.replace(['\r', '\n'], " ");
        let mut global = sig.as_ref().to_vec();
        global.extend_from_slice(comment.as_bytes());
        let global_sig = pair.sign(&global);
        let mut bin1 = Vec::with_capacity(74);
        bin1.extend_from_slice(b"ED");
        bin1.extend_from_slice(&self.key_id);
        bin1.extend_from_slice(sig.as_ref());
        format!(
            "untrusted comment: signature from tether operator key {}\n{}\ntrusted comment: {comment}\n{}\n",
            self.key_id_hex(),
            B64.encode(bin1),
            B64.encode(global_sig.as_ref())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minisign_verify::{PublicKey, Signature};

    #[test]
    fn what_we_sign_minisign_verify_accepts() {
        let k = SecretKey::generate().unwrap();
        let again = SecretKey::parse(&k.secret_file()).unwrap();
        let sig = again.sign(b"hello", "tether-action job sa_1");
        let pk = PublicKey::decode(&k.public_file()).unwrap();
        let s = Signature::decode(&sig).unwrap();
        assert_eq!(s.trusted_comment(), "tether-action job sa_1");
        pk.verify(b"hello", &s, false).unwrap();
        assert!(pk.verify(b"hellO", &s, false).is_err());
        let other = SecretKey::generate().unwrap();
        assert!(PublicKey::decode(&other.public_file())
            .unwrap()
            .verify(b"hello", &s, false)
            .is_err());
    }

    #[test]
    fn damaged_or_encrypted_keys_are_refused_with_a_reason() {
        let k = SecretKey::generate().unwrap();
        let file = k.secret_file();
        let line = file.lines().nth(1).unwrap();
        let mut bin = B64.decode(line).unwrap();
        bin[100] ^= 1;
        assert_eq!(
            SecretKey::parse(&B64.encode(&bin)).unwrap_err(),
            KeyError::Checksum
        );
        let mut bin = B64.decode(line).unwrap();
        bin[2..4].copy_from_slice(b"Sc");
        assert_eq!(
            SecretKey::parse(&B64.encode(&bin)).unwrap_err(),
            KeyError::Encrypted
        );
        assert!(SecretKey::parse("").is_err());
        assert!(SecretKey::parse("untrusted comment: x\n!!!").is_err());
        assert!(SecretKey::parse(&k.public_file()).is_err());
    }
}
