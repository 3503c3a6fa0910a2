//! The storage conformance suite: the same checks of the storage traits
//! against every backend, the embedded SQLite and a real PostgreSQL
//! (`pg.rs`). Each check is one async function taking the stores; `both!`
//! makes a `sqlite` and a `postgres` test of it.
//!
//! Covered: ControlStore, UserStore, AuditStore, UpdateStore, AlertStore,
//! RecordingStore, ReleaseStore (files in a directory, chunked rows),
//! single sign-on (UserStore's providers, identities and
//! login policy), and the migration runner (the bulk stores: `storage_bulk.rs`).

use std::sync::Arc;

use tether::protocol::UpdateStatus;
use tether_server::alerts::rules::{Rule, RuleSpec, Silence, SilenceSpec, State};
use tether_server::db::alerts::{Ack, AlertRow, ChannelRow, DeliveryRow, LinkRef};
use tether_server::db::cluster::ClusterStore;
use tether_server::db::postgres::Postgres;
use tether_server::db::recordings::{RecordingPolicy, RecordingRow, RecordingStore};
use tether_server::db::releases::{sha256_hex, ReleaseStore, StoredFile};
use tether_server::db::users::{OidcProviderRow, Role, UserRow};
use tether_server::db::{
    AlertStore, ApiTokenRow, AuditStore, ConnectOutcome, ConnectedInfo, ControlStore,
    DockerStateRow, EnrollError, EnrollRefusal, EnrollmentTokenRow, FingerprintWrite, Health,
    NewRunner, StorageError, TenantRow, TerminalAuditRow, TokenRefusal, UpdatePolicy, UpdateStore,
    UserStore,
};

use crate::pg;

/// The stores under test; tenants and runners are seeded through them.
struct Under {
    control: Arc<dyn ControlStore>,
    users: Arc<dyn UserStore>,
    audit: Arc<dyn AuditStore>,
    updates: Arc<dyn UpdateStore>,
    recordings: Arc<dyn RecordingStore>,
    alerts: Arc<dyn AlertStore>,
    releases: Arc<dyn ReleaseStore>,
    /// PostgreSQL only: the live-links table (the embedded SQLite is one
    /// replica and has none).
    cluster: Option<Arc<dyn ClusterStore>>,
}

impl Under {
    async fn sqlite() -> Under {
        let db = tether_server::db::sqlite::open_in_memory(Default::default()).unwrap();
        Under {
            control: db.control.clone(),
            users: db.users.clone(),
            audit: db.audit.clone(),
            updates: db.updates.clone(),
            recordings: db.recordings.clone(),
            alerts: db.alerts.clone(),
            releases: tether_server::db::sqlite::release_dir(&release_dir()),
            cluster: None,
        }
    }

    async fn postgres() -> Under {
        let pg = Postgres::connect(&pg::fresh_database().await)
            .await
            .unwrap();
        Under {
            control: pg.control(),
            users: pg.users(),
            audit: pg.audit(),
            updates: pg.updates(),
            recordings: pg.recordings(),
            alerts: pg.alerts(),
            releases: pg.releases(),
            cluster: Some(pg.cluster()),
        }
    }

    /// A tenant with its initial API token `at_<id>` (hash `h_<id>`).
    async fn tenant(&self, id: &str, name: &str) {
        let t = TenantRow {
            id: id.into(),
            name: name.into(),
            created_at: 1,
        };
        self.control
            .create_tenant(&t, &format!("at_{id}"), &format!("h_{id}"))
            .await
            .unwrap();
    }

    /// A runner enrolled through a token of its own (credential `cred_<id>`).
    async fn runner(&self, tenant: &str, id: &str) {
        let row = EnrollmentTokenRow {
            id: format!("et_{id}"),
            tenant_id: tenant.into(),
            label: None,
            created_at: 1,
            expires_at: i64::MAX,
            used_at: None,
            revoked_at: None,
        };
        let hash = format!("eh_{id}");
        self.control
            .create_enrollment_token(&row, &hash)
            .await
            .unwrap();
        let cred = format!("cred_{id}");
        self.control
            .enroll(&hash, &new_runner(id, &cred, id), 2)
            .await
            .unwrap();
    }
}

/// A new, empty directory for the SQLite backend's release files.
fn release_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("tether-store-releases-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

macro_rules! both {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test]
            async fn sqlite() {
                super::$check(super::Under::sqlite().await).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$check(super::Under::postgres().await).await
            }
        }
    )*};
}

both!(
    users_are_unique_per_tenant_and_roles_round_trip,
    sessions_expire_and_die_with_password_change_or_user,
    terminal_audit_is_recorded_completed_once_and_scoped,
    update_policies_groups_and_reports,
    enrollment_spends_a_token_once_and_names_stay_unique,
    health_changes_are_recorded_once_and_revocation_sticks,
    api_tokens_die_with_revocation_expiry_and_their_creator,
    fingerprints_drift_docker_state_and_containers,
    alert_rules_and_channels_are_tenant_scoped,
    alert_transitions_keep_state_history_acks_and_silences,
    alert_transitions_through_a_link_are_written_only_while_it_is_the_runners,
    alert_states_of_many_runners_are_read_together,
    recordings_keep_chunks_in_order_policies_per_tenant_and_retention,
    sso_providers_identities_and_password_login,
    releases_stream_in_and_out_whole_or_not_at_all,
);

/// `len` bytes that differ from chunk to chunk (a misplaced chunk shows).
fn bytes_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

async fn read_all(r: &dyn ReleaseStore, version: &str, name: &str) -> Option<(u64, Vec<u8>)> {
    use futures_util::StreamExt;
    let mut d = r.open(version, name).await.unwrap()?;
    let mut out = Vec::new();
    while let Some(chunk) = d.chunks.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    Some((d.size, out))
}

async fn store(r: &dyn ReleaseStore, version: &str, name: &str, data: &[u8]) -> StoredFile {
    let mut up = r.upload(version, name).await.unwrap();
    // In uneven pieces, as a body arrives.
    for piece in data.chunks(300_001) {
        up.write(piece).await.unwrap();
    }
    up.finish().await.unwrap()
}

async fn releases_stream_in_and_out_whole_or_not_at_all(s: Under) {
    let r = s.releases.as_ref();
    assert!(r.list().await.unwrap().is_empty());
    assert!(!r.exists("0.2.0").await.unwrap());
    assert!(!r.has("0.2.0", "tether-x86_64").await.unwrap());
    assert!(r.open("0.2.0", "tether-x86_64").await.unwrap().is_none());

    // 2.5 MiB: several chunks of the PostgreSQL backend, the last short.
    let bin = bytes_of(2 * 1024 * 1024 + 512 * 1024 + 7, 1);
    let stored = store(r, "0.2.0", "tether-x86_64", &bin).await;
    assert_eq!(stored.size, bin.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&bin));
    store(r, "0.2.0", "tether-x86_64.minisig", b"sig").await;
    let empty = store(r, "0.2.0", "empty", b"").await;
    assert_eq!(empty.size, 0);
    assert!(r.exists("0.2.0").await.unwrap());
    assert!(r.has("0.2.0", "tether-x86_64").await.unwrap());
    assert!(!r.has("0.2.0", "tether-aarch64").await.unwrap());
    assert!(!r.has("0.3.0", "tether-x86_64").await.unwrap());
    assert_eq!(
        read_all(r, "0.2.0", "tether-x86_64").await,
        Some((bin.len() as u64, bin.clone()))
    );
    assert_eq!(read_all(r, "0.2.0", "empty").await, Some((0, Vec::new())));
    assert!(r.open("0.2.0", "tether-aarch64").await.unwrap().is_none());
    let list = r.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].version, "0.2.0");
    let files: Vec<(&str, u64)> = list[0]
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.size))
        .collect();
    assert_eq!(
        files,
        [
            ("empty", 0),
            ("tether-x86_64", bin.len() as u64),
            ("tether-x86_64.minisig", 3)
        ]
    );
    assert!(!list[0].signed_manifest);

    // An upload dropped before it finished leaves nothing: no new
    // release, and an existing file keeps its bytes.
    let mut cut = r.upload("0.3.0", "tether-x86_64").await.unwrap();
    cut.write(&bytes_of(1024 * 1024 + 5, 2)).await.unwrap();
    drop(cut);
    let mut cut = r.upload("0.2.0", "tether-x86_64").await.unwrap();
    cut.write(&bytes_of(1536 * 1024, 3)).await.unwrap();
    drop(cut);
    assert!(!r.exists("0.3.0").await.unwrap());
    assert!(r.open("0.3.0", "tether-x86_64").await.unwrap().is_none());
    assert_eq!(
        read_all(r, "0.2.0", "tether-x86_64").await,
        Some((bin.len() as u64, bin.clone()))
    );
    assert_eq!(r.list().await.unwrap().len(), 1);

    // A finished upload of the same name replaces the file whole.
    let newer = bytes_of(1024 * 1024, 4);
    store(r, "0.2.0", "tether-x86_64", &newer).await;
    assert_eq!(
        read_all(r, "0.2.0", "tether-x86_64").await,
        Some((newer.len() as u64, newer))
    );
    store(r, "0.10.0", "manifest.json.minisig", b"m").await;
    let mut versions: Vec<String> = r
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.version)
        .collect();
    versions.sort();
    assert_eq!(versions, ["0.10.0", "0.2.0"]);
    assert_eq!(
        r.list()
            .await
            .unwrap()
            .iter()
            .filter(|i| i.signed_manifest)
            .count(),
        1
    );
}

async fn recordings_keep_chunks_in_order_policies_per_tenant_and_retention(s: Under) {
    let r = &s.recordings;
    // The default policy: record, no input, viewers may not replay.
    let p = r.policy("tn_a").await.unwrap();
    assert_eq!(p, RecordingPolicy::default());
    assert!(p.record && !p.record_input && !p.viewers_replay);
    let mine = RecordingPolicy {
        record_input: true,
        viewers_replay: true,
        max_bytes: 4096,
        ..p
    };
    r.set_policy("tn_a", &mine).await.unwrap();
    r.set_policy("tn_a", &mine).await.unwrap();
    assert_eq!(r.policy("tn_a").await.unwrap(), mine);
    assert_eq!(r.policy("tn_b").await.unwrap(), RecordingPolicy::default());

    let row = |id: &str, tenant: &str, started_ms: i64| RecordingRow {
        id: id.into(),
        tenant_id: tenant.into(),
        runner_id: "rn_1".into(),
        target: "host".into(),
        who: "tok_1 (ops)".into(),
        started_ms,
        ended_ms: None,
        header: r#"{"version":2,"width":80,"height":24}"#.into(),
        bytes: 0,
        truncated: false,
    };
    r.start(&row("tm_old", "tn_a", 1_000)).await.unwrap();
    r.start(&row("tm_new", "tn_a", 5_000)).await.unwrap();
    r.start(&row("tm_other", "tn_b", 6_000)).await.unwrap();
    // Chunks written out of order read back in seq order; totals only grow.
    r.append("tm_new", 1, b"[0.2,\"o\",\"b\"]\n", 30, false)
        .await
        .unwrap();
    r.append("tm_new", 0, b"[0.1,\"o\",\"a\"]\n", 15, true)
        .await
        .unwrap();
    r.append("tm_old", 0, b"old\n", 4, false).await.unwrap();
    r.finish("tm_new", 9_000).await.unwrap();
    r.finish("tm_new", 9_999).await.unwrap();
    assert_eq!(
        r.events("tm_new").await.unwrap(),
        b"[0.1,\"o\",\"a\"]\n[0.2,\"o\",\"b\"]\n"
    );
    let got = r.get("tn_a", "tm_new").await.unwrap().unwrap();
    assert_eq!(
        (got.bytes, got.truncated, got.ended_ms),
        (30, true, Some(9_000))
    );
    // Tenants are apart.
    assert!(r.get("tn_b", "tm_new").await.unwrap().is_none());
    let ids: Vec<String> = r
        .list("tn_a", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(ids, ["tm_new", "tm_old"]);
    assert!(r.list("tn_a", Some("rn_2"), 10).await.unwrap().is_empty());
    assert_eq!(r.list("tn_a", None, 1).await.unwrap().len(), 1);
    // Retention: recordings started before the bound go with their chunks.
    assert_eq!(r.prune(5_000).await.unwrap(), 1);
    assert!(r.get("tn_a", "tm_old").await.unwrap().is_none());
    assert!(r.events("tm_old").await.unwrap().is_empty());
    assert!(r.get("tn_a", "tm_new").await.unwrap().is_some());
    assert_eq!(r.prune(5_000).await.unwrap(), 0);
}

fn enrollment_token(tenant: &str, id: &str, expires_at: i64) -> EnrollmentTokenRow {
    EnrollmentTokenRow {
        id: id.into(),
        tenant_id: tenant.into(),
        label: Some("l".into()),
        created_at: 1,
        expires_at,
        used_at: None,
        revoked_at: None,
    }
}

fn new_runner<'a>(id: &'a str, cred: &'a str, name: &'a str) -> NewRunner<'a> {
    NewRunner {
        id,
        credential_hash: cred,
        name,
        version: "1.0",
        arch: "x86_64",
        os: "linux",
    }
}

fn refusal(r: Result<String, EnrollError>) -> EnrollRefusal {
    match r {
        Err(EnrollError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn enrollment_spends_a_token_once_and_names_stay_unique(s: Under) {
    s.tenant("tn_1", "acme").await;
    let c = &s.control;
    assert!(matches!(
        c.create_tenant(
            &TenantRow {
                id: "tn_x".into(),
                name: "acme".into(),
                created_at: 1
            },
            "at_x",
            "h_x"
        )
        .await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(c.list_tenants().await.unwrap().len(), 1);
    assert_eq!(
        c.tenant_id_by_id_or_name("acme").await.unwrap().as_deref(),
        Some("tn_1")
    );
    assert_eq!(
        c.tenant_id_by_id_or_name("tn_1").await.unwrap().as_deref(),
        Some("tn_1")
    );
    assert_eq!(c.tenant_id_by_id_or_name("nope").await.unwrap(), None);
    for (id, exp) in [
        ("et_1", 1000),
        ("et_2", 1000),
        ("et_3", 1000),
        ("et_old", 5),
    ] {
        c.create_enrollment_token(&enrollment_token("tn_1", id, exp), &format!("h_{id}"))
            .await
            .unwrap();
    }
    assert_eq!(
        c.enroll("h_et_1", &new_runner("rn_1", "c1", "web"), 10)
            .await
            .unwrap(),
        "tn_1"
    );
    assert_eq!(
        refusal(
            c.enroll("h_et_1", &new_runner("rn_x", "cx", "web"), 11)
                .await
        ),
        EnrollRefusal::Used
    );
    assert_eq!(
        refusal(
            c.enroll("h_none", &new_runner("rn_x", "cx", "web"), 11)
                .await
        ),
        EnrollRefusal::Invalid
    );
    assert_eq!(
        refusal(
            c.enroll("h_et_old", &new_runner("rn_x", "cx", "web"), 11)
                .await
        ),
        EnrollRefusal::Expired
    );
    let revoked = c
        .revoke_enrollment_token("tn_1", "et_3", 12)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.state(13), "revoked");
    assert_eq!(
        c.revoke_enrollment_token("tn_2", "et_2", 12).await.unwrap(),
        None
    );
    assert_eq!(
        refusal(
            c.enroll("h_et_3", &new_runner("rn_x", "cx", "web"), 13)
                .await
        ),
        EnrollRefusal::Revoked
    );
    // The same asked name gets a suffix; the reported name is kept as asked.
    c.enroll("h_et_2", &new_runner("rn_2", "c2", "web"), 14)
        .await
        .unwrap();
    let runners = c.list_runners("tn_1").await.unwrap();
    let names: Vec<_> = runners
        .iter()
        .map(|r| (r.id.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(names, [("rn_1", "web"), ("rn_2", "web-2")]);
    assert_eq!(runners[1].reported_name, "web");
    assert_eq!(runners[1].health, Health::Unreachable);
    // By id (a selector's candidates): the tenant's only, unknown ids skipped.
    let ids = |v: Vec<tether_server::db::RunnerRow>| {
        let mut ids: Vec<String> = v.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let some = ["rn_2".to_owned(), "rn_x".to_owned(), "rn_1".to_owned()];
    assert_eq!(
        ids(c.runners_by_ids("tn_1", &some).await.unwrap()),
        ["rn_1", "rn_2"]
    );
    assert!(c.runners_by_ids("tn_2", &some).await.unwrap().is_empty());
    assert!(c.runners_by_ids("tn_1", &[]).await.unwrap().is_empty());
    let by_id = c.runners_by_ids("tn_1", &some[..1]).await.unwrap();
    assert_eq!(by_id[0].name, runners[1].name);
    assert_eq!(by_id[0].created_at, runners[1].created_at);
    // Version and health only (an update rollout's driver), the same rules.
    let mut versions = c.runner_versions("tn_1", &some).await.unwrap();
    versions.sort_by(|a, b| a.id.cmp(&b.id));
    let seen: Vec<_> = versions
        .iter()
        .map(|v| (v.id.as_str(), v.version.as_str(), v.health))
        .collect();
    let want: Vec<_> = runners
        .iter()
        .map(|r| (r.id.as_str(), r.version.as_str(), r.health))
        .collect();
    assert_eq!(seen, want);
    assert!(c.runner_versions("tn_2", &some).await.unwrap().is_empty());
    assert!(c.runner_versions("tn_1", &[]).await.unwrap().is_empty());
    let states: Vec<_> = c
        .list_enrollment_tokens("tn_1")
        .await
        .unwrap()
        .iter()
        .map(|t| t.state(20))
        .collect();
    assert_eq!(states, ["used", "used", "revoked", "expired"]);
    let who = c.runner_by_credential("c2").await.unwrap().unwrap();
    assert_eq!(
        (who.id.as_str(), who.tenant_id.as_str(), who.revoked),
        ("rn_2", "tn_1", false)
    );
    assert_eq!(c.runner_by_credential("nope").await.unwrap(), None);
    assert!(matches!(
        c.rename_runner("tn_1", "rn_2", "web").await,
        Err(StorageError::Conflict(_))
    ));
    let renamed = c
        .rename_runner("tn_1", "rn_2", "db")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.name, "db");
    assert_eq!(c.rename_runner("tn_2", "rn_2", "x").await.unwrap(), None);
    assert_eq!(
        c.runner("tn_2", "rn_1").await.unwrap(),
        None,
        "tenants are apart"
    );
}

fn hello() -> ConnectedInfo<'static> {
    ConnectedInfo {
        name: "host-a",
        version: "1.1",
        arch: "aarch64",
        os: "linux",
        protocol: 3,
    }
}

async fn health_changes_are_recorded_once_and_revocation_sticks(s: Under) {
    s.tenant("tn_1", "acme").await;
    s.runner("tn_1", "rn_1").await;
    s.runner("tn_1", "rn_2").await;
    let c = &s.control;
    let ConnectOutcome::Active(Some(rec)) = c
        .runner_connected("rn_1", &hello(), "connected", 100)
        .await
        .unwrap()
    else {
        panic!("a first connect is a change");
    };
    assert_eq!((rec.health, rec.at), (Health::Active, 100));
    assert_eq!(
        c.runner_connected("rn_1", &hello(), "connected", 101)
            .await
            .unwrap(),
        ConnectOutcome::Active(None),
        "active again is no change"
    );
    let row = c.runner("tn_1", "rn_1").await.unwrap().unwrap();
    assert_eq!(
        (
            row.reported_name.as_str(),
            row.version.as_str(),
            row.protocol,
            row.connected_since
        ),
        ("host-a", "1.1", Some(3), Some(101))
    );
    c.touch_last_seen(&[
        ("rn_1".into(), 500),
        ("rn_1".into(), 400),
        ("rn_9".into(), 1),
    ])
    .await
    .unwrap();
    assert_eq!(
        c.runner("tn_1", "rn_1").await.unwrap().unwrap().last_seen,
        Some(500)
    );
    let rec = c
        .runner_disconnected("rn_1", 450, "closed", 600)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.health, Health::Unreachable);
    let row = c.runner("tn_1", "rn_1").await.unwrap().unwrap();
    assert_eq!(
        (row.last_seen, row.connected_since),
        (Some(500), None),
        "last seen never goes back"
    );
    c.runner_connected("rn_2", &hello(), "connected", 700)
        .await
        .unwrap();
    let marked = c
        .mark_all_unreachable("server restarted", 800)
        .await
        .unwrap();
    assert_eq!(
        marked
            .iter()
            .map(|r| r.runner_id.as_str())
            .collect::<Vec<_>>(),
        ["rn_2"]
    );
    let (row, rec) = c.revoke_runner("tn_1", "rn_1", 900).await.unwrap().unwrap();
    assert_eq!((row.health, row.revoked_at), (Health::Revoked, Some(900)));
    assert!(rec.is_some());
    let (_, again) = c.revoke_runner("tn_1", "rn_1", 950).await.unwrap().unwrap();
    assert!(again.is_none(), "revoked once");
    assert_eq!(c.revoke_runner("tn_2", "rn_2", 950).await.unwrap(), None);
    assert_eq!(
        c.runner_connected("rn_1", &hello(), "connected", 1000)
            .await
            .unwrap(),
        ConnectOutcome::Refused
    );
    assert_eq!(
        c.runner_disconnected("rn_1", 1000, "x", 1000)
            .await
            .unwrap(),
        None
    );
    assert!(
        c.runner_by_credential("cred_rn_1")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    let history: Vec<_> = c
        .health_history("tn_1", "rn_1")
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|h| (h.at, h.health))
        .collect();
    assert_eq!(
        history,
        [
            (100, Health::Active),
            (600, Health::Unreachable),
            (900, Health::Revoked)
        ]
    );
    assert_eq!(c.health_history("tn_2", "rn_1").await.unwrap(), None);
}

async fn api_tokens_die_with_revocation_expiry_and_their_creator(s: Under) {
    s.tenant("tn_1", "acme").await;
    let ada = UserRow {
        role: Role::Admin,
        ..ada("tn_1")
    };
    s.users.create_user(&ada).await.unwrap();
    let c = &s.control;
    let token = |id: &str, user: Option<&str>, expires_at: Option<i64>| ApiTokenRow {
        id: id.into(),
        tenant_id: "tn_1".into(),
        label: Some(format!("label {id}")),
        created_at: 10,
        created_by_user: user.map(str::to_owned),
        created_by: user.map_or("api token".into(), |u| format!("user {u}")),
        expires_at,
    };
    c.create_api_token(&token("at_user", Some(&ada.id), None), "h_user")
        .await
        .unwrap();
    c.create_api_token(&token("at_exp", None, Some(100)), "h_exp")
        .await
        .unwrap();
    let auth = c.api_token_auth("h_user", 50).await.unwrap().unwrap();
    assert_eq!(
        (auth.tenant_id.as_str(), auth.created_by_user.as_deref()),
        ("tn_1", Some(ada.id.as_str()))
    );
    assert_eq!(
        c.api_token_auth("h_nope", 50).await.unwrap(),
        Err(TokenRefusal::Unknown)
    );
    assert_eq!(
        c.api_token_auth("h_exp", 100).await.unwrap(),
        Err(TokenRefusal::Expired)
    );
    assert_eq!(c.api_token_check("h_exp", 50).await.unwrap(), Ok(Some(100)));
    s.users
        .update_user("tn_1", "ada", Some(Role::Operator), None)
        .await
        .unwrap();
    assert_eq!(
        c.api_token_check("h_user", 50).await.unwrap(),
        Err(TokenRefusal::CreatorGone)
    );
    s.users
        .update_user("tn_1", "ada", Some(Role::Admin), None)
        .await
        .unwrap();
    assert_eq!(c.api_token_check("h_user", 50).await.unwrap(), Ok(None));
    // The tenant's initial token (from the seed) has no user behind it.
    let initial = "h_tn_1";
    let creds = c.watch_credentials();
    c.api_token_auth(initial, 1_000).await.unwrap().unwrap();
    c.api_token_auth(initial, 30_000).await.unwrap().unwrap();
    let used = |list: &[tether_server::db::ApiTokenInfo]| {
        list.iter()
            .find(|t| t.id == "at_tn_1")
            .unwrap()
            .last_used_at
    };
    assert_eq!(
        used(&c.list_api_tokens("tn_1").await.unwrap()),
        Some(1_000),
        "at most once a minute"
    );
    let info = c
        .revoke_api_token("tn_1", "at_tn_1", "by test", 60)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (info.state(61), info.revoked_reason.as_deref()),
        ("revoked", Some("by test"))
    );
    assert!(
        creds.has_changed().unwrap(),
        "a revocation wakes the credential watchers"
    );
    assert_eq!(
        c.api_token_auth(initial, 70).await.unwrap(),
        Err(TokenRefusal::Revoked)
    );
    assert_eq!(
        c.revoke_api_token("tn_2", "at_exp", "x", 60).await.unwrap(),
        None
    );
    assert_eq!(
        c.api_token_name("h_user").await.unwrap().as_deref(),
        Some("at_user (label at_user)")
    );
    let states: Vec<_> = c
        .list_api_tokens("tn_1")
        .await
        .unwrap()
        .iter()
        .map(|t| (t.id.clone(), t.state(200)))
        .collect();
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(states.contains(&("at_exp".into(), "expired")), "{states:?}");
    assert!(states.contains(&("at_user".into(), "active")), "{states:?}");
}

fn container(id: &str, name: &str) -> tether::protocol::ContainerSummary {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": name, "image": "alpine", "state": "running", "status": "Up",
        "created": 1, "ports": [], "labels": {}
    }))
    .unwrap()
}

async fn fingerprints_drift_docker_state_and_containers(s: Under) {
    s.tenant("tn_1", "acme").await;
    s.runner("tn_1", "rn_1").await;
    let c = &s.control;
    assert_eq!(c.fingerprint("tn_1", "rn_1").await.unwrap(), Some(None));
    assert_eq!(c.fingerprint("tn_2", "rn_1").await.unwrap(), None);
    let write = |body: &str, drift: Vec<(i64, String)>| {
        let body = body.to_owned();
        Box::new(move |_: Option<&str>| {
            Some(FingerprintWrite {
                body,
                notes: "[]".into(),
                collected_at: 5,
                updated_at: 6,
                drift,
            })
        }) as tether_server::db::control::FingerprintDecision
    };
    c.update_fingerprint("rn_1", write("{\"a\":1}", vec![]))
        .await
        .unwrap();
    c.update_fingerprint(
        "rn_1",
        write("{\"a\":2}", vec![(7, "c1".into()), (8, "c2".into())]),
    )
    .await
    .unwrap();
    // The decision sees what is stored; None writes nothing.
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    c.update_fingerprint(
        "rn_1",
        Box::new(move |stored| {
            *seen2.lock().unwrap() = stored.map(str::to_owned);
            None
        }),
    )
    .await
    .unwrap();
    assert_eq!(seen.lock().unwrap().as_deref(), Some("{\"a\":2}"));
    assert_eq!(
        c.fingerprint("tn_1", "rn_1")
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .body,
        "{\"a\":2}"
    );
    let drift: Vec<_> = c
        .drift("tn_1", "rn_1", 8)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|d| d.change)
        .collect();
    assert_eq!(drift, ["c2"]);

    assert_eq!(c.docker_state("rn_1").await.unwrap(), None);
    let state: tether::protocol::DockerState =
        serde_json::from_value(serde_json::json!({"available": true, "version": "24.0"})).unwrap();
    let row = DockerStateRow {
        state,
        updated_at: 9,
    };
    c.set_docker_state("rn_1", &row).await.unwrap();
    assert_eq!(c.docker_state("rn_1").await.unwrap(), Some(row));

    assert_eq!(
        c.containers("tn_1", "rn_1").await.unwrap().unwrap().as_of,
        None
    );
    c.replace_containers(
        "rn_1",
        &[container("b", "zeta"), container("a", "alpha")],
        10,
    )
    .await
    .unwrap();
    let event = |id: &str, action: &str, after: Option<tether::protocol::ContainerSummary>| {
        let mut e: tether::protocol::ContainerEvent = serde_json::from_value(serde_json::json!({
            "time_nano": 1, "action": action, "container_id": id
        }))
        .unwrap();
        e.container = after;
        e
    };
    c.record_container_event(
        "rn_1",
        &event("c", "start", Some(container("c", "mid"))),
        20,
    )
    .await
    .unwrap();
    c.record_container_event("rn_1", &event("a", "destroy", None), 30)
        .await
        .unwrap();
    let view = c.containers("tn_1", "rn_1").await.unwrap().unwrap();
    assert_eq!(view.as_of, Some(30));
    let names: Vec<_> = view.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["mid", "zeta"], "sorted by name");
    let events: Vec<_> = c
        .container_events("tn_1", "rn_1", 25)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| (e.at, e.event.action))
        .collect();
    assert_eq!(events, [(30, "destroy".to_owned())]);
    assert_eq!(c.containers("tn_2", "rn_1").await.unwrap(), None);
    assert_eq!(c.container_events("tn_2", "rn_1", 0).await.unwrap(), None);
}

fn ada(tenant: &str) -> UserRow {
    UserRow {
        id: format!("us_{tenant}"),
        tenant_id: tenant.into(),
        name: "ada".into(),
        password_hash: "$argon2id$x".into(),
        role: Role::Viewer,
        created_at: 5,
    }
}

async fn users_are_unique_per_tenant_and_roles_round_trip(s: Under) {
    s.tenant("tn_1", "acme").await;
    s.tenant("tn_2", "other").await;
    let u = ada("tn_1");
    s.users.create_user(&u).await.unwrap();
    assert!(matches!(
        s.users.create_user(&u).await,
        Err(StorageError::Conflict(_))
    ));
    // The same name in another tenant is another user.
    s.users.create_user(&ada("tn_2")).await.unwrap();
    assert_eq!(s.users.user("tn_1", "ada").await.unwrap(), Some(u.clone()));
    assert_eq!(s.users.user("tn_1", "bob").await.unwrap(), None);
    assert_eq!(s.users.user("tn_3", "ada").await.unwrap(), None);
    assert!(s
        .users
        .update_user("tn_1", "ada", Some(Role::Admin), None)
        .await
        .unwrap());
    let listed = s.users.list_users("tn_1").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].role, Role::Admin);
    assert_eq!(
        s.users.list_users("tn_2").await.unwrap()[0].role,
        Role::Viewer
    );
    assert!(!s
        .users
        .update_user("tn_1", "bob", Some(Role::Admin), None)
        .await
        .unwrap());
    assert!(s.users.delete_user("tn_2", "ada").await.unwrap());
    assert!(s.users.list_users("tn_2").await.unwrap().is_empty());
    assert_eq!(s.users.list_users("tn_1").await.unwrap().len(), 1);
}

async fn sessions_expire_and_die_with_password_change_or_user(s: Under) {
    s.tenant("tn_1", "acme").await;
    let u = ada("tn_1");
    s.users.create_user(&u).await.unwrap();
    let creds = s.control.watch_credentials();
    s.users
        .create_session("sh", &u.id, "csrf", 10, 100)
        .await
        .unwrap();
    let got = s.users.session("sh", 50).await.unwrap().unwrap();
    assert_eq!(
        (
            got.tenant_name.as_str(),
            got.csrf_token.as_str(),
            got.expires_at
        ),
        ("acme", "csrf", 100)
    );
    assert_eq!(got.user, u);
    assert_eq!(
        s.users.session("sh", 100).await.unwrap(),
        None,
        "expired at 100"
    );
    // A role change keeps the session but shows at once.
    s.users
        .update_user("tn_1", "ada", Some(Role::Operator), None)
        .await
        .unwrap();
    assert_eq!(
        s.users.session("sh", 50).await.unwrap().unwrap().user.role,
        Role::Operator
    );
    s.users
        .update_user("tn_1", "ada", None, Some("y"))
        .await
        .unwrap();
    assert_eq!(
        s.users.session("sh", 50).await.unwrap(),
        None,
        "a password change ends sessions"
    );
    // A login sweeps expired sessions; a logout ends its own.
    s.users
        .create_session("old", &u.id, "c", 1, 20)
        .await
        .unwrap();
    s.users
        .create_session("sh2", &u.id, "c", 30, 100)
        .await
        .unwrap();
    s.users
        .create_session("sh3", &u.id, "c", 30, 100)
        .await
        .unwrap();
    s.users.delete_session("sh3").await.unwrap();
    assert_eq!(s.users.session("sh3", 50).await.unwrap(), None);
    assert!(s.users.session("sh2", 50).await.unwrap().is_some());
    assert!(s.users.delete_user("tn_1", "ada").await.unwrap());
    assert_eq!(s.users.session("sh2", 50).await.unwrap(), None);
    assert!(!s.users.delete_user("tn_1", "ada").await.unwrap());
    // Each change that takes authority away woke the credential watchers.
    assert!(creds.has_changed().unwrap());
}

fn audit_row(id: &str, runner: &str, opened: i64) -> TerminalAuditRow {
    TerminalAuditRow {
        id: id.into(),
        runner_id: runner.into(),
        target: "host".into(),
        who: "tok_1 (ops)".into(),
        client: "127.0.0.1:5000".into(),
        opened_ms: opened,
        closed_ms: None,
        reason: None,
        bytes_in: 0,
        bytes_out: 0,
        replica_id: None,
    }
}

async fn terminal_audit_is_recorded_completed_once_and_scoped(s: Under) {
    s.audit
        .terminal_opened("tn_1", &audit_row("tm_1", "rn_1", 1000))
        .await
        .unwrap();
    s.audit
        .terminal_opened("tn_1", &audit_row("tm_2", "rn_2", 2000))
        .await
        .unwrap();
    s.audit
        .terminal_closed("tm_1", 5000, "exited 0", 12, 345)
        .await
        .unwrap();
    // A second close does not overwrite the first.
    s.audit
        .terminal_closed("tm_1", 9000, "again", 0, 0)
        .await
        .unwrap();
    let rows = s.audit.terminal_audit("tn_1", None, 10).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["tm_2", "tm_1"],
        "newest first"
    );
    let closed = &rows[1];
    assert_eq!(closed.closed_ms, Some(5000));
    assert_eq!(closed.reason.as_deref(), Some("exited 0"));
    assert_eq!((closed.bytes_in, closed.bytes_out), (12, 345));
    assert_eq!(rows[0].closed_ms, None);
    assert_eq!(
        s.audit.terminal_audit("tn_1", None, 1).await.unwrap().len(),
        1
    );
    assert!(s
        .audit
        .terminal_audit("tn_2", None, 10)
        .await
        .unwrap()
        .is_empty());
    let one = s
        .audit
        .terminal_audit("tn_1", Some("rn_1"), 10)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, "tm_1");
    assert!(s
        .audit
        .terminal_audit("tn_1", Some("rn_9"), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn update_policies_groups_and_reports(s: Under) {
    s.tenant("tn_1", "acme").await;
    s.tenant("tn_2", "other").await;
    s.runner("tn_1", "rn_a").await;
    s.runner("tn_1", "rn_b").await;
    let policy = |group: &str, version: &str, canary: u8| UpdatePolicy {
        group: group.into(),
        version: version.into(),
        canary_percent: canary,
        updated_at: 10,
    };
    assert_eq!(
        s.updates.update_policy_for("tn_1", "rn_a").await.unwrap(),
        None
    );
    s.updates
        .set_update_policy("tn_1", &policy("", "1.1.0", 100))
        .await
        .unwrap();
    s.updates
        .set_update_policy("tn_1", &policy("edge", "1.2.0", 10))
        .await
        .unwrap();
    // Setting again replaces.
    s.updates
        .set_update_policy("tn_1", &policy("edge", "1.2.1", 25))
        .await
        .unwrap();
    let all = s.updates.update_policies("tn_1").await.unwrap();
    assert_eq!(all, [policy("", "1.1.0", 100), policy("edge", "1.2.1", 25)]);
    assert!(s.updates.update_policies("tn_2").await.unwrap().is_empty());

    assert_eq!(
        s.updates.runner_group("rn_a").await.unwrap().as_deref(),
        Some("")
    );
    assert_eq!(s.updates.runner_group("rn_none").await.unwrap(), None);
    assert!(s
        .updates
        .set_runner_group("tn_1", "rn_a", "edge")
        .await
        .unwrap());
    assert!(
        !s.updates
            .set_runner_group("tn_2", "rn_b", "edge")
            .await
            .unwrap(),
        "another tenant's runner"
    );
    assert_eq!(
        s.updates.update_policy_for("tn_1", "rn_a").await.unwrap(),
        Some(("edge".into(), policy("edge", "1.2.1", 25)))
    );
    assert_eq!(
        s.updates.update_policy_for("tn_1", "rn_b").await.unwrap(),
        Some((String::new(), policy("", "1.1.0", 100))),
        "no group: the tenant's default"
    );
    assert!(s.updates.clear_update_policy("tn_1", "edge").await.unwrap());
    assert!(!s.updates.clear_update_policy("tn_1", "edge").await.unwrap());
    assert_eq!(
        s.updates.update_policy_for("tn_1", "rn_a").await.unwrap(),
        Some(("edge".into(), policy("", "1.1.0", 100))),
        "its group's policy gone: the tenant's default"
    );

    let status = |state: &str, took: Option<u64>| UpdateStatus {
        version: "1.1.0".into(),
        state: state.into(),
        from_version: "1.0.0".into(),
        reason: (state != "installed").then(|| "why".to_owned()),
        at_ms: 0,
        took_ms: took,
    };
    s.updates
        .record_update_report("rn_a", 100, &status("downloading", None))
        .await
        .unwrap();
    s.updates
        .record_update_report("rn_a", 200, &status("installed", Some(1234)))
        .await
        .unwrap();
    let reports = s.updates.update_reports("rn_a").await.unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!((reports[0].at, reports[1].at), (100, 200), "oldest first");
    assert_eq!(reports[1].status, status("installed", Some(1234)));
    assert_eq!(reports[0].status.reason.as_deref(), Some("why"));
    assert!(s.updates.update_reports("rn_b").await.unwrap().is_empty());
    // The newest report per runner of the tenant (the update filter, the
    // update rollouts' driver).
    let latest = s.updates.latest_update_reports("tn_1").await.unwrap();
    assert_eq!(latest.len(), 1, "{latest:?}");
    assert_eq!(latest["rn_a"].at, 200);
    assert_eq!(latest["rn_a"].status, status("installed", Some(1234)));
    assert!(s
        .updates
        .latest_update_reports("tn_2")
        .await
        .unwrap()
        .is_empty());
}

fn rule(id: &str, tenant: &str, name: &str) -> Rule {
    let spec: RuleSpec = serde_json::from_value(serde_json::json!({
        "name": name, "kind": "metric", "series": "fs.*.avail", "per": "fs.*.size",
        "op": "below", "threshold": 10.0, "for_s": 60, "channels": ["ch_1"],
    }))
    .unwrap();
    Rule {
        id: id.into(),
        tenant: tenant.into(),
        spec,
    }
}

fn channel(id: &str, tenant: &str, name: &str, sealed: &[u8]) -> ChannelRow {
    ChannelRow {
        id: id.into(),
        tenant: tenant.into(),
        name: name.into(),
        kind: "webhook".into(),
        public: r#"{"url":"https://hooks.example/…"}"#.into(),
        nonce: vec![7; 12],
        sealed: sealed.to_vec(),
        created_ms: 5,
    }
}

async fn alert_rules_and_channels_are_tenant_scoped(s: Under) {
    let a = &s.alerts;
    a.put_rule(&rule("ar_1", "tn_1", "disk"), 10).await.unwrap();
    a.put_rule(&rule("ar_2", "tn_1", "disk2"), 11)
        .await
        .unwrap();
    a.put_rule(&rule("ar_3", "tn_2", "theirs"), 12)
        .await
        .unwrap();
    // Replacing keeps the id and creation order; another tenant cannot.
    a.put_rule(&rule("ar_1", "tn_1", "disk low"), 20)
        .await
        .unwrap();
    a.put_rule(&rule("ar_1", "tn_2", "hijack"), 21)
        .await
        .unwrap();
    let mine = a.rules("tn_1").await.unwrap();
    assert_eq!(
        mine,
        [
            rule("ar_1", "tn_1", "disk low"),
            rule("ar_2", "tn_1", "disk2")
        ]
    );
    assert_eq!(
        a.rules("tn_2").await.unwrap(),
        [rule("ar_3", "tn_2", "theirs")]
    );
    assert_eq!(a.all_rules().await.unwrap().len(), 3);
    assert!(
        !a.delete_rule("tn_2", "ar_1").await.unwrap(),
        "another tenant's"
    );
    assert!(a.delete_rule("tn_1", "ar_2").await.unwrap());
    assert!(!a.delete_rule("tn_1", "ar_2").await.unwrap());
    assert_eq!(a.rules("tn_1").await.unwrap().len(), 1);

    assert!(a
        .put_channel(&channel("ch_1", "tn_1", "ops", b"k1"))
        .await
        .unwrap());
    assert!(
        !a.put_channel(&channel("ch_2", "tn_1", "ops", b"k2"))
            .await
            .unwrap(),
        "a name taken in the tenant"
    );
    assert!(a
        .put_channel(&channel("ch_3", "tn_2", "ops", b"k3"))
        .await
        .unwrap());
    assert!(
        !a.put_channel(&channel("ch_1", "tn_2", "stolen", b"x"))
            .await
            .unwrap(),
        "another tenant's id"
    );
    // Updating in place: the new sealed config replaces the old.
    assert!(a
        .put_channel(&channel("ch_1", "tn_1", "ops-2", b"k1b"))
        .await
        .unwrap());
    let ch = a.channel("tn_1", "ch_1").await.unwrap().unwrap();
    assert_eq!(ch, channel("ch_1", "tn_1", "ops-2", b"k1b"));
    assert_eq!(
        a.channel("tn_1", "ops-2").await.unwrap().map(|c| c.id),
        Some("ch_1".into()),
        "by name"
    );
    assert_eq!(a.channel("tn_2", "ch_1").await.unwrap(), None);
    assert_eq!(a.channels("tn_1").await.unwrap().len(), 1);
    assert!(!a.delete_channel("tn_2", "ch_1").await.unwrap());
    assert!(a.delete_channel("tn_1", "ch_1").await.unwrap());
    assert!(a.channels("tn_1").await.unwrap().is_empty());
    assert_eq!(a.channels("tn_2").await.unwrap().len(), 1);

    // Deliveries: per tenant and channel, newest first, limited.
    for i in 0..3 {
        let d = DeliveryRow {
            seq: 0,
            channel_id: "ch_3".into(),
            history_seq: (i > 0).then_some(i),
            at_ms: 100 + i,
            attempt: 1,
            ok: i != 1,
            detail: format!("try {i}"),
        };
        a.delivery("tn_2", &d).await.unwrap();
    }
    let ds = a.deliveries("tn_2", "ch_3", 2).await.unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(
        (ds[0].at_ms, ds[0].ok, ds[0].history_seq),
        (102, true, Some(2))
    );
    assert_eq!((ds[1].detail.as_str(), ds[1].ok), ("try 1", false));
    assert!(ds[0].seq > ds[1].seq);
    assert!(a.deliveries("tn_1", "ch_3", 10).await.unwrap().is_empty());
}

fn alert(rule: &str, target: &str, state: State, since: i64) -> AlertRow {
    AlertRow {
        rule_id: rule.into(),
        target: target.into(),
        tenant: "tn_1".into(),
        runner_id: "rn_1".into(),
        subject: format!("{target} on rn_1"),
        state,
        since_ms: since,
        summary: format!("{target} is {}", state.as_str()),
        ack: None,
    }
}

async fn alert_transitions_keep_state_history_acks_and_silences(s: Under) {
    let a = &s.alerts;
    a.put_rule(&rule("ar_1", "tn_1", "disk"), 10).await.unwrap();
    let h1 = a
        .transition(&alert("ar_1", "/", State::Pending, 100), false, 100, None)
        .await
        .unwrap()
        .unwrap();
    assert!(
        a.alerts("tn_1").await.unwrap().is_empty(),
        "pending is not listed"
    );
    assert_eq!(a.all_alerts().await.unwrap().len(), 1, "the engine sees it");
    let ack = Ack {
        by: "ada".into(),
        at_ms: 150,
        comment: "looking".into(),
    };
    assert!(
        !a.ack("tn_1", "ar_1", "/", &ack).await.unwrap(),
        "only firing is acked"
    );
    let h2 = a
        .transition(&alert("ar_1", "/", State::Firing, 160), true, 160, None)
        .await
        .unwrap()
        .unwrap();
    a.transition(&alert("ar_1", "/var", State::Firing, 170), false, 170, None)
        .await
        .unwrap();
    assert!(h2 > h1);
    assert!(
        !a.ack("tn_2", "ar_1", "/", &ack).await.unwrap(),
        "another tenant"
    );
    assert!(a.ack("tn_1", "ar_1", "/", &ack).await.unwrap());
    let firing = a.alerts("tn_1").await.unwrap();
    assert_eq!(firing.len(), 2);
    assert_eq!(firing[0].target, "/", "oldest first");
    assert_eq!(firing[0].ack.as_ref(), Some(&ack));
    assert_eq!(firing[0].state, State::Firing);
    assert_eq!(firing[1].ack, None);
    assert!(a.alerts("tn_2").await.unwrap().is_empty());

    // Resolving removes the state; history keeps every step, newest first.
    a.transition(&alert("ar_1", "/", State::Resolved, 200), false, 200, None)
        .await
        .unwrap();
    let firing = a.alerts("tn_1").await.unwrap();
    assert_eq!(
        firing.iter().map(|f| f.target.as_str()).collect::<Vec<_>>(),
        ["/var"]
    );
    let hist = a.history("tn_1", i64::MAX, 10).await.unwrap();
    assert_eq!(
        hist.iter().map(|h| h.state.as_str()).collect::<Vec<_>>(),
        ["resolved", "firing", "firing", "pending"]
    );
    assert_eq!(hist[2].seq, h2);
    assert!(hist[2].silenced && !hist[1].silenced);
    let page = a.history("tn_1", hist[1].seq, 2).await.unwrap();
    assert_eq!(page.iter().map(|h| h.seq).collect::<Vec<_>>(), [h2, h1]);
    assert!(a.history("tn_2", i64::MAX, 10).await.unwrap().is_empty());

    // Deleting the rule drops its live states.
    assert!(a.delete_rule("tn_1", "ar_1").await.unwrap());
    assert!(a.all_alerts().await.unwrap().is_empty());

    let silence = |id: &str, tenant: &str, ends: i64| Silence {
        id: id.into(),
        tenant: tenant.into(),
        created_by: "ada".into(),
        spec: SilenceSpec {
            rule: Some("ar_1".into()),
            runner: None,
            group: None,
            starts_ms: 0,
            ends_ms: ends,
            comment: "deploy".into(),
            maintenance: false,
        },
    };
    a.put_silence(&silence("si_1", "tn_1", 1_000))
        .await
        .unwrap();
    a.put_silence(&silence("si_2", "tn_1", 500)).await.unwrap();
    a.put_silence(&silence("si_3", "tn_2", 2_000))
        .await
        .unwrap();
    let mine = a.silences("tn_1").await.unwrap();
    assert_eq!(
        mine,
        [silence("si_2", "tn_1", 500), silence("si_1", "tn_1", 1_000)]
    );
    assert!(!a.delete_silence("tn_2", "si_1").await.unwrap());
    // The engine's read prunes the ended ones.
    let live = a.all_silences(600).await.unwrap();
    let mut ids: Vec<_> = live.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["si_1", "si_3"]);
    assert_eq!(a.silences("tn_1").await.unwrap().len(), 1);
    assert!(a.delete_silence("tn_1", "si_1").await.unwrap());
    assert!(a.silences("tn_1").await.unwrap().is_empty());
}

/// A report alert's transition written through a link (a replica's
/// engine) is stored only while that link is the runner's current one in
/// the live-links table: one replaced by another replica's (or by a newer
/// one of the same replica), or ended, is refused, and nothing of it is
/// written (state, history). Without a link (one server, a health alert
/// of the lease holder) it is written as ever. SQLite is one replica with
/// no links table: no link is current there, so every write through one
/// is refused, and the one server's writes (without) go in.
async fn alert_transitions_through_a_link_are_written_only_while_it_is_the_runners(s: Under) {
    s.tenant("tn_1", "acme").await;
    s.runner("tn_1", "rn_1").await;
    let a = &s.alerts;
    a.put_rule(&rule("ar_1", "tn_1", "disk"), 10).await.unwrap();
    let through = |replica: &str, generation: u64| LinkRef {
        replica_id: replica.into(),
        generation,
    };
    let written = |a: &Arc<dyn AlertStore>| {
        let a = a.clone();
        async move {
            let states = a.all_alerts().await.unwrap();
            let hist = a.history("tn_1", i64::MAX, 100).await.unwrap();
            (
                states
                    .iter()
                    .map(|s| format!("{}:{}", s.target, s.state.as_str()))
                    .collect::<Vec<_>>(),
                hist.iter()
                    .map(|h| format!("{}:{}", h.subject, h.state))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let firing = alert("ar_1", "/", State::Firing, 100);
    let resolved = alert("ar_1", "/", State::Resolved, 300);

    let Some(cluster) = &s.cluster else {
        // SQLite: through a link, refused; without one, written.
        for l in [through("a", 1), through("", 0)] {
            assert_eq!(
                a.transition(&firing, false, 100, Some(&l)).await.unwrap(),
                None
            );
        }
        assert_eq!(written(a).await, (vec![], vec![]), "nothing written");
        assert!(a
            .transition(&firing, false, 100, None)
            .await
            .unwrap()
            .is_some());
        assert!(a
            .transition(&resolved, false, 300, None)
            .await
            .unwrap()
            .is_some());
        let (states, hist) = written(a).await;
        assert!(states.is_empty());
        assert_eq!(hist, ["/ on rn_1:resolved", "/ on rn_1:firing"]);
        return;
    };

    // Linked to replica a (generation 7): a's writes go in; b's do not.
    let linked = |replica: &'static str, generation: u64, now: i64| {
        let cluster = cluster.clone();
        async move {
            let out = cluster
                .link(replica, "rn_1", generation, &hello(), "connected", now)
                .await
                .unwrap();
            assert!(matches!(out, ConnectOutcome::Active(_)), "{out:?}");
        }
    };
    linked("a", 7, 50).await;
    assert_eq!(
        a.transition(&firing, false, 100, Some(&through("b", 7)))
            .await
            .unwrap(),
        None,
        "another replica's link"
    );
    assert_eq!(
        a.transition(&firing, false, 100, Some(&through("a", 6)))
            .await
            .unwrap(),
        None,
        "an older link of the holder"
    );
    assert_eq!(written(a).await, (vec![], vec![]));
    let seq = a
        .transition(&firing, false, 100, Some(&through("a", 7)))
        .await
        .unwrap()
        .expect("the holder's current link");
    assert_eq!(
        written(a).await,
        (vec!["/:firing".into()], vec!["/ on rn_1:firing".into()])
    );

    // The runner moves to b (a's link fenced): a's late transition is
    // refused, state and history as they were; b's goes in.
    linked("b", 3, 200).await;
    assert_eq!(
        a.transition(&resolved, false, 300, Some(&through("a", 7)))
            .await
            .unwrap(),
        None,
        "a stale generation"
    );
    let pending = alert("ar_1", "/var", State::Pending, 310);
    assert_eq!(
        a.transition(&pending, false, 310, Some(&through("a", 7)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        written(a).await,
        (vec!["/:firing".into()], vec!["/ on rn_1:firing".into()]),
        "nothing of the refused writes"
    );
    let seq_b = a
        .transition(&resolved, false, 320, Some(&through("b", 3)))
        .await
        .unwrap()
        .expect("b's link is current");
    assert!(seq_b > seq);
    assert_eq!(
        written(a).await,
        (
            vec![],
            vec!["/ on rn_1:resolved".into(), "/ on rn_1:firing".into()]
        )
    );

    // b's link ends (the runner linked nowhere): b's writes are refused
    // too; a write without a link (a health alert) still goes in.
    assert!(cluster
        .unlink("b", "rn_1", 3, 400, "closed", 400)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        a.transition(&firing, false, 500, Some(&through("b", 3)))
            .await
            .unwrap(),
        None
    );
    assert!(a
        .transition(&firing, false, 500, None)
        .await
        .unwrap()
        .is_some());
    assert_eq!(written(a).await.0, ["/:firing"]);
}

/// A replica taking many runners over reads their states together:
/// every pending and firing state of the runners asked for, none of the
/// others, across more ids than one query takes.
async fn alert_states_of_many_runners_are_read_together(s: Under) {
    let a = &s.alerts;
    a.put_rule(&rule("ar_1", "tn_1", "disk"), 10).await.unwrap();
    let n = tether_server::db::alerts::TAKE_OVER_CHUNK * 2 + 7;
    for i in 0..n {
        let mut row = alert("ar_1", &format!("rn_{i}//"), State::Firing, i as i64);
        row.runner_id = format!("rn_{i}");
        a.transition(&row, false, i as i64, None).await.unwrap();
    }
    // Every other runner, and ids with no state.
    let ask: Vec<String> = (0..n + 40).step_by(2).map(|i| format!("rn_{i}")).collect();
    let got = a.runners_alerts(&ask).await.unwrap();
    let mut runners: Vec<String> = got.iter().map(|r| r.runner_id.clone()).collect();
    runners.sort();
    let mut want: Vec<String> = (0..n).step_by(2).map(|i| format!("rn_{i}")).collect();
    want.sort();
    assert_eq!(runners, want);
    let one = got.iter().find(|r| r.runner_id == "rn_2").unwrap();
    assert_eq!(
        (one.target.as_str(), one.state, one.since_ms),
        ("rn_2//", State::Firing, 2)
    );
    assert!(a.runners_alerts(&[]).await.unwrap().is_empty());
}

/// The migration runner: a second connect (another replica, a restart)
/// applies nothing again, and several at once agree.
#[tokio::test]
async fn postgres_migrations_apply_once_even_when_replicas_start_together() {
    let url = pg::fresh_database().await;
    let starts = (0..3).map(|_| Postgres::connect(&url));
    let dbs: Vec<_> = futures_util::future::join_all(starts).await;
    for db in &dbs {
        let applied = db.as_ref().unwrap().applied_migrations().await.unwrap();
        assert_eq!(applied, (1..=applied.len() as i32).collect::<Vec<_>>());
        assert!(!applied.is_empty());
    }
    let again = Postgres::connect(&url).await.unwrap();
    assert_eq!(
        again.applied_migrations().await.unwrap(),
        dbs[0].as_ref().unwrap().applied_migrations().await.unwrap()
    );
    assert!(matches!(
        Postgres::connect("postgres://tether@127.0.0.1:1/none").await,
        Err(StorageError::Backend(_))
    ));
}

fn provider(tenant: &str, id: &str, name: &str) -> OidcProviderRow {
    OidcProviderRow {
        id: id.into(),
        tenant_id: tenant.into(),
        name: name.into(),
        issuer: "https://id.example/".into(),
        client_id: "tether".into(),
        // Not UTF-8: stored as bytes.
        secret_nonce: vec![0, 255, 1, 128],
        secret_sealed: vec![200, 0, 7],
        role_claim: "groups".into(),
        role_map: r#"{"ops":"operator"}"#.into(),
        default_role: None,
        created_at: 9,
    }
}

async fn sso_providers_identities_and_password_login(s: Under) {
    s.tenant("tn_1", "acme").await;
    s.tenant("tn_2", "other").await;
    let u = &s.users;
    let corp = provider("tn_1", "op_1", "corp");
    u.create_oidc_provider(&corp).await.unwrap();
    // A name is the tenant's: taken twice in one tenant, free in another.
    assert!(matches!(
        u.create_oidc_provider(&provider("tn_1", "op_x", "corp"))
            .await,
        Err(StorageError::Conflict(_))
    ));
    let mut theirs = provider("tn_2", "op_2", "corp");
    theirs.default_role = Some(Role::Viewer);
    u.create_oidc_provider(&theirs).await.unwrap();
    // Listed by name in byte order (what SQLite's BINARY collation does).
    let mut upper = provider("tn_1", "op_3", "Beta");
    upper.default_role = Some(Role::Admin);
    u.create_oidc_provider(&upper).await.unwrap();
    u.create_oidc_provider(&provider("tn_1", "op_4", "alpha"))
        .await
        .unwrap();
    let names: Vec<String> = u
        .oidc_providers("tn_1")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["Beta", "alpha", "corp"]);
    assert_eq!(u.oidc_providers("tn_2").await.unwrap(), [theirs.clone()]);
    assert!(u.oidc_providers("tn_3").await.unwrap().is_empty());
    assert_eq!(
        u.oidc_provider("tn_1", "corp").await.unwrap(),
        Some(corp.clone())
    );
    assert_eq!(u.oidc_provider("tn_1", "Beta").await.unwrap(), Some(upper));
    assert_eq!(u.oidc_provider("tn_1", "nope").await.unwrap(), None);
    assert_eq!(u.oidc_provider("tn_3", "corp").await.unwrap(), None);

    // A subject's first login makes its user and the link, together.
    let mut alice = ada("tn_1");
    alice.id = "us_alice".into();
    alice.name = "alice".into();
    alice.password_hash = "!sso".into();
    u.create_oidc_user(&alice, "op_1", "sub-1").await.unwrap();
    assert_eq!(
        u.oidc_user("op_1", "sub-1").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(u.oidc_user("op_1", "sub-2").await.unwrap(), None);
    assert_eq!(u.oidc_user("op_2", "sub-1").await.unwrap(), None);
    // A name already taken (a local user's): refused, no link left behind.
    u.create_user(&ada("tn_1")).await.unwrap();
    let mut taken = ada("tn_1");
    taken.id = "us_other".into();
    assert!(matches!(
        u.create_oidc_user(&taken, "op_1", "sub-2").await,
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(u.oidc_user("op_1", "sub-2").await.unwrap(), None);
    assert_eq!(u.user("tn_1", "ada").await.unwrap(), Some(ada("tn_1")));

    // Password login: on by default, per tenant.
    assert!(u.password_login("tn_1").await.unwrap());
    u.set_password_login("tn_1", false).await.unwrap();
    assert!(!u.password_login("tn_1").await.unwrap());
    assert!(u.password_login("tn_2").await.unwrap());
    u.set_password_login("tn_1", true).await.unwrap();
    assert!(u.password_login("tn_1").await.unwrap());
    u.set_password_login("tn_1", false).await.unwrap();

    // Removing a provider takes its links, not its users, and only its
    // own tenant's.
    assert!(u.delete_oidc_provider("tn_1", "corp").await.unwrap());
    assert!(!u.delete_oidc_provider("tn_1", "corp").await.unwrap());
    assert_eq!(u.oidc_user("op_1", "sub-1").await.unwrap(), None);
    assert_eq!(u.user("tn_1", "alice").await.unwrap(), Some(alice));
    assert_eq!(u.oidc_provider("tn_2", "corp").await.unwrap(), Some(theirs));
    assert!(!u.password_login("tn_1").await.unwrap());
}
