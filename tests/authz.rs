//! Authority is checked for as long as a stream is open, not only when it
//! starts (issue 15): a terminal WebSocket, the SSE event stream, a job's
//! output follow and a container log follow end within a second, with a
//! reason, after a logout, a deleted user, a demotion, a password change
//! or a revoked API token. And per-tenant quotas: one tenant at its limit
//! is refused with a JSON error while another is not; job output past its
//! cap is cut and marked.
//!
//! The real server, the real runner, real host shells and a real engine.

use crate::util::docker::{self, IMAGE};
use crate::util::term::TermClient;
use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "pw-of-8-chars";
/// What the issue asks: a stream ends within this long.
const WITHIN: Duration = Duration::from_secs(1);

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
        .timeout_global(None)
        .build()
        .new_agent()
}

/// A dashboard user's browser: its `Cookie` header and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
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

fn login(server: &Server, tenant: &str, name: &str) -> Browser {
    let mut resp = agent(server)
        .post(format!("{}/api/v1/session", server.url))
        .send(json!({"tenant": tenant, "name": name, "password": PASSWORD}).to_string())
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    Browser {
        cookie,
        csrf: v["csrf_token"].as_str().unwrap().to_owned(),
    }
}

impl Browser {
    fn send(&self, server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{}", server.url, path))
            .header("Cookie", &self.cookie)
            .header("X-CSRF-Token", &self.csrf)
            .header("Content-Type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .unwrap();
        let mut resp = agent(server).run(req).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A streaming GET with the cookie.
    fn stream(&self, server: &Server, path: &str) -> Box<dyn Read + Send> {
        let resp = agent(server)
            .get(format!("{}{}", server.url, path))
            .header("Cookie", &self.cookie)
            .call()
            .unwrap();
        assert_eq!(resp.status(), 200);
        Box::new(resp.into_body().into_reader())
    }
}

fn bearer_stream(server: &Server, token: &str, path: &str) -> Box<dyn Read + Send> {
    let resp = agent(server)
        .get(format!("{}{}", server.url, path))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    Box::new(resp.into_body().into_reader())
}

/// Lines of a stream, read on a thread (`None` once it ends).
fn lines(r: Box<dyn Read + Send>) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// Wait for a line containing `needle`.
fn expect_line(rx: &mpsc::Receiver<Option<String>>, needle: &str, limit: Duration) -> String {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(Some(l)) if l.contains(needle) => return l,
            Ok(Some(l)) => seen.push(l),
            Ok(None) | Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {limit:?}; saw {seen:?}");
}

/// The stream's end: every line until it closes, within `limit`.
fn until_closed(rx: &mpsc::Receiver<Option<String>>, limit: Duration) -> Vec<String> {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(Some(l)) => seen.push(l),
            Ok(None) => return seen,
            Err(_) => break,
        }
    }
    panic!("the stream was still open after {limit:?}; saw {seen:?}");
}

fn started(server: &Server, tenant: &Tenant) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    runner.start(&["--heartbeat", "1s", "--metrics-interval", "off"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    runner
}

/// A fresh API token of the tenant: (id, token).
fn api_token(tenant: &Tenant) -> (String, String) {
    let (st, v) = tenant.call("POST", "/api/v1/api-tokens", Some(json!({"label": "t"})));
    assert_eq!(st, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

/// The kinds of revocation the issue lists, each done by the tenant's
/// own API token (an admin's act) to the dashboard user `name`.
#[derive(Debug, Clone, Copy)]
enum Revocation {
    Logout,
    UserDeleted,
    Demoted,
    PasswordChanged,
}

impl Revocation {
    const ALL: [Revocation; 4] = [
        Revocation::Logout,
        Revocation::UserDeleted,
        Revocation::Demoted,
        Revocation::PasswordChanged,
    ];

    fn apply(self, server: &Server, tenant: &Tenant, name: &str, browser: &Browser) {
        let path = format!("/api/v1/users/{name}");
        let (st, v) = match self {
            Revocation::Logout => browser.send(server, "DELETE", "/api/v1/session", None),
            Revocation::UserDeleted => tenant.call("DELETE", &path, None),
            Revocation::Demoted => tenant.call("PATCH", &path, Some(json!({"role": "viewer"}))),
            Revocation::PasswordChanged => tenant.call(
                "PATCH",
                &path,
                Some(json!({"password": "another-password"})),
            ),
        };
        assert!(st == 200 || st == 204, "{self:?}: {st} {v}");
    }
}

#[test]
fn a_terminal_ends_within_a_second_after_each_kind_of_revocation() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = started(&server, &tenant);
    for (i, kind) in Revocation::ALL.into_iter().enumerate() {
        let name = format!("op{i}");
        add_user(&server, "acme", &name, "operator");
        let browser = login(&server, "acme", &name);
        let path = format!("/api/v1/runners/{}/terminals", runner.id);
        let (st, s) = browser.send(&server, "POST", &path, Some(json!({})));
        assert_eq!(st, 201, "{s}");
        let tid = s["id"].as_str().unwrap().to_owned();
        let mut t =
            TermClient::attach_as_browser(&server, &browser.cookie, Some(&server.url), &tid)
                .unwrap_or_else(|e| panic!("attach: {e:?}"));
        t.run("echo $((6*7))", "42\r\n");

        kind.apply(&server, &tenant, &name, &browser);
        let at = Instant::now();
        let reason = t.wait_end(Duration::from_secs(5));
        let took = at.elapsed();
        let reason = reason.unwrap_or_else(|| panic!("{kind:?}: no end message"));
        assert!(
            reason.starts_with("authorization ended"),
            "{kind:?}: {reason}"
        );
        assert!(took < WITHIN, "{kind:?}: ended after {took:?}");
        assert!(
            t.wait_closed(Duration::from_secs(2)),
            "{kind:?}: socket left open"
        );
        eprintln!("{kind:?}: terminal ended after {took:?}: {reason}");
        // The shell was this user's: it is hung up too.
        wait_for(Duration::from_secs(10), "the terminal to close", || {
            let (_, audit) = tenant.call("GET", "/api/v1/terminals", None);
            let row = audit
                .as_array()?
                .iter()
                .find(|r| r["id"] == tid.as_str())?
                .clone();
            (row["open"] == false).then_some(())
        });
    }
}

#[test]
fn a_terminal_of_a_revoked_token_ends_and_a_ticket_is_good_once() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = started(&server, &tenant);
    let (id, token) = api_token(&tenant);
    let path = format!("/api/v1/runners/{}/terminals", runner.id);
    let (st, s) = tenant
        .api
        .call("POST", &path, Some(&token), Some(json!({})));
    assert_eq!(st, 201, "{s}");
    let tid = s["id"].as_str().unwrap().to_owned();

    // A client that cannot send a header: a ticket, once.
    let (st, v) = tenant
        .api
        .call("POST", "/api/v1/ws-tickets", Some(&token), None);
    assert_eq!(st, 201, "{v}");
    let ticket = v["ticket"].as_str().unwrap().to_owned();
    let mut t = TermClient::attach_with_ticket(&server, &ticket, &tid)
        .unwrap_or_else(|e| panic!("attach with a ticket: {e:?}"));
    t.run("echo $((6*7))", "42\r\n");
    let again = TermClient::attach_with_ticket(&server, &ticket, &tid).err();
    assert_eq!(again.map(|e| e.0), Some(401), "a ticket is single-use");

    let (st, v) = tenant.call("DELETE", &format!("/api/v1/api-tokens/{id}"), None);
    assert_eq!(st, 200, "{v}");
    let at = Instant::now();
    let reason = t.wait_end(Duration::from_secs(5)).expect("an end message");
    let took = at.elapsed();
    assert!(reason.contains("revoked"), "{reason}");
    assert!(took < WITHIN, "ended after {took:?}");
    eprintln!("token revoked: terminal ended after {took:?}: {reason}");
    // The tenant's other token is untouched.
    assert_eq!(tenant.call("GET", "/api/v1/runners", None).0, 200);
}

/// SSE: a token revoked, a logout, a deleted user.
#[test]
fn the_event_stream_ends_within_a_second_after_revocation() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let (id, token) = api_token(&tenant);
    let rx = lines(bearer_stream(&server, &token, "/api/v1/events"));
    expect_line(&rx, "subscribed", Duration::from_secs(5));
    tenant.call("DELETE", &format!("/api/v1/api-tokens/{id}"), None);
    let at = Instant::now();
    let rest = until_closed(&rx, Duration::from_secs(5));
    let took = at.elapsed();
    assert!(rest.iter().any(|l| l == "event: end"), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("revoked")), "{rest:?}");
    assert!(took < WITHIN, "token revoked: ended after {took:?}");
    eprintln!("token revoked: SSE ended after {took:?}");

    for (i, kind) in [
        Revocation::Logout,
        Revocation::UserDeleted,
        Revocation::PasswordChanged,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("viewer{i}");
        add_user(&server, "acme", &name, "viewer");
        let browser = login(&server, "acme", &name);
        let rx = lines(browser.stream(&server, "/api/v1/events"));
        expect_line(&rx, "subscribed", Duration::from_secs(5));
        kind.apply(&server, &tenant, &name, &browser);
        let at = Instant::now();
        let rest = until_closed(&rx, Duration::from_secs(5));
        let took = at.elapsed();
        assert!(rest.iter().any(|l| l == "event: end"), "{kind:?}: {rest:?}");
        assert!(took < WITHIN, "{kind:?}: ended after {took:?}");
        eprintln!("{kind:?}: SSE ended after {took:?}");
    }
}

/// A job's output follow, by a token and by a user.
#[test]
fn a_job_output_follow_ends_within_a_second_after_revocation() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = started(&server, &tenant);
    let (st, jobs) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({"runners": [runner.id], "command": "echo started; sleep 60"})),
    );
    assert_eq!(st, 201, "{jobs}");
    let job = jobs[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/jobs/{job}/output?follow=1&format=ndjson");

    let (id, token) = api_token(&tenant);
    let rx = lines(bearer_stream(&server, &token, &path));
    expect_line(&rx, "started", Duration::from_secs(15));
    tenant.call("DELETE", &format!("/api/v1/api-tokens/{id}"), None);
    let at = Instant::now();
    let rest = until_closed(&rx, Duration::from_secs(5));
    let took = at.elapsed();
    let last: Value = serde_json::from_str(rest.last().expect("an end line")).unwrap();
    assert!(
        last["end"].as_str().unwrap().contains("revoked"),
        "{rest:?}"
    );
    assert!(took < WITHIN, "token revoked: ended after {took:?}");
    eprintln!("token revoked: job follow ended after {took:?}");

    add_user(&server, "acme", "ada", "operator");
    let browser = login(&server, "acme", "ada");
    let raw = format!("/api/v1/jobs/{job}/output?follow=1");
    let rx = lines(browser.stream(&server, &raw));
    expect_line(&rx, "started", Duration::from_secs(5));
    Revocation::UserDeleted.apply(&server, &tenant, "ada", &browser);
    let at = Instant::now();
    let rest = until_closed(&rx, Duration::from_secs(5));
    let took = at.elapsed();
    assert!(
        rest.iter().any(|l| l.starts_with("[tether] stream ended")),
        "{rest:?}"
    );
    assert!(took < WITHIN, "user deleted: ended after {took:?}");
    eprintln!("user deleted: job follow ended after {took:?}");
    tenant.call("POST", &format!("/api/v1/jobs/{job}/cancel"), None);
}

/// A container's live log follow (Docker), by a token that is revoked.
#[test]
fn a_log_follow_ends_within_a_second_after_revocation() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = started(&server, &tenant);
    let name = format!("tether-authz-{}", std::process::id());
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, IMAGE])
        .args(["sh", "-c", "while true; do echo tick; sleep 0.2; done"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _rm = Rm(name.clone());
    let (id, token) = api_token(&tenant);
    let path = format!(
        "/api/v1/runners/{}/containers/{name}/logs?follow=1&tail=1",
        runner.id
    );
    let rx = lines(bearer_stream(&server, &token, &path));
    expect_line(&rx, "tick", Duration::from_secs(15));
    tenant.call("DELETE", &format!("/api/v1/api-tokens/{id}"), None);
    let at = Instant::now();
    let rest = until_closed(&rx, Duration::from_secs(5));
    let took = at.elapsed();
    let last: Value = serde_json::from_str(rest.last().expect("an end line")).unwrap();
    assert!(
        last["end"]
            .as_str()
            .unwrap()
            .starts_with("authorization ended"),
        "{rest:?}"
    );
    assert!(took < WITHIN, "ended after {took:?}");
    eprintln!("token revoked: log follow ended after {took:?}");
}

// ---- quotas -----------------------------------------------------------------------

fn assert_quota(st: u16, v: &Value, flag: &str) {
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(flag), "{msg}");
}

#[test]
fn a_tenant_at_its_terminal_limit_is_refused_and_another_is_not() {
    let server = Server::start_with(&["--max-terminals-per-tenant", "2"]);
    let a = server.tenant("acme");
    let b = server.tenant("globex");
    let ra = started(&server, &a);
    let rb = started(&server, &b);
    let open = |t: &Tenant, r: &Runner| {
        t.call(
            "POST",
            &format!("/api/v1/runners/{}/terminals", r.id),
            Some(json!({})),
        )
    };
    for _ in 0..2 {
        let (st, v) = open(&a, &ra);
        assert_eq!(st, 201, "{v}");
    }
    let (st, v) = open(&a, &ra);
    assert_quota(st, &v, "--max-terminals-per-tenant");
    let (st, v) = open(&b, &rb);
    assert_eq!(st, 201, "the other tenant is unaffected: {v}");
}

#[test]
fn a_tenant_at_its_job_limit_is_refused_and_another_is_not() {
    let server = Server::start_with(&["--max-jobs-per-tenant", "2"]);
    let a = server.tenant("acme");
    let b = server.tenant("globex");
    // Enrolled, never started: the jobs stay pending, and pending counts.
    let ra = Runner::enroll(&server, &a);
    let rb = Runner::enroll(&server, &b);
    let run = |t: &Tenant, runners: Vec<&str>| {
        t.call(
            "POST",
            "/api/v1/jobs",
            Some(json!({"runners": runners, "command": "true"})),
        )
    };
    let (st, v) = run(&a, vec![&ra.id, &ra.id, &ra.id]);
    assert_quota(st, &v, "--max-jobs-per-tenant");
    let (_, list) = a.call("GET", "/api/v1/jobs", None);
    assert_eq!(list.as_array().unwrap().len(), 0, "all or nothing: {list}");
    let (st, v) = run(&a, vec![&ra.id, &ra.id]);
    assert_eq!(st, 201, "{v}");
    let (st, v) = run(&a, vec![&ra.id]);
    assert_quota(st, &v, "--max-jobs-per-tenant");
    let (st, v) = run(&b, vec![&rb.id]);
    assert_eq!(st, 201, "the other tenant is unaffected: {v}");
    // A cancelled job frees its slot.
    let first = a.call("GET", "/api/v1/jobs", None).1[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.call("POST", &format!("/api/v1/jobs/{first}/cancel"), None);
    wait_for(Duration::from_secs(10), "a slot", || {
        (run(&a, vec![&ra.id]).0 == 201).then_some(())
    });
}

#[test]
fn job_output_past_the_cap_is_cut_marked_and_the_runner_stays() {
    let server = Server::start_with(&["--job-output-max-bytes", "64K"]);
    let tenant = server.tenant("acme");
    let runner = started(&server, &tenant);
    // 400 KB of output, then a line after it that must not be stored.
    let cmd =
        "i=0; while [ $i -lt 4000 ]; do printf '%099d\\n' $i; i=$((i+1)); done; echo AFTER-CUT";
    let (st, jobs) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({"runners": [runner.id], "command": cmd})),
    );
    assert_eq!(st, 201, "{jobs}");
    let job = jobs[0]["id"].as_str().unwrap().to_owned();
    // Follow it live: the cut shows there too, and the follow ends.
    let rx = lines(bearer_stream(
        &server,
        &tenant.token,
        &format!("/api/v1/jobs/{job}/output?follow=1&stream=output"),
    ));
    let live = until_closed(&rx, Duration::from_secs(60));
    assert!(
        live.iter()
            .any(|l| l.contains("[tether] output truncated at 65536 bytes")),
        "no cut in the live output ({} lines)",
        live.len()
    );
    let (st, v) = tenant.call("GET", &format!("/api/v1/jobs/{job}"), None);
    assert_eq!((st, v["status"].as_str()), (200, Some("succeeded")), "{v}");
    let mut stored = Vec::new();
    bearer_stream(
        &server,
        &tenant.token,
        &format!("/api/v1/jobs/{job}/output?stream=output"),
    )
    .read_to_end(&mut stored)
    .unwrap();
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains("[tether] output truncated at 65536 bytes"),
        "no mark"
    );
    assert!(
        !text.contains("AFTER-CUT"),
        "output past the cap was stored"
    );
    assert!(stored.len() <= 65536 + 200, "{} bytes stored", stored.len());
    assert_eq!(
        tenant.health(&runner.id),
        "active",
        "the runner kept its link"
    );
    eprintln!(
        "400 KB job with a 64 KiB cap: {} bytes stored",
        stored.len()
    );
}

// ---- the CLI ------------------------------------------------------------------------

fn cli(server: &Server, token: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(server_bin())
        .args(["--api", &server.url, "--ca-file"])
        .arg(&server.ca)
        .args(["--token", token])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn the_cli_creates_lists_and_revokes_api_tokens() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let (code, out) = cli(
        &server,
        &tenant.token,
        &[
            "--json",
            "api-token",
            "create",
            "--label",
            "deploy-bot",
            "--ttl",
            "30d",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let made: Value = serde_json::from_str(&out).unwrap();
    let (id, token) = (
        made["id"].as_str().unwrap(),
        made["token"].as_str().unwrap(),
    );
    assert!(made["expires_at"].is_string(), "{made}");
    assert_eq!(
        tenant
            .api
            .call("GET", "/api/v1/runners", Some(token), None)
            .0,
        200
    );

    let (code, out) = cli(&server, &tenant.token, &["api-token", "list"]);
    assert_eq!(code, Some(0), "{out}");
    let row = out
        .lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("{out}"));
    for want in ["deploy-bot", "active", "token "] {
        assert!(row.contains(want), "{want:?} not in {row:?}");
    }
    assert!(
        out.contains("admin token"),
        "the initial token's maker: {out}"
    );

    let (code, out) = cli(&server, &tenant.token, &["api-token", "revoke", id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("revoked API token") && out.contains("revoked"),
        "{out}"
    );
    assert_eq!(
        tenant
            .api
            .call("GET", "/api/v1/runners", Some(token), None)
            .0,
        401
    );
    let (code, out) = cli(&server, token, &["runners"]);
    assert_eq!(code, Some(4), "a revoked token is unauthorized: {out}");
    let (code, out) = cli(&server, &tenant.token, &["api-token", "revoke", "at_nope"]);
    assert_eq!(code, Some(3), "not found: {out}");
}
