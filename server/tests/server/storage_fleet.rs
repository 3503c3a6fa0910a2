//! The storage conformance checks of the fleet store and the audit trail,
//! on both backends (the embedded SQLite and a real PostgreSQL, `pg.rs`),
//! as `storage.rs` does for the others: labels and proposals, the fleet
//! policy, job deadlines, rollouts, schedules claimed once per occurrence;
//! a hash chain that comes out the same, bit for bit, on both, and stays
//! whole through retention. PostgreSQL's triggers refuse edits as SQLite's
//! do (`sqlite/trail.rs`'s unit tests for those).

use std::sync::Arc;

use tether_server::db::fleet::{HasLabel, Labels, Policy, RolloutRow, MAX_LABELS};
use tether_server::db::postgres::Postgres;
use tether_server::db::trail::{entry_hash, AuditQuery, NewEntry, GENESIS};
use tether_server::db::{FleetStore, TrailStore};

use crate::pg;

struct Under {
    fleet: Arc<dyn FleetStore>,
    trail: Arc<dyn TrailStore>,
}

impl Under {
    async fn sqlite() -> Under {
        let db = tether_server::db::sqlite::open_in_memory(Default::default()).unwrap();
        Under {
            fleet: db.fleet.clone(),
            trail: db.trail.clone(),
        }
    }

    async fn postgres() -> Under {
        let pg = Postgres::connect(&pg::fresh_database().await)
            .await
            .unwrap();
        Under {
            fleet: pg.fleet(),
            trail: pg.trail(),
        }
    }
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
    labels_proposals_and_policy,
    labels_where_finds_the_runners_having_labels,
    deadlines_and_rollouts,
    rollouts_change_by_revision,
    runner_versions,
    schedules_are_claimed_once_per_occurrence,
    the_audit_chain_is_the_same_on_both_and_survives_retention,
);

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn labels_proposals_and_policy(s: Under) {
    let f = &s.fleet;
    f.replace_labels("tn_1", "rn_1", &labels(&[("a", "1"), ("b", "2")]))
        .await
        .unwrap();
    assert_eq!(
        f.labels("tn_1", "rn_1").await.unwrap(),
        (labels(&[("a", "1"), ("b", "2")]), Labels::new())
    );
    // Scoped by tenant.
    assert_eq!(
        f.labels("tn_2", "rn_1").await.unwrap(),
        (Labels::new(), Labels::new())
    );
    // The host proposes: what the policy accepts goes straight in, the
    // rest waits; a value already set is no proposal.
    let policy = Policy {
        job_deadline_s: None,
        auto_accept: vec!["c".into()],
    };
    f.propose(
        "tn_1",
        "rn_1",
        &labels(&[("a", "1"), ("c", "3"), ("d", "4"), ("e", "5")]),
        &policy,
    )
    .await
    .unwrap();
    let (set, proposed) = f.labels("tn_1", "rn_1").await.unwrap();
    assert_eq!(set, labels(&[("a", "1"), ("b", "2"), ("c", "3")]));
    assert_eq!(proposed, labels(&[("d", "4"), ("e", "5")]));
    // Accept one key; then the operator sets the other the same way: settled.
    let after = f
        .accept("tn_1", "rn_1", Some(&["d".to_owned()]))
        .await
        .unwrap();
    assert_eq!(after.get("d").map(String::as_str), Some("4"));
    let mut all = after.clone();
    all.insert("e".into(), "5".into());
    f.replace_labels("tn_1", "rn_1", &all).await.unwrap();
    assert_eq!(
        f.labels("tn_1", "rn_1").await.unwrap(),
        (all, Labels::new())
    );
    f.replace_labels("tn_1", "rn_2", &labels(&[("z", "9")]))
        .await
        .unwrap();
    let tenant = f.tenant_labels("tn_1").await.unwrap();
    assert_eq!(tenant.len(), 2);
    assert_eq!(tenant["rn_2"], labels(&[("z", "9")]));
    // Accepting stops at MAX_LABELS; the rest stay proposed.
    let many: Labels = (0..MAX_LABELS + 5)
        .map(|i| (format!("k{i:02}"), "v".to_owned()))
        .collect();
    f.replace_labels("tn_1", "rn_3", &Labels::new())
        .await
        .unwrap();
    f.propose("tn_1", "rn_3", &many, &Policy::default())
        .await
        .unwrap();
    let accepted = f.accept("tn_1", "rn_3", None).await.unwrap();
    let (set, proposed) = f.labels("tn_1", "rn_3").await.unwrap();
    assert_eq!(
        (accepted.len(), set.len(), proposed.len()),
        (MAX_LABELS, MAX_LABELS, 5)
    );

    assert_eq!(f.policy("tn_1").await.unwrap(), Policy::default());
    let p = Policy {
        job_deadline_s: Some(600),
        auto_accept: vec!["role".into(), "zone".into()],
    };
    f.set_policy("tn_1", &p).await.unwrap();
    assert_eq!(f.policy("tn_1").await.unwrap(), p);
    f.set_policy("tn_1", &Policy::default()).await.unwrap();
    assert_eq!(f.policy("tn_1").await.unwrap(), Policy::default());
}

/// What a selector's `k=v`, `k in (…)` and `k` ask of the store: every
/// runner having all those labels, each with all its labels; the tenant's
/// only; a change seen at the next call.
async fn labels_where_finds_the_runners_having_labels(s: Under) {
    let f = &s.fleet;
    let fleet: [(&str, &[(&str, &str)]); 5] = [
        ("rn_1", &[("role", "db"), ("region", "eu")]),
        ("rn_2", &[("role", "web"), ("region", "eu")]),
        ("rn_3", &[("role", "db"), ("region", "us"), ("canary", "")]),
        ("rn_4", &[("region", "ap")]),
        ("rn_5", &[]),
    ];
    for (r, l) in fleet {
        f.replace_labels("tn_1", r, &labels(l)).await.unwrap();
    }
    f.replace_labels("tn_2", "rn_9", &labels(&[("role", "db")]))
        .await
        .unwrap();
    let has = |k: &str, v: Option<&[&str]>| HasLabel {
        key: k.to_owned(),
        values: v.map(|v| v.iter().map(|x| (*x).to_owned()).collect()),
    };
    let ids = |m: &std::collections::HashMap<String, Labels>| {
        let mut v: Vec<&str> = m.keys().map(String::as_str).collect();
        v.sort();
        v.join(",")
    };
    let got = f
        .labels_where("tn_1", &[has("role", Some(&["db"]))])
        .await
        .unwrap();
    assert_eq!(ids(&got), "rn_1,rn_3");
    assert_eq!(
        got["rn_3"],
        labels(&[("role", "db"), ("region", "us"), ("canary", "")])
    );
    for (must, want) in [
        (vec![has("region", Some(&["eu", "us"]))], "rn_1,rn_2,rn_3"),
        (vec![has("region", None)], "rn_1,rn_2,rn_3,rn_4"),
        (
            vec![has("role", Some(&["db"])), has("region", Some(&["eu"]))],
            "rn_1",
        ),
        (vec![has("role", None), has("canary", None)], "rn_3"),
        (vec![has("canary", Some(&[""]))], "rn_3"),
        (vec![has("role", Some(&[]))], ""),
        (vec![has("nope", None)], ""),
    ] {
        let got = f.labels_where("tn_1", &must).await.unwrap();
        assert_eq!(ids(&got), want, "{must:?}");
    }
    // Changed: counted at once.
    f.replace_labels("tn_1", "rn_2", &labels(&[("role", "db")]))
        .await
        .unwrap();
    let got = f
        .labels_where("tn_1", &[has("role", Some(&["db"]))])
        .await
        .unwrap();
    assert_eq!(ids(&got), "rn_1,rn_2,rn_3");
    assert_eq!(
        ids(&f
            .labels_where("tn_2", &[has("role", Some(&["db"]))])
            .await
            .unwrap()),
        "rn_9"
    );
}

fn rollout(id: &str, tenant: &str, state: &str, created: i64) -> RolloutRow {
    RolloutRow {
        id: id.into(),
        tenant_id: tenant.into(),
        state: state.into(),
        created_ms: created,
        updated_ms: created,
        body: format!("{{\"id\":\"{id}\"}}"),
        driver: None,
        rev: 0,
    }
}

async fn deadlines_and_rollouts(s: Under) {
    let f = &s.fleet;
    let jobs = vec![
        ("jb_1".to_owned(), "rn_1".to_owned()),
        ("jb_2".to_owned(), "rn_2".to_owned()),
    ];
    f.add_deadlines("tn_1", &jobs, 1_000).await.unwrap();
    f.add_deadlines("tn_1", &[("jb_3".into(), "rn_1".into())], 500)
        .await
        .unwrap();
    assert!(f.due_deadlines(499, 10).await.unwrap().is_empty());
    let due = f.due_deadlines(1_000, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(ids[0], "jb_3", "soonest first: {due:?}");
    assert_eq!(due.len(), 3);
    assert_eq!(due[0], ("jb_3".into(), "tn_1".into(), "rn_1".into(), 500));
    assert_eq!(f.due_deadlines(1_000, 1).await.unwrap().len(), 1);
    f.drop_deadline("jb_3").await.unwrap();
    f.drop_deadline("jb_none").await.unwrap();
    assert_eq!(f.due_deadlines(1_000, 10).await.unwrap().len(), 2);

    f.save_rollout(&rollout("ro_1", "tn_1", "running", 10))
        .await
        .unwrap();
    f.save_rollout(&rollout("ro_2", "tn_1", "running", 20))
        .await
        .unwrap();
    f.save_rollout(&rollout("ro_3", "tn_2", "running", 30))
        .await
        .unwrap();
    let mut done = rollout("ro_1", "tn_1", "done", 10);
    done.updated_ms = 99;
    f.save_rollout(&done).await.unwrap();
    let got = f.rollout("tn_1", "ro_1").await.unwrap().unwrap();
    assert_eq!((got.state.as_str(), got.updated_ms), ("done", 99));
    assert!(f.rollout("tn_2", "ro_1").await.unwrap().is_none());
    let list: Vec<String> = f
        .rollouts("tn_1", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(list, ["ro_2", "ro_1"], "newest first, this tenant only");
    assert_eq!(f.rollouts("tn_1", 1).await.unwrap().len(), 1);
}

/// A rollout's driver state is written compare-and-set on its revision
/// (the driver on the lease holder, actions on any replica), and the open
/// ones (with driver state) are what a new driver takes up.
async fn rollouts_change_by_revision(s: Under) {
    let f = &s.fleet;
    assert!(f.open_rollouts().await.unwrap().is_empty());
    let mut a = rollout("ro_a", "tn_1", "running", 10);
    a.driver = Some("{\"planner\":1}".into());
    f.save_rollout(&a).await.unwrap();
    let mut b = rollout("ro_b", "tn_2", "paused", 20);
    b.driver = Some("{}".into());
    f.save_rollout(&b).await.unwrap();
    f.save_rollout(&rollout("ro_old", "tn_1", "running", 5))
        .await
        .unwrap();
    assert_eq!(
        f.open_rollouts().await.unwrap(),
        [
            ("tn_1".to_owned(), "ro_a".to_owned(), 0),
            ("tn_2".to_owned(), "ro_b".to_owned(), 0)
        ],
        "oldest first; a row without driver state is not open"
    );
    let got = f.rollout("tn_1", "ro_a").await.unwrap().unwrap();
    assert_eq!(
        (got.driver.as_deref(), got.rev),
        (Some("{\"planner\":1}"), 0)
    );

    // Two writers read rev 0: the first lands, the second misses.
    let mut first = got.clone();
    first.state = "paused".into();
    first.body = "{\"state\":\"paused\"}".into();
    assert!(f.update_rollout(&first).await.unwrap());
    let mut second = got.clone();
    second.state = "aborted".into();
    assert!(!f.update_rollout(&second).await.unwrap());
    let now = f.rollout("tn_1", "ro_a").await.unwrap().unwrap();
    assert_eq!((now.state.as_str(), now.rev), ("paused", 1));
    assert_eq!(now.body, "{\"state\":\"paused\"}");
    assert_eq!(now.created_ms, 10, "kept");

    // Over for good: no driver state, not open any more.
    let mut over = now.clone();
    over.state = "done".into();
    over.driver = None;
    assert!(f.update_rollout(&over).await.unwrap());
    let now = f.rollout("tn_1", "ro_a").await.unwrap().unwrap();
    assert_eq!((now.driver, now.rev), (None, 2));
    assert_eq!(
        f.open_rollouts().await.unwrap(),
        [("tn_2".to_owned(), "ro_b".to_owned(), 0)]
    );
    let gone = rollout("ro_none", "tn_1", "done", 1);
    assert!(!f.update_rollout(&gone).await.unwrap(), "no such row");
}

async fn schedules_are_claimed_once_per_occurrence(s: Under) {
    let f = &s.fleet;
    f.put_schedule("tn_1", "nightly", "{\"cron\":\"0 3 * * *\"}", 1_000)
        .await
        .unwrap();
    f.put_schedule("tn_2", "hourly", "{}", 0).await.unwrap();
    assert!(f
        .claim_occurrence("tn_1", "nightly", 2_000, "run", 2_001)
        .await
        .unwrap());
    // Another replica (or tick) on the same occurrence: not again.
    assert!(!f
        .claim_occurrence("tn_1", "nightly", 2_000, "missed", 2_002)
        .await
        .unwrap());
    f.set_run_jobs(
        "tn_1",
        "nightly",
        2_000,
        "run",
        &["jb_a".into(), "jb_b".into()],
    )
    .await
    .unwrap();
    let runs = f.runs("tn_1", "nightly", 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (
            runs[0].occurrence_ms,
            runs[0].status.as_str(),
            runs[0].at_ms
        ),
        (2_000, "run", 2_001)
    );
    assert_eq!(runs[0].jobs, ["jb_a", "jb_b"]);
    // A redefinition keeps the newest occurrence dealt with.
    f.put_schedule("tn_1", "nightly", "{\"cron\":\"0 4 * * *\"}", 500)
        .await
        .unwrap();
    let all = f.schedules(None).await.unwrap();
    assert_eq!(all.len(), 2);
    let mine = f.schedules(Some("tn_1")).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].last_occurrence, 2_000);
    assert!(mine[0].body.contains("0 4"));
    assert!(f.delete_schedule("tn_1", "nightly").await.unwrap());
    assert!(!f.delete_schedule("tn_1", "nightly").await.unwrap());
    assert!(f.runs("tn_1", "nightly", 10).await.unwrap().is_empty());
    assert_eq!(f.schedules(None).await.unwrap().len(), 1);
}

fn entry(i: i64, tenant: &str, action: &str) -> NewEntry {
    NewEntry {
        at_ms: 1_000 * i,
        tenant_id: Some(tenant.into()),
        actor_kind: "token".into(),
        actor_id: format!("ak_{i}"),
        actor_label: "ci".into(),
        client: "127.0.0.1".into(),
        action: action.into(),
        target: format!("/api/v1/x/{i}"),
        params: format!("{{\"n\":{i}}}"),
        result: 200 + i as u16,
        detail: "ü ✓".into(),
    }
}

async fn the_audit_chain_is_the_same_on_both_and_survives_retention(s: Under) {
    let t = &s.trail;
    let empty = t.verify().await.unwrap();
    assert!(empty.ok && empty.entries == 0, "{empty:?}");
    // The chain computed here, independently of any store.
    let mut want = GENESIS.to_owned();
    for i in 1..=8 {
        let e = entry(i, if i % 2 == 0 { "tn_1" } else { "tn_2" }, "POST /a");
        let stored = t.append(e.clone()).await.unwrap();
        assert_eq!(stored.seq, i);
        assert_eq!(stored.prev_hash, want);
        want = entry_hash(i, &e, &want);
        assert_eq!(stored.hash, want);
    }
    let v = t.verify().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(
        (v.entries, v.head_seq, v.head_hash.as_str()),
        (8, 8, want.as_str())
    );

    let q = |tenant: Option<&str>, after: Option<i64>| AuditQuery {
        tenant: tenant.map(str::to_owned),
        after_seq: after,
        limit: 3,
        ..Default::default()
    };
    let page = t.query(&q(Some("tn_1"), None)).await.unwrap();
    let seqs: Vec<i64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 4, 6]);
    let next = t.query(&q(Some("tn_1"), Some(6))).await.unwrap();
    assert_eq!(next.iter().map(|e| e.seq).collect::<Vec<_>>(), [8]);
    assert_eq!(page[0].entry, entry(2, "tn_1", "POST /a"), "round trip");
    let by_time = AuditQuery {
        since_ms: Some(3_000),
        until_ms: Some(5_000),
        target: Some("/x/".into()),
        actor: Some("ak_4".into()),
        limit: 10,
        ..Default::default()
    };
    let found = t.query(&by_time).await.unwrap();
    assert_eq!(found.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);

    // Retention removes the oldest, moves the anchor; the rest still holds
    // and new entries chain on.
    assert_eq!(t.prune(3_500).await.unwrap(), 3);
    assert_eq!(t.prune(3_500).await.unwrap(), 0);
    let v = t.verify().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.entries, v.head_seq), (5, 8));
    let e = entry(9, "tn_1", "DELETE /b");
    let ninth = t.append(e.clone()).await.unwrap();
    assert_eq!((ninth.seq, ninth.prev_hash.as_str()), (9, want.as_str()));
    assert_eq!(ninth.hash, entry_hash(9, &e, &want));
    assert!(t.verify().await.unwrap().ok);
    t.checkpoint().await.unwrap();
}

/// PostgreSQL's triggers: entries cannot be changed, nor removed above the
/// anchor, by anyone with a plain connection.
#[tokio::test]
async fn postgres_audit_entries_refuse_update_and_delete() {
    let url = pg::fresh_database().await;
    let pg = Postgres::connect(&url).await.unwrap();
    let trail = pg.trail();
    for i in 1..=3 {
        trail.append(entry(i, "tn_1", "POST /a")).await.unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let e = client
        .execute("UPDATE audit_entries SET result = 500 WHERE seq = 2", &[])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("append-only") || format!("{e:?}").contains("append-only"),
        "{e:?}"
    );
    let e = client
        .execute("DELETE FROM audit_entries WHERE seq = 3", &[])
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("only retention"), "{e:?}");
    assert!(trail.verify().await.unwrap().ok);
    // Retention itself may remove them (the anchor moves first).
    assert_eq!(trail.prune(2_500).await.unwrap(), 2);
    assert!(trail.verify().await.unwrap().ok);
}

async fn runner_versions(s: Under) {
    let f = &s.fleet;
    let ids = ["rn_1".to_owned(), "rn_2".to_owned()];
    assert!(f.desired_versions("tn_1").await.unwrap().is_empty());
    f.set_desired_version("tn_1", &ids, Some("0.2.0"), 1)
        .await
        .unwrap();
    f.set_desired_version("tn_2", &["rn_9".to_owned()], Some("0.3.0"), 1)
        .await
        .unwrap();
    let all = f.desired_versions("tn_1").await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["rn_2"], "0.2.0");
    f.set_desired_version("tn_1", &ids[..1], Some("0.2.1"), 2)
        .await
        .unwrap();
    assert_eq!(
        f.desired_version("tn_1", "rn_1").await.unwrap().as_deref(),
        Some("0.2.1")
    );
    // Another tenant's runner is not seen.
    assert_eq!(f.desired_version("tn_1", "rn_9").await.unwrap(), None);
    f.set_desired_version("tn_1", &ids, None, 3).await.unwrap();
    assert!(f.desired_versions("tn_1").await.unwrap().is_empty());
    assert_eq!(f.desired_versions("tn_2").await.unwrap().len(), 1);
}
