//! Several replicas on one real PostgreSQL (issue 18, `cluster/`): the
//! links table through the store (fencing, the late detach, restart,
//! revoke, a dead replica reaped), a credential written on one replica
//! heard by the others, and two real `tether-server` replicas
//! with a real runner that moves from one to the other.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_server::db::cluster::{Fence, Notice};
use tether_server::db::postgres::Postgres;
use tether_server::db::{
    ConnectOutcome, ConnectedInfo, ControlStore, EnrollmentTokenRow, Health, NewRunner, TenantRow,
};
use tokio::sync::mpsc;

use crate::pg;

fn hello() -> ConnectedInfo<'static> {
    ConnectedInfo {
        name: "host-a",
        version: "1.1",
        arch: "x86_64",
        os: "linux",
        protocol: 3,
    }
}

async fn enrolled(control: &Arc<dyn ControlStore>, tenant: &str, id: &str) {
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
    control.create_enrollment_token(&row, &hash).await.unwrap();
    let cred = format!("cred_{id}");
    let new = NewRunner {
        id,
        credential_hash: &cred,
        name: id,
        version: "1.0",
        arch: "x86_64",
        os: "linux",
    };
    control.enroll(&hash, &new, 2).await.unwrap();
}

async fn health(control: &Arc<dyn ControlStore>, id: &str) -> Health {
    control.runner("tn_1", id).await.unwrap().unwrap().health
}

/// The next health notice within 5 s: (origin, runner, health).
async fn next_health(rx: &mut mpsc::Receiver<Notice>) -> (String, String, Health) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(Notice::Health { origin, record })) => {
                return (origin, record.runner_id, record.health)
            }
            Ok(Some(_)) => continue,
            other => panic!("no health notice: {other:?}"),
        }
    }
}

/// The next fence notice for `replica` within 5 s (every listener hears
/// every notice; a replica acts on its own).
async fn next_fence(rx: &mut mpsc::Receiver<Notice>, replica: &str) -> Fence {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(Notice::Fence(f))) if f.replica_id == replica => return f,
            Ok(Some(_)) => continue,
            other => panic!("no fence notice: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_link_taken_by_another_replica_is_fenced_and_its_late_detach_changes_nothing() {
    let url = pg::fresh_database().await;
    // Two connections' worth of stores, as two replicas have.
    let (pa, pb) = (
        Postgres::connect(&url).await.unwrap(),
        Postgres::connect(&url).await.unwrap(),
    );
    let (a, b) = (pa.cluster(), pb.cluster());
    let control = pa.control();
    control
        .create_tenant(
            &TenantRow {
                id: "tn_1".into(),
                name: "acme".into(),
                created_at: 1,
            },
            "at_1",
            "h_1",
        )
        .await
        .unwrap();
    enrolled(&control, "tn_1", "rn_1").await;
    enrolled(&control, "tn_1", "rn_2").await;
    let mut heard_a = a.listen().await.unwrap();
    let mut heard_b = b.listen().await.unwrap();
    a.replica_started("a", "127.0.0.1:1", "server restarted", 10)
        .await
        .unwrap();
    b.replica_started("b", "127.0.0.1:2", "server restarted", 10)
        .await
        .unwrap();

    // A links it: active, a change.
    let ConnectOutcome::Active(Some(rec)) = a
        .link("a", "rn_1", 7, &hello(), "connected", 100)
        .await
        .unwrap()
    else {
        panic!("a first link is a change");
    };
    assert_eq!(rec.health, Health::Active);
    // Every replica hears of the change, with who made it.
    assert_eq!(
        next_health(&mut heard_b).await,
        ("a".into(), "rn_1".into(), Health::Active)
    );
    // B takes it: still active (no change), and A hears to close gen 7.
    assert_eq!(
        b.link("b", "rn_1", 3, &hello(), "connected", 101)
            .await
            .unwrap(),
        ConnectOutcome::Active(None)
    );
    assert_eq!(
        next_fence(&mut heard_a, "a").await,
        Fence {
            runner_id: "rn_1".into(),
            replica_id: "a".into(),
            generation: 7,
            revoked: false,
        }
    );
    // A's late detach of gen 7: nothing changes.
    assert_eq!(
        a.unlink("a", "rn_1", 7, 150, "connection lost", 150)
            .await
            .unwrap(),
        None
    );
    assert_eq!(health(&control, "rn_1").await, Health::Active);
    assert_eq!(a.links_held("a").await.unwrap(), vec![]);
    assert_eq!(
        b.links_held("b").await.unwrap(),
        vec![("rn_1".to_string(), 3)]
    );
    // A generation B does not hold now changes nothing either.
    assert_eq!(
        b.unlink("b", "rn_1", 2, 150, "connection lost", 150)
            .await
            .unwrap(),
        None
    );
    // B's own detach counts.
    let rec = b
        .unlink("b", "rn_1", 3, 160, "connection lost", 160)
        .await
        .unwrap()
        .expect("the holder's detach is a change");
    assert_eq!(
        (rec.health, rec.reason.as_str()),
        (Health::Unreachable, "connection lost")
    );

    // A replica that starts again releases only its own links.
    a.link("a", "rn_1", 8, &hello(), "connected", 200)
        .await
        .unwrap();
    b.link("b", "rn_2", 4, &hello(), "connected", 200)
        .await
        .unwrap();
    let released = a
        .replica_started("a", "127.0.0.1:1", "server restarted", 210)
        .await
        .unwrap();
    assert_eq!(
        released
            .iter()
            .map(|r| r.runner_id.as_str())
            .collect::<Vec<_>>(),
        vec!["rn_1"]
    );
    assert_eq!(health(&control, "rn_1").await, Health::Unreachable);
    assert_eq!(health(&control, "rn_2").await, Health::Active);

    // Revoked through A while B holds it: B hears, and its detach
    // cannot make it anything but revoked.
    let (row, _) = a.revoke("a", "tn_1", "rn_2", 300).await.unwrap().unwrap();
    assert_eq!(row.health, Health::Revoked);
    assert_eq!(
        next_fence(&mut heard_b, "b").await,
        Fence {
            runner_id: "rn_2".into(),
            replica_id: "b".into(),
            generation: 4,
            revoked: true,
        }
    );
    assert_eq!(
        b.unlink("b", "rn_2", 4, 310, "connection lost", 310)
            .await
            .unwrap(),
        None
    );
    assert_eq!(health(&control, "rn_2").await, Health::Revoked);
    assert_eq!(
        a.link("a", "rn_2", 9, &hello(), "connected", 320)
            .await
            .unwrap(),
        ConnectOutcome::Refused
    );

    // B dies holding rn_1: its heartbeat stops; A's reaper releases it.
    b.link("b", "rn_1", 5, &hello(), "connected", 400)
        .await
        .unwrap();
    a.heartbeat("a", "127.0.0.1:1", 1_000).await.unwrap();
    b.heartbeat("b", "127.0.0.1:2", 400).await.unwrap();
    assert!(a
        .reap("a", 300, "replica lost", 1_000)
        .await
        .unwrap()
        .is_empty());
    let reaped = a.reap("a", 900, "replica lost", 1_000).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].runner_id, "rn_1");
    assert_eq!(reaped[0].reason, "replica lost (replica b)");
    assert_eq!(health(&control, "rn_1").await, Health::Unreachable);
    assert_eq!(b.links_held("b").await.unwrap(), vec![]);
    // A reaper never reaps itself.
    assert!(a
        .reap("a", i64::MAX, "replica lost", 1_000)
        .await
        .unwrap()
        .is_empty());
}

/// A token revoked through replica A wakes B's credential watch (what its
/// streams' guards wait on) by NOTIFY, at once: not at their 30 s
/// re-check. A write that changes no credential wakes nobody.
#[tokio::test]
async fn a_credential_written_on_one_replica_wakes_the_others_streams_at_once() {
    let url = pg::fresh_database().await;
    let (pa, pb) = (
        Postgres::connect(&url).await.unwrap(),
        Postgres::connect(&url).await.unwrap(),
    );
    let (a, b) = (pa.control(), pb.control());
    let tenant = TenantRow {
        id: "tn_1".into(),
        name: "acme".into(),
        created_at: 1,
    };
    a.create_tenant(&tenant, "at_1", "h_1").await.unwrap();
    let _heard_b = pb.cluster().listen().await.unwrap();
    let mut watch_b = b.watch_credentials();
    // Listening (re)started: B looked once; from here on, only A's writes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    watch_b.borrow_and_update();
    let nothing = a
        .revoke_api_token("tn_1", "at_nope", "test", 5)
        .await
        .unwrap();
    assert!(nothing.is_none());
    let quiet = tokio::time::timeout(Duration::from_millis(500), watch_b.changed()).await;
    assert!(
        quiet.is_err(),
        "B woken by a write that changed no credential"
    );

    let started = Instant::now();
    let revoked = a.revoke_api_token("tn_1", "at_1", "test", 5).await.unwrap();
    assert!(revoked.is_some());
    tokio::time::timeout(Duration::from_secs(5), watch_b.changed())
        .await
        .expect("B's credential watch woken by A's revocation")
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    // What B's guards then read: the token is revoked.
    let check = b.api_token_check("h_1", 6).await.unwrap();
    assert!(check.is_err(), "{check:?}");
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_expires_or_is_given_up() {
    let url = pg::fresh_database().await;
    let (a, b) = (
        Postgres::connect(&url).await.unwrap().cluster(),
        Postgres::connect(&url).await.unwrap().cluster(),
    );
    assert!(a.lease("work", "a", 60_000).await.unwrap());
    assert!(!b.lease("work", "b", 60_000).await.unwrap());
    assert!(a.lease("work", "a", 60_000).await.unwrap(), "renewed");
    assert!(
        b.lease("other", "b", 60_000).await.unwrap(),
        "leases are apart"
    );
    // Given up: the next one takes it at once.
    b.release_lease("work", "b").await.unwrap();
    assert!(
        !b.lease("work", "b", 60_000).await.unwrap(),
        "not b's to give"
    );
    a.release_lease("work", "a").await.unwrap();
    assert!(b.lease("work", "b", 1).await.unwrap());
    // Expired (1 ms, by the database's clock): taken.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(a.lease("work", "a", 60_000).await.unwrap());
    assert!(!b.lease("work", "b", 60_000).await.unwrap());
}

// ---- two real replicas and a real runner ----

const ADMIN: &str = "tadm_cluster_test_admin_token";

/// A fresh directory under the temp dir (removed at the end of the test).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "tether-cluster-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("cluster.key");
    std::fs::write(&p, "5e".repeat(32)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn serve_cmd(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether-server"));
    c.args(["serve", "--listen", "127.0.0.1:0", "--admin-token", ADMIN])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("TETHER_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// A replica: `serve` with its id, logging to `<data>.log`; its URL.
fn replica(data: &Path, url: &str, id: &str, key: &Path) -> (Proc, String) {
    replica_with(data, url, id, key, &[])
}

/// The same, with more flags.
fn replica_with(data: &Path, url: &str, id: &str, key: &Path, extra: &[&str]) -> (Proc, String) {
    let _ = std::fs::remove_file(data.join("server.url"));
    // The internal listener binds it: a free loopback port each.
    let port = crate::util::free_port();
    let internal = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(data.with_extension("log")).unwrap();
    let child = serve_cmd(
        data,
        &[
            "--database",
            url,
            "--replica-id",
            id,
            "--internal-addr",
            &internal,
            "--cluster-key",
            key.to_str().unwrap(),
        ],
    )
    .args(extra)
    .stderr(log)
    .spawn()
    .unwrap();
    let mut child = Proc(child);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(u) = std::fs::read_to_string(data.join("server.url")) {
            if !u.trim().is_empty() {
                return (child, u.trim().to_owned());
            }
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "replica {id} exited {status}: {}",
                std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < until, "replica {id} did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cli(api: &str, ca: &Path, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether-server"))
        .args(["--api", api, "--token", token, "--ca-file"])
        .arg(ca)
        .arg("--json")
        .args(args)
        .output()
        .unwrap()
}

fn cli_json(api: &str, ca: &Path, token: &str, args: &[&str]) -> Value {
    let out = cli(api, ca, token, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn runner_bin() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_tether-server"));
    let bin = exe.with_file_name("tether");
    assert!(
        bin.exists(),
        "{} missing: cargo build --workspace first",
        bin.display()
    );
    bin
}

fn runner(state: &Path, args: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.with_extension("log"))
        .unwrap();
    Proc(
        Command::new(runner_bin())
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .env("TETHER_LOG", "debug")
            .env("TETHER_UPDATE", "off")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The links a replica holds, from its `/healthz`.
fn links(api: &str, ca: &Path) -> u64 {
    let pem = std::fs::read(ca).unwrap();
    let cert = ureq::tls::Certificate::from_pem(&pem).unwrap().to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
        .build();
    let agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .build()
        .new_agent();
    let text = agent
        .get(format!("{api}/healthz"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["links"].as_u64().unwrap()
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[tokio::test]
async fn a_runner_moved_to_replica_b_is_closed_on_a_at_once_and_health_stays_right() {
    let url = pg::fresh_database().await;
    let tmp = TempDir::new("move");
    let key = key_file(&tmp.0);
    let (data_a, data_b, state) = (tmp.0.join("a"), tmp.0.join("b"), tmp.0.join("runner"));
    let (mut proc_a, api_a) = replica(&data_a, &url, "a", &key);
    // Both replicas present one certificate (the runner trusts one CA).
    std::fs::create_dir_all(data_b.join("tls")).unwrap();
    for f in ["ca.pem", "ca.key", "cert.pem", "key.pem"] {
        std::fs::copy(data_a.join("tls").join(f), data_b.join("tls").join(f)).unwrap();
    }
    let (mut proc_b, api_b) = replica(&data_b, &url, "b", &key);
    let ca = data_a.join("tls/ca.pem");

    let tenant = cli_json(&api_a, &ca, ADMIN, &["tenant", "create", "acme"]);
    let token = tenant["api_token"].as_str().unwrap().to_owned();
    // Made on B, spent on A: one database.
    let enroll = cli_json(&api_b, &ca, &token, &["token", "create"]);
    std::fs::create_dir_all(&state).unwrap();
    let out = Command::new(runner_bin())
        .arg("--state-dir")
        .arg(&state)
        .args(["enroll", "--server", &api_a, "--token"])
        .arg(enroll["token"].as_str().unwrap())
        .arg("--ca-file")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cred: Value =
        serde_json::from_slice(&std::fs::read(state.join("credential.json")).unwrap()).unwrap();
    let id = cred["runner_id"].as_str().unwrap().to_owned();
    let show = |api: &str| cli_json(api, &ca, &token, &["runner", "show", &id]);
    // B's event stream, subscribed before the runner comes (to A).
    let events_b = tmp.0.join("events-b.jsonl");
    let _follow = Proc(
        Command::new(env!("CARGO_BIN_EXE_tether-server"))
            .args(["--api", &api_b, "--token", &token, "--ca-file"])
            .arg(&ca)
            .args(["--json", "events"])
            .stdout(std::fs::File::create(&events_b).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let ping = |api: &str| cli(api, &ca, &token, &["runner", "ping", &id]);

    // A long heartbeat: A's own liveness check (2.5 heartbeats) cannot be
    // what closes the old link below.
    let first = runner(&state, &["run", "--server", &api_a, "--heartbeat", "60s"]);
    wait_for(Duration::from_secs(30), "active on A", || {
        show(&api_b)["health"] == "active" && ping(&api_a).status.success()
    });
    // A made the change; B's SSE shows it (NOTIFY, `cluster/`).
    let seen = wait_for(Duration::from_secs(5), "B's events to show it", || {
        std::fs::read_to_string(&events_b)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["runner_id"] == id.as_str() && v["health"] == "active")
    });
    eprintln!("B's event stream showed A's change within {seen:?} of our seeing it");

    // The first runner process freezes (its connection to A stays open,
    // silent); a second one, same credential, goes to B.
    // SAFETY: kill sends a signal to a child we own.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGSTOP) };
    let _second = runner(&state, &["run", "--server", &api_b, "--heartbeat", "60s"]);
    let took = wait_for(Duration::from_secs(30), "linked on B", || {
        links(&api_b, &ca) == 1
    });
    // A closed its link as soon as B took the runner: by the notice, not
    // by the periodic check and not by its liveness timeout (150 s).
    let fenced = wait_for(Duration::from_secs(10), "A to close its link", || {
        links(&api_a, &ca) == 0
    });
    let log_a = std::fs::read_to_string(data_a.with_extension("log")).unwrap();
    assert!(log_a.contains("link fenced by the cluster"), "{log_a}");
    assert!(!log_a.contains("no longer gives this replica"), "{log_a}");
    // A ping to A now reaches the runner through B (`app/forward.rs`).
    assert!(ping(&api_a).status.success());
    eprintln!("linked on B after {took:?}; A's link gone {fenced:?} later");

    // Health never went unreachable: one "active" entry, seen the same on
    // both replicas, and the frozen runner's end changes nothing.
    drop(first);
    std::thread::sleep(Duration::from_secs(1));
    for api in [&api_a, &api_b] {
        assert_eq!(show(api)["health"], "active");
        let history = cli_json(api, &ca, &token, &["runner", "health", &id]);
        let states: Vec<&str> = history
            .as_array()
            .or(history["history"].as_array())
            .unwrap()
            .iter()
            .map(|h| h["health"].as_str().unwrap())
            .collect();
        assert_eq!(states, vec!["active"], "{history}");
    }
    assert!(ping(&api_b).status.success());

    // B dies (kill -9): A's reaper finds B silent and says so within
    // STALE plus a heartbeat, instead of "active" for ever.
    proc_b.0.kill().unwrap();
    proc_b.0.wait().unwrap();
    let gone = wait_for(Duration::from_secs(30), "unreachable after B died", || {
        show(&api_a)["health"] == "unreachable"
    });
    eprintln!("replica b's runner unreachable {gone:?} after its kill -9");
    let log_a = std::fs::read_to_string(data_a.with_extension("log")).unwrap();
    assert!(log_a.contains("replica b missed its heartbeats"), "{log_a}");
    let _ = proc_a.0.kill();
}

fn log_of(data: &Path) -> String {
    std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
}

const HOLDS: &str = "once-only work: this replica holds the lease";

#[tokio::test]
async fn the_once_only_work_moves_when_its_replica_is_killed() {
    let url = pg::fresh_database().await;
    let tmp = TempDir::new("lease");
    let key = key_file(&tmp.0);
    let (data_a, data_b) = (tmp.0.join("a"), tmp.0.join("b"));
    let (mut proc_a, _) = replica(&data_a, &url, "a", &key);
    wait_for(Duration::from_secs(10), "a to take the lease", || {
        log_of(&data_a).contains(HOLDS)
    });
    let (_proc_b, _) = replica(&data_b, &url, "b", &key);
    // Several renewals later, b still does not run it.
    std::thread::sleep(Duration::from_secs(5));
    assert!(!log_of(&data_b).contains(HOLDS), "{}", log_of(&data_b));
    proc_a.0.kill().unwrap();
    proc_a.0.wait().unwrap();
    let took = wait_for(Duration::from_secs(30), "b to take the lease", || {
        log_of(&data_b).contains(HOLDS)
    });
    eprintln!("the once-only lease moved {took:?} after kill -9 of its holder");
    // Within the lease time and one renewal (10 s + 2 s), with slack for
    // a loaded machine.
    assert!(took < Duration::from_secs(16), "{took:?}");
}

#[test]
fn replica_flags_need_each_other_and_postgres() {
    let tmp = TempDir::new("flags");
    let key = key_file(&tmp.0);
    let data = tmp.0.join("d");
    let k = key.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--replica-id",
                "a",
                "--internal-addr",
                "127.0.0.1:9",
                "--cluster-key",
                k,
            ],
            "needs --database postgres://",
        ),
        (
            &[
                "--replica-id",
                "a",
                "--database",
                "postgres://u@127.0.0.1:1/x",
            ],
            "--internal-addr is missing",
        ),
        (
            &[
                "--replica-id",
                "a b",
                "--internal-addr",
                "127.0.0.1:9",
                "--cluster-key",
                k,
                "--database",
                "postgres://u@127.0.0.1:1/x",
            ],
            "--replica-id: only letters",
        ),
    ];
    for (args, want) in cases {
        let out = serve_cmd(&data, args)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !data.exists(),
            "nothing is made before the flags are checked"
        );
    }
    // The key itself never appears, even when it is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = serve_cmd(
        &data,
        &[
            "--replica-id",
            "a",
            "--internal-addr",
            "127.0.0.1:9",
            "--cluster-key",
            k,
            "--database",
            "postgres://u@127.0.0.1:1/x",
        ],
    )
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(&"5e".repeat(32)), "{err}");
}

/// A schedule every minute, the same data for two replicas: each occurrence
/// runs once (the store's claim), none is missed, over three minutes.
#[tokio::test]
async fn a_schedule_runs_once_per_occurrence_on_two_replicas() {
    let url = pg::fresh_database().await;
    let tmp = TempDir::new("schedule");
    let key = key_file(&tmp.0);
    let (data_a, data_b, state) = (tmp.0.join("a"), tmp.0.join("b"), tmp.0.join("runner"));
    let (_proc_a, api_a) = replica(&data_a, &url, "a", &key);
    std::fs::create_dir_all(data_b.join("tls")).unwrap();
    for f in ["ca.pem", "ca.key", "cert.pem", "key.pem"] {
        std::fs::copy(data_a.join("tls").join(f), data_b.join("tls").join(f)).unwrap();
    }
    let (_proc_b, api_b) = replica(&data_b, &url, "b", &key);
    let ca = data_a.join("tls/ca.pem");
    let tenant = cli_json(&api_a, &ca, ADMIN, &["tenant", "create", "acme"]);
    let token = tenant["api_token"].as_str().unwrap().to_owned();
    let enroll = cli_json(&api_a, &ca, &token, &["token", "create"]);
    std::fs::create_dir_all(&state).unwrap();
    let out = Command::new(runner_bin())
        .arg("--state-dir")
        .arg(&state)
        .args(["enroll", "--server", &api_a, "--token"])
        .arg(enroll["token"].as_str().unwrap())
        .arg("--ca-file")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cred: Value =
        serde_json::from_slice(&std::fs::read(state.join("credential.json")).unwrap()).unwrap();
    let id = cred["runner_id"].as_str().unwrap().to_owned();
    let _runner = runner(&state, &["run", "--server", &api_a]);
    wait_for(Duration::from_secs(30), "the runner active", || {
        cli_json(&api_b, &ca, &token, &["runner", "show", &id])["health"] == "active"
    });
    cli_json(&api_a, &ca, &token, &["labels", "set", &id, "role=db"]);

    // Bad input is refused, naming the field, and nothing is stored.
    let bad = cli(
        &api_b,
        &ca,
        &token,
        &[
            "schedule",
            "add",
            "tick",
            "--cron",
            "61 * * * *",
            "-c",
            "true",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("cron: minute: 61 is outside"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(
        cli_json(&api_a, &ca, &token, &["schedule", "list"]),
        serde_json::json!([])
    );

    // Made on B; both replicas run the scheduler.
    let made = cli_json(
        &api_b,
        &ca,
        &token,
        &[
            "schedule",
            "add",
            "tick",
            "--cron",
            "* * * * *",
            "--selector",
            "role=db",
            "-c",
            "echo tick",
        ],
    );
    assert_eq!(made["next_runs"].as_array().unwrap().len(), 5, "{made}");
    let history = || cli_json(&api_a, &ca, &token, &["schedule", "history", "tick"]);
    let mut runs = Value::Null;
    // A run is recorded "running" when its occurrence is claimed, then
    // "started" with its jobs: wait for the third to have its jobs.
    wait_for(Duration::from_secs(250), "three runs started", || {
        runs = history();
        let list = runs.as_array().unwrap();
        list.len() >= 3 && list.iter().all(|r| r["status"] != "running")
    });
    // The next occurrence is most of a minute away: removed before it.
    let shown = cli_json(&api_b, &ca, &token, &["schedule", "show", "tick"]);
    let out = cli(&api_a, &ca, &token, &["schedule", "rm", "tick"]);
    assert!(out.status.success());
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(shown["runs"].as_array().unwrap().len(), 3, "{shown}");
    let occ: Vec<i64> = runs
        .iter()
        .map(|r| r["occurrence_ms"].as_i64().unwrap())
        .collect();
    // Newest first, one minute apart: no miss, no duplicate.
    assert_eq!(occ[0] - occ[1], 60_000, "{runs:?}");
    assert_eq!(occ[1] - occ[2], 60_000, "{runs:?}");
    let mut job_ids = Vec::new();
    for r in runs {
        assert_eq!(r["status"], "started", "{r}");
        let jobs = r["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1, "{r}");
        job_ids.push(jobs[0].as_str().unwrap().to_owned());
    }
    // Exactly three jobs on the runner, those three, each run.
    let mut listed = Value::Null;
    wait_for(Duration::from_secs(30), "the jobs to finish", || {
        listed = cli_json(&api_a, &ca, &token, &["jobs", "list", "--runner", &id]);
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "succeeded")
    });
    let mut listed: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    job_ids.sort();
    assert_eq!(listed, job_ids);
    // Each run started by one replica: three "schedule ran" lines in all.
    let ran = |data: &Path| -> Vec<String> {
        log_of(data)
            .lines()
            .filter(|l| l.contains("schedule ran"))
            .map(str::to_owned)
            .collect()
    };
    // (A log line may trail the run's record by a moment.)
    let _ = std::panic::catch_unwind(|| {
        wait_for(Duration::from_secs(10), "three log lines", || {
            ran(&data_a).len() + ran(&data_b).len() >= 3
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    let (a, b) = (ran(&data_a), ran(&data_b));
    eprintln!(
        "runs started by replica a: {}, by replica b: {}",
        a.len(),
        b.len()
    );
    assert_eq!(a.len() + b.len(), 3, "a: {a:#?}\nb: {b:#?}");
}

// ---- once-only work on two replicas (alerts, deadlines) ----

/// Two replicas (one certificate), a tenant, and a runner enrolled but
/// not yet running.
struct Pair {
    _tmp: TempDir,
    data_a: PathBuf,
    data_b: PathBuf,
    proc_a: Proc,
    proc_b: Proc,
    api_a: String,
    api_b: String,
    ca: PathBuf,
    token: String,
    state: PathBuf,
    id: String,
}

async fn pair(what: &str, extra: &[&str]) -> Pair {
    pair_on(what, extra, |url| url.to_owned()).await
}

/// [`pair`], replica A reaching the database at `via_a(url)` (a proxy).
async fn pair_on(what: &str, extra: &[&str], via_a: impl FnOnce(&str) -> String) -> Pair {
    let url = pg::fresh_database().await;
    let tmp = TempDir::new(what);
    let key = key_file(&tmp.0);
    let (data_a, data_b, state) = (tmp.0.join("a"), tmp.0.join("b"), tmp.0.join("runner"));
    // One sealing key for both (the first replica makes it): a channel
    // sealed on B is opened by A's notifier.
    let secret = tmp.0.join("secret.key");
    let extra: Vec<&str> = ["--secret-key-file", secret.to_str().unwrap()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let extra = &extra[..];
    let (proc_a, api_a) = replica_with(&data_a, &via_a(&url), "a", &key, extra);
    std::fs::create_dir_all(data_b.join("tls")).unwrap();
    for f in ["ca.pem", "ca.key", "cert.pem", "key.pem"] {
        std::fs::copy(data_a.join("tls").join(f), data_b.join("tls").join(f)).unwrap();
    }
    let (proc_b, api_b) = replica_with(&data_b, &url, "b", &key, extra);
    let ca = data_a.join("tls/ca.pem");
    let tenant = cli_json(&api_a, &ca, ADMIN, &["tenant", "create", "acme"]);
    let token = tenant["api_token"].as_str().unwrap().to_owned();
    let enroll = cli_json(&api_b, &ca, &token, &["token", "create"]);
    std::fs::create_dir_all(&state).unwrap();
    let out = Command::new(runner_bin())
        .arg("--state-dir")
        .arg(&state)
        .args(["enroll", "--server", &api_a, "--token"])
        .arg(enroll["token"].as_str().unwrap())
        .arg("--ca-file")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cred: Value =
        serde_json::from_slice(&std::fs::read(state.join("credential.json")).unwrap()).unwrap();
    let id = cred["runner_id"].as_str().unwrap().to_owned();
    Pair {
        _tmp: tmp,
        data_a,
        data_b,
        proc_a,
        proc_b,
        api_a,
        api_b,
        ca,
        token,
        state,
        id,
    }
}

impl Pair {
    /// `wait_for`, with both replicas' logs when it times out.
    fn wait(&self, limit: Duration, what: &str, ok: impl FnMut() -> bool) -> Duration {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_for(limit, what, ok))) {
            Ok(took) => took,
            Err(e) => {
                eprintln!(
                    "---- replica a ----\n{}\n---- replica b ----\n{}",
                    log_of(&self.data_a),
                    log_of(&self.data_b)
                );
                std::panic::resume_unwind(e)
            }
        }
    }

    fn show(&self, api: &str) -> Value {
        cli_json(api, &self.ca, &self.token, &["runner", "show", &self.id])
    }

    fn agent(&self) -> ureq::Agent {
        let pem = std::fs::read(&self.ca).unwrap();
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap().to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
            .build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .build()
            .new_agent()
    }

    /// A JSON request with the tenant's token: (status, body).
    fn call(&self, api: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let agent = self.agent();
        let auth = format!("Bearer {}", self.token);
        let uri = format!("{api}{path}");
        let body = body.unwrap_or(Value::Null).to_string();
        let mut res = match method {
            "GET" => agent.get(&uri).header("authorization", &auth).call(),
            "DELETE" => agent.delete(&uri).header("authorization", &auth).call(),
            "PUT" => agent
                .put(&uri)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(body),
            _ => agent
                .post(&uri)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(body),
        }
        .unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        // NDJSON (or any text that is not one JSON value) as a string.
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// A replica's event stream, read in the background: (event, data).
    fn events(&self, api: &str) -> Arc<std::sync::Mutex<Vec<(String, Value)>>> {
        use std::io::BufRead;
        let res = self
            .agent()
            .get(format!("{api}/api/v1/events"))
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "text/event-stream")
            .call()
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = got.clone();
        std::thread::spawn(move || {
            let reader = std::io::BufReader::new(res.into_body().into_reader());
            let mut event = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    let v = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
                    seen.lock().unwrap().push((event.clone(), v));
                }
            }
        });
        // Subscribed before anything it should see happens.
        std::thread::sleep(Duration::from_millis(300));
        got
    }

    /// The replica (its data dir) holding the once-only lease now.
    fn lease_holder(&self) -> &Path {
        let mut holder = None;
        wait_for(
            Duration::from_secs(20),
            "a replica to hold the lease",
            || {
                holder = [&self.data_a, &self.data_b]
                    .into_iter()
                    .find(|d| log_of(d).contains(HOLDS));
                holder.is_some()
            },
        );
        holder.unwrap()
    }
}

/// A webhook receiver on loopback: every POST body, in arrival order.
fn webhook() -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let mut len = 0usize;
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len.min(1 << 20)];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    seen.lock().unwrap().push(v);
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, got)
}

/// A health alert on two replicas is notified once per transition, not
/// once per replica: only the lease holder's engine evaluates health (it
/// hears every replica's changes), and a rule made on B reaches A's engine.
#[tokio::test]
async fn a_health_alert_is_notified_once_on_two_replicas() {
    let p = pair("alert", &["--alert-private-targets"]).await;
    let (hook, got) = webhook();
    // Channel and rule made on B, after both replicas started.
    let (status, ch) = p.call(
        &p.api_b,
        "POST",
        "/api/v1/alerts/channels",
        Some(serde_json::json!({"name": "hook", "config": {"kind": "webhook", "url": hook, "secret": "s3cret-s3cret"}})),
    );
    assert_eq!(status, 201, "{ch}");
    let (status, rule) = p.call(
        &p.api_b,
        "POST",
        "/api/v1/alerts/rules",
        Some(serde_json::json!({"name": "down", "kind": "unreachable", "for_s": 1, "channels": [ch["id"]]})),
    );
    assert_eq!(status, 201, "{rule}");
    let holder = p.lease_holder().to_owned();
    eprintln!("lease held by {}", holder.display());
    std::thread::sleep(Duration::from_secs(1));
    let states = || -> Vec<String> {
        got.lock()
            .unwrap()
            .iter()
            .map(|v| v["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    };

    // First linked to the replica without the lease: its change reaches
    // the holder's engine by NOTIFY. Then to the holder itself.
    let (first, second) = if holder == p.data_a {
        (&p.api_b, &p.api_a)
    } else {
        (&p.api_a, &p.api_b)
    };
    let mut run = runner(&p.state, &["run", "--server", first]);
    p.wait(Duration::from_secs(30), "active", || {
        p.show(second)["health"] == "active"
    });
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    p.wait(Duration::from_secs(20), "a firing notification", || {
        states().contains(&"firing".to_owned())
    });
    // On the holder: resolved. Killed there: firing again.
    let mut run = runner(&p.state, &["run", "--server", second]);
    p.wait(Duration::from_secs(30), "resolved", || states().len() >= 2);
    assert_eq!(p.show(first)["health"], "active");
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    p.wait(Duration::from_secs(20), "firing again", || {
        states().len() >= 3
    });
    // Time for a second replica's duplicate to arrive, if there were one.
    std::thread::sleep(Duration::from_secs(4));
    let all = got.lock().unwrap().clone();
    assert_eq!(states(), vec!["firing", "resolved", "firing"], "{all:#?}");
    for v in &all {
        assert_eq!(v["runner_id"], p.id.as_str(), "{v}");
        assert_eq!(v["rule_name"], "down", "{v}");
    }
    // The history agrees on both replicas: three transitions notified.
    for api in [&p.api_a, &p.api_b] {
        let (status, firing) = p.call(api, "GET", "/api/v1/alerts", None);
        assert_eq!(status, 200, "{firing}");
        assert!(firing.to_string().contains(&p.id), "{firing}");
    }
}

impl Pair {
    /// A webhook channel and one rule notifying it, made on B: the
    /// receiver's bodies' states, and the bodies.
    fn alert_rule(&self, rule: Value) -> Arc<std::sync::Mutex<Vec<Value>>> {
        let (hook, got) = webhook();
        let (status, ch) = self.call(
            &self.api_b,
            "POST",
            "/api/v1/alerts/channels",
            Some(serde_json::json!({"name": "hook", "config": {"kind": "webhook", "url": hook, "secret": "s3cret-s3cret"}})),
        );
        assert_eq!(status, 201, "{ch}");
        let mut rule = rule;
        rule["channels"] = serde_json::json!([ch["id"]]);
        let (status, made) = self.call(&self.api_b, "POST", "/api/v1/alerts/rules", Some(rule));
        assert_eq!(status, 201, "{made}");
        // The rule reaches A's engine by NOTIFY.
        std::thread::sleep(Duration::from_secs(1));
        got
    }

    /// The data dir, API and process of the replica that is not `data`.
    fn other(&mut self, data: &Path) -> (PathBuf, String, &mut Proc) {
        if data == self.data_a {
            (self.data_b.clone(), self.api_b.clone(), &mut self.proc_b)
        } else {
            (self.data_a.clone(), self.api_a.clone(), &mut self.proc_a)
        }
    }

    fn proc_of(&mut self, data: &Path) -> &mut Proc {
        if data == self.data_a {
            &mut self.proc_a
        } else {
            &mut self.proc_b
        }
    }
}

fn states_of(got: &std::sync::Mutex<Vec<Value>>) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The lease moves while a health alert fires: the new holder takes the
/// alert's state over from the store, so the runner's return is notified
/// `resolved` once (by the new holder), and nothing fires twice. Before,
/// the new holder knew only the states of its own start-up: it never
/// resolved the alert the old holder had fired.
#[tokio::test]
async fn a_firing_health_alert_is_resolved_once_by_the_next_lease_holder() {
    health_alert_across_the_lease(false).await;
}

/// The same, the runner back while no replica holds the lease (the old
/// holder killed, the lease not yet expired): the new holder finds it
/// active when it takes the states over, and resolves the alert then.
#[tokio::test]
async fn a_runner_back_between_two_lease_holders_is_resolved_once() {
    health_alert_across_the_lease(true).await;
}

async fn health_alert_across_the_lease(back_before_takeover: bool) {
    let mut p = pair("alert-lease", &["--alert-private-targets"]).await;
    let got = p.alert_rule(serde_json::json!({"name": "down", "kind": "unreachable", "for_s": 1}));
    let holder = p.lease_holder().to_owned();
    let (survivor, survivor_api, _) = p.other(&holder);
    eprintln!("lease held by {}", holder.display());
    // Linked to the survivor (the replica without the lease), then gone:
    // the holder fires.
    let mut run = runner(&p.state, &["run", "--server", &survivor_api]);
    p.wait(Duration::from_secs(30), "active", || {
        p.show(&survivor_api)["health"] == "active"
    });
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    p.wait(Duration::from_secs(20), "a firing notification", || {
        states_of(&got) == ["firing"]
    });
    // The holder killed: the survivor takes the lease (and the states).
    let dead = p.proc_of(&holder);
    dead.0.kill().unwrap();
    dead.0.wait().unwrap();
    let mut back = None;
    if back_before_takeover {
        back = Some(runner(&p.state, &["run", "--server", &survivor_api]));
        p.wait(Duration::from_secs(30), "active again", || {
            p.show(&survivor_api)["health"] == "active"
        });
        if log_of(&survivor).contains(HOLDS) {
            eprintln!("the lease was taken over before the runner was back: the usual path");
        }
    }
    let took = p.wait(
        Duration::from_secs(40),
        "the survivor to take the lease",
        || log_of(&survivor).contains(HOLDS),
    );
    eprintln!("lease taken over {took:?} after the kill");
    p.wait(Duration::from_secs(10), "the states taken over", || {
        log_of(&survivor).contains("health alerts evaluated here; 1 state(s) taken over")
    });
    // Back, on the survivor: resolved, once.
    let _run = back.unwrap_or_else(|| runner(&p.state, &["run", "--server", &survivor_api]));
    p.wait(Duration::from_secs(30), "a resolved notification", || {
        states_of(&got).len() >= 2
    });
    // Time for a duplicate to arrive, if there were one.
    std::thread::sleep(Duration::from_secs(4));
    let all = got.lock().unwrap().clone();
    assert_eq!(states_of(&got), ["firing", "resolved"], "{all:#?}");
    for v in &all {
        assert_eq!(v["runner_id"], p.id.as_str(), "{v}");
    }
    let (status, firing) = p.call(&survivor_api, "GET", "/api/v1/alerts", None);
    assert_eq!(status, 200, "{firing}");
    assert!(!firing.to_string().contains(&p.id), "{firing}");
}

/// A job alert fires on A; the runner moves to B. B takes the runner's
/// alert states over from the store when its first report arrives there:
/// the same failure again notifies nothing, and the success resolves it
/// once (from B; A, which lost the runner, changes nothing). Before, B
/// did not know the firing state: it fired a second time and never
/// resolved.
#[tokio::test]
async fn a_runners_alert_moves_with_it_to_another_replica() {
    let p = pair("alert-move", &["--alert-private-targets"]).await;
    let got = p.alert_rule(serde_json::json!({"name": "job", "kind": "job_failed"}));
    let flag = p._tmp.0.join("broken");
    std::fs::write(&flag, "x").unwrap();
    let command = format!("test ! -e {}", flag.display());
    let run_job = |api: &str, want: &str| {
        let (status, made) = p.call(
            api,
            "POST",
            "/api/v1/jobs",
            Some(serde_json::json!({"runners": [p.id], "command": command})),
        );
        assert_eq!(status, 201, "{made}");
        let job = made[0]["id"].as_str().unwrap().to_owned();
        p.wait(Duration::from_secs(30), want, || {
            p.call(api, "GET", &format!("/api/v1/jobs/{job}"), None).1["status"] == want
        });
    };
    let mut run = runner(&p.state, &["run", "--server", &p.api_a]);
    p.wait(Duration::from_secs(30), "active on A", || {
        p.show(&p.api_b)["health"] == "active"
    });
    run_job(&p.api_a, "failed");
    p.wait(Duration::from_secs(20), "a firing notification", || {
        states_of(&got) == ["firing"]
    });
    // Moved: gone from A, linked to B.
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let _run = runner(&p.state, &["run", "--server", &p.api_b]);
    p.wait(Duration::from_secs(30), "active on B", || {
        p.show(&p.api_a)["health"] == "active" && links(&p.api_b, &p.ca) == 1
    });
    // The same failure on B: the alert fires already.
    run_job(&p.api_b, "failed");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(states_of(&got), ["firing"], "{:#?}", got.lock().unwrap());
    // Fixed: resolved, once.
    std::fs::remove_file(&flag).unwrap();
    run_job(&p.api_b, "succeeded");
    p.wait(Duration::from_secs(20), "a resolved notification", || {
        states_of(&got).len() >= 2
    });
    std::thread::sleep(Duration::from_secs(4));
    let all = got.lock().unwrap().clone();
    assert_eq!(states_of(&got), ["firing", "resolved"], "{all:#?}");
    let resolved = |data: &Path| {
        let log = log_of(data);
        log.contains("state=resolved") || log.contains("state=\"resolved\"")
    };
    assert!(resolved(&p.data_b), "B resolved it:\n{}", log_of(&p.data_b));
    assert!(!resolved(&p.data_a), "A did too:\n{}", log_of(&p.data_a));
    let _ = (&p.proc_a, &p.proc_b);
}

/// A TCP proxy to `to` whose traffic can be held (both ways) and let go:
/// a replica's database connections stall as on a slow network, and what
/// was sent meanwhile arrives when it is let go.
struct Stall {
    port: u16,
    held: Arc<std::sync::atomic::AtomicBool>,
}

impl Stall {
    fn start(to: std::net::SocketAddr) -> Stall {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(AtomicBool::new(false));
        let hold = held.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let hold = hold.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while hold.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            if into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Stall { port, held }
    }

    fn hold(&self, on: bool) {
        self.held.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// `url` (postgres://user@host:port/db) through this proxy.
    fn url(&self, url: &str) -> String {
        let (head, rest) = url.split_once('@').unwrap();
        let (_, db) = rest.split_once('/').unwrap();
        format!("{head}@127.0.0.1:{}/{db}", self.port)
    }
}

/// The database's address in `url` (postgres://user@host:port/db).
fn pg_addr(url: &str) -> std::net::SocketAddr {
    let (_, rest) = url.split_once('@').unwrap();
    let (addr, _) = rest.split_once('/').unwrap();
    addr.parse().unwrap()
}

/// Ownership is local knowledge: a replica writes a transition for a
/// runner it believes it holds, while the runner has linked to another
/// replica and the fence's notice is not heard yet. Here A's database
/// traffic is held (a slow network) while A's engine, on the runner's
/// metrics, fires an alert (its write waits); the runner meanwhile links
/// to B (the same credential from a second process), B takes the states
/// over, fires the alert on its own evaluation, and notifies. Then
/// A's traffic goes through: its late transition reaches the store, which
/// judges it by the live-links table (B's link now) and refuses it; A
/// notifies nothing. The webhook receives one `firing`, not two. Before,
/// A's write was stored and its notification sent: a duplicate.
#[tokio::test]
async fn a_late_transition_of_the_replica_that_lost_the_runner_is_refused_and_not_notified() {
    let mut stall = None;
    let extra = [
        "--alert-private-targets",
        "--log",
        "info,tether_server::alerts=debug",
    ];
    let p = pair_on("alert-late", &extra, |url| {
        let s = Stall::start(pg_addr(url));
        let through = s.url(url);
        stall = Some(s);
        through
    })
    .await;
    let stall = stall.unwrap();
    let got = p.alert_rule(serde_json::json!({
        "name": "up", "kind": "metric", "series": "uptime", "op": "above",
        "threshold": 0, "for_s": 5
    }));
    let history = |api: &str| -> Vec<String> {
        let (status, v) = p.call(api, "GET", "/api/v1/alerts/history", None);
        assert_eq!(status, 200, "{v}");
        v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    // Linked to A: the condition holds from the first record (pending,
    // in A's engine), A owning the runner once its states are read.
    let mut on_a = runner(
        &p.state,
        &["run", "--server", &p.api_a, "--metrics-interval", "1s"],
    );
    p.wait(
        Duration::from_secs(30),
        "A's engine owning the runner",
        || log_of(&p.data_a).contains("alerts: 1 runner(s) taken over"),
    );
    // And evaluating its records: what it reads of the tenant's runners
    // (names, groups, labels: 30 s in its cache) read before A's traffic
    // is held.
    p.wait(
        Duration::from_secs(30),
        "A's engine evaluating the runner",
        || log_of(&p.data_a).contains("alerts: the tenant's runners read"),
    );
    // A's database traffic held: A's engine goes on evaluating, and fires
    // at `for_s` (its write waits: logged before it is made, so the test
    // goes on once A is in it, however slow the machine).
    // Pending from A's first evaluation: most of `for_s` passed before
    // the hold, so the firing comes while A's traffic is held.
    std::thread::sleep(Duration::from_millis(4000));
    stall.hold(true);
    p.wait(Duration::from_secs(30), "A's firing write, held", || {
        log_of(&p.data_a).contains("alert transition: writing rule=")
            && log_of(&p.data_a).contains("to=firing")
    });
    assert!(
        states_of(&got).is_empty(),
        "A's firing was not held: {:#?}",
        got.lock().unwrap()
    );
    // The runner (a second process, the same credential) links to B: B
    // takes the runner's states over (none stored: pending is not) and
    // fires `for_s` later, once.
    let moved = p._tmp.0.join("runner-moved");
    std::fs::create_dir_all(&moved).unwrap();
    for entry in std::fs::read_dir(&p.state).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), moved.join(entry.file_name())).unwrap();
        }
    }
    let _on_b = runner(
        &moved,
        &["run", "--server", &p.api_b, "--metrics-interval", "1s"],
    );
    p.wait(Duration::from_secs(30), "B's firing notification", || {
        states_of(&got) == ["firing"]
    });
    // The first process goes (it would link to A again), and A's traffic
    // goes through: its late write reaches the store.
    on_a.0.kill().unwrap();
    on_a.0.wait().unwrap();
    stall.hold(false);
    let refused = || log_of(&p.data_a).contains("alert transition refused by the store");
    p.wait(Duration::from_secs(20), "A's late write judged", || {
        refused() || states_of(&got).len() > 1
    });
    // Time for a duplicate to arrive, if there were one.
    std::thread::sleep(Duration::from_secs(4));
    let all = got.lock().unwrap().clone();
    assert_eq!(states_of(&got), ["firing"], "a duplicate: {all:#?}");
    assert!(refused(), "{}", log_of(&p.data_a));
    assert_eq!(history(&p.api_b), ["firing"]);
    let log_a = log_of(&p.data_a);
    assert!(
        !log_a.contains("state=firing") && !log_a.contains("state=\"firing\""),
        "A recorded a firing:\n{log_a}"
    );
    let _ = (&p.proc_a, &p.proc_b);
}

/// `GET /api/v1/terminals` says `open` alike on every replica: a session
/// held by A is open on B's list too, closed on both once it ends, and
/// not open any more once A dies (the replica that reaps A closes its
/// sessions' rows). Before, B said `open: false` for A's live session.
#[tokio::test]
async fn the_terminal_list_is_the_same_on_every_replica() {
    let _ = std::fs::remove_file("/root/.pyenv/shims/.pyenv-shim");
    let mut p = pair("term-list", &[]).await;
    let _run = runner(&p.state, &["run", "--server", &p.api_a]);
    p.wait(Duration::from_secs(30), "active on A", || {
        p.show(&p.api_b)["health"] == "active"
    });
    let open_on = |p: &Pair, api: &str, tid: &str| -> Value {
        let (status, list) = p.call(api, "GET", "/api/v1/terminals", None);
        assert_eq!(status, 200, "{list}");
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == tid)
            .unwrap_or_else(|| panic!("{tid} not listed: {list}"))["open"]
            .clone()
    };
    let open_terminal = |p: &Pair| -> String {
        let (status, s) = p.call(
            &p.api_a,
            "POST",
            &format!("/api/v1/runners/{}/terminals", p.id),
            Some(serde_json::json!({})),
        );
        assert_eq!(status, 201, "{s}");
        s["id"].as_str().unwrap().to_owned()
    };
    let tid = open_terminal(&p);
    assert_eq!(open_on(&p, &p.api_a, &tid), true);
    assert_eq!(
        open_on(&p, &p.api_b, &tid),
        true,
        "A's live session, listed on B"
    );
    let (status, v) = p.call(
        &p.api_b,
        "DELETE",
        &format!("/api/v1/terminals/{tid}"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    p.wait(Duration::from_secs(15), "closed on both", || {
        open_on(&p, &p.api_a, &tid) == false && open_on(&p, &p.api_b, &tid) == false
    });
    // A dies with a session open: B's reaper closes its row.
    let tid = open_terminal(&p);
    assert_eq!(open_on(&p, &p.api_b, &tid), true);
    p.proc_a.0.kill().unwrap();
    p.proc_a.0.wait().unwrap();
    let took = p.wait(Duration::from_secs(40), "not open once A is dead", || {
        open_on(&p, &p.api_b, &tid) == false
    });
    eprintln!("A's session listed closed on B {took:?} after A was killed");
    let (_, list) = p.call(&p.api_b, "GET", "/api/v1/terminals", None);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == tid.as_str())
        .unwrap()
        .clone();
    assert!(row["closed_at"].is_string(), "{row}");
    assert!(
        row["reason"].as_str().unwrap_or("").contains("replica a"),
        "{row}"
    );
}

/// A job waiting for a runner linked to the other replica (frozen, so it
/// has not taken the job yet) does not expire on the replica that runs the
/// deadlines; a runner linked nowhere still has its job expired.
#[tokio::test]
async fn a_deadline_does_not_expire_a_job_of_a_runner_linked_elsewhere() {
    let p = pair("deadline", &[]).await;
    let holder = p.lease_holder().to_owned();
    // The runner goes to the replica that does not run the deadlines.
    let (other_api, holder_api) = if holder == p.data_a {
        (&p.api_b, &p.api_a)
    } else {
        (&p.api_a, &p.api_b)
    };
    let run = runner(
        &p.state,
        &["run", "--server", other_api, "--heartbeat", "60s"],
    );
    p.wait(Duration::from_secs(30), "active", || {
        p.show(holder_api)["health"] == "active"
    });
    // SAFETY: kill sends a signal to a child we own.
    unsafe { libc::kill(run.0.id() as i32, libc::SIGSTOP) };
    let (status, made) = p.call(
        holder_api,
        "POST",
        "/api/v1/jobs",
        Some(serde_json::json!({"runners": [p.id], "command": "echo waited", "deadline_s": 2})),
    );
    assert_eq!(status, 201, "{made}");
    let job = made[0]["id"].as_str().unwrap().to_owned();
    let status_of = |api: &str, job: &str| {
        p.call(api, "GET", &format!("/api/v1/jobs/{job}"), None).1["status"]
            .as_str()
            .unwrap_or("?")
            .to_owned()
    };
    // Four deadlines' worth of ticks later, still waiting for it.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(status_of(holder_api, &job), "pending");
    // Thawed, the runner takes and runs it.
    unsafe { libc::kill(run.0.id() as i32, libc::SIGCONT) };
    p.wait(Duration::from_secs(20), "the job to succeed", || {
        status_of(other_api, &job) == "succeeded"
    });
    // Linked nowhere: the deadline does expire the next one.
    drop(run);
    p.wait(Duration::from_secs(20), "unreachable", || {
        p.show(holder_api)["health"] == "unreachable"
    });
    let (status, made) = p.call(
        other_api,
        "POST",
        "/api/v1/jobs",
        Some(serde_json::json!({"runners": [p.id], "command": "echo never", "deadline_s": 1})),
    );
    assert_eq!(status, 201, "{made}");
    let job = made[0]["id"].as_str().unwrap().to_owned();
    let took = p.wait(Duration::from_secs(10), "the job to expire", || {
        status_of(holder_api, &job) == "expired"
    });
    eprintln!("expired {took:?} after its creation (deadline 1 s)");
    let _ = (&p.proc_a, &p.proc_b);
}

/// A container of the test image writing `seq N` lines, removed at the end.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Settings changed on B reach the replica holding the runner (A) at once,
/// as on one server: a log collection policy set on B is applied by A to
/// the runner's containers without waiting for A's minute resync; the
/// policy changes show on both replicas' event streams.
#[tokio::test]
async fn a_collection_policy_set_on_b_is_applied_by_a_at_once() {
    const IMAGE: &str = "tether-test/busybox:1";
    // Held shared like every Docker test of the root crate, so none of
    // them restarts the engine under this one (tests/util/docker.rs).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/tether-test-docker-engine.lock")
        .unwrap();
    // SAFETY: flock on a descriptor we own, released when it closes.
    unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&lock), libc::LOCK_SH) };
    wait_for(Duration::from_secs(60), "the Docker engine", || {
        Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let p = pair("collect", &[]).await;
    let events_a = p.events(&p.api_a);
    let events_b = p.events(&p.api_b);
    let _run = runner(&p.state, &["run", "--server", &p.api_a]);
    let docker = format!("/api/v1/runners/{}/docker", p.id);
    p.wait(Duration::from_secs(30), "docker seen through B", || {
        let (st, v) = p.call(&p.api_b, "GET", &docker, None);
        st == 200 && v["available"] == true
    });
    // Nothing collected yet: the label nobody has.
    let collect = format!("/api/v1/runners/{}/logs/collect", p.id);
    let (st, v) = p.call(
        &p.api_b,
        "PUT",
        &collect,
        Some(serde_json::json!({"policy": "label:cl18=nobody"})),
    );
    assert_eq!(
        (st, v["collect"].as_str()),
        (200, Some("label:cl18=nobody")),
        "{v}"
    );
    let name = format!("tether-cl18-{}", std::process::id());
    let _c = Container(name.clone());
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, "--label", "cl18=yes", IMAGE])
        .args(["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo \"seq $i\"; i=$((i+1)); sleep 0.05; done; sleep 300"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = |api: &str| -> usize {
        let (st, v) = p.call(
            api,
            "GET",
            &format!(
                "/api/v1/runners/{}/containers/{name}/logs?limit=100000",
                p.id
            ),
            None,
        );
        match (st, v) {
            (200, Value::String(text)) => text.lines().count(),
            (200, Value::Null) => 0,
            (200, _) => 1,
            _ => 0,
        }
    };
    p.wait(Duration::from_secs(20), "the container known", || {
        let (st, v) = p.call(
            &p.api_b,
            "GET",
            &format!("/api/v1/runners/{}/containers", p.id),
            None,
        );
        st == 200 && v.to_string().contains(&name)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored(&p.api_b), 0, "collected against the policy");

    // Set on B; A (the holder) applies it: lines within seconds, where
    // A's own resync would take a minute.
    let (st, v) = p.call(
        &p.api_b,
        "PUT",
        &collect,
        Some(serde_json::json!({"policy": "label:cl18=yes"})),
    );
    assert_eq!(st, 200, "{v}");
    let took = p.wait(Duration::from_secs(15), "lines collected", || {
        stored(&p.api_b) > 0
    });
    eprintln!("a policy set on B was applied by A within {took:?}");
    assert!(took < Duration::from_secs(15));
    // The fleet policy, set on A: both streams show both changes.
    let (st, v) = p.call(
        &p.api_a,
        "PUT",
        "/api/v1/fleet-policy",
        Some(serde_json::json!({"job_deadline_s": 120})),
    );
    assert_eq!(st, 200, "{v}");
    for (which, events) in [("a", &events_a), ("b", &events_b)] {
        p.wait(Duration::from_secs(10), "policy events", || {
            let got = events.lock().unwrap();
            let policies: Vec<&Value> = got
                .iter()
                .filter(|(e, _)| e == "policy")
                .map(|(_, v)| v)
                .collect();
            policies
                .iter()
                .any(|v| v["policy"] == "fleet" && v["job_deadline_s"] == 120)
                && policies
                    .iter()
                    .any(|v| v["policy"] == "log_collect" && v["collect"] == "label:cl18=yes")
        });
        eprintln!("replica {which}'s stream showed both policy changes");
    }
    // A bad policy is refused on either replica and changes nothing.
    let (st, v) = p.call(
        &p.api_b,
        "PUT",
        &collect,
        Some(serde_json::json!({"policy": "label:"})),
    );
    assert_eq!(st, 400, "{v}");
    let (_, v) = p.call(
        &p.api_a,
        "GET",
        &format!("/api/v1/runners/{}/logs", p.id),
        None,
    );
    assert_eq!(v["collect"], "label:cl18=yes", "{v}");
}
