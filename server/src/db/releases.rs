//! Releases: the signed runner builds an operator uploads (`updates/`).
//! A release is a version holding a few files — `tether-<arch>`, its
//! `.minisig`, `manifest.json` and its `.minisig` — each at most
//! [`MAX_RELEASE_FILE`] bytes, served to anyone (`/releases/{v}/{file}`:
//! they are public and signed; runners verify them, the server never
//! vouches).
//!
//! Where they live, per backend:
//!
//! ```text
//! SQLite (embedded)  files in <data-dir>/releases/<version>/<name>
//!                    (sqlite/releases.rs): one box, one disk; the files
//!                    are what `build.sh release` made and what an operator
//!                    can copy or rsync in, and the big blobs stay out of
//!                    tether.db (its online backup and its WAL)
//! PostgreSQL         release_files (version, name) → blob, size, sha256,
//!                    release_chunks (blob, seq) → 1 MiB of bytes
//!                    (postgres/releases.rs): every replica serves and
//!                    offers every release, and losing a replica's disk
//!                    loses none of them (issue 18)
//! ```
//!
//! Both stream: an upload is written as its body arrives through an
//! [`Upload`] (at most one chunk of it in memory) and becomes visible only
//! at [`Upload::finish`] — an upload dropped before (an error, a client
//! gone mid-body) leaves nothing — and a download is read chunk by chunk
//! ([`Download`]), so a fleet updating at once never holds a copy of the
//! binary per request.
//!
//! Nothing is cached: "does this release have a signed binary for arch X"
//! ([`ReleaseStore::has`]) is a stat or one indexed query, asked beside
//! the four queries an offer makes anyway, so a release uploaded through
//! one replica is offered by every other at once, with no invalidation.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::StorageError;

/// Largest file of a release.
pub const MAX_RELEASE_FILE: usize = 64 * 1024 * 1024;

/// One file of a release, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseFile {
    pub name: String,
    pub size: u64,
}

/// A release as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseInfo {
    pub version: String,
    /// By name.
    pub files: Vec<ReleaseFile>,
    /// Whether a signed manifest was uploaded.
    pub signed_manifest: bool,
}

impl ReleaseInfo {
    /// A release of these files (sorted here).
    pub fn new(version: String, mut files: Vec<ReleaseFile>) -> ReleaseInfo {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let signed_manifest = files.iter().any(|f| f.name == "manifest.json.minisig");
        ReleaseInfo {
            version,
            files,
            signed_manifest,
        }
    }
}

/// A file as stored: its size and SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredFile {
    pub size: u64,
    pub sha256: String,
}

/// A file's bytes in order; an `Err` ends it early (the client sees a
/// short body against its Content-Length).
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// A file being read.
pub struct Download {
    pub size: u64,
    pub chunks: Chunks,
}

#[async_trait]
pub trait ReleaseStore: Send + Sync {
    /// Every release, in no order (`updates/` sorts them by version).
    async fn list(&self) -> Result<Vec<ReleaseInfo>, StorageError>;
    /// Whether release `version` exists (holds a file).
    async fn exists(&self, version: &str) -> Result<bool, StorageError>;
    /// Whether release `version` holds file `name`.
    async fn has(&self, version: &str, name: &str) -> Result<bool, StorageError>;
    /// A new file `name` of release `version` (names checked by the
    /// caller), replacing one of that name when finished.
    async fn upload(&self, version: &str, name: &str) -> Result<Box<dyn Upload>, StorageError>;
    /// The file, if the release holds it.
    async fn open(&self, version: &str, name: &str) -> Result<Option<Download>, StorageError>;
}

/// A file being written. Dropped without [`Upload::finish`], it leaves
/// nothing behind.
#[async_trait]
pub trait Upload: Send {
    /// The next bytes.
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError>;
    /// Make the file visible, whole; its size and hash.
    async fn finish(self: Box<Self>) -> Result<StoredFile, StorageError>;
}

/// A running SHA-256 and byte count, for the backends' uploads.
#[derive(Default)]
pub struct Tally {
    hash: Sha256,
    size: u64,
}

impl Tally {
    pub fn add(&mut self, data: &[u8]) {
        self.hash.update(data);
        self.size += data.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn done(self) -> StoredFile {
        StoredFile {
            size: self.size,
            sha256: hex(&self.hash.finalize()),
        }
    }
}

/// The SHA-256 of `data`, hex (for checks: `migrate`, tests).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A server that keeps no releases (the in-memory databases of tests):
/// lists none, has none, refuses uploads.
pub struct NoReleases;

#[async_trait]
impl ReleaseStore for NoReleases {
    async fn list(&self) -> Result<Vec<ReleaseInfo>, StorageError> {
        Ok(Vec::new())
    }

    async fn exists(&self, _: &str) -> Result<bool, StorageError> {
        Ok(false)
    }

    async fn has(&self, _: &str, _: &str) -> Result<bool, StorageError> {
        Ok(false)
    }

    async fn upload(&self, _: &str, _: &str) -> Result<Box<dyn Upload>, StorageError> {
        Err(StorageError::Backend(
            "this server keeps no releases".into(),
        ))
    }

    async fn open(&self, _: &str, _: &str) -> Result<Option<Download>, StorageError> {
        Ok(None)
    }
}
