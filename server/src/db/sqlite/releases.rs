//! [`ReleaseStore`] of the embedded backend: plain files in
//! `<data-dir>/releases/<version>/<name>`, not rows. One box has one disk
//! either way; as files they are what `build.sh release` made (an operator
//! can copy a release in by hand), `tether-server backup` copies the
//! directory beside the databases, and 64 MiB blobs stay out of
//! tether.db, its WAL and its online backup.
//!
//! An upload is written to `releases/.partial/<name>.<random>` (hidden:
//! never listed, never a version), synced, and renamed into place, so a
//! file is never seen half-written; the partial file is removed when the
//! upload is dropped unfinished.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db::releases::*;
use crate::db::StorageError;

/// Bytes read per chunk of a download.
const READ_CHUNK: usize = 64 * 1024;

/// Releases as files under one directory.
pub struct FsReleases {
    dir: PathBuf,
}

impl FsReleases {
    pub fn new(dir: PathBuf) -> FsReleases {
        FsReleases { dir }
    }
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::Backend(Box::new(e))
}

/// A name the store reads: not hidden (`.partial`), no path.
fn plain(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/')
}

fn list_dir(dir: &Path) -> Vec<ReleaseInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().into_owned();
            if !plain(&version) {
                return None;
            }
            let files = std::fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|f| {
                    let name = f.file_name().to_string_lossy().into_owned();
                    let meta = f.metadata().ok()?;
                    (plain(&name) && meta.is_file()).then_some(ReleaseFile {
                        name,
                        size: meta.len(),
                    })
                })
                .collect();
            Some(ReleaseInfo::new(version, files))
        })
        .collect()
}

#[async_trait]
impl ReleaseStore for FsReleases {
    async fn list(&self) -> Result<Vec<ReleaseInfo>, StorageError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || list_dir(&dir))
            .await
            .map_err(|e| StorageError::Backend(format!("listing releases: {e}").into()))
    }

    async fn exists(&self, version: &str) -> Result<bool, StorageError> {
        if !plain(version) {
            return Ok(false);
        }
        Ok(tokio::fs::metadata(self.dir.join(version))
            .await
            .is_ok_and(|m| m.is_dir()))
    }

    async fn has(&self, version: &str, name: &str) -> Result<bool, StorageError> {
        if !plain(version) || !plain(name) {
            return Ok(false);
        }
        Ok(tokio::fs::metadata(self.dir.join(version).join(name))
            .await
            .is_ok_and(|m| m.is_file()))
    }

    async fn upload(&self, version: &str, name: &str) -> Result<Box<dyn Upload>, StorageError> {
        if !plain(version) || !plain(name) {
            return Err(StorageError::Backend(
                format!("{version:?}/{name:?} is not a release file").into(),
            ));
        }
        // Apart from the releases (`list` skips it: hidden), so a failed
        // upload leaves no empty release behind.
        let partials = self.dir.join(".partial");
        tokio::fs::create_dir_all(&partials).await.map_err(io)?;
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag)
            .map_err(|e| StorageError::Backend(format!("random source: {e}").into()))?;
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let path = partials.join(format!("{name}.{tag}"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io)?;
        Ok(Box::new(FsUpload {
            partial: Some(path),
            file: Some(file),
            target: self.dir.join(version),
            name: name.to_owned(),
            tally: Tally::default(),
        }))
    }

    async fn open(&self, version: &str, name: &str) -> Result<Option<Download>, StorageError> {
        if !plain(version) || !plain(name) {
            return Ok(None);
        }
        let file = match tokio::fs::File::open(self.dir.join(version).join(name)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().await.map_err(io)?;
        if !meta.is_file() {
            return Ok(None);
        }
        // The open file reads on even if the release is replaced meanwhile
        // (the rename swaps the name, not these bytes).
        let chunks = futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; READ_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(io(e)), None)),
            }
        });
        Ok(Some(Download {
            size: meta.len(),
            chunks: Box::pin(chunks),
        }))
    }
}

/// A file being written under `.partial/`.
struct FsUpload {
    /// Removed on drop unless renamed into place.
    partial: Option<PathBuf>,
    file: Option<tokio::fs::File>,
    target: PathBuf,
    name: String,
    tally: Tally,
}

#[async_trait]
impl Upload for FsUpload {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let Some(file) = self.file.as_mut() else {
            return Err(StorageError::Backend("the upload is closed".into()));
        };
        file.write_all(data).await.map_err(io)?;
        self.tally.add(data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<StoredFile, StorageError> {
        let (Some(mut file), Some(from)) = (self.file.take(), self.partial.clone()) else {
            return Err(StorageError::Backend("the upload is closed".into()));
        };
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        tokio::fs::create_dir_all(&self.target).await.map_err(io)?;
        tokio::fs::rename(&from, self.target.join(&self.name))
            .await
            .map_err(io)?;
        self.partial = None;
        Ok(std::mem::take(&mut self.tally).done())
    }
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        if let Some(p) = self.partial.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
