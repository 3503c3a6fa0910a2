//! Terminal recordings (issue 19, part 4) on real PTYs and a real Docker
//! engine: a session typed on the host and in a container replays byte
//! for byte what its client saw; the size cap stops recording with a
//! marker while the session goes on; keystrokes are recorded only when
//! the tenant says; a viewer replays only if the tenant allows; another
//! tenant gets a 404; the CLI lists, downloads and replays; a running
//! server removes recordings past `--recording-retention`.

use crate::terminal::Sleeper;
use crate::util::docker;
use crate::util::term::TermClient;
use crate::util::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "rec-password-1";

fn started(server: &Server, tenant: &Tenant) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    runner.start(&["--heartbeat", "1s", "--metrics-interval", "off"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    runner
}

fn agent(server: &Server) -> ureq::Agent {
    let pem = std::fs::read(&server.ca).unwrap();
    let cert = ureq::tls::Certificate::from_pem(&pem).unwrap().to_owned();
    ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    cert,
                ])))
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

/// GET with one header (`Authorization` or `Cookie`): status, content
/// type, body.
fn get_raw(server: &Server, header: (&str, &str), path: &str) -> (u16, String, Vec<u8>) {
    let mut resp = agent(server)
        .get(format!("{}{}", server.url, path))
        .header(header.0, header.1)
        .call()
        .unwrap();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.body_mut().read_to_vec().unwrap_or_default();
    (resp.status().as_u16(), ct, body)
}

fn bearer(t: &Tenant) -> String {
    format!("Bearer {}", t.token)
}

/// The recording of `session` once its end is written.
fn finished(tenant: &Tenant, session: &str) -> Value {
    wait_for(Duration::from_secs(15), "the recording's end", || {
        let (st, v) = tenant.call("GET", &format!("/api/v1/recordings/{session}"), None);
        assert_eq!(st, 200, "{v}");
        v["ended_at"].is_string().then_some(v)
    })
}

/// A `.cast` file: its header and its events.
fn parse_cast(bytes: &[u8]) -> (Value, Vec<Value>) {
    let text = std::str::from_utf8(bytes).expect("a .cast file is UTF-8");
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let events = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    (header, events)
}

/// The concatenated data of the events of `kind`.
fn data_of(events: &[Value], kind: &str) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e[1] == kind)
        .flat_map(|e| e[2].as_str().unwrap().as_bytes().to_vec())
        .collect()
}

fn download(server: &Server, tenant: &Tenant, session: &str) -> (Value, Vec<Value>) {
    let path = format!("/api/v1/recordings/{session}/cast");
    let (st, ct, body) = get_raw(server, ("Authorization", &bearer(tenant)), &path);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ct, "application/x-asciicast");
    parse_cast(&body)
}

/// Type a few lines (UTF-8 among them), resize, exit.
fn session(t: &mut TermClient) {
    t.run("echo $((6*7))", "42\r\n");
    t.run(
        "printf 'h\\303\\251llo \\342\\206\\222 w\\303\\266rld\\n'",
        "héllo → wörld",
    );
    t.resize(100, 30);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let from = t.out.len();
        t.send(b"stty size\n");
        if t.read_until(from, "30 100", Duration::from_secs(1)) || Instant::now() > end {
            break;
        }
    }
    t.send(b"exit\n");
    assert_eq!(
        t.wait_end(Duration::from_secs(15)).as_deref(),
        Some("exited 0")
    );
}

/// The replay matches the client's stream exactly; resizes are there,
/// keystrokes are not (off by default).
fn check_replay(server: &Server, tenant: &Tenant, t: &TermClient, target: &str) {
    assert_eq!(t.start, 0, "the client saw the session from its start");
    let row = finished(tenant, &t.session);
    assert_eq!(row["target"], target);
    assert_eq!(row["truncated"], false);
    let (header, events) = download(server, tenant, &t.session);
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert!(header["timestamp"].as_u64().unwrap() > 1_700_000_000);
    let replayed = data_of(&events, "o");
    assert_eq!(
        replayed,
        t.out,
        "replay differs from the stream the client saw:\n{:?}\n{:?}",
        String::from_utf8_lossy(&replayed),
        t.text()
    );
    assert_eq!(data_of(&events, "r"), b"100x30");
    assert!(data_of(&events, "i").is_empty(), "input is off by default");
    // Times never go back.
    let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(row["bytes"].as_u64().unwrap() as usize, {
        let lines: usize = events.iter().map(|e| e.to_string().len() + 1).sum();
        lines
    });
}

#[test]
fn a_session_on_the_host_and_in_a_container_replays_byte_identically() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("rec-replay");
    let runner = started(&server, &tenant);

    let mut h = TermClient::open(&server, &tenant.token, &runner.id, "cols=80&rows=24").unwrap();
    session(&mut h);
    check_replay(&server, &tenant, &h, "host");

    let box_ = Sleeper::start();
    let q = format!("container={}&cols=80&rows=24", box_.name);
    let mut c = TermClient::open(&server, &tenant.token, &runner.id, &q).unwrap();
    session(&mut c);
    check_replay(&server, &tenant, &c, &format!("container:{}", box_.name));

    let (st, list) = tenant.call("GET", "/api/v1/recordings", None);
    assert_eq!(st, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [c.session.as_str(), h.session.as_str()],
        "newest first"
    );
}

#[test]
fn the_size_cap_stops_recording_with_a_marker_and_the_session_goes_on() {
    let server = Server::start();
    let tenant = server.tenant("rec-cap");
    let runner = started(&server, &tenant);
    let cap = 4096u64;
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/recording-policy",
        Some(json!({"max_bytes": cap, "record_input": true})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["max_bytes"].as_u64(), v["record"].as_bool()),
        (Some(cap), Some(true))
    );
    // Bad input: a clear error, nothing changed.
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/recording-policy",
        Some(json!({"max_bytes": 1})),
    );
    assert_eq!(st, 400, "{v}");
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/recording-policy",
        Some(json!({"recrod": true})),
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        tenant.call("GET", "/api/v1/recording-policy", None).1["max_bytes"],
        cap
    );

    let mut t = TermClient::open(&server, &tenant.token, &runner.id, "cols=80&rows=24").unwrap();
    t.run("echo first-$((1+1))", "first-2");
    t.run("seq 1 3000 | tail -n 1", "3000");
    t.run("seq 1 2000", "1999\r\n2000");
    // Past the cap: the shell still answers.
    t.run("echo still-$((40+2))", "still-42");
    t.send(b"exit\n");
    assert_eq!(
        t.wait_end(Duration::from_secs(15)).as_deref(),
        Some("exited 0")
    );

    let row = finished(&tenant, &t.session);
    assert_eq!(row["truncated"], true, "{row}");
    let (_, events) = download(&server, &tenant, &t.session);
    let size: u64 = events.iter().map(|e| e.to_string().len() as u64 + 1).sum();
    assert!(
        size <= cap,
        "{size} bytes of events past the {cap}-byte cap"
    );
    let last = events.last().unwrap();
    assert_eq!(last[1], "m", "{last}");
    assert!(last[2].as_str().unwrap().contains("cap"), "{last}");
    assert_eq!(events.iter().filter(|e| e[1] == "m").count(), 1);
    // What was recorded is the start of what the client saw.
    let out = data_of(&events, "o");
    assert!(
        t.out.starts_with(&out),
        "the recorded output is not a prefix"
    );
    assert!(String::from_utf8_lossy(&out).contains("first-2"));
    assert!(!String::from_utf8_lossy(&out).contains("still-42"));
    // The tenant records keystrokes: they are there.
    let typed = String::from_utf8(data_of(&events, "i")).unwrap();
    assert!(typed.starts_with("echo first-$((1+1))\n"), "{typed:?}");

    // Recording off: sessions leave none.
    let (st, _) = tenant.call(
        "PUT",
        "/api/v1/recording-policy",
        Some(json!({"record": false})),
    );
    assert_eq!(st, 200);
    let mut t = TermClient::open(&server, &tenant.token, &runner.id, "").unwrap();
    t.run("echo off-$((1+1))", "off-2");
    t.send(b"exit\n");
    t.wait_end(Duration::from_secs(15));
    let (st, _) = tenant.call("GET", &format!("/api/v1/recordings/{}", t.session), None);
    assert_eq!(st, 404);
}

fn add_user(server: &Server, tenant: &str, name: &str, role: &str) {
    let (st, v) = server.api().call(
        "POST",
        &format!("/api/v1/tenants/{tenant}/users"),
        Some(&server.admin_token),
        Some(json!({ "name": name, "password": PASSWORD, "role": role })),
    );
    assert_eq!(st, 201, "{v}");
}

/// A dashboard session's `Cookie` header value.
fn login(server: &Server, tenant: &str, name: &str) -> String {
    let resp = agent(server)
        .post(format!("{}/api/v1/session", server.url))
        .send(json!({"tenant": tenant, "name": name, "password": PASSWORD}).to_string())
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    set_cookie.split(';').next().unwrap().to_owned()
}

#[test]
fn viewers_replay_only_if_the_tenant_allows_and_other_tenants_get_404() {
    let server = Server::start();
    let tenant = server.tenant("rec-who");
    let other = server.tenant("rec-other");
    let runner = started(&server, &tenant);
    let mut t = TermClient::open(&server, &tenant.token, &runner.id, "").unwrap();
    t.run("echo seen-$((1+1))", "seen-2");
    t.send(b"exit\n");
    t.wait_end(Duration::from_secs(15));
    finished(&tenant, &t.session);

    add_user(&server, "rec-who", "vera", "viewer");
    let cookie = login(&server, "rec-who", "vera");
    let cast = format!("/api/v1/recordings/{}/cast", t.session);
    for path in ["/api/v1/recordings", cast.as_str()] {
        let (st, _, body) = get_raw(&server, ("Cookie", &cookie), path);
        assert_eq!(st, 403, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("viewers_replay"));
    }
    // A viewer cannot allow itself.
    let resp = agent(&server)
        .put(format!("{}/api/v1/recording-policy", server.url))
        .header("Cookie", &cookie)
        .send(json!({"viewers_replay": true}).to_string())
        .unwrap();
    assert_eq!(resp.status(), 403);
    let (st, _) = tenant.call(
        "PUT",
        "/api/v1/recording-policy",
        Some(json!({"viewers_replay": true})),
    );
    assert_eq!(st, 200);
    let (st, _, body) = get_raw(&server, ("Cookie", &cookie), &cast);
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("seen-2"));

    // Another tenant: as if it did not exist.
    for path in [format!("/api/v1/recordings/{}", t.session), cast.clone()] {
        let (st, _, _) = get_raw(&server, ("Authorization", &bearer(&other)), &path);
        assert_eq!(st, 404, "{path}");
    }
    let (st, v) = other.call("GET", "/api/v1/recordings", None);
    assert_eq!((st, v), (200, json!([])));
    let (st, _) = tenant.call("GET", "/api/v1/recordings/tm_nosuch/cast", None);
    assert_eq!(st, 404);
}

fn cli(server: &Server, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(server_bin())
        .args(args)
        .args(["--api", &server.url])
        .arg("--ca-file")
        .arg(&server.ca)
        .env("TETHER_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_lists_downloads_and_replays_a_recording() {
    let server = Server::start();
    let tenant = server.tenant("rec-cli");
    let runner = started(&server, &tenant);
    let mut t = TermClient::open(&server, &tenant.token, &runner.id, "").unwrap();
    t.run("echo cli-$((40+2))", "cli-42");
    std::thread::sleep(Duration::from_millis(600));
    t.run("echo later-$((1+1))", "later-2");
    t.send(b"exit\n");
    t.wait_end(Duration::from_secs(15));
    finished(&tenant, &t.session);

    let (code, out, err) = cli(&server, &tenant.token, &["terminals", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&t.session) && out.contains("host"), "{out}");

    let dir = TempDir::new("rec-cli");
    let file = dir.path().join("s.cast");
    let file_s = file.to_str().unwrap();
    let (code, _, err) = cli(
        &server,
        &tenant.token,
        &["terminals", "download", &t.session, "--output", file_s],
    );
    assert_eq!(code, Some(0), "{err}");
    let (header, events) = parse_cast(&std::fs::read(&file).unwrap());
    assert_eq!(header["version"], 2);
    assert_eq!(data_of(&events, "o"), t.out);

    // Replay writes the output to the terminal with its timing (sped up).
    let started_at = Instant::now();
    let (code, out, err) = cli(
        &server,
        &tenant.token,
        &["terminals", "replay", &t.session, "--speed", "4"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.as_bytes(), t.out.as_slice());
    let gap = {
        let t0 = events
            .iter()
            .find(|e| e[1] == "o" && e[2].as_str().unwrap().contains("cli-42"));
        let t1 = events
            .iter()
            .find(|e| e[1] == "o" && e[2].as_str().unwrap().contains("later-2"));
        t1.unwrap()[0].as_f64().unwrap() - t0.unwrap()[0].as_f64().unwrap()
    };
    assert!(gap > 0.5, "the events keep their timing: {gap}");
    assert!(
        started_at.elapsed() >= Duration::from_secs_f64(gap / 4.0),
        "replay took {:?}, the gap at speed 4 is {}",
        started_at.elapsed(),
        gap / 4.0
    );
    let (code, _, err) = cli(
        &server,
        &tenant.token,
        &["terminals", "replay", "tm_nosuch"],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("no recording"), "{err}");
}

/// Time for `bytes` of output to reach the client through a new host
/// terminal of `tenant`, and the session's id.
fn flood(server: &Server, tenant: &Tenant, runner: &str, bytes: usize) -> (Duration, String) {
    let mut t = TermClient::open(server, &tenant.token, runner, "").unwrap();
    t.run("echo ready-$((1+1))", "ready-2");
    let from = t.out.len();
    let t0 = Instant::now();
    t.send(
        format!("head -c {bytes} /dev/zero | tr '\\0' x; echo; echo done-$((1+1))\n").as_bytes(),
    );
    // Only the tail is searched: the whole output would make this O(n²).
    while !String::from_utf8_lossy(&t.out[t.out.len().saturating_sub(64).max(from)..])
        .contains("done-2")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the flood did not arrive"
        );
        assert!(t.pump(), "the terminal closed");
    }
    let took = t0.elapsed();
    assert!(
        t.out.len() - from > bytes,
        "the client got less than the flood"
    );
    t.send(b"exit\n");
    t.wait_end(Duration::from_secs(15));
    (took, t.session)
}

/// The relay's cost of recording: the same flood with recording off and
/// on (printed; the bound only catches a relay that waits on storage).
#[test]
fn recording_does_not_hold_back_the_relay() {
    let server = Server::start();
    let tenant = server.tenant("rec-cost");
    let runner = started(&server, &tenant);
    let bytes = 4 << 20;
    let policy = |record: bool| {
        let body = json!({"record": record, "max_bytes": 64 << 20});
        let (st, v) = tenant.call("PUT", "/api/v1/recording-policy", Some(body));
        assert_eq!(st, 200, "{v}");
    };
    policy(false);
    let (off, _) = flood(&server, &tenant, &runner.id, bytes);
    policy(true);
    let (on, id) = flood(&server, &tenant, &runner.id, bytes);
    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    eprintln!(
        "terminal flood of {} MiB: recording off {:?} ({:.1} MB/s), on {:?} ({:.1} MB/s)",
        bytes >> 20,
        off,
        rate(off),
        on,
        rate(on)
    );
    let row = finished(&tenant, &id);
    assert!(row["bytes"].as_u64().unwrap() > bytes as u64, "{row}");
    assert!(
        on < off * 3 + Duration::from_secs(2),
        "recording slowed the relay: {on:?} against {off:?}"
    );
}

/// The rows and bytes of a recording in the server's `recordings.db`
/// (read with Debian's sqlite3 beside the running server): retention
/// must remove the stored bytes, not only hide the recording.
fn stored(server: &Server, session: &str) -> (u64, u64) {
    let out = Command::new("sqlite3")
        .arg("-readonly")
        .arg(server.data.join("recordings.db"))
        .arg(format!(
            "SELECT (SELECT count(*) FROM recordings WHERE id = '{session}'), \
             (SELECT coalesce(sum(length(data)), 0) FROM recording_chunks WHERE recording_id = '{session}');"
        ))
        .output()
        .expect("sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (rows, bytes) = text.trim().split_once('|').unwrap();
    (rows.parse().unwrap(), bytes.parse().unwrap())
}

/// A server started with `--recording-retention 1m` removes a recording
/// (its row and its stored bytes) once its session is a minute old, not
/// before, while a younger one stays; each session's recording stays
/// within the tenant's size bound meanwhile. Real PTY sessions on a real
/// runner; about 80 s, most of it waiting for the minute to pass.
#[test]
fn recordings_past_the_retention_are_removed_from_a_running_server() {
    let server = Server::start_with(&["--recording-retention", "1m"]);
    let tenant = server.tenant("rec-retention");
    let runner = started(&server, &tenant);
    let cap = 8192u64;
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/recording-policy",
        Some(json!({"max_bytes": cap})),
    );
    assert_eq!(st, 200, "{v}");

    // The old one: more output than the bound.
    let mut old = TermClient::open(&server, &tenant.token, &runner.id, "").unwrap();
    let t0 = Instant::now();
    old.run("seq 1 5000 | tail -n 1", "5000");
    old.run("seq 1 3000", "2999\r\n3000");
    old.send(b"exit\n");
    old.wait_end(Duration::from_secs(15));
    let row = finished(&tenant, &old.session);
    assert_eq!(row["truncated"], true, "{row}");
    assert!(row["bytes"].as_u64().unwrap() <= cap, "{row}");
    let (rows, bytes) = stored(&server, &old.session);
    assert_eq!(rows, 1);
    assert!(
        bytes > 0 && bytes <= cap,
        "{bytes} bytes stored, bound {cap}"
    );

    // Half a minute later, a younger one.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(t0.elapsed()));
    let mut young = TermClient::open(&server, &tenant.token, &runner.id, "").unwrap();
    young.run("echo young-$((1+1))", "young-2");
    young.send(b"exit\n");
    young.wait_end(Duration::from_secs(15));
    let row = finished(&tenant, &young.session);
    assert_eq!(row["truncated"], false, "{row}");

    // Not removed before its minute.
    std::thread::sleep(Duration::from_secs(55).saturating_sub(t0.elapsed()));
    let (st, _) = tenant.call("GET", &format!("/api/v1/recordings/{}", old.session), None);
    assert_eq!(st, 200, "removed before the retention");

    // Removed within a retention pass (a tenth of the retention) after it.
    wait_for(Duration::from_secs(25), "the old recording to go", || {
        let (st, _) = tenant.call("GET", &format!("/api/v1/recordings/{}", old.session), None);
        (st == 404).then_some(())
    });
    let gone_after = t0.elapsed();
    assert_eq!(stored(&server, &old.session), (0, 0), "its bytes stay");
    let path = format!("/api/v1/recordings/{}/cast", old.session);
    let (st, _, _) = get_raw(&server, ("Authorization", &bearer(&tenant)), &path);
    assert_eq!(st, 404);
    // The younger one stays, whole.
    let (st, v) = tenant.call(
        "GET",
        &format!("/api/v1/recordings/{}", young.session),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let (_, events) = download(&server, &tenant, &young.session);
    assert_eq!(data_of(&events, "o"), young.out);
    let (st, list) = tenant.call("GET", "/api/v1/recordings", None);
    assert_eq!(st, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [young.session.as_str()], "{list}");
    eprintln!("old recording removed {gone_after:?} after its session started");
}
