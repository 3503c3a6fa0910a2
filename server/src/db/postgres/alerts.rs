//! [`AlertStore`] on PostgreSQL (as `sqlite/alerts.rs`, table for table):
//! rules and silences as their spec JSON, channels with the sealed config,
//! the live state of pending/firing targets (a resolved one is deleted),
//! history and the delivery log trimmed to the newest [`KEEP_ROWS`].

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::is_unique_violation;
use crate::db::alerts::*;
use crate::db::StorageError;

/// The alert tables over the shared pool.
pub struct PgAlerts {
    pool: Pool,
}

impl PgAlerts {
    pub fn new(pool: Pool) -> PgAlerts {
        PgAlerts { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        Ok(self.pool.get().await?)
    }
}

fn json_err(e: serde_json::Error) -> StorageError {
    StorageError::Corrupt(format!("alerts: {e}"))
}

fn rule_from(r: &Row) -> Result<Rule, StorageError> {
    let spec: RuleSpec = serde_json::from_str(r.get::<_, &str>(2)).map_err(json_err)?;
    Ok(Rule {
        id: r.get(0),
        tenant: r.get(1),
        spec,
    })
}

fn silence_from(r: &Row) -> Result<Silence, StorageError> {
    let spec: SilenceSpec = serde_json::from_str(r.get::<_, &str>(3)).map_err(json_err)?;
    Ok(Silence {
        id: r.get(0),
        tenant: r.get(1),
        created_by: r.get(2),
        spec,
    })
}

const ALERT_COLUMNS: &str =
    "rule_id, target, tenant_id, runner_id, subject, state, since_ms, summary, ack_by, ack_ms, ack_comment";

fn alert_row(r: &Row) -> Result<AlertRow, StorageError> {
    let state: &str = r.get(5);
    let ack_by: Option<String> = r.get(8);
    Ok(AlertRow {
        rule_id: r.get(0),
        target: r.get(1),
        tenant: r.get(2),
        runner_id: r.get(3),
        subject: r.get(4),
        state: State::parse(state)
            .ok_or_else(|| StorageError::Corrupt(format!("alerts: state {state:?}")))?,
        since_ms: r.get(6),
        summary: r.get(7),
        ack: ack_by.map(|by| Ack {
            by,
            at_ms: r.get::<_, Option<i64>>(9).unwrap_or(0),
            comment: r.get::<_, Option<String>>(10).unwrap_or_default(),
        }),
    })
}

/// Whether a transition may be written: without a link (`$10` null), or
/// through the runner's current link, its row share-locked until commit.
/// The parameters of both statements below: rule, target, tenant, runner,
/// subject, state, summary, at, silenced, replica, generation (since).
macro_rules! link_holds {
    () => {
        "WITH ok AS (SELECT $10::text IS NULL OR EXISTS (
             SELECT 1 FROM runner_links
             WHERE runner_id = $4 AND replica_id = $10 AND generation = $11 FOR SHARE) AS yes), "
    };
}

macro_rules! history_row {
    () => {
        " INSERT INTO alert_history
             (tenant_id, rule_id, runner_id, subject, state, at_ms, summary, silenced)
         SELECT $3, $1, $4, $5, $6, $8, $7, $9 WHERE (SELECT yes FROM ok)
         RETURNING seq"
    };
}

/// A transition to pending or firing ([`AlertStore::transition`]).
const TRANSITION_LIVE: &str = concat!(
    link_holds!(),
    "st AS (
         INSERT INTO alert_state
             (rule_id, target, tenant_id, runner_id, subject, state, since_ms, summary)
         SELECT $1, $2, $3, $4, $5, $6, $12, $7 WHERE (SELECT yes FROM ok)
         ON CONFLICT (rule_id, target) DO UPDATE SET state = excluded.state,
             since_ms = excluded.since_ms, summary = excluded.summary)",
    history_row!()
);

/// A transition to resolved: the state row goes.
const TRANSITION_RESOLVED: &str = concat!(
    link_holds!(),
    "st AS (DELETE FROM alert_state WHERE rule_id = $1 AND target = $2 AND (SELECT yes FROM ok))",
    history_row!()
);

const CHANNEL_COLUMNS: &str = "id, tenant_id, name, kind, public, nonce, sealed, created_ms";

fn channel_row(r: &Row) -> ChannelRow {
    ChannelRow {
        id: r.get(0),
        tenant: r.get(1),
        name: r.get(2),
        kind: r.get(3),
        public: r.get(4),
        nonce: r.get(5),
        sealed: r.get(6),
        created_ms: r.get(7),
    }
}

#[async_trait]
impl AlertStore for PgAlerts {
    async fn put_rule(&self, rule: &Rule, now: i64) -> Result<(), StorageError> {
        let spec = serde_json::to_string(&rule.spec).map_err(json_err)?;
        self.client()
            .await?
            .execute(
                "INSERT INTO alert_rules (id, tenant_id, spec, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec
                   WHERE alert_rules.tenant_id = excluded.tenant_id",
                &[&rule.id, &rule.tenant, &spec, &now],
            )
            .await?;
        Ok(())
    }

    async fn delete_rule(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM alert_rules WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id],
            )
            .await?;
        tx.execute(
            "DELETE FROM alert_state WHERE tenant_id = $1 AND rule_id = $2",
            &[&tenant, &id],
        )
        .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn rules(&self, tenant: &str) -> Result<Vec<Rule>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, tenant_id, spec FROM alert_rules WHERE tenant_id = $1
                 ORDER BY created_ms, id",
                &[&tenant],
            )
            .await?;
        rows.iter().map(rule_from).collect()
    }

    async fn all_rules(&self) -> Result<Vec<Rule>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, tenant_id, spec FROM alert_rules ORDER BY created_ms, id",
                &[],
            )
            .await?;
        rows.iter().map(rule_from).collect()
    }

    async fn put_channel(&self, ch: &ChannelRow) -> Result<bool, StorageError> {
        // One ON CONFLICT target only in PostgreSQL: a name taken by another
        // channel of the tenant fails on its unique key, which is the same
        // "not stored" answer SQLite's DO NOTHING gives.
        let r = self
            .client()
            .await?
            .execute(
                "INSERT INTO alert_channels (id, tenant_id, name, kind, public, nonce, sealed, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind,
                   public = excluded.public, nonce = excluded.nonce, sealed = excluded.sealed
                   WHERE alert_channels.tenant_id = excluded.tenant_id",
                &[
                    &ch.id,
                    &ch.tenant,
                    &ch.name,
                    &ch.kind,
                    &ch.public,
                    &ch.nonce,
                    &ch.sealed,
                    &ch.created_ms,
                ],
            )
            .await;
        match r {
            Ok(n) => Ok(n > 0),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_channel(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM alert_channels WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn channels(&self, tenant: &str) -> Result<Vec<ChannelRow>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {CHANNEL_COLUMNS} FROM alert_channels WHERE tenant_id = $1
                     ORDER BY created_ms, id"
                ),
                &[&tenant],
            )
            .await?;
        Ok(rows.iter().map(channel_row).collect())
    }

    async fn channel(&self, tenant: &str, id: &str) -> Result<Option<ChannelRow>, StorageError> {
        // By id or by name; an id that is another channel's name prefers the id.
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "SELECT {CHANNEL_COLUMNS} FROM alert_channels
                     WHERE tenant_id = $1 AND (id = $2 OR name = $2)
                     ORDER BY (id = $2) DESC LIMIT 1"
                ),
                &[&tenant, &id],
            )
            .await?;
        Ok(row.as_ref().map(channel_row))
    }

    async fn transition(
        &self,
        a: &AlertRow,
        silenced: bool,
        at: i64,
        through: Option<&LinkRef>,
    ) -> Result<Option<i64>, StorageError> {
        let (replica, generation) = match through {
            Some(l) => (
                Some(l.replica_id.as_str()),
                Some(i64::try_from(l.generation).map_err(super::backend)?),
            ),
            None => (None, None),
        };
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // One statement: the link judged (its row share-locked, so a
        // replica taking the runner waits for this write to commit, and
        // reads it when it takes the states over; or took it first, and
        // this one sees the new row), the state row and the history row
        // written only if it holds. Kept per connection: one round trip.
        let st = tx
            .prepare_cached(if a.state == State::Resolved {
                TRANSITION_RESOLVED
            } else {
                TRANSITION_LIVE
            })
            .await?;
        let state = a.state.as_str();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &a.rule_id,
            &a.target,
            &a.tenant,
            &a.runner_id,
            &a.subject,
            &state,
            &a.summary,
            &at,
            &silenced,
            &replica,
            &generation,
        ];
        if a.state != State::Resolved {
            params.push(&a.since_ms);
        }
        let row = tx.query_opt(&st, &params).await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let seq: i64 = row.get(0);
        let st = tx
            .prepare_cached("DELETE FROM alert_history WHERE seq <= $1")
            .await?;
        tx.execute(&st, &[&(seq - KEEP_ROWS)]).await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    async fn alerts(&self, tenant: &str) -> Result<Vec<AlertRow>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alert_state
                     WHERE tenant_id = $1 AND state = 'firing' ORDER BY since_ms"
                ),
                &[&tenant],
            )
            .await?;
        rows.iter().map(alert_row).collect()
    }

    async fn all_alerts(&self) -> Result<Vec<AlertRow>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(&format!("SELECT {ALERT_COLUMNS} FROM alert_state"), &[])
            .await?;
        rows.iter().map(alert_row).collect()
    }

    async fn runners_alerts(&self, runner_ids: &[String]) -> Result<Vec<AlertRow>, StorageError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM alert_state WHERE runner_id = ANY($1)"
            ))
            .await?;
        let mut out = Vec::new();
        for ids in runner_ids.chunks(TAKE_OVER_CHUNK) {
            for r in c.query(&st, &[&ids]).await? {
                out.push(alert_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn ack(
        &self,
        tenant: &str,
        rule: &str,
        target: &str,
        ack: &Ack,
    ) -> Result<bool, StorageError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE alert_state SET ack_by = $4, ack_ms = $5, ack_comment = $6
                 WHERE tenant_id = $1 AND rule_id = $2 AND target = $3 AND state = 'firing'",
                &[&tenant, &rule, &target, &ack.by, &ack.at_ms, &ack.comment],
            )
            .await?;
        Ok(n > 0)
    }

    async fn history(
        &self,
        tenant: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<HistoryRow>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, rule_id, runner_id, subject, state, at_ms, summary, silenced
                 FROM alert_history WHERE tenant_id = $1 AND seq < $2
                 ORDER BY seq DESC LIMIT $3",
                &[&tenant, &before, &limit.max(0)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| HistoryRow {
                seq: r.get(0),
                rule_id: r.get(1),
                runner_id: r.get(2),
                subject: r.get(3),
                state: r.get(4),
                at_ms: r.get(5),
                summary: r.get(6),
                silenced: r.get(7),
            })
            .collect())
    }

    async fn put_silence(&self, s: &Silence) -> Result<(), StorageError> {
        let spec = serde_json::to_string(&s.spec).map_err(json_err)?;
        self.client()
            .await?
            .execute(
                "INSERT INTO alert_silences (id, tenant_id, created_by, spec, ends_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&s.id, &s.tenant, &s.created_by, &spec, &s.spec.ends_ms],
            )
            .await?;
        Ok(())
    }

    async fn delete_silence(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM alert_silences WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn silences(&self, tenant: &str) -> Result<Vec<Silence>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, tenant_id, created_by, spec FROM alert_silences
                 WHERE tenant_id = $1 ORDER BY ends_ms, id",
                &[&tenant],
            )
            .await?;
        rows.iter().map(silence_from).collect()
    }

    async fn all_silences(&self, now: i64) -> Result<Vec<Silence>, StorageError> {
        let c = self.client().await?;
        c.execute("DELETE FROM alert_silences WHERE ends_ms < $1", &[&now])
            .await?;
        let rows = c
            .query(
                "SELECT id, tenant_id, created_by, spec FROM alert_silences ORDER BY ends_ms, id",
                &[],
            )
            .await?;
        rows.iter().map(silence_from).collect()
    }

    async fn delivery(&self, tenant: &str, d: &DeliveryRow) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let seq: i64 = tx
            .query_one(
                "INSERT INTO alert_deliveries
                   (tenant_id, channel_id, history_seq, at_ms, attempt, ok, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
                &[
                    &tenant,
                    &d.channel_id,
                    &d.history_seq,
                    &d.at_ms,
                    &d.attempt,
                    &d.ok,
                    &d.detail,
                ],
            )
            .await?
            .get(0);
        tx.execute(
            "DELETE FROM alert_deliveries WHERE seq <= $1",
            &[&(seq - KEEP_ROWS)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deliveries(
        &self,
        tenant: &str,
        channel: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, channel_id, history_seq, at_ms, attempt, ok, detail
                 FROM alert_deliveries WHERE tenant_id = $1 AND channel_id = $2
                 ORDER BY seq DESC LIMIT $3",
                &[&tenant, &channel, &limit.max(0)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeliveryRow {
                seq: r.get(0),
                channel_id: r.get(1),
                history_seq: r.get(2),
                at_ms: r.get(3),
                attempt: r.get(4),
                ok: r.get(5),
                detail: r.get(6),
            })
            .collect())
    }
}
