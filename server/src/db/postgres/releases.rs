//! [`ReleaseStore`] on PostgreSQL (migration 14): every replica serves and
//! offers every release, whichever replica it was uploaded through.
//!
//! ```text
//! release_files   (version, name) blob, size, sha256, created_ms
//! release_chunks  (blob, seq)     data: CHUNK bytes (the last fewer)
//! ```
//!
//! Why chunks of BYTEA and not large objects: chunks are ordinary rows, so
//! a file goes with its row (`ON DELETE CASCADE`), `migrate --force`'s
//! TRUNCATE and `pg_dump` of the tables take them, and tokio-postgres
//! reads them with plain queries; large objects live outside the tables
//! (left behind by a DELETE until `vacuumlo`, their own privileges) and
//! would be read through `lo_*` calls inside a transaction held for the
//! whole download. A 1 MiB chunk is one TOASTed value: small enough to
//! hold per request, large enough that 64 MiB is 64 rows.
//!
//! An upload runs in one transaction on a connection of its own taken
//! from the pool: the old row of the same name is deleted (its chunks
//! with it), the new row and its chunks inserted as the body arrives, and
//! the commit at [`Upload::finish`] makes it visible to every replica at
//! once. Dropped before that (a client cut mid-body, an error, the server
//! killed), the connection is closed rather than returned to the pool, and
//! PostgreSQL rolls the transaction back: nothing is left. Two uploads of
//! the same file queue on the row lock; readers meanwhile see the old one.
//!
//! A download reads the row (blob, size) and then one chunk per query, each
//! on a pooled connection held only for that query, so a slow client holds
//! no connection; at most [`FETCHES`] chunk queries of a replica run at
//! once, so a flood of public downloads cannot take the whole pool from
//! the API and the runners' writes. The blob id pins the file: if it is replaced mid-way,
//! the next chunk is missing and the body ends short (an error, never a
//! mix of two files).

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::Pool;

use crate::db::releases::*;
use crate::db::StorageError;

/// Bytes per stored chunk.
pub const CHUNK: usize = 1024 * 1024;

/// Chunk queries of downloads at once, per replica (of its 16 connections).
const FETCHES: usize = 4;

pub struct PgReleases {
    pool: Pool,
    fetches: std::sync::Arc<tokio::sync::Semaphore>,
}

impl PgReleases {
    pub(super) fn new(pool: Pool) -> PgReleases {
        PgReleases {
            pool,
            fetches: std::sync::Arc::new(tokio::sync::Semaphore::new(FETCHES)),
        }
    }
}

#[async_trait]
impl ReleaseStore for PgReleases {
    async fn list(&self) -> Result<Vec<ReleaseInfo>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT version, name, size FROM release_files ORDER BY version, name",
                &[],
            )
            .await?;
        let mut out: Vec<ReleaseInfo> = Vec::new();
        let mut files = Vec::new();
        let mut current: Option<String> = None;
        for r in rows {
            let version: String = r.get(0);
            if current.as_ref().is_some_and(|v| *v != version) {
                if let Some(v) = current.take() {
                    out.push(ReleaseInfo::new(v, std::mem::take(&mut files)));
                }
            }
            current = Some(version);
            files.push(ReleaseFile {
                name: r.get(1),
                size: r.get::<_, i64>(2).max(0) as u64,
            });
        }
        if let Some(v) = current {
            out.push(ReleaseInfo::new(v, files));
        }
        Ok(out)
    }

    async fn exists(&self, version: &str) -> Result<bool, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT 1 FROM release_files WHERE version = $1 LIMIT 1",
            &[&version],
        )
        .await?
        .is_some())
    }

    async fn has(&self, version: &str, name: &str) -> Result<bool, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT 1 FROM release_files WHERE version = $1 AND name = $2",
            &[&version, &name],
        )
        .await?
        .is_some())
    }

    async fn upload(&self, version: &str, name: &str) -> Result<Box<dyn Upload>, StorageError> {
        let mut blob = [0u8; 12];
        getrandom::fill(&mut blob)
            .map_err(|e| StorageError::Backend(format!("random source: {e}").into()))?;
        let blob: String = blob.iter().map(|b| format!("{b:02x}")).collect();
        let up = PgUpload {
            client: Some(self.pool.get().await?),
            version: version.to_owned(),
            name: name.to_owned(),
            blob,
            seq: 0,
            buf: Vec::with_capacity(CHUNK),
            tally: Tally::default(),
        };
        let c = up.client()?;
        c.batch_execute("BEGIN").await?;
        c.execute(
            "DELETE FROM release_files WHERE version = $1 AND name = $2",
            &[&up.version, &up.name],
        )
        .await?;
        c.execute(
            "INSERT INTO release_files (version, name, blob, size, sha256, created_ms)
             VALUES ($1, $2, $3, 0, '', $4)",
            &[
                &up.version,
                &up.name,
                &up.blob,
                &crate::common::clock::now_ms(),
            ],
        )
        .await?;
        Ok(Box::new(up))
    }

    async fn open(&self, version: &str, name: &str) -> Result<Option<Download>, StorageError> {
        let c = self.pool.get().await?;
        let Some(row) = c
            .query_opt(
                "SELECT blob, size FROM release_files WHERE version = $1 AND name = $2",
                &[&version, &name],
            )
            .await?
        else {
            return Ok(None);
        };
        drop(c);
        let blob: String = row.get(0);
        let size = row.get::<_, i64>(1).max(0) as u64;
        struct At {
            pool: Pool,
            fetches: std::sync::Arc<tokio::sync::Semaphore>,
            blob: String,
            seq: i32,
            sent: u64,
            size: u64,
        }
        let start = At {
            pool: self.pool.clone(),
            fetches: self.fetches.clone(),
            blob,
            seq: 0,
            sent: 0,
            size,
        };
        let chunks = futures_util::stream::unfold(Some(start), |at| async move {
            let mut at = at?;
            if at.sent >= at.size {
                return None;
            }
            let fetched = match at.fetches.acquire().await {
                Ok(_turn) => chunk(&at.pool, &at.blob, at.seq).await,
                Err(e) => Err(StorageError::Backend(
                    format!("release fetches: {e}").into(),
                )),
            };
            match fetched {
                Ok(Some(data)) if !data.is_empty() => {
                    at.seq += 1;
                    at.sent += data.len() as u64;
                    Some((Ok(data), Some(at)))
                }
                Ok(_) => Some((
                    Err(StorageError::Backend(
                        format!(
                            "release chunk {} of blob {} is gone (the file was replaced)",
                            at.seq, at.blob
                        )
                        .into(),
                    )),
                    None,
                )),
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Some(Download {
            size,
            chunks: Box::pin(chunks),
        }))
    }
}

async fn chunk(pool: &Pool, blob: &str, seq: i32) -> Result<Option<Bytes>, StorageError> {
    let c = pool.get().await?;
    let row = c
        .query_opt(
            "SELECT data FROM release_chunks WHERE blob = $1 AND seq = $2",
            &[&blob, &seq],
        )
        .await?;
    Ok(row.map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
}

/// A file being written in its own transaction.
struct PgUpload {
    /// `None` once committed; dropped while `Some`, it is detached from
    /// the pool and closed (the transaction rolls back).
    client: Option<deadpool_postgres::Object>,
    version: String,
    name: String,
    blob: String,
    seq: i32,
    /// Bytes not yet stored: less than a chunk.
    buf: Vec<u8>,
    tally: Tally,
}

impl PgUpload {
    fn client(&self) -> Result<&deadpool_postgres::Object, StorageError> {
        self.client
            .as_ref()
            .ok_or_else(|| StorageError::Backend("the upload is closed".into()))
    }

    /// Store `buf` as the next chunk.
    async fn flush(&mut self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let c = self.client()?;
        c.execute(
            "INSERT INTO release_chunks (blob, seq, data) VALUES ($1, $2, $3)",
            &[&self.blob, &self.seq, &self.buf],
        )
        .await?;
        self.seq += 1;
        self.buf.clear();
        Ok(())
    }
}

#[async_trait]
impl Upload for PgUpload {
    async fn write(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        self.tally.add(data);
        while !data.is_empty() {
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<StoredFile, StorageError> {
        self.flush().await?;
        let stored = std::mem::take(&mut self.tally).done();
        let size = i64::try_from(stored.size).unwrap_or(i64::MAX);
        let c = self.client()?;
        c.execute(
            "UPDATE release_files SET size = $2, sha256 = $3 WHERE blob = $1",
            &[&self.blob, &size, &stored.sha256],
        )
        .await?;
        c.batch_execute("COMMIT").await?;
        // Back to the pool, outside any transaction.
        self.client = None;
        Ok(stored)
    }
}

impl Drop for PgUpload {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // Not back to the pool with the transaction open: the
            // connection closes with the client, and PostgreSQL rolls back.
            drop(deadpool_postgres::Object::take(c));
        }
    }
}
