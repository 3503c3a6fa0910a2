//! Docker state, the container view and the container event history of each
//! runner (the SQL for them; `containers/mod.rs` at the crate root is the logic).
//!
//! The view is what the runner last told: a `container_snapshot` replaces it,
//! each `container_event` upserts or deletes one container. It answers
//! `?cached=true` while the runner is offline, with `as_of` saying how old it
//! is. Summaries are stored as the protocol's JSON: the server only hands
//! them back, it never queries inside them.
//!
//! Bounds: the event history keeps the newest [`EVENT_HISTORY_LIMIT`] per
//! runner and nothing older than [`EVENT_MAX_AGE_MS`]; the view holds at most
//! [`VIEW_LIMIT`] containers per runner (a runner inventing ids cannot grow
//! the database without bound).

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use tether::protocol::{ContainerEvent, ContainerSummary, DockerState};

use super::control::{runner_exists, SqliteControl};
use crate::db::control::*;
use crate::db::StorageError;

/// Container events kept per runner.
pub const EVENT_HISTORY_LIMIT: i64 = 10_000;
/// Container events older than this are dropped (7 days).
pub const EVENT_MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;
/// Containers kept in one runner's view.
pub const VIEW_LIMIT: i64 = 10_000;

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Protocol types are plain data: serializing them cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StorageError> {
    serde_json::from_str(s).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

impl SqliteControl {
    pub fn set_docker_state(
        &self,
        runner_id: &str,
        row: &DockerStateRow,
    ) -> Result<(), StorageError> {
        let s = &row.state;
        self.conn().execute(
            "INSERT INTO docker_states (runner_id, available, version, api_version, reason, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (runner_id) DO UPDATE SET available = excluded.available,
                 version = excluded.version, api_version = excluded.api_version,
                 reason = excluded.reason, updated_at = excluded.updated_at",
            params![runner_id, s.available, s.version, s.api_version, s.reason, row.updated_at],
        )?;
        Ok(())
    }

    /// A runner's stored Docker state, if it ever reported one.
    pub fn docker_state(&self, runner_id: &str) -> Result<Option<DockerStateRow>, StorageError> {
        let row = self
            .conn()
            .query_row(
                "SELECT available, version, api_version, reason, updated_at
                 FROM docker_states WHERE runner_id = ?1",
                [runner_id],
                |r| {
                    Ok(DockerStateRow {
                        state: DockerState {
                            available: r.get(0)?,
                            version: r.get(1)?,
                            api_version: r.get(2)?,
                            reason: r.get(3)?,
                        },
                        updated_at: r.get(4)?,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    /// Replace a runner's view with a full list (a snapshot or a live list).
    pub fn replace_containers(
        &self,
        runner_id: &str,
        containers: &[ContainerSummary],
        now: i64,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM containers WHERE runner_id = ?1", [runner_id])?;
        {
            let mut add = tx.prepare_cached(
                "INSERT OR REPLACE INTO containers (runner_id, id, summary) VALUES (?1, ?2, ?3)",
            )?;
            for c in containers.iter().take(VIEW_LIMIT as usize) {
                add.execute(params![runner_id, c.id, to_json(c)])?;
            }
        }
        touch_view(&tx, runner_id, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Apply one event to the view and append it to the history, trimming
    /// the history to its bounds.
    pub fn record_container_event(
        &self,
        runner_id: &str,
        event: &ContainerEvent,
        now: i64,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match &event.container {
            Some(c) => {
                let known: bool = tx
                    .query_row(
                        "SELECT 1 FROM containers WHERE runner_id = ?1 AND id = ?2",
                        params![runner_id, c.id],
                        |_| Ok(true),
                    )
                    .optional()?
                    .unwrap_or(false);
                let count: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM containers WHERE runner_id = ?1",
                    [runner_id],
                    |r| r.get(0),
                )?;
                if known || count < VIEW_LIMIT {
                    tx.execute(
                        "INSERT OR REPLACE INTO containers (runner_id, id, summary) VALUES (?1, ?2, ?3)",
                        params![runner_id, c.id, to_json(c)],
                    )?;
                } else {
                    tracing::warn!(
                        runner = runner_id,
                        "container view full: not adding {}",
                        c.id
                    );
                }
            }
            None => {
                tx.execute(
                    "DELETE FROM containers WHERE runner_id = ?1 AND id = ?2",
                    params![runner_id, event.container_id],
                )?;
            }
        }
        touch_view(&tx, runner_id, now)?;
        tx.execute(
            "INSERT INTO container_events (runner_id, at, time_nano, action, container_id, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                runner_id,
                now,
                event.time_nano,
                event.action,
                event.container_id,
                to_json(event)
            ],
        )?;
        tx.execute(
            "DELETE FROM container_events WHERE runner_id = ?1 AND seq <=
                (SELECT seq FROM container_events WHERE runner_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            params![runner_id, EVENT_HISTORY_LIMIT],
        )?;
        tx.execute(
            "DELETE FROM container_events WHERE at < ?1",
            [now.saturating_sub(EVENT_MAX_AGE_MS)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The view of a runner of `tenant_id`, by name; `None` if the tenant
    /// has no such runner.
    pub fn containers(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<ContainerView>, StorageError> {
        let conn = self.conn();
        if !runner_exists(&conn, tenant_id, runner_id)? {
            return Ok(None);
        }
        let as_of = conn
            .prepare_cached("SELECT as_of FROM container_views WHERE runner_id = ?1")?
            .query_row([runner_id], |r| r.get(0))
            .optional()?;
        let mut stmt =
            conn.prepare_cached("SELECT summary FROM containers WHERE runner_id = ?1")?;
        let raw = stmt
            .query_map([runner_id], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut containers = raw
            .iter()
            .map(|s| from_json::<ContainerSummary>(s, "container summary"))
            .collect::<Result<Vec<_>, _>>()?;
        containers.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(Some(ContainerView { as_of, containers }))
    }

    /// Container events of a runner of `tenant_id` received at or after
    /// `since`, oldest first; `None` if the tenant has no such runner.
    pub fn container_events(
        &self,
        tenant_id: &str,
        runner_id: &str,
        since: i64,
    ) -> Result<Option<Vec<ContainerEventRow>>, StorageError> {
        let conn = self.conn();
        if !runner_exists(&conn, tenant_id, runner_id)? {
            return Ok(None);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT at, body FROM container_events WHERE runner_id = ?1 AND at >= ?2 ORDER BY seq",
        )?;
        let raw = stmt
            .query_map(params![runner_id, since], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let rows = raw
            .into_iter()
            .map(|(at, body)| {
                Ok(ContainerEventRow {
                    at,
                    event: from_json(&body, "container event")?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(Some(rows))
    }
}

fn touch_view(
    tx: &rusqlite::Transaction<'_>,
    runner_id: &str,
    now: i64,
) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO container_views (runner_id, as_of) VALUES (?1, ?2)
         ON CONFLICT (runner_id) DO UPDATE SET as_of = excluded.as_of",
        params![runner_id, now],
    )?;
    Ok(())
}
