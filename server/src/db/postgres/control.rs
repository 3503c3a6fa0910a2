//! [`ControlStore`] on PostgreSQL: tenants, API and enrollment tokens,
//! runners and their health history, fingerprints and drift, Docker state
//! and containers. The same rules and bounds as `sqlite/control.rs`,
//! `tokens.rs` and `containers.rs`.
//!
//! SQLite serializes writers (`BEGIN IMMEDIATE`); PostgreSQL runs them at
//! READ COMMITTED, so every read-then-write locks what it read: the
//! runner row (`FOR UPDATE`) for a health change, the tenant row for a
//! name chosen at enrollment or by a rename (names are unique per tenant),
//! and the spend of an enrollment token is guarded in its `WHERE`.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tether::protocol::{ContainerEvent, ContainerSummary, DockerState};
use tokio_postgres::Row;

use super::{is_unique_violation, PgControl};
use crate::db::control::*;
use crate::db::StorageError;

/// Kept per runner, as in SQLite (a flapping runner cannot grow the table).
const HEALTH_HISTORY_LIMIT: i64 = 1000;
const DRIFT_HISTORY_LIMIT: i64 = 10_000;
const EVENT_HISTORY_LIMIT: i64 = 10_000;
const EVENT_MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;
const VIEW_LIMIT: i64 = 10_000;
/// `last_used_at` of an API token is written at most this often.
const LAST_USED_EVERY_MS: i64 = 60_000;

const RUNNER_COLUMNS: &str = "id, tenant_id, name, health, version, arch, os, protocol, \
     created_at, last_seen, connected_since, revoked_at, reported_name";

const INFO_COLUMNS: &str = "a.id, a.label, a.created_by, a.created_at, a.expires_at, \
     a.last_used_at, a.revoked_at, a.revoked_reason, \
     (a.created_by_user IS NULL OR (u.id IS NOT NULL AND u.role = 'admin'))";
const CREATOR_JOIN: &str = "LEFT JOIN users u ON u.id = a.created_by_user";

fn runner_row(r: &Row) -> Result<RunnerRow, StorageError> {
    Ok(RunnerRow {
        id: r.get(0),
        tenant_id: r.get(1),
        name: r.get(2),
        health: Health::parse(r.get(3))?,
        version: r.get(4),
        arch: r.get(5),
        os: r.get(6),
        protocol: r
            .get::<_, Option<i32>>(7)
            .map(|p| u16::try_from(p).unwrap_or(u16::MAX)),
        created_at: r.get(8),
        last_seen: r.get(9),
        connected_since: r.get(10),
        revoked_at: r.get(11),
        reported_name: r.get(12),
    })
}

fn info_row(r: &Row, at: usize) -> ApiTokenInfo {
    ApiTokenInfo {
        id: r.get(at),
        label: r.get(at + 1),
        created_by: r.get(at + 2),
        created_at: r.get(at + 3),
        expires_at: r.get(at + 4),
        last_used_at: r.get(at + 5),
        revoked_at: r.get(at + 6),
        revoked_reason: r.get(at + 7),
        creator_ok: r.get(at + 8),
    }
}

fn enrollment_token_row(r: &Row) -> EnrollmentTokenRow {
    EnrollmentTokenRow {
        id: r.get(0),
        tenant_id: r.get(1),
        label: r.get(2),
        created_at: r.get(3),
        expires_at: r.get(4),
        used_at: r.get(5),
        revoked_at: r.get(6),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Protocol types are plain data: serializing them cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StorageError> {
    serde_json::from_str(s).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

async fn select_runner(
    c: &impl GenericClient,
    tenant_id: &str,
    id: &str,
) -> Result<Option<RunnerRow>, StorageError> {
    let row = c
        .query_opt(
            &format!("SELECT {RUNNER_COLUMNS} FROM runners WHERE id = $1 AND tenant_id = $2"),
            &[&id, &tenant_id],
        )
        .await?;
    row.as_ref().map(runner_row).transpose()
}

async fn runner_exists(
    c: &impl GenericClient,
    tenant_id: &str,
    id: &str,
) -> Result<bool, StorageError> {
    Ok(c.query_opt(
        "SELECT 1 FROM runners WHERE id = $1 AND tenant_id = $2",
        &[&id, &tenant_id],
    )
    .await?
    .is_some())
}

/// (tenant, stored health, revoked?) of a runner, its row locked.
pub(super) async fn current_health(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<(String, Health, bool)>, StorageError> {
    let row = c
        .query_opt(
            "SELECT tenant_id, health, revoked_at IS NOT NULL FROM runners WHERE id = $1
             FOR UPDATE",
            &[&id],
        )
        .await?;
    row.map(|r| Ok((r.get(0), Health::parse(r.get(1))?, r.get(2))))
        .transpose()
}

/// Append a history entry if the health actually changed, keeping the
/// history bounded.
pub(super) async fn record_change(
    c: &impl GenericClient,
    runner_id: &str,
    tenant_id: &str,
    old: Health,
    new: Health,
    reason: &str,
    now: i64,
) -> Result<Option<HealthRecord>, StorageError> {
    if old == new {
        return Ok(None);
    }
    c.execute(
        "INSERT INTO health_events (runner_id, tenant_id, at, health, reason)
         VALUES ($1, $2, $3, $4, $5)",
        &[&runner_id, &tenant_id, &now, &new.as_str(), &reason],
    )
    .await?;
    c.execute(
        "DELETE FROM health_events WHERE runner_id = $1 AND seq <=
            (SELECT seq FROM health_events WHERE runner_id = $1 ORDER BY seq DESC
             LIMIT 1 OFFSET $2)",
        &[&runner_id, &HEALTH_HISTORY_LIMIT],
    )
    .await?;
    Ok(Some(HealthRecord {
        runner_id: runner_id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        at: now,
        health: new,
        reason: reason.to_owned(),
    }))
}

/// The name a runner gets at enrollment (as `sqlite/control.rs`): made
/// valid, then unique in the tenant with a `-2`, `-3`, … suffix. The
/// caller holds the tenant row's lock.
async fn enrollment_name(
    c: &impl GenericClient,
    tenant_id: &str,
    asked: &str,
) -> Result<String, StorageError> {
    let cleaned: String = asked
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_RUNNER_NAME - 5)
        .collect();
    let base = if valid_runner_name(&cleaned) {
        cleaned
    } else {
        "runner".to_owned()
    };
    // Every name of the tenant starting with the base, in one query.
    let rows = c
        .query(
            "SELECT name FROM runners WHERE tenant_id = $1 AND left(name, $3) = $2",
            &[&tenant_id, &base, &(base.chars().count() as i32)],
        )
        .await?;
    let taken: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    if !taken.contains(&base) {
        return Ok(base);
    }
    (2..10_000)
        .map(|n| format!("{base}-{n}"))
        .find(|c| !taken.contains(c))
        .ok_or_else(|| {
            StorageError::Conflict(format!("too many runners are named {base:?} already"))
        })
}

/// Mark a runner active with what its hello said (its row locked).
pub(super) async fn set_active(
    c: &impl GenericClient,
    id: &str,
    info: &ConnectedInfo<'_>,
    now: i64,
) -> Result<(), StorageError> {
    c.execute(
        "UPDATE runners SET health = 'active', reported_name = $2, version = $3, arch = $4,
             os = $5, protocol = $6, connected_since = $7, last_seen = $7
         WHERE id = $1",
        &[
            &id,
            &info.name,
            &info.version,
            &info.arch,
            &info.os,
            &i32::from(info.protocol),
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// Mark a runner unreachable, keeping the newest last-seen (its row locked).
pub(super) async fn set_unreachable(
    c: &impl GenericClient,
    id: &str,
    last_seen: i64,
) -> Result<(), StorageError> {
    c.execute(
        "UPDATE runners SET health = 'unreachable', connected_since = NULL,
             last_seen = GREATEST(COALESCE(last_seen, 0), $2)
         WHERE id = $1",
        &[&id, &last_seen],
    )
    .await?;
    Ok(())
}

/// Revoke a runner of `tenant_id` inside the caller's transaction.
pub(super) async fn revoke_in(
    c: &impl GenericClient,
    tenant_id: &str,
    id: &str,
    now: i64,
) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError> {
    if current_health(c, id).await?.is_none() {
        return Ok(None);
    }
    let Some(before) = select_runner(c, tenant_id, id).await? else {
        return Ok(None);
    };
    c.execute(
        "UPDATE runners SET health = 'revoked', revoked_at = COALESCE(revoked_at, $2),
             connected_since = NULL
         WHERE id = $1",
        &[&id, &now],
    )
    .await?;
    let record = record_change(
        c,
        id,
        tenant_id,
        before.health,
        Health::Revoked,
        "revoked",
        now,
    )
    .await?;
    let after = select_runner(c, tenant_id, id).await?;
    Ok(after.map(|row| (row, record)))
}

async fn touch_view(c: &impl GenericClient, runner_id: &str, now: i64) -> Result<(), StorageError> {
    c.execute(
        "INSERT INTO container_views (runner_id, as_of) VALUES ($1, $2)
         ON CONFLICT (runner_id) DO UPDATE SET as_of = excluded.as_of",
        &[&runner_id, &now],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl ControlStore for PgControl {
    fn watch_credentials(&self) -> tokio::sync::watch::Receiver<u64> {
        self.credentials.subscribe()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.client().await?.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn create_tenant(
        &self,
        tenant: &TenantRow,
        api_token_id: &str,
        api_token_hash: &str,
    ) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let r = tx
            .execute(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)",
                &[&tenant.id, &tenant.name, &tenant.created_at],
            )
            .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StorageError::Conflict(format!(
                    "a tenant named {:?} already exists",
                    tenant.name
                )))
            }
            r => r?,
        };
        tx.execute(
            "INSERT INTO api_tokens (id, tenant_id, token_hash, label, created_at, created_by)
             VALUES ($1, $2, $3, 'initial', $4, 'admin token')",
            &[
                &api_token_id,
                &tenant.id,
                &api_token_hash,
                &tenant.created_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRow>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, name, created_at FROM tenants ORDER BY created_at, id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TenantRow {
                id: r.get(0),
                name: r.get(1),
                created_at: r.get(2),
            })
            .collect())
    }

    async fn tenant_id_by_id_or_name(&self, key: &str) -> Result<Option<String>, StorageError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT id FROM tenants WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1",
            &[&key],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn create_api_token(
        &self,
        row: &ApiTokenRow,
        token_hash: &str,
    ) -> Result<(), StorageError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO api_tokens (id, tenant_id, token_hash, label, created_at,
                 created_by_user, created_by, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &row.id,
                &row.tenant_id,
                &token_hash,
                &row.label,
                &row.created_at,
                &row.created_by_user,
                &row.created_by,
                &row.expires_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn api_token_auth(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<ApiTokenAuth, TokenRefusal>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT a.tenant_id, a.created_by_user, {INFO_COLUMNS}
                     FROM api_tokens a {CREATOR_JOIN} WHERE a.token_hash = $1"
                ),
                &[&token_hash],
            )
            .await?;
        let Some(r) = row else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let (tenant_id, created_by_user): (String, Option<String>) = (r.get(0), r.get(1));
        let info = info_row(&r, 2);
        let refusal = match info.state(now) {
            "revoked" => Some(TokenRefusal::Revoked),
            "expired" => Some(TokenRefusal::Expired),
            "creator_gone" => Some(TokenRefusal::CreatorGone),
            _ => None,
        };
        if let Some(r) = refusal {
            return Ok(Err(r));
        }
        if info
            .last_used_at
            .is_none_or(|t| now - t >= LAST_USED_EVERY_MS)
        {
            c.execute(
                "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1",
                &[&info.id, &now],
            )
            .await?;
        }
        Ok(Ok(ApiTokenAuth {
            label: info.label,
            id: info.id,
            tenant_id,
            created_by_user,
            expires_at: info.expires_at,
        }))
    }

    async fn api_token_check(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<Option<i64>, TokenRefusal>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {INFO_COLUMNS} FROM api_tokens a {CREATOR_JOIN} WHERE a.token_hash = $1"
                ),
                &[&token_hash],
            )
            .await?;
        let Some(r) = row else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let info = info_row(&r, 0);
        Ok(match info.state(now) {
            "revoked" => Err(TokenRefusal::Revoked),
            "expired" => Err(TokenRefusal::Expired),
            "creator_gone" => Err(TokenRefusal::CreatorGone),
            _ => Ok(info.expires_at),
        })
    }

    async fn list_api_tokens(&self, tenant_id: &str) -> Result<Vec<ApiTokenInfo>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {INFO_COLUMNS} FROM api_tokens a {CREATOR_JOIN}
                     WHERE a.tenant_id = $1 ORDER BY a.created_at DESC, a.id DESC"
                ),
                &[&tenant_id],
            )
            .await?;
        Ok(rows.iter().map(|r| info_row(r, 0)).collect())
    }

    async fn revoke_api_token(
        &self,
        tenant_id: &str,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<ApiTokenInfo>, StorageError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE api_tokens SET revoked_at = $3, revoked_reason = $4
             WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
            &[&tenant_id, &id, &now, &reason],
        )
        .await?;
        let info = c
            .query_opt(
                &format!(
                    "SELECT {INFO_COLUMNS} FROM api_tokens a {CREATOR_JOIN}
                     WHERE a.tenant_id = $1 AND a.id = $2"
                ),
                &[&tenant_id, &id],
            )
            .await?
            .map(|r| info_row(&r, 0));
        if info.is_some() {
            self.credentials_changed();
        }
        Ok(info)
    }

    async fn api_token_name(&self, token_hash: &str) -> Result<Option<String>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT id, label FROM api_tokens WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        Ok(row.map(|r| {
            let id: String = r.get(0);
            let label: Option<String> = r.get(1);
            match label.filter(|l| !l.is_empty()) {
                Some(l) => format!("{id} ({l})"),
                None => id,
            }
        }))
    }

    async fn create_enrollment_token(
        &self,
        row: &EnrollmentTokenRow,
        token_hash: &str,
    ) -> Result<(), StorageError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO enrollment_tokens (id, tenant_id, token_hash, label, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &row.id,
                &row.tenant_id,
                &token_hash,
                &row.label,
                &row.created_at,
                &row.expires_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn list_enrollment_tokens(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<EnrollmentTokenRow>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, tenant_id, label, created_at, expires_at, used_at, revoked_at
                 FROM enrollment_tokens WHERE tenant_id = $1 ORDER BY created_at, id",
                &[&tenant_id],
            )
            .await?;
        Ok(rows.iter().map(enrollment_token_row).collect())
    }

    async fn revoke_enrollment_token(
        &self,
        tenant_id: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<EnrollmentTokenRow>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, $3)
                 WHERE id = $1 AND tenant_id = $2
                 RETURNING id, tenant_id, label, created_at, expires_at, used_at, revoked_at",
                &[&id, &tenant_id, &now],
            )
            .await?;
        Ok(row.as_ref().map(enrollment_token_row))
    }

    async fn enroll(
        &self,
        token_hash: &str,
        runner: &NewRunner<'_>,
        now: i64,
    ) -> Result<String, EnrollError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(StorageError::from)?;
        let found = tx
            .query_opt(
                "SELECT id, tenant_id, expires_at, used_at, revoked_at
                 FROM enrollment_tokens WHERE token_hash = $1 FOR UPDATE",
                &[&token_hash],
            )
            .await
            .map_err(StorageError::from)?;
        let Some(r) = found else {
            return Err(EnrollError::Refused(EnrollRefusal::Invalid));
        };
        let (token_id, tenant_id): (String, String) = (r.get(0), r.get(1));
        let (expires_at, used_at, revoked_at): (i64, Option<i64>, Option<i64>) =
            (r.get(2), r.get(3), r.get(4));
        if revoked_at.is_some() {
            return Err(EnrollError::Refused(EnrollRefusal::Revoked));
        }
        if used_at.is_some() {
            return Err(EnrollError::Refused(EnrollRefusal::Used));
        }
        if expires_at <= now {
            return Err(EnrollError::Refused(EnrollRefusal::Expired));
        }
        let spent = tx
            .execute(
                "UPDATE enrollment_tokens SET used_at = $2, runner_id = $3
                 WHERE id = $1 AND used_at IS NULL",
                &[&token_id, &now, &runner.id],
            )
            .await
            .map_err(StorageError::from)?;
        if spent != 1 {
            return Err(EnrollError::Refused(EnrollRefusal::Used));
        }
        // Names are chosen one enrollment at a time per tenant.
        tx.execute(
            "SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE",
            &[&tenant_id],
        )
        .await
        .map_err(StorageError::from)?;
        let name = enrollment_name(&tx, &tenant_id, runner.name).await?;
        tx.execute(
            "INSERT INTO runners (id, tenant_id, name, reported_name, credential_hash, health,
                 version, arch, os, created_at)
             VALUES ($1, $2, $3, $4, $5, 'unreachable', $6, $7, $8, $9)",
            &[
                &runner.id,
                &tenant_id,
                &name,
                &runner.name,
                &runner.credential_hash,
                &runner.version,
                &runner.arch,
                &runner.os,
                &now,
            ],
        )
        .await
        .map_err(StorageError::from)?;
        tx.commit().await.map_err(StorageError::from)?;
        Ok(tenant_id)
    }

    async fn runner(&self, tenant_id: &str, id: &str) -> Result<Option<RunnerRow>, StorageError> {
        let c = self.client().await?;
        select_runner(&c, tenant_id, id).await
    }

    async fn list_runners(&self, tenant_id: &str) -> Result<Vec<RunnerRow>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {RUNNER_COLUMNS} FROM runners WHERE tenant_id = $1
                     ORDER BY created_at, id"
                ),
                &[&tenant_id],
            )
            .await?;
        rows.iter().map(runner_row).collect()
    }

    async fn runners_by_ids(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RunnerRow>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {RUNNER_COLUMNS} FROM runners WHERE id = ANY($2) AND tenant_id = $1"
                ),
                &[&tenant_id, &ids],
            )
            .await?;
        rows.iter().map(runner_row).collect()
    }

    async fn runner_versions(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RunnerVersion>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, version, health FROM runners WHERE id = ANY($2) AND tenant_id = $1",
                &[&tenant_id, &ids],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RunnerVersion {
                    id: r.get(0),
                    version: r.get(1),
                    health: Health::parse(r.get(2))?,
                })
            })
            .collect()
    }

    async fn runner_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<RunnerIdentity>, StorageError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT id, tenant_id, revoked_at IS NOT NULL FROM runners
                 WHERE credential_hash = $1",
            &[&credential_hash],
        )
        .await?
        .map(|r| RunnerIdentity {
            id: r.get(0),
            tenant_id: r.get(1),
            revoked: r.get(2),
        }))
    }

    async fn health_history(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Vec<HealthRecord>>, StorageError> {
        let c = self.client().await?;
        if !runner_exists(&c, tenant_id, id).await? {
            return Ok(None);
        }
        let rows = c
            .query(
                "SELECT runner_id, tenant_id, at, health, reason FROM health_events
                 WHERE runner_id = $1 ORDER BY seq",
                &[&id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(HealthRecord {
                    runner_id: r.get(0),
                    tenant_id: r.get(1),
                    at: r.get(2),
                    health: Health::parse(r.get(3))?,
                    reason: r.get(4),
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    async fn runner_connected(
        &self,
        id: &str,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some((tenant_id, old, revoked)) = current_health(&tx, id).await? else {
            return Ok(ConnectOutcome::Refused);
        };
        if revoked {
            return Ok(ConnectOutcome::Refused);
        }
        set_active(&tx, id, info, now).await?;
        let record = record_change(&tx, id, &tenant_id, old, Health::Active, reason, now).await?;
        tx.commit().await?;
        Ok(ConnectOutcome::Active(record))
    }

    async fn rename_runner(
        &self,
        tenant_id: &str,
        id: &str,
        name: &str,
    ) -> Result<Option<RunnerRow>, StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE",
            &[&tenant_id],
        )
        .await?;
        if select_runner(&tx, tenant_id, id).await?.is_none() {
            return Ok(None);
        }
        let holder: Option<String> = tx
            .query_opt(
                "SELECT id FROM runners WHERE tenant_id = $1 AND name = $2 AND id != $3",
                &[&tenant_id, &name, &id],
            )
            .await?
            .map(|r| r.get(0));
        if let Some(other) = holder {
            return Err(StorageError::Conflict(format!(
                "runner {other} is named {name:?} already"
            )));
        }
        tx.execute(
            "UPDATE runners SET name = $3 WHERE id = $1 AND tenant_id = $2",
            &[&id, &tenant_id, &name],
        )
        .await?;
        let row = select_runner(&tx, tenant_id, id).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn runner_disconnected(
        &self,
        id: &str,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some((tenant_id, old, revoked)) = current_health(&tx, id).await? else {
            return Ok(None);
        };
        if revoked {
            return Ok(None);
        }
        set_unreachable(&tx, id, last_seen).await?;
        let record =
            record_change(&tx, id, &tenant_id, old, Health::Unreachable, reason, now).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn revoke_runner(
        &self,
        tenant_id: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let revoked = revoke_in(&tx, tenant_id, id, now).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn mark_all_unreachable(
        &self,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let rows = tx
            .query(
                "UPDATE runners SET health = 'unreachable', connected_since = NULL
                 WHERE health = 'active' RETURNING id, tenant_id",
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let (id, tenant_id): (String, String) = (r.get(0), r.get(1));
            if let Some(rec) = record_change(
                &tx,
                &id,
                &tenant_id,
                Health::Active,
                Health::Unreachable,
                reason,
                now,
            )
            .await?
            {
                out.push(rec);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn touch_last_seen(&self, seen: &[(String, i64)]) -> Result<(), StorageError> {
        if seen.is_empty() {
            return Ok(());
        }
        // One statement for the whole batch: two parallel arrays unnested.
        let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
        let ats: Vec<i64> = seen.iter().map(|(_, at)| *at).collect();
        let c = self.client().await?;
        c.execute(
            "UPDATE runners r SET last_seen = GREATEST(COALESCE(r.last_seen, 0), s.at)
             FROM (SELECT id, max(at) AS at FROM unnest($1::TEXT[], $2::BIGINT[]) AS t(id, at)
                   GROUP BY id) s
             WHERE r.id = s.id",
            &[&ids, &ats],
        )
        .await?;
        Ok(())
    }

    async fn update_fingerprint(
        &self,
        runner_id: &str,
        decide: FingerprintDecision,
    ) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The runner row's lock orders reports of a replaced connection.
        tx.execute(
            "SELECT 1 FROM runners WHERE id = $1 FOR UPDATE",
            &[&runner_id],
        )
        .await?;
        let stored: Option<String> = tx
            .query_opt(
                "SELECT body FROM fingerprints WHERE runner_id = $1",
                &[&runner_id],
            )
            .await?
            .map(|r| r.get(0));
        let Some(w) = decide(stored.as_deref()) else {
            return Ok(());
        };
        tx.execute(
            "INSERT INTO fingerprints (runner_id, body, notes, collected_at, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (runner_id) DO UPDATE SET body = excluded.body, notes = excluded.notes,
                 collected_at = excluded.collected_at, updated_at = excluded.updated_at",
            &[
                &runner_id,
                &w.body,
                &w.notes,
                &w.collected_at,
                &w.updated_at,
            ],
        )
        .await?;
        if !w.drift.is_empty() {
            let ats: Vec<i64> = w.drift.iter().map(|(at, _)| *at).collect();
            let changes: Vec<&str> = w.drift.iter().map(|(_, c)| c.as_str()).collect();
            tx.execute(
                "INSERT INTO drift_events (runner_id, at, change)
                 SELECT $1, at, change FROM unnest($2::BIGINT[], $3::TEXT[])
                     WITH ORDINALITY AS t(at, change, n) ORDER BY n",
                &[&runner_id, &ats, &changes],
            )
            .await?;
            tx.execute(
                "DELETE FROM drift_events WHERE runner_id = $1 AND seq <=
                    (SELECT seq FROM drift_events WHERE runner_id = $1 ORDER BY seq DESC
                     LIMIT 1 OFFSET $2)",
                &[&runner_id, &DRIFT_HISTORY_LIMIT],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn fingerprint(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<Option<FingerprintRow>>, StorageError> {
        let c = self.client().await?;
        if !runner_exists(&c, tenant_id, runner_id).await? {
            return Ok(None);
        }
        let row = c
            .query_opt(
                "SELECT body, notes, collected_at, updated_at FROM fingerprints
                 WHERE runner_id = $1",
                &[&runner_id],
            )
            .await?;
        Ok(Some(row.map(|r| FingerprintRow {
            body: r.get(0),
            notes: r.get(1),
            collected_at: r.get(2),
            updated_at: r.get(3),
        })))
    }

    async fn drift(
        &self,
        tenant_id: &str,
        runner_id: &str,
        since: i64,
    ) -> Result<Option<Vec<DriftRow>>, StorageError> {
        let c = self.client().await?;
        if !runner_exists(&c, tenant_id, runner_id).await? {
            return Ok(None);
        }
        let rows = c
            .query(
                "SELECT at, change FROM drift_events WHERE runner_id = $1 AND at >= $2
                 ORDER BY seq",
                &[&runner_id, &since],
            )
            .await?;
        Ok(Some(
            rows.iter()
                .map(|r| DriftRow {
                    at: r.get(0),
                    change: r.get(1),
                })
                .collect(),
        ))
    }

    async fn set_docker_state(
        &self,
        runner_id: &str,
        row: &DockerStateRow,
    ) -> Result<(), StorageError> {
        let s = &row.state;
        let c = self.client().await?;
        c.execute(
            "INSERT INTO docker_states (runner_id, available, version, api_version, reason,
                 updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (runner_id) DO UPDATE SET available = excluded.available,
                 version = excluded.version, api_version = excluded.api_version,
                 reason = excluded.reason, updated_at = excluded.updated_at",
            &[
                &runner_id,
                &s.available,
                &s.version,
                &s.api_version,
                &s.reason,
                &row.updated_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn docker_state(&self, runner_id: &str) -> Result<Option<DockerStateRow>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT available, version, api_version, reason, updated_at
                 FROM docker_states WHERE runner_id = $1",
                &[&runner_id],
            )
            .await?;
        Ok(row.map(|r| DockerStateRow {
            state: DockerState {
                available: r.get(0),
                version: r.get(1),
                api_version: r.get(2),
                reason: r.get(3),
            },
            updated_at: r.get(4),
        }))
    }

    async fn replace_containers(
        &self,
        runner_id: &str,
        containers: &[ContainerSummary],
        now: i64,
    ) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("DELETE FROM containers WHERE runner_id = $1", &[&runner_id])
            .await?;
        // One multi-row insert; a repeated id keeps its last summary.
        let mut latest = std::collections::HashMap::new();
        for c in containers.iter().take(VIEW_LIMIT as usize) {
            latest.insert(c.id.as_str(), to_json(c));
        }
        let ids: Vec<&str> = latest.keys().copied().collect();
        let bodies: Vec<&str> = ids.iter().map(|id| latest[id].as_str()).collect();
        tx.execute(
            "INSERT INTO containers (runner_id, id, summary)
             SELECT $1, id, summary FROM unnest($2::TEXT[], $3::TEXT[]) AS t(id, summary)",
            &[&runner_id, &ids, &bodies],
        )
        .await?;
        touch_view(&tx, runner_id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_container_event(
        &self,
        runner_id: &str,
        event: &ContainerEvent,
        now: i64,
    ) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The view's bound is checked and kept under the runner row's lock.
        tx.execute(
            "SELECT 1 FROM runners WHERE id = $1 FOR UPDATE",
            &[&runner_id],
        )
        .await?;
        match &event.container {
            Some(ct) => {
                let known = tx
                    .query_opt(
                        "SELECT 1 FROM containers WHERE runner_id = $1 AND id = $2",
                        &[&runner_id, &ct.id],
                    )
                    .await?
                    .is_some();
                let count: i64 = tx
                    .query_one(
                        "SELECT COUNT(*) FROM containers WHERE runner_id = $1",
                        &[&runner_id],
                    )
                    .await?
                    .get(0);
                if known || count < VIEW_LIMIT {
                    tx.execute(
                        "INSERT INTO containers (runner_id, id, summary) VALUES ($1, $2, $3)
                         ON CONFLICT (runner_id, id) DO UPDATE SET summary = excluded.summary",
                        &[&runner_id, &ct.id, &to_json(ct)],
                    )
                    .await?;
                } else {
                    tracing::warn!(
                        runner = runner_id,
                        "container view full: not adding {}",
                        ct.id
                    );
                }
            }
            None => {
                tx.execute(
                    "DELETE FROM containers WHERE runner_id = $1 AND id = $2",
                    &[&runner_id, &event.container_id],
                )
                .await?;
            }
        }
        touch_view(&tx, runner_id, now).await?;
        tx.execute(
            "INSERT INTO container_events (runner_id, at, time_nano, action, container_id, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &runner_id,
                &now,
                &event.time_nano,
                &event.action,
                &event.container_id,
                &to_json(event),
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM container_events WHERE runner_id = $1 AND seq <=
                (SELECT seq FROM container_events WHERE runner_id = $1 ORDER BY seq DESC
                 LIMIT 1 OFFSET $2)",
            &[&runner_id, &EVENT_HISTORY_LIMIT],
        )
        .await?;
        tx.execute(
            "DELETE FROM container_events WHERE at < $1",
            &[&now.saturating_sub(EVENT_MAX_AGE_MS)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn containers(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<ContainerView>, StorageError> {
        let c = self.client().await?;
        if !runner_exists(&c, tenant_id, runner_id).await? {
            return Ok(None);
        }
        let as_of = c
            .query_opt(
                "SELECT as_of FROM container_views WHERE runner_id = $1",
                &[&runner_id],
            )
            .await?
            .map(|r| r.get(0));
        let rows = c
            .query(
                "SELECT summary FROM containers WHERE runner_id = $1",
                &[&runner_id],
            )
            .await?;
        let mut containers = rows
            .iter()
            .map(|r| from_json::<ContainerSummary>(r.get(0), "container summary"))
            .collect::<Result<Vec<_>, _>>()?;
        containers.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(Some(ContainerView { as_of, containers }))
    }

    async fn container_events(
        &self,
        tenant_id: &str,
        runner_id: &str,
        since: i64,
    ) -> Result<Option<Vec<ContainerEventRow>>, StorageError> {
        let c = self.client().await?;
        if !runner_exists(&c, tenant_id, runner_id).await? {
            return Ok(None);
        }
        let rows = c
            .query(
                "SELECT at, body FROM container_events WHERE runner_id = $1 AND at >= $2
                 ORDER BY seq",
                &[&runner_id, &since],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ContainerEventRow {
                    at: r.get(0),
                    event: from_json(r.get(1), "container event")?,
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}
