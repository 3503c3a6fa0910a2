//! [`ClusterStore`] on PostgreSQL: the replicas, the links table, the
//! leases, and the notice connection (LISTEN/NOTIFY) that tells a replica
//! to close a link and tells every replica of each health change.
//!
//! Lock order, the same everywhere: the runner row (`FOR UPDATE`, as every
//! health change in `control.rs`), then its link row. A fence notice is
//! sent with `pg_notify` inside the transaction that fences, so it is
//! delivered at commit, and never for a change that rolled back.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::control::{current_health, record_change, revoke_in, set_active, set_unreachable};
use super::{backend, chain};
use crate::db::cluster::{ClusterStore, Fence, Notice};
use crate::db::{ConnectOutcome, ConnectedInfo, Health, HealthRecord, RunnerRow, StorageError};

/// The NOTIFY channel of fence notices.
const FENCE_CHANNEL: &str = "tether_fence";
/// The NOTIFY channel of health changes (for every replica's SSE).
const HEALTH_CHANNEL: &str = "tether_health";
/// The NOTIFY channel of nudges (jobs or a log policy changed for a
/// runner another replica holds).
const NUDGE_CHANNEL: &str = "tether_nudge";
/// The NOTIFY channel of tenant events (`common/bus.rs`).
const EVENT_CHANNEL: &str = "tether_event";
/// A credential was written (logout, a revoked token, a user changed);
/// no payload.
const CREDENTIALS_CHANNEL: &str = "tether_credentials";
/// Notices waiting for the replica to handle them; beyond, they are
/// dropped and the periodic check catches up.
const NOTICE_BACKLOG: usize = 1024;
/// Waits between attempts to make the notice connection again.
const RELISTEN_MIN: Duration = Duration::from_millis(200);
const RELISTEN_MAX: Duration = Duration::from_secs(5);

/// A fence notice as sent: short keys, it crosses for every replaced link.
#[derive(Serialize, Deserialize)]
struct FenceNote {
    r: String,
    p: String,
    g: u64,
    #[serde(default)]
    x: bool,
}

/// A nudge as sent.
#[derive(Serialize, Deserialize)]
struct NudgeNote {
    r: String,
    f: String,
}

/// A tenant event as sent.
#[derive(Serialize, Deserialize)]
struct EventNote {
    o: String,
    t: String,
    k: String,
    d: String,
}

/// A health change as sent.
#[derive(Serialize, Deserialize)]
struct HealthNote {
    o: String,
    r: String,
    t: String,
    a: i64,
    h: String,
    m: String,
}

async fn notify_health(
    c: &impl GenericClient,
    origin: &str,
    record: &HealthRecord,
) -> Result<(), StorageError> {
    let note = HealthNote {
        o: origin.to_owned(),
        r: record.runner_id.clone(),
        t: record.tenant_id.clone(),
        a: record.at,
        h: record.health.as_str().to_owned(),
        m: record.reason.clone(),
    };
    let payload = serde_json::to_string(&note).map_err(backend)?;
    c.execute("SELECT pg_notify($1, $2)", &[&HEALTH_CHANNEL, &payload])
        .await?;
    Ok(())
}

pub struct PgCluster {
    pool: Pool,
    notices: NoticeConn,
}

/// What the notice connection needs: where and how to connect, and the
/// control store's credentials watch, bumped when another replica wrote
/// a credential (`CREDENTIALS_CHANNEL`), so this replica's streams check
/// their authority at once rather than at their periodic re-check.
#[derive(Clone)]
pub(super) struct NoticeConn {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub credentials: tokio::sync::watch::Sender<u64>,
}

impl NoticeConn {
    fn credentials_changed(&self) {
        self.credentials.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl PgCluster {
    pub(super) fn new(pool: Pool, notices: NoticeConn) -> PgCluster {
        PgCluster { pool, notices }
    }
}

/// Tell every replica that a credential changed (after the write
/// committed); the writer's own replica hears it too, which costs its
/// streams one more look.
pub(super) async fn notify_credentials(pool: &Pool) -> Result<(), StorageError> {
    pool.get()
        .await?
        .execute("SELECT pg_notify($1, '')", &[&CREDENTIALS_CHANNEL])
        .await?;
    Ok(())
}

fn gen_sql(generation: u64) -> Result<i64, StorageError> {
    i64::try_from(generation).map_err(backend)
}

async fn notify_fence(c: &impl GenericClient, fence: &Fence) -> Result<(), StorageError> {
    let note = FenceNote {
        r: fence.runner_id.clone(),
        p: fence.replica_id.clone(),
        g: fence.generation,
        x: fence.revoked,
    };
    let payload = serde_json::to_string(&note).map_err(backend)?;
    c.execute("SELECT pg_notify($1, $2)", &[&FENCE_CHANNEL, &payload])
        .await?;
    Ok(())
}

/// The link row of a runner whose runner row the caller has locked.
async fn link_of(
    c: &impl GenericClient,
    runner_id: &str,
) -> Result<Option<(String, u64)>, StorageError> {
    let row = c
        .query_opt(
            "SELECT replica_id, generation FROM runner_links WHERE runner_id = $1",
            &[&runner_id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get::<_, i64>(1) as u64)))
}

/// Release what `holder` held, runner by runner (each runner row locked
/// before its link row, as everywhere): rows linked to `holder` go, and
/// their runners, if active, become unreachable. With `orphans`, active
/// runners linked to no replica at all are released too (a replica that
/// starts: nothing can be linked without a row).
async fn release_all(
    c: &impl GenericClient,
    origin: &str,
    holder: &str,
    orphans: bool,
    reason: &str,
    now: i64,
) -> Result<Vec<HealthRecord>, StorageError> {
    let candidates = c
        .query(
            "SELECT runner_id FROM runner_links WHERE replica_id = $1
             UNION
             SELECT r.id FROM runners r
                 WHERE $2 AND r.health = 'active'
                 AND NOT EXISTS (SELECT 1 FROM runner_links l WHERE l.runner_id = r.id)",
            &[&holder, &orphans],
        )
        .await?;
    let mut changes = Vec::new();
    for row in &candidates {
        let id: String = row.get(0);
        let Some((tenant_id, old, revoked)) = current_health(c, &id).await? else {
            continue;
        };
        match link_of(c, &id).await? {
            Some((replica, _)) if replica != holder => continue,
            Some(_) => {
                c.execute("DELETE FROM runner_links WHERE runner_id = $1", &[&id])
                    .await?;
            }
            None if !orphans => continue,
            None => {}
        }
        if revoked || old != Health::Active {
            continue;
        }
        set_unreachable(c, &id, 0).await?;
        if let Some(r) =
            record_change(c, &id, &tenant_id, old, Health::Unreachable, reason, now).await?
        {
            notify_health(c, origin, &r).await?;
            changes.push(r);
        }
    }
    // Its terminal sessions lived in its memory: they are over.
    c.execute(
        "UPDATE terminal_audit SET closed_at = $2, reason = $3
         WHERE replica_id = $1 AND closed_at IS NULL",
        &[&holder, &now, &reason],
    )
    .await?;
    Ok(changes)
}

#[async_trait]
impl ClusterStore for PgCluster {
    async fn replica_started(
        &self,
        replica_id: &str,
        internal_addr: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO cluster_replicas (id, internal_addr, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET internal_addr = excluded.internal_addr,
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
            &[&replica_id, &internal_addr, &now],
        )
        .await?;
        let changes = release_all(&tx, replica_id, replica_id, true, reason, now).await?;
        tx.commit().await?;
        Ok(changes)
    }

    async fn heartbeat(
        &self,
        replica_id: &str,
        internal_addr: &str,
        now: i64,
    ) -> Result<(), StorageError> {
        // An upsert: a replica reaped while it could not reach the
        // database comes back as soon as it can.
        self.pool
            .get()
            .await?
            .execute(
                "INSERT INTO cluster_replicas (id, internal_addr, started_at, heartbeat_at)
                 VALUES ($1, $2, $3, $3)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                &[&replica_id, &internal_addr, &now],
            )
            .await?;
        Ok(())
    }

    async fn link(
        &self,
        replica_id: &str,
        runner_id: &str,
        generation: u64,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let Some((tenant_id, old, revoked)) = current_health(&tx, runner_id).await? else {
            return Ok(ConnectOutcome::Refused);
        };
        if revoked {
            return Ok(ConnectOutcome::Refused);
        }
        let replaced = link_of(&tx, runner_id).await?;
        tx.execute(
            "INSERT INTO runner_links (runner_id, replica_id, generation, linked_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (runner_id) DO UPDATE SET replica_id = excluded.replica_id,
                 generation = excluded.generation, linked_at = excluded.linked_at",
            &[&runner_id, &replica_id, &gen_sql(generation)?, &now],
        )
        .await?;
        if let Some((replica, g)) = replaced {
            // The replica's own older link is fenced by its registry
            // already; a notice would only come back to it.
            if replica != replica_id {
                notify_fence(
                    &tx,
                    &Fence {
                        runner_id: runner_id.to_owned(),
                        replica_id: replica,
                        generation: g,
                        revoked: false,
                    },
                )
                .await?;
            }
        }
        set_active(&tx, runner_id, info, now).await?;
        let record =
            record_change(&tx, runner_id, &tenant_id, old, Health::Active, reason, now).await?;
        if let Some(r) = &record {
            notify_health(&tx, replica_id, r).await?;
        }
        tx.commit().await?;
        Ok(ConnectOutcome::Active(record))
    }

    async fn unlink(
        &self,
        replica_id: &str,
        runner_id: &str,
        generation: u64,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let Some((tenant_id, old, revoked)) = current_health(&tx, runner_id).await? else {
            return Ok(None);
        };
        let gone = tx
            .execute(
                "DELETE FROM runner_links
                 WHERE runner_id = $1 AND replica_id = $2 AND generation = $3",
                &[&runner_id, &replica_id, &gen_sql(generation)?],
            )
            .await?;
        // Not (or no longer) the runner's link: another replica holds it,
        // or it was revoked or reaped; either way this says nothing.
        if gone == 0 || revoked {
            tx.commit().await?;
            return Ok(None);
        }
        set_unreachable(&tx, runner_id, last_seen).await?;
        let record = record_change(
            &tx,
            runner_id,
            &tenant_id,
            old,
            Health::Unreachable,
            reason,
            now,
        )
        .await?;
        if let Some(r) = &record {
            notify_health(&tx, replica_id, r).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn revoke(
        &self,
        replica_id: &str,
        tenant_id: &str,
        runner_id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let Some(revoked) = revoke_in(&tx, tenant_id, runner_id, now).await? else {
            return Ok(None);
        };
        if let Some(r) = &revoked.1 {
            notify_health(&tx, replica_id, r).await?;
        }
        let held = tx
            .query_opt(
                "DELETE FROM runner_links WHERE runner_id = $1 RETURNING replica_id, generation",
                &[&runner_id],
            )
            .await?;
        if let Some(row) = held {
            notify_fence(
                &tx,
                &Fence {
                    runner_id: runner_id.to_owned(),
                    replica_id: row.get(0),
                    generation: row.get::<_, i64>(1) as u64,
                    revoked: true,
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(revoked))
    }

    async fn links_held(&self, replica_id: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT runner_id, generation FROM runner_links WHERE replica_id = $1",
                &[&replica_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn reap(
        &self,
        replica_id: &str,
        stale_before: i64,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError> {
        let dead: Vec<String> = self
            .pool
            .get()
            .await?
            .query(
                "SELECT id FROM cluster_replicas WHERE id <> $1 AND heartbeat_at < $2",
                &[&replica_id, &stale_before],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut changes = Vec::new();
        for replica in dead {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            // Still stale (it may have come back since the list was read).
            let gone = tx
                .execute(
                    "DELETE FROM cluster_replicas WHERE id = $1 AND heartbeat_at < $2",
                    &[&replica, &stale_before],
                )
                .await?;
            if gone == 0 {
                continue;
            }
            let why = format!("{reason} (replica {replica})");
            let released = release_all(&tx, replica_id, &replica, false, &why, now).await?;
            tx.commit().await?;
            tracing::warn!(
                "replica {replica} missed its heartbeats: {} runner(s) it held are unreachable",
                released.len()
            );
            changes.extend(released);
        }
        Ok(changes)
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StorageError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
                 INSERT INTO cluster_leases (name, holder, expires_at)
                     SELECT $1, $2, ms + $3 FROM now
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                     expires_at = excluded.expires_at
                 WHERE cluster_leases.holder = excluded.holder
                    OR cluster_leases.expires_at < (SELECT ms FROM now)
                 RETURNING holder",
                &[&name, &holder, &ttl_ms],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StorageError> {
        self.pool
            .get()
            .await?
            .execute(
                "DELETE FROM cluster_leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await?;
        Ok(())
    }

    async fn publish(
        &self,
        origin: &str,
        event: &crate::db::cluster::TenantEvent,
    ) -> Result<(), StorageError> {
        let note = EventNote {
            o: origin.to_owned(),
            t: event.tenant_id.clone(),
            k: event.kind.clone(),
            d: event.data.clone(),
        };
        let payload = serde_json::to_string(&note).map_err(backend)?;
        self.pool
            .get()
            .await?
            .execute("SELECT pg_notify($1, $2)", &[&EVENT_CHANNEL, &payload])
            .await?;
        Ok(())
    }

    fn pool_use(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size.saturating_sub(s.available), s.max_size)
    }

    async fn holder_of(&self, runner_id: &str) -> Result<Option<(String, String)>, StorageError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "SELECT l.replica_id, r.internal_addr FROM runner_links l
                 JOIN cluster_replicas r ON r.id = l.replica_id
                 WHERE l.runner_id = $1",
                &[&runner_id],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn terminal_holder(
        &self,
        session_id: &str,
    ) -> Result<Option<(String, String)>, StorageError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "SELECT t.replica_id, r.internal_addr FROM terminal_audit t
                 JOIN cluster_replicas r ON r.id = t.replica_id
                 WHERE t.id = $1 AND t.closed_at IS NULL",
                &[&session_id],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn terminal_holders(
        &self,
        runner_id: &str,
        except: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        // The open rows only (`terminal_audit_open_by_replica` is partial
        // on them): a handful, whatever the trail's length.
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT DISTINCT t.replica_id, r.internal_addr FROM terminal_audit t
                 JOIN cluster_replicas r ON r.id = t.replica_id
                 WHERE t.closed_at IS NULL AND t.replica_id IS NOT NULL
                   AND t.replica_id <> $2 AND t.runner_id = $1",
                &[&runner_id, &except],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn nudge(&self, runner_id: &str, family: &str) -> Result<(), StorageError> {
        let note = NudgeNote {
            r: runner_id.to_owned(),
            f: family.to_owned(),
        };
        let payload = serde_json::to_string(&note).map_err(backend)?;
        self.pool
            .get()
            .await?
            .execute("SELECT pg_notify($1, $2)", &[&NUDGE_CHANNEL, &payload])
            .await?;
        Ok(())
    }

    async fn replica_stopped(
        &self,
        replica_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let changes = release_all(&tx, replica_id, replica_id, false, reason, now).await?;
        tx.execute("DELETE FROM cluster_replicas WHERE id = $1", &[&replica_id])
            .await?;
        tx.commit().await?;
        Ok(changes)
    }

    async fn listen(&self) -> Result<mpsc::Receiver<Notice>, StorageError> {
        let (tx, rx) = mpsc::channel(NOTICE_BACKLOG);
        let first = listen_once(&self.notices, tx.clone()).await?;
        let notices = self.notices.clone();
        tokio::spawn(async move {
            let mut session = first;
            loop {
                let _ = session.await;
                if tx.is_closed() {
                    return;
                }
                tracing::warn!("cluster notices: connection lost; listening again");
                let mut wait = RELISTEN_MIN;
                session = loop {
                    tokio::time::sleep(wait).await;
                    if tx.is_closed() {
                        return;
                    }
                    match listen_once(&notices, tx.clone()).await {
                        Ok(s) => break s,
                        Err(e) => {
                            tracing::debug!("cluster notices: {e}");
                            wait = (wait * 2).min(RELISTEN_MAX);
                        }
                    }
                };
            }
        });
        Ok(rx)
    }
}

/// Connect, LISTEN, and forward notices to `tx` from a task that ends when
/// the connection does (or `tx` is closed).
async fn listen_once(
    notices: &NoticeConn,
    tx: mpsc::Sender<Notice>,
) -> Result<tokio::task::JoinHandle<()>, StorageError> {
    let (client, mut conn) = notices
        .config
        .connect(notices.tls.clone())
        .await
        .map_err(|e| backend(chain(&e)))?;
    // The client must live as long as the connection it drives: it is
    // handed to the task (kept in the channel) once LISTEN is done.
    let (ready_tx, keep_client) = tokio::sync::oneshot::channel::<tokio_postgres::Client>();
    let forward = tx.clone();
    let heard = notices.clone();
    let task = tokio::spawn(async move {
        let _keep_client = keep_client;
        loop {
            let msg = std::future::poll_fn(|cx| conn.poll_message(cx)).await;
            match msg {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == FENCE_CHANNEL => {
                    match serde_json::from_str::<FenceNote>(n.payload()) {
                        Ok(f) => {
                            let _ = forward.try_send(Notice::Fence(Fence {
                                runner_id: f.r,
                                replica_id: f.p,
                                generation: f.g,
                                revoked: f.x,
                            }));
                        }
                        Err(e) => tracing::warn!("cluster notices: a bad fence notice: {e}"),
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CREDENTIALS_CHANNEL => {
                    heard.credentials_changed();
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == HEALTH_CHANNEL => {
                    match health_notice(n.payload()) {
                        Some(notice) => {
                            let _ = forward.try_send(notice);
                        }
                        None => tracing::warn!("cluster notices: a bad health notice"),
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == NUDGE_CHANNEL => {
                    match serde_json::from_str::<NudgeNote>(n.payload()) {
                        Ok(f) if f.f.len() <= crate::db::cluster::MAX_FAMILY => {
                            let _ = forward.try_send(Notice::Nudge {
                                runner_id: f.r,
                                family: f.f,
                            });
                        }
                        _ => tracing::warn!("cluster notices: a bad nudge notice"),
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == EVENT_CHANNEL => {
                    match serde_json::from_str::<EventNote>(n.payload()) {
                        Ok(e)
                            if e.k.len() <= 32
                                && e.d.len() <= crate::db::cluster::MAX_EVENT_DATA =>
                        {
                            let _ = forward.try_send(Notice::Event {
                                origin: e.o,
                                event: crate::db::cluster::TenantEvent {
                                    tenant_id: e.t,
                                    kind: e.k,
                                    data: e.d,
                                },
                            });
                        }
                        _ => tracing::warn!("cluster notices: a bad event notice"),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
            if forward.is_closed() {
                break;
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {FENCE_CHANNEL}; LISTEN {HEALTH_CHANNEL}; LISTEN {NUDGE_CHANNEL}; \
             LISTEN {EVENT_CHANNEL}; LISTEN {CREDENTIALS_CHANNEL}"
        ))
        .await
        .map_err(|e| backend(chain(&e)))?;
    // A credential written while nothing listened: look again now.
    notices.credentials_changed();
    let _ = ready_tx.send(client);
    let _ = tx.try_send(Notice::Listening);
    Ok(task)
}

fn health_notice(payload: &str) -> Option<Notice> {
    let n: HealthNote = serde_json::from_str(payload).ok()?;
    Some(Notice::Health {
        origin: n.o,
        record: HealthRecord {
            runner_id: n.r,
            tenant_id: n.t,
            at: n.a,
            health: Health::parse(&n.h).ok()?,
            reason: n.m,
        },
    })
}
