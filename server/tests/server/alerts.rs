//! Alerts end to end: rules over the REST API, a runner over a real
//! WebSocket, notifications to a real HTTP receiver in this test (checking
//! the HMAC signature) and to a real SMTP server (Debian's
//! python3-aiosmtpd, with STARTTLS and AUTH).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Mutex;

use tether_server::alerts::notify::Tuning as NotifyTuning;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::util::*;

const SECRET: &str = "hook-secret";

fn alert_state() -> AppState {
    state().with_alert_tuning(NotifyTuning {
        attempts: 3,
        backoff: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        allow_private: true,
    })
}

/// One request the receiver got: headers (lowercase names) and body.
struct Hook {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Hook {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP receiver on loopback: answers with the next of `statuses`
/// (then 200), or never answers when `hang`.
async fn receiver(statuses: Vec<u16>, hang: bool) -> (SocketAddr, mpsc::UnboundedReceiver<Hook>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let statuses = Arc::new(Mutex::new(VecDeque::from(statuses)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (tx, statuses) = (tx.clone(), statuses.clone());
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                let mut headers = Vec::new();
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                loop {
                    line.clear();
                    r.read_line(&mut line).await.unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let (k, v) = l.split_once(':').unwrap();
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let _ = tx.send(Hook { headers, body });
                if hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = r.get_mut().write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, rx)
}

async fn next_hook(rx: &mut mpsc::UnboundedReceiver<Hook>, within: Duration) -> Hook {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("no notification in time")
        .unwrap()
}

fn verify(h: &Hook) {
    let sig = h.header("x-tether-signature").expect("signed");
    let hex = sig.strip_prefix("sha256=").unwrap();
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, &h.body, &tag).expect("the HMAC verifies");
}

async fn post(router: &Router, api: &str, path: &str, body: Value) -> (StatusCode, Value) {
    call(router, "POST", path, Some(api), Some(&body.to_string())).await
}

async fn webhook_channel(router: &Router, api: &str, name: &str, addr: SocketAddr) -> String {
    let (status, v) = post(
        router,
        api,
        "/api/v1/alerts/channels",
        json!({"name": name, "config": {"kind": "webhook", "url": format!("http://{addr}/hook"), "secret": SECRET}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert!(!v.to_string().contains(SECRET), "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn rule(router: &Router, api: &str, body: Value) -> String {
    let (status, v) = post(router, api, "/api/v1/alerts/rules", body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    // The engine takes the rule in asynchronously.
    tokio::time::sleep(Duration::from_millis(200)).await;
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_unreachable_runner_is_notified_signed_and_resolved_once() {
    let server = server_with(alert_state(), None).await;
    let (_, api) = tenant(&server.router, "acme").await;
    let (runner_id, cred) = runner(&server.router, &api).await;
    let (addr, mut hooks) = receiver(vec![], false).await;
    let ch = webhook_channel(&server.router, &api, "ops", addr).await;
    let rule_id = rule(
        &server.router,
        &api,
        json!({"name": "down", "kind": "unreachable", "for_s": 1, "channels": [ch]}),
    )
    .await;

    let ws = online(&server, &cred, 60_000).await;
    drop(ws);
    let gone = std::time::Instant::now();
    let h = next_hook(&mut hooks, Duration::from_secs(4)).await;
    // The rule's 1 s, plus at most the 1 s tick and delivery.
    assert!(
        gone.elapsed() < Duration::from_secs(3),
        "{:?}",
        gone.elapsed()
    );
    verify(&h);
    let n = h.json();
    assert_eq!(n["state"], "firing");
    assert_eq!(n["rule_id"], rule_id.as_str());
    assert_eq!(n["runner_id"], runner_id.as_str());
    assert!(
        n["summary"].as_str().unwrap().contains("unreachable"),
        "{n}"
    );

    // Firing, and acknowledged.
    let firing = get(&server.router, &api, "/api/v1/alerts").await;
    let target = firing["alerts"][0]["target"].as_str().unwrap().to_owned();
    let (status, v) = post(
        &server.router,
        &api,
        "/api/v1/alerts/ack",
        json!({"rule_id": rule_id, "target": target, "comment": "on it"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["by"], "api token");
    let firing = get(&server.router, &api, "/api/v1/alerts").await;
    assert_eq!(firing["alerts"][0]["ack"]["comment"], "on it");

    let _ws = online(&server, &cred, 60_000).await;
    let h = next_hook(&mut hooks, Duration::from_secs(3)).await;
    verify(&h);
    assert_eq!(h.json()["state"], "resolved");
    // Once: nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), hooks.recv())
            .await
            .is_err()
    );
    let firing = get(&server.router, &api, "/api/v1/alerts").await;
    assert_eq!(firing["alerts"], json!([]));
    let history = get(&server.router, &api, "/api/v1/alerts/history").await;
    let states: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["resolved", "firing"]);
    let log = get(
        &server.router,
        &api,
        &format!("/api/v1/alerts/channels/{ch}/deliveries"),
    )
    .await;
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 2, "{log}");
}

fn cpu(ts: u64, v: i64) -> TestSample {
    TestSample {
        ts,
        series: vec![("cpu.busy", Unit::Percent, 1.0, Some(v))],
    }
}

#[tokio::test]
async fn a_metric_threshold_fires_once_and_hysteresis_holds_it() {
    let server = server_with(alert_state(), None).await;
    let (_, api) = tenant(&server.router, "acme").await;
    let (_, cred) = runner(&server.router, &api).await;
    let (addr, mut hooks) = receiver(vec![], false).await;
    let ch = webhook_channel(&server.router, &api, "ops", addr).await;
    rule(
        &server.router,
        &api,
        json!({"name": "cpu", "kind": "metric", "series": "cpu.busy", "op": "above",
               "threshold": 90, "resolve": 80, "channels": [ch]}),
    )
    .await;
    let mut ws = online(&server, &cred, 60_000).await;
    let mut enc = Encoder::new();
    let now = u64::try_from(tether_server::common::clock::now_ms()).unwrap();
    send_samples(&mut ws, &mut enc, &[cpu(now, 95)]).await;
    let h = next_hook(&mut hooks, Duration::from_secs(3)).await;
    let n = h.json();
    assert_eq!(n["state"], "firing");
    assert_eq!(n["value"], 95.0);
    assert_eq!(n["subject"], "cpu.busy");
    // Flapping between the thresholds: nothing.
    for (i, v) in [85, 92, 84, 99].into_iter().enumerate() {
        send_samples(&mut ws, &mut enc, &[cpu(now + 1000 * (i as u64 + 1), v)]).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(800), hooks.recv())
            .await
            .is_err()
    );
    send_samples(&mut ws, &mut enc, &[cpu(now + 10_000, 70)]).await;
    let h = next_hook(&mut hooks, Duration::from_secs(3)).await;
    assert_eq!(h.json()["state"], "resolved");
}

#[tokio::test]
async fn drift_and_a_rolled_back_update_name_what_happened() {
    let server = server_with(alert_state(), None).await;
    let (_, api) = tenant(&server.router, "acme").await;
    let (_, cred) = runner(&server.router, &api).await;
    let (addr, mut hooks) = receiver(vec![], false).await;
    let ch = webhook_channel(&server.router, &api, "ops", addr).await;
    rule(
        &server.router,
        &api,
        json!({"name": "ports", "kind": "drift", "paths": ["listening"], "channels": [ch]}),
    )
    .await;
    rule(
        &server.router,
        &api,
        json!({"name": "updates", "kind": "update_failed", "channels": [ch]}),
    )
    .await;
    let mut ws = online(&server, &cred, 60_000).await;
    let base = host_fingerprint();
    let full = |fp: &Fingerprint, t: u64| FingerprintReport {
        ts_ms: t,
        full: Some(Box::new(fp.clone())),
        changes: vec![],
        notes: vec![],
    };
    send_fingerprint(&mut ws, 2, full(&base, 1_000)).await;
    let mut changed = base.clone();
    changed
        .listening
        .push(listener("tcp", "0.0.0.0", 4444, "nc"));
    changed.kernel = Some("6.2.0".into());
    send_fingerprint(&mut ws, 3, full(&changed, 2_000)).await;
    let n = next_hook(&mut hooks, Duration::from_secs(3)).await.json();
    assert_eq!(n["state"], "firing");
    let s = n["summary"].as_str().unwrap();
    assert!(
        s.contains("listening") && s.contains("4444") && s.contains("nc"),
        "{s}"
    );

    let report = Message::UpdateStatus(protocol::UpdateStatus {
        version: "0.3.0".into(),
        state: "failed".into(),
        from_version: "0.2.0".into(),
        reason: Some("the new version exited with status 1".into()),
        at_ms: 1,
        took_ms: None,
    });
    ws.send(WsMessage::text(encode_control(9, report)))
        .await
        .unwrap();
    let n = next_hook(&mut hooks, Duration::from_secs(3)).await.json();
    let s = n["summary"].as_str().unwrap();
    assert!(
        s.contains("rolled back") && s.contains("exited with status 1"),
        "{s}"
    );
    // The kernel change did not match the drift filter: nothing else came.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), hooks.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_failing_channel_is_retried_and_a_hanging_one_blocks_no_other() {
    let server = server_with(alert_state(), None).await;
    let (_, api) = tenant(&server.router, "acme").await;
    let (flaky_addr, mut flaky) = receiver(vec![500], false).await;
    let (hang_addr, mut hanging) = receiver(vec![], true).await;
    let (good_addr, mut good) = receiver(vec![], false).await;
    let flaky_ch = webhook_channel(&server.router, &api, "flaky", flaky_addr).await;
    let hang_ch = webhook_channel(&server.router, &api, "hangs", hang_addr).await;
    let good_ch = webhook_channel(&server.router, &api, "good", good_addr).await;
    for ch in [&hang_ch, &flaky_ch, &good_ch] {
        let (status, _) = post(
            &server.router,
            &api,
            &format!("/api/v1/alerts/channels/{ch}/test"),
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let t = std::time::Instant::now();
    let h = next_hook(&mut good, Duration::from_secs(2)).await;
    assert_eq!(h.json()["state"], "test");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    next_hook(&mut hanging, Duration::from_secs(2)).await;
    // 500, then retried and delivered once.
    next_hook(&mut flaky, Duration::from_secs(2)).await;
    next_hook(&mut flaky, Duration::from_secs(2)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(700), flaky.recv())
            .await
            .is_err()
    );
    let log = get(
        &server.router,
        &api,
        &format!("/api/v1/alerts/channels/{flaky_ch}/deliveries"),
    )
    .await;
    let rows = log["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{log}");
    assert_eq!(
        (rows[0]["ok"].clone(), rows[1]["ok"].clone()),
        (json!(true), json!(false))
    );
    assert!(rows[1]["detail"].as_str().unwrap().contains("500"));
    // The hanging one times out (2 s) and is logged as such.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let log = get(
        &server.router,
        &api,
        &format!("/api/v1/alerts/channels/{hang_ch}/deliveries"),
    )
    .await;
    let detail = log["deliveries"][0]["detail"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        detail.contains("timed out") || detail.contains("imeout"),
        "{log}"
    );
}

#[tokio::test]
async fn tenants_are_apart_inputs_are_checked_and_private_targets_refused() {
    let st = state().with_alert_tuning(NotifyTuning {
        attempts: 1,
        ..NotifyTuning::default()
    });
    let server = server_with(st, None).await;
    let (_, a) = tenant(&server.router, "a").await;
    let (_, b) = tenant(&server.router, "b").await;
    let (addr, mut hooks) = receiver(vec![], false).await;
    let ch = webhook_channel(&server.router, &a, "ops", addr).await;
    let r = rule(
        &server.router,
        &a,
        json!({"name": "down", "kind": "unreachable", "for_s": 5, "channels": [ch]}),
    )
    .await;
    // Tenant b sees none of a's.
    assert_eq!(
        get(&server.router, &b, "/api/v1/alerts/rules").await["rules"],
        json!([])
    );
    assert_eq!(
        get(&server.router, &b, "/api/v1/alerts/channels").await["channels"],
        json!([])
    );
    let (status, _) = call(
        &server.router,
        "DELETE",
        &format!("/api/v1/alerts/rules/{r}"),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &server.router,
        &b,
        &format!("/api/v1/alerts/channels/{ch}/test"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // b cannot point a rule at a's channel.
    let got = post(
        &server.router,
        &b,
        "/api/v1/alerts/rules",
        json!({"name": "x", "kind": "unreachable", "for_s": 5, "channels": [ch]}),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    // Bad input: a clear JSON error, nothing stored.
    for body in [
        json!({"name": "x", "kind": "metric", "series": "cpu.busy", "op": "above", "threshold": 90, "resolve": 95}),
        json!({"name": "x", "kind": "nonsense"}),
        json!({"name": "x".repeat(300), "kind": "unreachable", "for_s": 5}),
        json!({"name": "x", "kind": "unreachable", "for_s": 99_999_999}),
    ] {
        let got = post(&server.router, &a, "/api/v1/alerts/rules", body).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    }
    let got = post(
        &server.router,
        &a,
        "/api/v1/alerts/channels",
        json!({"name": "bad", "config": {"kind": "slack", "url": "file:///etc/passwd"}}),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(
        get(&server.router, &a, "/api/v1/alerts/rules").await["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // This server was not told to allow private targets: loopback is refused.
    let (status, _) = post(
        &server.router,
        &a,
        &format!("/api/v1/alerts/channels/{ch}/test"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let row = first_delivery(&server.router, &a, &ch).await;
    let detail = row["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("private or local address"), "{detail}");
    assert!(hooks.try_recv().is_err());
    // A silence needs a target and a sane window.
    let got = post(
        &server.router,
        &a,
        "/api/v1/alerts/silences",
        json!({"starts_ms": 0, "ends_ms": 10}),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn a_silenced_runner_is_recorded_not_sent() {
    let server = server_with(alert_state(), None).await;
    let (_, api) = tenant(&server.router, "acme").await;
    let (runner_id, cred) = runner(&server.router, &api).await;
    let (addr, mut hooks) = receiver(vec![], false).await;
    let ch = webhook_channel(&server.router, &api, "ops", addr).await;
    rule(
        &server.router,
        &api,
        json!({"name": "down", "kind": "unreachable", "for_s": 0, "channels": [ch]}),
    )
    .await;
    let now = tether_server::common::clock::now_ms();
    let (status, v) = post(
        &server.router,
        &api,
        "/api/v1/alerts/silences",
        json!({"runner": runner_id, "starts_ms": now - 1000, "ends_ms": now + 60_000, "comment": "rebooting"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let ws = online(&server, &cred, 60_000).await;
    drop(ws);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let h = get(&server.router, &api, "/api/v1/alerts/history").await;
        if let Some(row) = h["history"].as_array().unwrap().first() {
            assert_eq!(row["silenced"], true);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no history row");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), hooks.recv())
            .await
            .is_err()
    );
}

/// aiosmtpd on a free port with STARTTLS (the dev CA's leaf) and AUTH
/// (alice / s3cret); prints each mail's envelope and body on stdout.
const SMTP_SERVER: &str = r#"
import asyncio, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        body = envelope.content.decode('utf8', 'replace').replace('\r', '').replace('\n', ' | ')
        print('MAIL', envelope.mail_from, ','.join(envelope.rcpt_tos), 'tls=%s' % (session.ssl is not None), body, flush=True)
        return '250 OK'
def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b'alice' and data.password == b's3cret'
    return AuthResult(success=ok, handled=False)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Handler(), hostname='127.0.0.1', port=port, tls_context=ctx,
               require_starttls=True, auth_required=True, authenticator=auth, auth_require_tls=True,
               ready_timeout=10)
c.start()
print('READY', flush=True)
while True:
    time.sleep(3600)
"#;

#[tokio::test]
async fn email_goes_over_starttls_with_auth() {
    let dir = std::env::temp_dir().join(format!("tether-alert-smtp-{}", std::process::id()));
    let certs = tether_server::app::tls::ensure_dev_certs(&dir).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SMTP_SERVER)
        .arg(port.to_string())
        .arg(&certs.cert)
        .arg(&certs.key)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with aiosmtpd (packaging/dev-setup.sh installs python3-aiosmtpd)");
    let mut smtp = Killed(child);
    let stdout = smtp.0.stdout.take().unwrap();
    let (tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let ready = tokio::time::timeout(Duration::from_secs(15), lines.recv()).await;
    assert_eq!(ready.unwrap().as_deref(), Some("READY"));

    let server = server_with(alert_state(), None).await;
    let (_, api) = tenant(&server.router, "acme").await;
    let (runner_id, cred) = runner(&server.router, &api).await;
    let ca = std::fs::read_to_string(&certs.ca).unwrap();
    let mail = |name: &str, password: &str| {
        json!({"name": name, "config": {"kind": "email", "host": "127.0.0.1", "port": port,
            "username": "alice", "password": password, "from": "Tether <tether@example.com>",
            "to": ["ops@example.com"], "ca_pem": ca}})
    };
    let (status, v) = post(
        &server.router,
        &api,
        "/api/v1/alerts/channels",
        mail("mail", "s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert!(!v.to_string().contains("s3cret"));
    let ch = v["id"].as_str().unwrap().to_owned();
    let (_, v) = post(
        &server.router,
        &api,
        "/api/v1/alerts/channels",
        mail("bad-mail", "wrong"),
    )
    .await;
    let wrong = v["id"].as_str().unwrap().to_owned();
    rule(
        &server.router,
        &api,
        json!({"name": "down", "kind": "unreachable", "for_s": 1, "channels": [ch, wrong]}),
    )
    .await;
    let ws = online(&server, &cred, 60_000).await;
    drop(ws);
    let line = tokio::time::timeout(Duration::from_secs(6), lines.recv())
        .await
        .expect("a mail in time")
        .unwrap();
    assert!(
        line.starts_with("MAIL tether@example.com ops@example.com tls=True"),
        "{line}"
    );
    assert!(
        line.contains("[FIRING] down") && line.contains(&runner_id),
        "{line}"
    );
    // The wrong password is refused by the server: logged, not delivered.
    let bad = first_delivery(&server.router, &api, &wrong).await;
    assert_eq!(bad["ok"], false);
    assert!(bad["detail"].as_str().unwrap().contains("SMTP"), "{bad}");
    let good = first_delivery(&server.router, &api, &ch).await;
    assert_eq!(good["ok"], true, "{good}");
    drop(smtp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The newest delivery log row of a channel, once there is one.
async fn first_delivery(router: &Router, api: &str, ch: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let log = get(
            router,
            api,
            &format!("/api/v1/alerts/channels/{ch}/deliveries"),
        )
        .await;
        if log["deliveries"][0].is_object() {
            return log["deliveries"][0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no delivery logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed and reaped when the test ends, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_failed_job_names_its_script_and_reason() {
    let server = server_with(alert_state(), None).await;
    let (_, api) = tenant(&server.router, "acme").await;
    let (runner_id, cred) = runner(&server.router, &api).await;
    let (addr, mut hooks) = receiver(vec![], false).await;
    let ch = webhook_channel(&server.router, &api, "ops", addr).await;
    rule(
        &server.router,
        &api,
        json!({"name": "jobs", "kind": "job_failed", "channels": [ch]}),
    )
    .await;
    let mut ws = online(&server, &cred, 60_000).await;
    let (status, v) = post(
        &server.router,
        &api,
        "/api/v1/jobs",
        json!({"runners": [runner_id], "command": "false"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    // The server sends job_start; this runner says it failed.
    let start = loop {
        if let Message::JobStart(s) = next_control(&mut ws).await.body {
            break s;
        }
    };
    let result = Message::JobResult(protocol::JobResult {
        job_id: start.job_id.clone(),
        channel: start.channel,
        status: "failed".into(),
        exit_code: Some(1),
        signal: None,
        reason: "exited with status 1".into(),
        started_ms: 1,
        finished_ms: 2,
        output_bytes: 0,
    });
    ws.send(WsMessage::text(encode_control(5, result)))
        .await
        .unwrap();
    let n = next_hook(&mut hooks, Duration::from_secs(3)).await.json();
    assert_eq!(n["state"], "firing");
    let s = n["summary"].as_str().unwrap();
    assert!(
        s.contains("job") && s.contains("failed") && s.contains("exited with status 1"),
        "{s}"
    );
}

#[tokio::test]
async fn the_scope_preview_names_the_runners_a_rule_would_cover() {
    let server = server_with(alert_state(), None).await;
    let (_, api) = tenant(&server.router, "acme").await;
    let (_, other) = tenant(&server.router, "other").await;
    let (prod, _) = runner(&server.router, &api).await;
    let (dev, _) = runner(&server.router, &api).await;
    for (id, env) in [(&prod, "prod"), (&dev, "dev")] {
        let (status, v) = call(
            &server.router,
            "PATCH",
            &format!("/api/v1/runners/{id}/labels"),
            Some(&api),
            Some(&json!({"set": {"env": env}}).to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let (status, v) = call(
        &server.router,
        "PUT",
        &format!("/api/v1/runners/{dev}/group"),
        Some(&api),
        Some(&json!({"group": "canary"}).to_string()),
    )
    .await;
    assert!(status.is_success(), "{v}");
    let ids = |v: &Value| -> Vec<String> {
        v["runners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let preview = |key: &'static str, scope: Value| {
        let (router, api) = (server.router.clone(), api.clone());
        async move {
            let (status, v) = post(
                &router,
                &api,
                "/api/v1/alerts/preview",
                json!({ key: scope }),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{v}");
            v
        }
    };
    let v = preview("scope", json!({"selector": "env=prod"})).await;
    assert_eq!(ids(&v), vec![prod.clone()], "{v}");
    assert_eq!(
        (v["matched"].as_u64(), v["checked"].as_u64()),
        (Some(1), Some(2)),
        "{v}"
    );
    assert_eq!(v["runners"][0]["health"], "unreachable", "{v}");
    let v = preview("scope", json!({"selector": "env!=prod"})).await;
    assert_eq!(ids(&v), vec![dev.clone()], "{v}");
    let v = preview("scope", json!({"group": "canary"})).await;
    assert_eq!(ids(&v), vec![dev.clone()], "{v}");
    let v = preview("scope", json!({"runner": prod})).await;
    assert_eq!(ids(&v), vec![prod.clone()], "{v}");
    let v = preview("scope", json!("all")).await;
    assert_eq!(v["matched"], 2, "{v}");
    // A bad selector names the field; an unknown field is refused.
    let got = post(
        &server.router,
        &api,
        "/api/v1/alerts/preview",
        json!({"scope": {"selector": "env=(prod"}}),
    )
    .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST, "{}", got.1);
    assert!(got.1.to_string().contains("scope.selector"), "{}", got.1);
    let got = post(
        &server.router,
        &api,
        "/api/v1/alerts/preview",
        json!({"scope": "all", "extra": 1}),
    )
    .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST, "{}", got.1);
    // Another tenant's preview covers none of these runners.
    let (status, v) = post(
        &server.router,
        &other,
        "/api/v1/alerts/preview",
        json!({"scope": "all"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["matched"], 0, "{v}");
}
