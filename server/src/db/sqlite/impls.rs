//! The storage traits over the synchronous SQLite stores: each method takes
//! owned copies of its arguments and runs the store's method through
//! [`Blocking::run`] (the one way in; see `mod.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use tether::metrics::wire::SeriesDef;
use tether::protocol::{ContainerEvent, ContainerSummary, JobResult, UpdateStatus};

use super::{
    Blocking, SqliteAudit, SqliteControl, SqliteFleet, SqliteJobs, SqliteLogs, SqliteMetrics,
};
use crate::db::audit::*;
use crate::db::control::*;
use crate::db::fleet::*;
use crate::db::jobs::*;
use crate::db::logs::*;
use crate::db::logs::{CollectPolicy, LogLine};
use crate::db::metrics::*;
use crate::db::trail::*;
use crate::db::updates::*;
use crate::db::users::*;
use crate::db::StorageError;

/// Owned copies of borrowed arguments, to move onto the blocking pool.
macro_rules! own {
    ($($a:ident),*) => { $(let $a = $a.to_owned();)* };
}

#[async_trait]
impl ControlStore for Blocking<SqliteControl> {
    fn watch_credentials(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.watch_credentials()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.run(move |s| {
            s.conn().query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn create_tenant(
        &self,
        tenant: &TenantRow,
        api_token_id: &str,
        api_token_hash: &str,
    ) -> Result<(), StorageError> {
        own!(tenant, api_token_id, api_token_hash);
        self.run(move |s| s.create_tenant(&tenant, &api_token_id, &api_token_hash))
            .await
    }
    async fn list_tenants(&self) -> Result<Vec<TenantRow>, StorageError> {
        self.run(move |s| s.list_tenants()).await
    }
    async fn tenant_id_by_id_or_name(&self, key: &str) -> Result<Option<String>, StorageError> {
        own!(key);
        self.run(move |s| s.tenant_id_by_id_or_name(&key)).await
    }
    async fn create_api_token(
        &self,
        row: &ApiTokenRow,
        token_hash: &str,
    ) -> Result<(), StorageError> {
        own!(row, token_hash);
        self.run(move |s| s.create_api_token(&row, &token_hash))
            .await
    }
    async fn api_token_auth(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<ApiTokenAuth, TokenRefusal>, StorageError> {
        own!(token_hash);
        self.run(move |s| s.api_token_auth(&token_hash, now)).await
    }
    async fn api_token_check(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<Option<i64>, TokenRefusal>, StorageError> {
        own!(token_hash);
        self.run(move |s| s.api_token_check(&token_hash, now)).await
    }
    async fn list_api_tokens(&self, tenant_id: &str) -> Result<Vec<ApiTokenInfo>, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.list_api_tokens(&tenant_id)).await
    }
    async fn revoke_api_token(
        &self,
        tenant_id: &str,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<ApiTokenInfo>, StorageError> {
        own!(tenant_id, id, reason);
        self.run(move |s| s.revoke_api_token(&tenant_id, &id, &reason, now))
            .await
    }
    async fn api_token_name(&self, token_hash: &str) -> Result<Option<String>, StorageError> {
        own!(token_hash);
        self.run(move |s| s.api_token_name(&token_hash)).await
    }
    async fn create_enrollment_token(
        &self,
        row: &EnrollmentTokenRow,
        token_hash: &str,
    ) -> Result<(), StorageError> {
        own!(row, token_hash);
        self.run(move |s| s.create_enrollment_token(&row, &token_hash))
            .await
    }
    async fn list_enrollment_tokens(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<EnrollmentTokenRow>, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.list_enrollment_tokens(&tenant_id))
            .await
    }
    async fn revoke_enrollment_token(
        &self,
        tenant_id: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<EnrollmentTokenRow>, StorageError> {
        own!(tenant_id, id);
        self.run(move |s| s.revoke_enrollment_token(&tenant_id, &id, now))
            .await
    }

    async fn enroll(
        &self,
        token_hash: &str,
        runner: &NewRunner<'_>,
        now: i64,
    ) -> Result<String, EnrollError> {
        own!(token_hash);
        let [id, credential_hash, name, version, arch, os] = [
            runner.id,
            runner.credential_hash,
            runner.name,
            runner.version,
            runner.arch,
            runner.os,
        ]
        .map(str::to_owned);
        self.run(move |s| {
            let runner = NewRunner {
                id: &id,
                credential_hash: &credential_hash,
                name: &name,
                version: &version,
                arch: &arch,
                os: &os,
            };
            s.enroll(&token_hash, &runner, now)
        })
        .await
    }
    async fn runner(&self, tenant_id: &str, id: &str) -> Result<Option<RunnerRow>, StorageError> {
        own!(tenant_id, id);
        self.run(move |s| s.runner(&tenant_id, &id)).await
    }
    async fn list_runners(&self, tenant_id: &str) -> Result<Vec<RunnerRow>, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.list_runners(&tenant_id)).await
    }
    async fn runners_by_ids(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RunnerRow>, StorageError> {
        own!(tenant_id);
        let ids = ids.to_vec();
        self.run(move |s| s.runners_by_ids(&tenant_id, &ids)).await
    }
    async fn runner_versions(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RunnerVersion>, StorageError> {
        own!(tenant_id);
        let ids = ids.to_vec();
        self.run(move |s| s.runner_versions(&tenant_id, &ids)).await
    }
    async fn runner_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<RunnerIdentity>, StorageError> {
        own!(credential_hash);
        self.run(move |s| s.runner_by_credential(&credential_hash))
            .await
    }
    async fn health_history(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Vec<HealthRecord>>, StorageError> {
        own!(tenant_id, id);
        self.run(move |s| s.health_history(&tenant_id, &id)).await
    }
    async fn runner_connected(
        &self,
        id: &str,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError> {
        own!(id, reason);
        let [name, version, arch, os] =
            [info.name, info.version, info.arch, info.os].map(str::to_owned);
        let protocol = info.protocol;
        self.run(move |s| {
            let info = ConnectedInfo {
                name: &name,
                version: &version,
                arch: &arch,
                os: &os,
                protocol,
            };
            s.runner_connected(&id, &info, &reason, now)
        })
        .await
    }
    async fn rename_runner(
        &self,
        tenant_id: &str,
        id: &str,
        name: &str,
    ) -> Result<Option<RunnerRow>, StorageError> {
        own!(tenant_id, id, name);
        self.run(move |s| s.rename_runner(&tenant_id, &id, &name))
            .await
    }
    async fn runner_disconnected(
        &self,
        id: &str,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError> {
        own!(id, reason);
        self.run(move |s| s.runner_disconnected(&id, last_seen, &reason, now))
            .await
    }
    async fn revoke_runner(
        &self,
        tenant_id: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError> {
        own!(tenant_id, id);
        self.run(move |s| s.revoke_runner(&tenant_id, &id, now))
            .await
    }
    async fn mark_all_unreachable(
        &self,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError> {
        own!(reason);
        self.run(move |s| s.mark_all_unreachable(&reason, now))
            .await
    }
    async fn touch_last_seen(&self, seen: &[(String, i64)]) -> Result<(), StorageError> {
        own!(seen);
        self.run(move |s| s.touch_last_seen(&seen)).await
    }

    async fn update_fingerprint(
        &self,
        runner_id: &str,
        decide: FingerprintDecision,
    ) -> Result<(), StorageError> {
        own!(runner_id);
        self.run(move |s| s.update_fingerprint(&runner_id, decide))
            .await
    }
    async fn fingerprint(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<Option<FingerprintRow>>, StorageError> {
        own!(tenant_id, runner_id);
        self.run(move |s| s.fingerprint(&tenant_id, &runner_id))
            .await
    }
    async fn drift(
        &self,
        tenant_id: &str,
        runner_id: &str,
        since: i64,
    ) -> Result<Option<Vec<DriftRow>>, StorageError> {
        own!(tenant_id, runner_id);
        self.run(move |s| s.drift(&tenant_id, &runner_id, since))
            .await
    }

    async fn set_docker_state(
        &self,
        runner_id: &str,
        row: &DockerStateRow,
    ) -> Result<(), StorageError> {
        own!(runner_id, row);
        self.run(move |s| s.set_docker_state(&runner_id, &row))
            .await
    }
    async fn docker_state(&self, runner_id: &str) -> Result<Option<DockerStateRow>, StorageError> {
        own!(runner_id);
        self.run(move |s| s.docker_state(&runner_id)).await
    }
    async fn replace_containers(
        &self,
        runner_id: &str,
        containers: &[ContainerSummary],
        now: i64,
    ) -> Result<(), StorageError> {
        own!(runner_id, containers);
        self.run(move |s| s.replace_containers(&runner_id, &containers, now))
            .await
    }
    async fn record_container_event(
        &self,
        runner_id: &str,
        event: &ContainerEvent,
        now: i64,
    ) -> Result<(), StorageError> {
        own!(runner_id, event);
        self.run(move |s| s.record_container_event(&runner_id, &event, now))
            .await
    }
    async fn containers(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<ContainerView>, StorageError> {
        own!(tenant_id, runner_id);
        self.run(move |s| s.containers(&tenant_id, &runner_id))
            .await
    }
    async fn container_events(
        &self,
        tenant_id: &str,
        runner_id: &str,
        since: i64,
    ) -> Result<Option<Vec<ContainerEventRow>>, StorageError> {
        own!(tenant_id, runner_id);
        self.run(move |s| s.container_events(&tenant_id, &runner_id, since))
            .await
    }
}

#[async_trait]
impl UserStore for Blocking<SqliteControl> {
    async fn create_user(&self, user: &UserRow) -> Result<(), StorageError> {
        own!(user);
        self.run(move |s| s.create_user(&user)).await
    }
    async fn user(&self, tenant_id: &str, name: &str) -> Result<Option<UserRow>, StorageError> {
        own!(tenant_id, name);
        self.run(move |s| s.user(&tenant_id, &name)).await
    }
    async fn list_users(&self, tenant_id: &str) -> Result<Vec<UserRow>, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.list_users(&tenant_id)).await
    }
    async fn update_user(
        &self,
        tenant_id: &str,
        name: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
    ) -> Result<bool, StorageError> {
        own!(tenant_id, name);
        let password_hash = password_hash.map(str::to_owned);
        self.run(move |s| s.update_user(&tenant_id, &name, role, password_hash.as_deref()))
            .await
    }
    async fn delete_user(&self, tenant_id: &str, name: &str) -> Result<bool, StorageError> {
        own!(tenant_id, name);
        self.run(move |s| s.delete_user(&tenant_id, &name)).await
    }
    async fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        csrf_token: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StorageError> {
        own!(token_hash, user_id, csrf_token);
        self.run(move |s| s.create_session(&token_hash, &user_id, &csrf_token, now, expires_at))
            .await
    }
    async fn session(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<SessionRow>, StorageError> {
        own!(token_hash);
        self.run(move |s| s.session(&token_hash, now)).await
    }
    async fn delete_session(&self, token_hash: &str) -> Result<(), StorageError> {
        own!(token_hash);
        self.run(move |s| s.delete_session(&token_hash)).await
    }
    async fn create_oidc_provider(&self, provider: &OidcProviderRow) -> Result<(), StorageError> {
        own!(provider);
        self.run(move |s| s.create_oidc_provider(&provider)).await
    }
    async fn oidc_providers(&self, tenant_id: &str) -> Result<Vec<OidcProviderRow>, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.oidc_providers(&tenant_id, None)).await
    }
    async fn oidc_provider(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<OidcProviderRow>, StorageError> {
        own!(tenant_id, name);
        self.run(move |s| Ok(s.oidc_providers(&tenant_id, Some(&name))?.pop()))
            .await
    }
    async fn delete_oidc_provider(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<bool, StorageError> {
        own!(tenant_id, name);
        self.run(move |s| s.delete_oidc_provider(&tenant_id, &name))
            .await
    }
    async fn oidc_user(
        &self,
        provider_id: &str,
        subject: &str,
    ) -> Result<Option<UserRow>, StorageError> {
        own!(provider_id, subject);
        self.run(move |s| s.oidc_user(&provider_id, &subject)).await
    }
    async fn create_oidc_user(
        &self,
        user: &UserRow,
        provider_id: &str,
        subject: &str,
    ) -> Result<(), StorageError> {
        own!(user, provider_id, subject);
        self.run(move |s| s.create_oidc_user(&user, &provider_id, &subject))
            .await
    }
    async fn password_login(&self, tenant_id: &str) -> Result<bool, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.password_login(&tenant_id)).await
    }
    async fn set_password_login(&self, tenant_id: &str, allowed: bool) -> Result<(), StorageError> {
        own!(tenant_id);
        self.run(move |s| s.set_password_login(&tenant_id, allowed))
            .await
    }
}

#[async_trait]
impl UpdateStore for Blocking<SqliteControl> {
    async fn set_update_policy(
        &self,
        tenant_id: &str,
        policy: &UpdatePolicy,
    ) -> Result<(), StorageError> {
        own!(tenant_id, policy);
        self.run(move |s| s.set_update_policy(&tenant_id, &policy))
            .await
    }
    async fn clear_update_policy(
        &self,
        tenant_id: &str,
        group: &str,
    ) -> Result<bool, StorageError> {
        own!(tenant_id, group);
        self.run(move |s| s.clear_update_policy(&tenant_id, &group))
            .await
    }
    async fn update_policies(&self, tenant_id: &str) -> Result<Vec<UpdatePolicy>, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.update_policies(&tenant_id)).await
    }
    async fn update_policy_for(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<(String, UpdatePolicy)>, StorageError> {
        own!(tenant_id, runner_id);
        self.run(move |s| s.update_policy_for(&tenant_id, &runner_id))
            .await
    }
    async fn runner_group(&self, runner_id: &str) -> Result<Option<String>, StorageError> {
        own!(runner_id);
        self.run(move |s| s.runner_group(&runner_id)).await
    }
    async fn set_runner_group(
        &self,
        tenant_id: &str,
        runner_id: &str,
        group: &str,
    ) -> Result<bool, StorageError> {
        own!(tenant_id, runner_id, group);
        self.run(move |s| s.set_runner_group(&tenant_id, &runner_id, &group))
            .await
    }
    async fn record_update_report(
        &self,
        runner_id: &str,
        at: i64,
        status: &UpdateStatus,
    ) -> Result<(), StorageError> {
        own!(runner_id, status);
        self.run(move |s| s.record_update_report(&runner_id, at, &status))
            .await
    }
    async fn update_reports(&self, runner_id: &str) -> Result<Vec<UpdateReportRow>, StorageError> {
        own!(runner_id);
        self.run(move |s| s.update_reports(&runner_id)).await
    }
    async fn latest_update_reports(
        &self,
        tenant_id: &str,
    ) -> Result<std::collections::HashMap<String, UpdateReportRow>, StorageError> {
        own!(tenant_id);
        self.run(move |s| s.latest_update_reports(&tenant_id)).await
    }
}

#[async_trait]
impl AuditStore for Blocking<SqliteControl> {
    async fn terminal_opened(
        &self,
        tenant_id: &str,
        row: &TerminalAuditRow,
    ) -> Result<(), StorageError> {
        own!(tenant_id, row);
        self.run(move |s| s.terminal_opened(&tenant_id, &row)).await
    }
    async fn terminal_closed(
        &self,
        id: &str,
        closed_ms: i64,
        reason: &str,
        bytes_in: u64,
        bytes_out: u64,
    ) -> Result<(), StorageError> {
        own!(id, reason);
        self.run(move |s| s.terminal_closed(&id, closed_ms, &reason, bytes_in, bytes_out))
            .await
    }
    async fn terminal_audit(
        &self,
        tenant_id: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TerminalAuditRow>, StorageError> {
        own!(tenant_id);
        let runner = runner.map(str::to_owned);
        self.run(move |s| s.terminal_audit(&tenant_id, runner.as_deref(), limit))
            .await
    }
}

#[async_trait]
impl MetricStore for Blocking<SqliteMetrics> {
    fn retention(&self) -> Retention {
        self.store.retention()
    }
    async fn source(&self, runner_id: &str) -> Result<i64, StorageError> {
        own!(runner_id);
        self.run(move |s| s.source(&runner_id)).await
    }
    async fn last_ts(&self, runner_id: &str) -> Result<Option<i64>, StorageError> {
        own!(runner_id);
        self.run(move |s| s.last_ts(&runner_id)).await
    }
    async fn intern_schema(&self, series: &[SeriesDef], now: i64) -> Result<i64, StorageError> {
        own!(series);
        self.run(move |s| s.intern_schema(&series, now)).await
    }
    async fn insert(&self, batches: Vec<SampleRows>, now: i64) -> Result<usize, StorageError> {
        self.run(move |s| s.insert(&batches, now)).await
    }
    async fn maintain(&self, now: i64) -> Result<MaintainStats, StorageError> {
        self.run(move |s| s.maintain(now)).await
    }
    async fn range(
        &self,
        runner_id: &str,
        from: i64,
        to: i64,
        resolution: Resolution,
        filter: &SeriesFilter,
        max_rows: usize,
    ) -> Result<Vec<SeriesData>, RangeError> {
        own!(runner_id, filter);
        self.run(move |s| s.range(&runner_id, from, to, resolution, &filter, max_rows))
            .await
    }
    async fn latest(
        &self,
        runner_ids: &[&str],
    ) -> Result<Vec<(usize, LatestSample)>, StorageError> {
        let ids: Vec<String> = runner_ids.iter().map(|&s| s.to_owned()).collect();
        self.run(move |s| {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            s.latest(&ids)
        })
        .await
    }
    async fn count(&self, table: &str) -> i64 {
        own!(table);
        self.run(move |s| Ok::<_, StorageError>(s.count(&table)))
            .await
            .unwrap_or(-1)
    }
}

#[async_trait]
impl LogStore for Blocking<SqliteLogs> {
    async fn insert(&self, blocks: Vec<BlockIn>) -> Result<(), StorageError> {
        self.run(move |s| s.insert(&blocks)).await
    }
    async fn cursor(
        &self,
        runner_id: &str,
        container_id: &str,
    ) -> Result<Option<(i64, u32)>, StorageError> {
        own!(runner_id, container_id);
        self.run(move |s| s.cursor(&runner_id, &container_id)).await
    }
    async fn query(
        &self,
        runner_id: &str,
        container: &str,
        q: &LogQuery,
    ) -> Result<Vec<LogLine>, StorageError> {
        own!(runner_id, container, q);
        self.run(move |s| s.query(&runner_id, &container, &q)).await
    }
    async fn containers(&self, runner_id: &str) -> Result<Vec<(String, i64)>, StorageError> {
        own!(runner_id);
        self.run(move |s| s.containers(&runner_id)).await
    }
    async fn retention(
        &self,
        runner_id: &str,
        container: &str,
    ) -> Result<LogRetention, StorageError> {
        own!(runner_id, container);
        self.run(move |s| s.retention(&runner_id, &container)).await
    }
    async fn set_retention(
        &self,
        runner_id: &str,
        container: &str,
        r: Option<LogRetention>,
    ) -> Result<(), StorageError> {
        own!(runner_id, container);
        self.run(move |s| s.set_retention(&runner_id, &container, r))
            .await
    }
    async fn policy(&self, runner_id: &str) -> Result<CollectPolicy, StorageError> {
        own!(runner_id);
        self.run(move |s| s.policy(&runner_id)).await
    }
    async fn set_policy(
        &self,
        runner_id: &str,
        p: Option<&CollectPolicy>,
    ) -> Result<(), StorageError> {
        own!(runner_id);
        let p = p.cloned();
        self.run(move |s| s.set_policy(&runner_id, p.as_ref()))
            .await
    }
    async fn expire(&self, now_ms: i64) -> Result<ExpireStats, StorageError> {
        self.run(move |s| s.expire(now_ms)).await
    }
}

#[async_trait]
impl JobStore for Blocking<SqliteJobs> {
    async fn put_script(&self, tenant: &str, script: &Script) -> Result<(), StorageError> {
        own!(tenant, script);
        self.run(move |s| s.put_script(&tenant, &script)).await
    }
    async fn script(&self, tenant: &str, name: &str) -> Result<Option<Script>, StorageError> {
        own!(tenant, name);
        self.run(move |s| s.script(&tenant, &name)).await
    }
    async fn scripts(&self, tenant: &str) -> Result<Vec<Script>, StorageError> {
        own!(tenant);
        self.run(move |s| s.scripts(&tenant)).await
    }
    async fn delete_script(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        own!(tenant, name);
        self.run(move |s| s.delete_script(&tenant, &name)).await
    }
    async fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        nonce: &[u8],
        sealed: &[u8],
        now: i64,
    ) -> Result<(), StorageError> {
        own!(tenant, name, nonce, sealed);
        self.run(move |s| s.put_secret(&tenant, &name, &nonce, &sealed, now))
            .await
    }
    async fn secret(&self, tenant: &str, name: &str) -> Result<Option<Sealed>, StorageError> {
        own!(tenant, name);
        self.run(move |s| s.secret(&tenant, &name)).await
    }
    async fn secrets(&self, tenant: &str) -> Result<Vec<(String, i64)>, StorageError> {
        own!(tenant);
        self.run(move |s| s.secrets(&tenant)).await
    }
    async fn delete_secret(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        own!(tenant, name);
        self.run(move |s| s.delete_secret(&tenant, &name)).await
    }

    async fn create_jobs(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        label: &str,
        spec: &JobSpec,
        now: i64,
        max_active: usize,
    ) -> Result<Result<Vec<JobRow>, usize>, StorageError> {
        own!(tenant, jobs, label, spec);
        self.run(move |s| s.create_jobs(&tenant, &jobs, &label, &spec, now, max_active))
            .await
    }
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRow>, StorageError> {
        own!(tenant, id);
        self.run(move |s| s.job(&tenant, &id)).await
    }
    async fn job_by_seq(&self, runner: &str, seq: i64) -> Result<Option<JobRow>, StorageError> {
        own!(runner);
        self.run(move |s| s.job_by_seq(&runner, seq)).await
    }
    async fn jobs(
        &self,
        tenant: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRow>, StorageError> {
        own!(tenant);
        let runner = runner.map(str::to_owned);
        self.run(move |s| s.jobs(&tenant, runner.as_deref(), limit))
            .await
    }
    async fn open_jobs(&self, runner: &str) -> Result<Vec<JobRow>, StorageError> {
        own!(runner);
        self.run(move |s| s.open_jobs(&runner)).await
    }
    async fn runners_with_open_jobs(
        &self,
        runners: &[String],
    ) -> Result<Vec<String>, StorageError> {
        let runners = runners.to_vec();
        self.run(move |s| s.runners_with_open_jobs(&runners)).await
    }
    async fn job_states(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<JobState>, StorageError> {
        own!(tenant);
        let ids = ids.to_vec();
        self.run(move |s| s.job_states(&tenant, &ids)).await
    }
    async fn resumable(&self, runner: &str) -> Result<Vec<(i64, i64)>, StorageError> {
        own!(runner);
        self.run(move |s| s.resumable(&runner)).await
    }
    async fn accepted(&self, id: &str, state: &str, now: i64) -> Result<(), StorageError> {
        own!(id, state);
        self.run(move |s| s.accepted(&id, &state, now)).await
    }
    async fn finish(
        &self,
        id: &str,
        status: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        own!(id, status, reason);
        self.run(move |s| s.finish(&id, &status, &reason, now))
            .await
    }
    async fn record_result(&self, runner: &str, r: &JobResult) -> Result<bool, StorageError> {
        own!(runner, r);
        self.run(move |s| s.record_result(&runner, &r)).await
    }
    async fn request_cancel(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        own!(tenant, id);
        self.run(move |s| s.request_cancel(&tenant, &id)).await
    }
    async fn store_output(
        &self,
        rows: Arc<[(i64, OutputRow)]>,
    ) -> Result<Vec<(i64, i64)>, StorageError> {
        self.run(move |s| s.store_output(&rows)).await
    }
    async fn output(
        &self,
        seq: i64,
        from: i64,
        limit: usize,
    ) -> Result<Vec<OutputRow>, StorageError> {
        self.run(move |s| s.output(seq, from, limit)).await
    }
    async fn retain(
        &self,
        cutoff_ms: i64,
        max_tenant_bytes: u64,
    ) -> Result<RetainStats, StorageError> {
        self.run(move |s| s.retain(cutoff_ms, max_tenant_bytes))
            .await
    }

    async fn put_app(&self, tenant: &str, a: &StoredApp) -> Result<(), StorageError> {
        own!(tenant, a);
        self.run(move |s| s.put_app(&tenant, &a)).await
    }
    async fn app(&self, tenant: &str, name: &str) -> Result<Option<StoredApp>, StorageError> {
        own!(tenant, name);
        self.run(move |s| s.app(&tenant, &name)).await
    }
    async fn apps(&self, tenant: &str) -> Result<Vec<StoredApp>, StorageError> {
        own!(tenant);
        self.run(move |s| s.apps(&tenant)).await
    }
    async fn delete_app(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        own!(tenant, name);
        self.run(move |s| s.delete_app(&tenant, &name)).await
    }
    async fn add_deployment(&self, tenant: &str, d: &Deployment) -> Result<(), StorageError> {
        own!(tenant, d);
        self.run(move |s| s.add_deployment(&tenant, &d)).await
    }
    async fn deployments(
        &self,
        tenant: &str,
        app: &str,
        limit: usize,
    ) -> Result<Vec<(Deployment, Option<JobRow>)>, StorageError> {
        own!(tenant, app);
        self.run(move |s| s.deployments(&tenant, &app, limit)).await
    }
}

#[async_trait]
impl FleetStore for Blocking<SqliteFleet> {
    async fn tenant_labels(
        &self,
        tenant: &str,
    ) -> Result<std::collections::HashMap<String, Labels>, StorageError> {
        own!(tenant);
        self.run(move |s| s.tenant_labels(&tenant)).await
    }
    async fn labels_where(
        &self,
        tenant: &str,
        must: &[HasLabel],
    ) -> Result<std::collections::HashMap<String, Labels>, StorageError> {
        own!(tenant);
        let must = must.to_vec();
        self.run(move |s| s.labels_where(&tenant, &must)).await
    }
    async fn labels(&self, tenant: &str, runner: &str) -> Result<(Labels, Labels), StorageError> {
        own!(tenant, runner);
        self.run(move |s| s.labels(&tenant, &runner)).await
    }
    async fn replace_labels(
        &self,
        tenant: &str,
        runner: &str,
        labels: &Labels,
    ) -> Result<(), StorageError> {
        own!(tenant, runner, labels);
        self.run(move |s| s.replace_labels(&tenant, &runner, &labels))
            .await
    }
    async fn propose(
        &self,
        tenant: &str,
        runner: &str,
        proposed: &Labels,
        policy: &Policy,
    ) -> Result<(), StorageError> {
        own!(tenant, runner, proposed, policy);
        self.run(move |s| s.propose(&tenant, &runner, &proposed, &policy))
            .await
    }
    async fn accept(
        &self,
        tenant: &str,
        runner: &str,
        keys: Option<&[String]>,
    ) -> Result<Labels, StorageError> {
        own!(tenant, runner);
        let keys = keys.map(<[String]>::to_vec);
        self.run(move |s| s.accept(&tenant, &runner, keys.as_deref()))
            .await
    }
    async fn policy(&self, tenant: &str) -> Result<Policy, StorageError> {
        own!(tenant);
        self.run(move |s| s.policy(&tenant)).await
    }
    async fn set_policy(&self, tenant: &str, policy: &Policy) -> Result<(), StorageError> {
        own!(tenant, policy);
        self.run(move |s| s.set_policy(&tenant, &policy)).await
    }
    async fn add_deadlines(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        expires_ms: i64,
    ) -> Result<(), StorageError> {
        own!(tenant);
        let jobs = jobs.to_vec();
        self.run(move |s| s.add_deadlines(&tenant, &jobs, expires_ms))
            .await
    }
    async fn due_deadlines(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, String, i64)>, StorageError> {
        self.run(move |s| s.due_deadlines(now, limit)).await
    }
    async fn drop_deadline(&self, job: &str) -> Result<(), StorageError> {
        own!(job);
        self.run(move |s| s.drop_deadline(&job)).await
    }
    async fn save_rollout(&self, r: &RolloutRow) -> Result<(), StorageError> {
        own!(r);
        self.run(move |s| s.save_rollout(&r)).await
    }
    async fn update_rollout(&self, r: &RolloutRow) -> Result<bool, StorageError> {
        own!(r);
        self.run(move |s| s.update_rollout(&r)).await
    }
    async fn open_rollouts(&self) -> Result<Vec<(String, String, i64)>, StorageError> {
        self.run(move |s| s.open_rollouts()).await
    }
    async fn rollout(&self, tenant: &str, id: &str) -> Result<Option<RolloutRow>, StorageError> {
        own!(tenant, id);
        self.run(move |s| s.rollout(&tenant, &id)).await
    }
    async fn rollouts(&self, tenant: &str, limit: usize) -> Result<Vec<RolloutRow>, StorageError> {
        own!(tenant);
        self.run(move |s| s.rollouts(&tenant, limit)).await
    }
    async fn put_schedule(
        &self,
        tenant: &str,
        name: &str,
        body: &str,
        start: i64,
    ) -> Result<(), StorageError> {
        own!(tenant, name, body);
        self.run(move |s| s.put_schedule(&tenant, &name, &body, start))
            .await
    }
    async fn delete_schedule(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        own!(tenant, name);
        self.run(move |s| s.delete_schedule(&tenant, &name)).await
    }
    async fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRow>, StorageError> {
        let tenant = tenant.map(str::to_owned);
        self.run(move |s| s.schedules(tenant.as_deref())).await
    }
    async fn claim_occurrence(
        &self,
        tenant: &str,
        schedule: &str,
        occurrence: i64,
        status: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        own!(tenant, schedule, status);
        self.run(move |s| s.claim_occurrence(&tenant, &schedule, occurrence, &status, now))
            .await
    }
    async fn set_run_jobs(
        &self,
        tenant: &str,
        schedule: &str,
        occurrence: i64,
        status: &str,
        jobs: &[String],
    ) -> Result<(), StorageError> {
        own!(tenant, schedule, status);
        let jobs = jobs.to_vec();
        self.run(move |s| s.set_run_jobs(&tenant, &schedule, occurrence, &status, &jobs))
            .await
    }
    async fn runs(
        &self,
        tenant: &str,
        schedule: &str,
        limit: usize,
    ) -> Result<Vec<RunRow>, StorageError> {
        own!(tenant, schedule);
        self.run(move |s| s.runs(&tenant, &schedule, limit)).await
    }

    async fn desired_versions(
        &self,
        tenant: &str,
    ) -> Result<std::collections::HashMap<String, String>, StorageError> {
        own!(tenant);
        self.run(move |s| s.desired_versions(&tenant)).await
    }

    async fn desired_version(
        &self,
        tenant: &str,
        runner: &str,
    ) -> Result<Option<String>, StorageError> {
        own!(tenant, runner);
        self.run(move |s| s.desired_version(&tenant, &runner)).await
    }

    async fn set_desired_version(
        &self,
        tenant: &str,
        runners: &[String],
        version: Option<&str>,
        now: i64,
    ) -> Result<(), StorageError> {
        let (tenant, runners) = (tenant.to_owned(), runners.to_vec());
        let version = version.map(str::to_owned);
        self.run(move |s| s.set_desired_version(&tenant, &runners, version.as_deref(), now))
            .await
    }
}

#[async_trait]
impl TrailStore for Blocking<SqliteAudit> {
    async fn append(&self, e: NewEntry) -> Result<Entry, StorageError> {
        self.run(move |s| s.append(e)).await
    }
    async fn query(&self, q: &AuditQuery) -> Result<Vec<Entry>, StorageError> {
        own!(q);
        self.run(move |s| s.query(&q)).await
    }
    async fn verify(&self) -> Result<Verification, StorageError> {
        self.run(move |s| s.verify()).await
    }
    async fn prune(&self, before_ms: i64) -> Result<usize, StorageError> {
        self.run(move |s| s.prune(before_ms)).await
    }
    async fn checkpoint(&self) -> Result<(), StorageError> {
        self.run(move |s| s.checkpoint()).await
    }
}
