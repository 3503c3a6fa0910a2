//! Alerts from real data: a real runner's fingerprint, a real Docker
//! engine's container events, a real link cut by the fault proxy, a real
//! filesystem filling, labels on real runners, a deploy failing on a real
//! host, a real signed update rolled back by a real runner
//! (`update.rs`'s fixture), each delivered to a webhook receiver on loopback (past one that
//! hangs) and, for the cut link, by email to a real SMTP server
//! (`util/hooks.rs`). The server's own tests
//! (`server/tests/server/alerts.rs`) cover the rules, channels, retries and
//! silences with scripted input.

use crate::util::hooks::{self, Hooks, Smtp};
use crate::util::proxy::{Mode, TcpProxy};
use crate::util::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// A server that may notify loopback receivers, a tenant, and a webhook
/// channel to `hooks`.
fn setup(hooks: &Hooks) -> (Server, Tenant, String) {
    let server = Server::start_with(&["--alert-private-targets"]);
    let tenant = server.tenant("acme");
    let (st, ch) = tenant.call(
        "POST",
        "/api/v1/alerts/channels",
        Some(json!({"name": "ops", "config": {"kind": "webhook", "url": hooks.url()}})),
    );
    assert_eq!(st, 201, "{ch}");
    let ch = ch["id"].as_str().unwrap().to_owned();
    (server, tenant, ch)
}

fn rule(tenant: &Tenant, body: Value) {
    let (st, v) = tenant.call("POST", "/api/v1/alerts/rules", Some(body));
    assert_eq!(st, 201, "{v}");
}

fn summary(v: &Value) -> &str {
    v["summary"].as_str().unwrap_or("")
}

#[test]
fn a_new_listening_port_on_the_host_is_an_alert_naming_port_and_process() {
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&[
        "--fingerprint-interval",
        "1s",
        "--metrics-interval",
        "off",
        "--docker-socket",
        "off",
    ]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    rule(
        &tenant,
        json!({"name": "ports", "kind": "drift", "paths": ["listening"], "channels": [ch]}),
    );
    // Let the first full fingerprint land: what listens already is no drift.
    std::thread::sleep(Duration::from_secs(3));

    let socket = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let want = format!("0.0.0.0:{port}");
    let n = hooks.wait(Duration::from_secs(15), "drift naming the port", |v| {
        summary(v).contains(&want)
    });
    assert_eq!(n["state"], "firing", "{n}");
    let s = summary(&n);
    assert!(
        s.contains("listening tcp") && s.contains(&format!("opened by {}", comm.trim())),
        "{s}"
    );
    drop(socket);
}

#[test]
fn a_crash_looping_container_is_one_notification_with_its_restart_count() {
    let _engine = docker::ensure();
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--metrics-interval", "off", "--fingerprint-interval", "off"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let name = format!("tether-crashloop-{}", std::process::id());
    rule(
        &tenant,
        json!({"name": "crashloop", "kind": "container_restarts", "count": 3, "within_s": 120,
               "containers": {"name": name}, "channels": [ch]}),
    );
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, "--restart", "always"])
        .args([docker::IMAGE, "sh", "-c", "sleep 0.2; exit 1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed = || {
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    };
    // Docker's restart delay doubles from 100 ms: four exits within ~3 s.
    let n = hooks.wait(Duration::from_secs(40), "the crash loop", |v| {
        v["rule_name"] == "crashloop"
    });
    removed();
    assert_eq!(n["state"], "firing", "{n}");
    let s = summary(&n);
    assert!(s.contains("restart") || s.contains("exit"), "{s}");
    assert!(
        s.chars().any(|c| c.is_ascii_digit() && c >= '4'),
        "the count (more than 3) is named: {s}"
    );
    // The loop went on while it fired: still one notification for it.
    let more: Vec<Value> = hooks
        .drain_for(Duration::from_secs(5))
        .into_iter()
        .filter(|v| v["rule_name"] == "crashloop" && v["state"] == "firing")
        .collect();
    assert!(more.is_empty(), "notified again: {more:?}");
}

#[test]
fn a_black_holed_link_is_notified_within_the_rule_time_and_resolved_once() {
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    // Mail too: a real SMTP server (STARTTLS, AUTH) with the server's own
    // dev certificate, which names 127.0.0.1.
    let tls = server.data.join("tls");
    let smtp = Smtp::start(&tls.join("cert.pem"), &tls.join("key.pem"));
    let ca = std::fs::read_to_string(&server.ca).unwrap();
    let (st, mail) = tenant.call(
        "POST",
        "/api/v1/alerts/channels",
        Some(json!({"name": "mail", "config": smtp.channel(&ca)})),
    );
    assert_eq!(st, 201, "{mail}");
    let proxy = TcpProxy::to(&server.addr());
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s", "--server", &proxy.url("https")]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let for_s = 3;
    rule(
        &tenant,
        json!({"name": "down", "kind": "unreachable", "for_s": for_s, "channels": [ch, mail["id"]]}),
    );
    std::thread::sleep(Duration::from_millis(300));

    // Silence, not a close: the server finds out by its own liveness check.
    proxy.set_mode(Mode::Blackhole);
    let cut = std::time::Instant::now();
    let detected = tenant.wait_health(&runner.id, "unreachable", Duration::from_secs(30));
    let n = hooks.wait(Duration::from_secs(30), "unreachable", |v| {
        v["state"] == "firing" && v["runner_id"] == runner.id.as_str()
    });
    let took = cut.elapsed();
    let mailed = smtp.wait(Duration::from_secs(30), "unreachable by mail", |l| {
        l.contains("[FIRING] down")
    });
    let mail_took = cut.elapsed();
    // From the health change: the rule's N s plus 2 s (the poll above is
    // every few hundred ms, so `detected` is late if anything).
    let after_health = took.saturating_sub(detected);
    let mail_after_health = mail_took.saturating_sub(detected);
    eprintln!("black hole: unreachable after {detected:?}, notified {after_health:?} later, mailed {mail_after_health:?} later");
    assert!(
        after_health <= Duration::from_secs(for_s + 2),
        "notified {after_health:?} after the health change: {n}"
    );
    assert!(
        mail_after_health <= Duration::from_secs(for_s + 2),
        "mailed {mail_after_health:?} after the health change: {mailed}"
    );
    assert!(
        after_health >= Duration::from_secs(for_s) - Duration::from_millis(500),
        "the rule's {for_s} s were not waited: {after_health:?}"
    );
    assert!(
        mailed.starts_with("MAIL tether@example.com ops@example.com tls=True")
            && mailed.contains(&runner.id),
        "{mailed}"
    );

    proxy.set_mode(Mode::Forward);
    let resolved = hooks.wait(Duration::from_secs(70), "resolved", |v| {
        v["state"] == "resolved"
    });
    assert_eq!(resolved["runner_id"], runner.id.as_str(), "{resolved}");
    assert_eq!(resolved["rule_name"], "down", "{resolved}");
    smtp.wait(Duration::from_secs(10), "resolved by mail", |l| {
        l.contains("[RESOLVED] down")
    });
    // Once: nothing more about it while the link stays up.
    let more = hooks.drain_for(Duration::from_secs(4));
    assert!(more.is_empty(), "{more:?}");
    let more = smtp.drain_for(Duration::from_millis(500));
    assert!(more.is_empty(), "{more:?}");
}

#[test]
fn a_rule_scoped_by_a_label_selector_fires_for_the_labelled_runner_only() {
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    let mut prod = Runner::enroll(&server, &tenant);
    let mut dev = Runner::enroll(&server, &tenant);
    for (r, env) in [(&mut prod, "prod"), (&mut dev, "dev")] {
        r.start(&["--heartbeat", "1s", "--metrics-interval", "off"]);
        tenant.wait_health(&r.id, "active", Duration::from_secs(15));
        let (st, v) = tenant.call(
            "PATCH",
            &format!("/api/v1/runners/{}/labels", r.id),
            Some(json!({"set": {"env": env}})),
        );
        assert_eq!(st, 200, "{v}");
    }
    // A channel that accepts and never answers, first in the rule's list:
    // the webhook after it is not held up.
    let (st, hang) = tenant.call(
        "POST",
        "/api/v1/alerts/channels",
        Some(json!({"name": "hangs", "config": {"kind": "webhook", "url": hooks::hanging_url()}})),
    );
    assert_eq!(st, 201, "{hang}");
    let for_s = 1;
    rule(
        &tenant,
        json!({"name": "prod-down", "kind": "unreachable", "for_s": for_s,
               "scope": {"selector": "env=prod"}, "channels": [hang["id"], ch]}),
    );
    std::thread::sleep(Duration::from_millis(300));
    // Both go down; only the labelled one is the rule's.
    let mut down_ms = 0;
    for r in [&mut prod, &mut dev] {
        signal(r.child(), libc::SIGTERM);
        wait_exit(r.child(), Duration::from_secs(10));
        tenant.wait_health(&r.id, "unreachable", Duration::from_secs(10));
        if down_ms == 0 {
            down_ms = hooks::now_ms();
        }
    }
    let n = hooks.wait(Duration::from_secs(15), "prod unreachable", |v| {
        v["state"] == "firing"
    });
    assert_eq!(n["runner_id"], prod.id.as_str(), "{n}");
    assert_eq!(n["rule_name"], "prod-down", "{n}");
    let took = n[hooks::RECEIVED_MS]
        .as_u64()
        .unwrap()
        .saturating_sub(down_ms);
    assert!(
        took <= (for_s + 2) * 1000,
        "{took} ms after the runner was seen down, past the hanging channel: {n}"
    );
    let more = hooks.drain_for(Duration::from_secs(4));
    assert!(
        more.iter().all(|v| v["runner_id"] != dev.id.as_str()),
        "the dev runner was notified: {more:?}"
    );
    let (_, firing) = tenant.call("GET", "/api/v1/alerts", None);
    let runners: Vec<&str> = firing["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["runner_id"].as_str())
        .collect();
    assert_eq!(runners, vec![prod.id.as_str()], "{firing}");
}

/// A tmpfs mounted (in this host's mount table, as root may) under a
/// `/dev/`-looking source, so the runner samples it as a disk; unmounted
/// when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size_kib: u64) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("tether-alert-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k")])
            .arg(format!("/dev/tether-alert-{}", std::process::id()))
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    /// Make the file `fill` `kib` KiB long: grown by appending, shrunk by
    /// truncating, so no sample sees it empty on the way.
    fn fill_to(&self, kib: u64) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.0.join("fill"))
            .unwrap();
        let have = f.metadata().unwrap().len() / 1024;
        if kib <= have {
            f.set_len(kib * 1024).unwrap();
            return;
        }
        // Written, not sparse: tmpfs counts only the pages it holds.
        f.seek(SeekFrom::End(0)).unwrap();
        let block = vec![0x5a_u8; 1024];
        for _ in have..kib {
            f.write_all(&block).unwrap();
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_filling_filesystem_fires_once_holds_through_flapping_and_resolves_once() {
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    let fs = Tmpfs::mount(4096);
    let m = fs.0.to_str().unwrap().to_owned();
    assert!(!m.contains('.'), "a series name part: {m}");
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&[
        "--heartbeat",
        "1s",
        "--metrics-interval",
        "1s",
        "--fingerprint-interval",
        "off",
        "--docker-socket",
        "off",
    ]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    // Free below 25 % for 2 s fires; it resolves only once free is back
    // above 60 % (between the two: no change).
    rule(
        &tenant,
        json!({"name": "disk", "kind": "metric", "series": format!("fs.{m}.avail"),
               "per": format!("fs.{m}.size"), "op": "below", "threshold": 25, "resolve": 60,
               "for_s": 2, "channels": [ch]}),
    );
    let firing = |v: &Value| v["rule_name"] == "disk" && v["state"] == "firing";
    let resolved = |v: &Value| v["rule_name"] == "disk" && v["state"] == "resolved";
    // 85 % used: free 15 %.
    fs.fill_to(3482);
    let n = hooks.wait(Duration::from_secs(20), "the disk filling", firing);
    let s = summary(&n);
    assert!(s.contains(&m) && s.contains("below 25"), "{s}");
    let v = n["value"].as_f64().unwrap();
    assert!((10.0..20.0).contains(&v), "free {v} %: {n}");
    // Flapping around the threshold: 70 % used (free 30 %, between the
    // thresholds) and back to 85 %, a few times: no notification.
    for _ in 0..3 {
        fs.fill_to(2867);
        std::thread::sleep(Duration::from_millis(2500));
        fs.fill_to(3482);
        std::thread::sleep(Duration::from_millis(2500));
    }
    let flaps = hooks.drain_for(Duration::from_millis(500));
    assert!(
        !flaps.iter().any(|v| v["rule_name"] == "disk"),
        "notified while flapping: {flaps:?}"
    );
    // Emptied: resolved, once.
    std::fs::remove_file(fs.0.join("fill")).unwrap();
    let r = hooks.wait(Duration::from_secs(20), "the disk emptied", resolved);
    assert!(summary(&r).contains("back past 60"), "{r}");
    let more = hooks.drain_for(Duration::from_secs(4));
    assert!(
        !more.iter().any(|v| v["rule_name"] == "disk"),
        "notified again: {more:?}"
    );
    let (_, hist) = tenant.call("GET", "/api/v1/alerts/history", None);
    let states: Vec<&str> = hist["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["state"].as_str())
        .collect();
    // (Pending is a state, not history: only what could be notified is kept.)
    assert_eq!(states, vec!["resolved", "firing"], "{hist}");
}

#[test]
fn a_failing_deploy_is_an_alert_naming_its_reason() {
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s", "--docker-socket", "off"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    rule(
        &tenant,
        json!({"name": "deploys", "kind": "deploy_failed", "apps": ["broken"], "channels": [ch]}),
    );
    // A repository that is not there: the source step fails on the host.
    let missing = std::env::temp_dir().join(format!("tether-no-repo-{}", std::process::id()));
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/apps/broken",
        Some(json!({"runner": runner.id, "git_url": missing, "git_ref": "main"})),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = tenant.call("POST", "/api/v1/apps/broken/deploy", None);
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let n = hooks.wait(Duration::from_secs(60), "the failed deploy", |v| {
        v["rule_name"] == "deploys"
    });
    let (_, job) = tenant.call("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(job["status"], "failed", "{job}");
    let reason = job["reason"].as_str().unwrap();
    assert!(!reason.is_empty(), "{job}");
    assert_eq!(n["state"], "firing", "{n}");
    let s = summary(&n);
    assert!(
        s.contains("deploy of broken failed") && s.contains(reason),
        "the summary names the app and the job's reason ({reason:?}): {s}"
    );
    assert_eq!(n["runner_id"], runner.id.as_str(), "{n}");
}

#[test]
fn a_rolled_back_update_is_an_alert_naming_its_reason() {
    use crate::update::{keypair, script, Fx};
    let hooks = Hooks::start();
    // The update tests' fixture, with a server that may notify loopback.
    let keys = keypair("keys");
    let server = Server::start_with(&[
        "--release-keys",
        keys.public.to_str().unwrap(),
        "--alert-private-targets",
    ]);
    let tenant = server.tenant("acme");
    let fx = Fx {
        keys,
        server,
        tenant,
    };
    let (st, ch) = fx.tenant.call(
        "POST",
        "/api/v1/alerts/channels",
        Some(json!({"name": "ops", "config": {"kind": "webhook", "url": hooks.url()}})),
    );
    assert_eq!(st, 201, "{ch}");
    rule(
        &fx.tenant,
        json!({"name": "updates", "kind": "update_failed", "channels": [ch["id"]]}),
    );
    let v0 = env!("CARGO_PKG_VERSION");
    let mut host = fx.host();
    host.start(&[]);
    fx.wait_version(&host.runner.id, v0);

    // A signed release that exits at start: the runner swaps it in, sees
    // it die before connecting, puts its own binary back and says why.
    fx.publish(
        "0.4.0",
        &script("echo 'broken release starting' >&2; exit 3"),
    );
    fx.desire("0.4.0");
    let n = hooks.wait(Duration::from_secs(90), "the rolled-back update", |v| {
        v["rule_name"] == "updates"
    });
    let report = fx.wait_report(&host.runner.id, "0.4.0", "failed");
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("exited before connecting"), "{report}");
    assert_eq!(n["state"], "firing", "{n}");
    assert_eq!(n["runner_id"], host.runner.id.as_str(), "{n}");
    let s = summary(&n);
    assert!(
        s.contains("update to 0.4.0 rolled back") && s.contains(reason),
        "the summary names the version, the rollback and the runner's reason ({reason:?}): {s}"
    );
    fx.wait_version(&host.runner.id, v0);

    // Offered again, refused without a try: the alert still fires, and
    // is not notified a second time.
    fx.desire("0.4.0");
    fx.wait_report(&host.runner.id, "0.4.0", "rejected");
    let more = hooks.drain_for(Duration::from_secs(3));
    assert!(
        more.iter().all(|v| v["rule_name"] != "updates"),
        "notified again: {more:?}"
    );
    let (_, firing) = fx.tenant.call("GET", "/api/v1/alerts", None);
    let updates: Vec<&Value> = firing["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing" && a["runner_id"] == host.runner.id.as_str())
        .collect();
    assert_eq!(updates.len(), 1, "{firing}");
}
