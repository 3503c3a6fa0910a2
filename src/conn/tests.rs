//! The connection state machine against a scripted server on loopback
//! (plain `ws://`, which the runner allows for loopback only). The server
//! side is tungstenite over blocking std sockets in a thread; the runner
//! side is the real event loop. Pure decisions (close codes, refusals,
//! hello/pong content) are tested directly.

use super::*;
use crate::protocol::{Envelope, Hello, Welcome};
use crate::runner::{self, RunConfig};
use crate::telemetry::TelemetryConfig;
use std::net::{TcpListener, TcpStream as StdStream};
use std::thread::JoinHandle;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};

type ServerWs = tungstenite::WebSocket<StdStream>;

const HEARTBEAT: Duration = Duration::from_millis(200);

fn conn_config(url: &Url, run_dir: Option<PathBuf>) -> ConnConfig {
    ConnConfig {
        servers: vec![Endpoint {
            url: url.clone(),
            proxy: None,
        }],
        runner_id: "rn_test".into(),
        credential: "trun_secret".into(),
        heartbeat: HEARTBEAT,
        tls: tls::client_config(None).unwrap(),
        phase_timeout: Duration::from_millis(800),
        hello: HelloInfo {
            hostname: "testbox".into(),
            arch: "x86_64".into(),
            os: "linux".into(),
            capabilities: vec![],
            labels: vec![],
        },
        run_dir,
        metrics_interval_ms: 0,
        switched_off: Vec::new(),
    }
}

fn config(url: &Url, run_dir: Option<PathBuf>) -> RunConfig {
    RunConfig {
        conn: conn_config(url, run_dir),
        // The scripted servers below expect no telemetry; the metrics tests
        // switch it on.
        telemetry: TelemetryConfig::off(),
        docker: None,
        jobs: None,
        update: None,
        update_trial: None,
        update_off: None,
        health_deadline: None,
        terminals: Default::default(),
        trust: Default::default(),
    }
}

fn listen() -> (TcpListener, Url) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    (l, url)
}

/// Accept one WebSocket; returns it and the Authorization header it carried.
// tungstenite's callback signature fixes the large error type.
#[allow(clippy::result_large_err)]
fn accept(l: &TcpListener) -> (ServerWs, Option<String>, String) {
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut auth = None;
    let mut path = String::new();
    let ws = tungstenite::accept_hdr(
        s,
        |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            path = req.uri().path().to_owned();
            Ok(resp)
        },
    )
    .unwrap();
    (ws, auth, path)
}

/// Next text or close, skipping pings/pongs.
fn next_text(ws: &mut ServerWs) -> WsMessage {
    loop {
        if let m @ (WsMessage::Text(_) | WsMessage::Close(_) | WsMessage::Binary(_)) =
            ws.read().unwrap()
        {
            return m;
        }
    }
}

fn read_control(ws: &mut ServerWs) -> Envelope {
    match next_text(ws) {
        WsMessage::Text(t) => match protocol::decode_control(t.as_str()).unwrap() {
            Decoded::Known(e) => e,
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("expected text, got {other:?}"),
    }
}

/// Read the hello and answer welcome; returns the hello.
fn welcome(ws: &mut ServerWs) -> Hello {
    let env = read_control(ws);
    let Control::Hello(h) = env.body else {
        panic!("expected hello, got {env:?}")
    };
    let w = Control::Welcome(Welcome {
        protocol: 1,
        runner_id: "rn_test".into(),
        server_version: "0.1.0-test".into(),
        acks: vec![],
        metrics_ts: None,
    });
    ws.send(WsMessage::text(protocol::encode_control(env.id, w)))
        .unwrap();
    h
}

fn close_with(ws: &mut ServerWs, code: u16, reason: &str) {
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }));
    // Drive the close handshake until the runner hangs up.
    while ws.read().is_ok() {}
}

/// The close code in the raw bytes a client sent on a socket nobody read
/// (tungstenite would try to answer the pings and fail on the dead socket).
fn raw_close_code(stream: &mut StdStream) -> Option<u16> {
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let opcode = bytes[i] & 0x0f;
        let mut len = u64::from(bytes[i + 1] & 0x7f);
        let mut p = i + 2;
        if len == 126 {
            len = u64::from(u16::from_be_bytes([bytes[p], bytes[p + 1]]));
            p += 2;
        } else if len == 127 {
            len = u64::from_be_bytes(bytes[p..p + 8].try_into().unwrap());
            p += 8;
        }
        let mask = [bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]];
        p += 4;
        let payload: Vec<u8> = bytes[p..p + len as usize]
            .iter()
            .enumerate()
            .map(|(k, b)| b ^ mask[k % 4])
            .collect();
        if opcode == 0x8 && payload.len() >= 2 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        i = p + len as usize;
    }
    None
}

/// Read until a close frame arrives; returns its code and reason.
fn await_close(ws: &mut ServerWs) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(WsMessage::Close(Some(f))) => {
                return (u16::from(f.code), f.reason.as_str().to_owned())
            }
            Ok(WsMessage::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

fn run_runner(cfg: RunConfig, secs: u64) -> io::Result<Exit> {
    run_runner_for(cfg, Duration::from_secs(secs))
}

fn run_runner_for(cfg: RunConfig, limit: Duration) -> io::Result<Exit> {
    runner::run_until(cfg, None, Some(Instant::now() + limit))
}

fn server<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::spawn(f)
}

#[test]
fn close_codes_map_to_actions() {
    assert_eq!(close_action(4002), CloseAction::ExitRevoked);
    assert_eq!(close_action(4003), CloseAction::ReconnectSlowly);
    for code in [1000, 1001, 1009, 4004, 4006, 4008, 4009, 4999] {
        assert_eq!(close_action(code), CloseAction::Reconnect, "{code}");
    }
}

#[test]
fn refusals_are_classified_by_their_json_code() {
    let revoked = br#"{"error":{"code":"runner_revoked","message":"runner rn_1 was revoked"}}"#;
    assert_eq!(
        classify_refusal(403, Some(revoked)),
        UpgradeRefusal::Revoked("runner rn_1 was revoked".into())
    );
    let unauth = br#"{"error":{"code":"unauthorized","message":"unknown credential"}}"#;
    assert_eq!(
        classify_refusal(401, Some(unauth)),
        UpgradeRefusal::Other {
            status: 401,
            code: Some("unauthorized".into()),
            message: Some("unknown credential".into())
        }
    );
    // A 403 without our JSON (a proxy, a WAF) is not a revocation.
    assert_eq!(
        classify_refusal(403, Some(b"<html>")),
        UpgradeRefusal::Other {
            status: 403,
            code: None,
            message: None
        }
    );
    assert_eq!(
        classify_refusal(502, None),
        UpgradeRefusal::Other {
            status: 502,
            code: None,
            message: None
        }
    );
}

#[test]
fn hello_and_pong_carry_what_the_protocol_asks() {
    let cfg = conn_config(&Url::parse("https://s").unwrap(), None);
    let Control::Hello(h) = hello_message(&cfg) else {
        panic!()
    };
    assert_eq!(h.protocol, protocol::SUPPORTED_VERSIONS.to_vec());
    assert_eq!(h.heartbeat_ms, 200);
    assert_eq!(h.hostname, "testbox");
    assert_eq!(h.runner_version, env!("CARGO_PKG_VERSION"));
    let Control::Pong(p) = pong_for(&protocol::Ping { sent_ms: 42 }) else {
        panic!()
    };
    assert_eq!(p.sent_ms, 42);
    assert!(p.now_ms > 0);
    assert_eq!(truncate_reason(&"é".repeat(100)).len(), 122);
}

#[test]
fn failure_messages_are_clear() {
    let f = Failure::Rejected {
        status: 401,
        code: Some("unauthorized".into()),
        message: None,
    };
    assert!(f.to_string().contains("re-enroll"), "{f}");
    assert_eq!(
        Failure::Closed {
            code: 4006,
            reason: "replaced".into()
        }
        .to_string(),
        "server closed the connection (4006: replaced)"
    );
    assert!(Failure::Tls(rustls::Error::InvalidCertificate(
        rustls::CertificateError::UnknownIssuer
    ))
    .to_string()
    .starts_with("TLS certificate rejected"));
}

#[test]
fn connects_answers_pings_ignores_unknowns_and_exits_on_4002() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut ws, auth, path) = accept(&l);
        assert_eq!(auth.as_deref(), Some("Bearer trun_secret"));
        assert_eq!(path, protocol::RUNNER_CONNECT_PATH);
        let hello = welcome(&mut ws);
        // Unknown things must be ignored, not fatal.
        ws.send(WsMessage::text(r#"{"type":"from_the_future","id":5}"#))
            .unwrap();
        ws.send(WsMessage::binary(vec![99u8; 16])).unwrap();
        // A routed ping must come back as a pong with the same id.
        let ping = Control::Ping(protocol::Ping { sent_ms: 1234 });
        ws.send(WsMessage::text(protocol::encode_control(77, ping)))
            .unwrap();
        let env = read_control(&mut ws);
        let Control::Pong(p) = env.body else {
            panic!("expected pong, got {env:?}")
        };
        assert_eq!((env.id, p.sent_ms), (77, 1234));
        // The runner's WebSocket pings keep coming (tungstenite answers them).
        let t0 = Instant::now();
        let mut pings = 0;
        while pings < 2 {
            if let WsMessage::Ping(_) = ws.read().unwrap() {
                pings += 1;
            }
        }
        let two_pings = t0.elapsed();
        close_with(&mut ws, close::REVOKED, "runner revoked");
        (hello, two_pings)
    });
    let exit = run_runner(config(&url, None), 10).unwrap();
    assert_eq!(exit, Exit::Revoked("runner revoked".into()));
    let (hello, two_pings) = srv.join().unwrap();
    assert_eq!(hello.hostname, "testbox");
    assert!(two_pings < Duration::from_secs(2), "{two_pings:?}");
}

#[test]
fn runner_revoked_at_upgrade_stops_for_good() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while crate::net::http::find_head_end(&head, 0).is_none() {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"error":{"code":"runner_revoked","message":"runner rn_test was revoked"}}"#;
        let resp = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).unwrap();
        String::from_utf8(head).unwrap()
    });
    let dir = std::env::temp_dir().join(format!("tether-conn-revoked-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exit = run_runner(config(&url, Some(dir.clone())), 10).unwrap();
    assert_eq!(exit, Exit::Revoked("runner rn_test was revoked".into()));
    let head = srv.join().unwrap();
    assert!(
        head.starts_with("GET /v1/runner/connect HTTP/1.1\r\n"),
        "{head}"
    );
    let status = state::read_status(&dir).unwrap().unwrap();
    assert_eq!(status.state, RunState::Stopped);
    assert!(status.last_error.unwrap().contains("revoked"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn watchdog_closes_a_silent_link_with_4009_and_reconnects() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut first, _, _) = accept(&l);
        welcome(&mut first);
        // Now play dead: read nothing, answer nothing.
        let t0 = Instant::now();
        let (mut second, _, _) = accept(&l);
        let reconnect_after = t0.elapsed();
        let code = raw_close_code(first.get_mut());
        welcome(&mut second);
        close_with(&mut second, close::REVOKED, "done");
        (code, reconnect_after)
    });
    let exit = run_runner(config(&url, None), 15).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    let (code, after) = srv.join().unwrap();
    assert_eq!(code, Some(close::WATCHDOG));
    // 3 heartbeats of silence, ≤ 1 s close wait, ~1 s backoff.
    assert!(after >= Duration::from_millis(600), "{after:?}");
    assert!(after < Duration::from_secs(6), "{after:?}");
}

#[test]
fn malformed_input_gets_an_error_and_4004_then_a_reconnect() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut first, _, _) = accept(&l);
        welcome(&mut first);
        first.send(WsMessage::text("this is not json")).unwrap();
        let env = read_control(&mut first);
        let Control::Error(e) = env.body else {
            panic!("expected error, got {env:?}")
        };
        let (code, _) = await_close(&mut first);
        // Let tungstenite answer the close so the runner sees its reply.
        let _ = first.flush();
        let (mut second, _, _) = accept(&l);
        welcome(&mut second);
        close_with(&mut second, close::REVOKED, "done");
        (e.code, code)
    });
    let exit = run_runner(config(&url, None), 15).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    let (error_code, close_code) = srv.join().unwrap();
    assert_eq!(error_code, "protocol_violation");
    assert_eq!(close_code, close::PROTOCOL_VIOLATION);
}

#[test]
fn an_oversized_or_ill_typed_request_is_refused_for_its_id_and_the_link_stays() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut ws, _, _) = accept(&l);
        welcome(&mut ws);
        // A job_start with a 300 KB env var: above the control limit, below
        // the read limit.
        let big = format!(
            r#"{{"type":"job_start","id":91,"job_id":"jb_big","channel":1,"program":"/bin/sh","env":[["BIG","{}"]]}}"#,
            "x".repeat(300 * 1024)
        );
        assert!(big.len() > protocol::MAX_CONTROL_MESSAGE);
        ws.send(WsMessage::text(big)).unwrap();
        let refused = read_control(&mut ws);
        // A known type with a field of the wrong type.
        ws.send(WsMessage::text(
            r#"{"type":"ping","id":93,"sent_ms":"soon"}"#,
        ))
        .unwrap();
        let ill_typed = read_control(&mut ws);
        // The same link still answers.
        let ping = Control::Ping(protocol::Ping { sent_ms: 5 });
        ws.send(WsMessage::text(protocol::encode_control(92, ping)))
            .unwrap();
        let pong = read_control(&mut ws);
        close_with(&mut ws, close::REVOKED, "done");
        (refused, ill_typed, pong)
    });
    let exit = run_runner(config(&url, None), 10).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    let (refused, ill_typed, pong) = srv.join().unwrap();
    let Control::Error(e) = refused.body else {
        panic!("expected an error, got {refused:?}")
    };
    assert_eq!((refused.id, e.code.as_str()), (91, protocol::TOO_LARGE));
    assert!(
        e.message
            .contains(&protocol::MAX_CONTROL_MESSAGE.to_string()),
        "{}",
        e.message
    );
    let Control::Error(e) = ill_typed.body else {
        panic!("expected an error, got {ill_typed:?}")
    };
    assert_eq!((ill_typed.id, e.code.as_str()), (93, "bad_request"));
    assert!(matches!(pong.body, Control::Pong(_)), "{pong:?}");
    assert_eq!(pong.id, 92);
}

#[test]
fn a_message_above_the_read_limit_closes_with_1009_and_reconnects_without_a_panic() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut first, _, _) = accept(&l);
        welcome(&mut first);
        let huge = format!(
            r#"{{"type":"ping","id":5,"pad":"{}"}}"#,
            "x".repeat(protocol::MAX_RUNNER_READ + 1)
        );
        // The runner may hang up while this is still being written.
        let _ = first.send(WsMessage::text(huge));
        let code = raw_close_code(first.get_mut());
        let (mut second, _, _) = accept(&l);
        welcome(&mut second);
        close_with(&mut second, close::REVOKED, "done");
        code
    });
    let exit = run_runner(config(&url, None), 15).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    assert_eq!(srv.join().unwrap(), Some(close::TOO_BIG));
}

#[test]
fn no_welcome_in_time_and_401_are_retried() {
    let (l, url) = listen();
    let srv = server(move || {
        // 1: upgrade, then never answer the hello.
        let (mut first, _, _) = accept(&l);
        let _ = next_text(&mut first);
        // 2: refuse the credential.
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).unwrap();
        let body = r#"{"error":{"code":"unauthorized","message":"unknown credential"}}"#;
        let resp = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).unwrap();
        drop(s);
        // 3: a proper connection, then revoke to end the test.
        let (mut third, _, _) = accept(&l);
        welcome(&mut third);
        close_with(&mut third, close::REVOKED, "done");
    });
    let exit = run_runner(config(&url, None), 20).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    srv.join().unwrap();
}

#[test]
fn nothing_listening_means_backing_off_with_the_error_in_status() {
    let (l, url) = listen();
    drop(l); // the port is now closed: connection refused
    let dir = std::env::temp_dir().join(format!("tether-conn-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Stop half-way between the fast retries (about 1 s apart, refused at
    // once), so the runner is certainly waiting, not mid-attempt.
    let err =
        run_runner_for(config(&url, Some(dir.clone())), Duration::from_millis(1500)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    let status = state::read_status(&dir).unwrap().unwrap();
    assert_eq!(status.state, RunState::BackingOff);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("cannot connect"),
        "{status:?}"
    );
    assert_eq!(status.runner_id, "rn_test");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn several_servers_are_tried_in_turn_after_each_failure() {
    let (dead, dead_url) = listen();
    drop(dead); // connection refused
    let (l, live_url) = listen();
    let srv = server(move || {
        // Reached after the dead one failed; then a restart (1012) ...
        let (mut first, _, _) = accept(&l);
        welcome(&mut first);
        close_with(&mut first, 1012, "restarting");
        // ... sends the next attempt to the dead one, and only then back here.
        let (mut second, _, _) = accept(&l);
        welcome(&mut second);
        close_with(&mut second, close::REVOKED, "done");
    });
    let dir = std::env::temp_dir().join(format!("tether-conn-list-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = config(&dead_url, Some(dir.clone()));
    cfg.conn.servers.push(Endpoint {
        url: live_url.clone(),
        proxy: None,
    });
    let started = Instant::now();
    let exit = run_runner(cfg, 20).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    srv.join().unwrap();
    // Three waits of the fast backoff (about 1 s each): the dead URL was
    // tried twice, each time followed by the live one, with no extra rate.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    let status = state::read_status(&dir).unwrap().unwrap();
    assert_eq!(status.server, live_url.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_name_with_several_addresses_has_each_tried() {
    let (l, url) = listen();
    let port = l.local_addr().unwrap().port();
    // Nothing listens on 127.0.0.2 (refused at once), then the server.
    crate::net::dns::test_names::set(
        "replicas.test",
        &["127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    );
    let srv = server(move || {
        let (mut ws, _, _) = accept(&l);
        welcome(&mut ws);
        close_with(&mut ws, close::REVOKED, "done");
    });
    let named = Url::parse(&format!("http://replicas.test:{port}")).unwrap();
    assert_ne!(named, url);
    let started = Instant::now();
    let exit = run_runner(config(&named, None), 20).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    srv.join().unwrap();
    // In the same attempt: no backoff wait (about 1 s) between the two.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sigterm_sends_close_1000_and_exits() {
    let _guard = crate::signals::TEST_LOCK
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let signals = crate::signals::Signals::install(&[libc::SIGTERM, libc::SIGINT]).unwrap();
    let (l, url) = listen();
    let srv = server(move || {
        let (mut ws, _, _) = accept(&l);
        welcome(&mut ws);
        // Our handler for SIGTERM is installed; it only writes a byte.
        crate::sys::process::kill_pid(std::process::id() as libc::pid_t, libc::SIGTERM);
        let t0 = Instant::now();
        let close = await_close(&mut ws);
        (close, t0.elapsed())
    });
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let exit = runner::run_until(config(&url, None), Some(&signals), deadline).unwrap();
    assert_eq!(exit, Exit::Shutdown);
    let ((code, reason), took) = srv.join().unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (close::NORMAL, "runner shutting down")
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn tls_and_an_http_connect_proxy_end_to_end() {
    use crate::net::transport::tests::{server_config, testdata};
    // A wss server with the test certificate.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let srv = server(move || {
        let (sock, _) = l.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let tls = rustls::StreamOwned::new(
            rustls::ServerConnection::new(server_config()).unwrap(),
            sock,
        );
        let mut ws = tungstenite::accept(tls).unwrap();
        let env = read_control_any(&mut ws);
        let w = Control::Welcome(Welcome {
            protocol: 1,
            runner_id: "rn_test".into(),
            server_version: "t".into(),
            acks: vec![],
            metrics_ts: None,
        });
        ws.send(WsMessage::text(protocol::encode_control(env.id, w)))
            .unwrap();
        let _ = ws.close(Some(CloseFrame {
            code: CloseCode::from(close::REVOKED),
            reason: "done".into(),
        }));
        while ws.read().is_ok() {}
    });
    // A CONNECT proxy in front of it.
    let pl = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = Url::parse(&format!("http://{}", pl.local_addr().unwrap())).unwrap();
    let proxy = server(move || {
        let (mut client, _) = pl.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while crate::net::http::find_head_end(&head, 0).is_none() {
            client.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let target = head.split_whitespace().nth(1).unwrap().to_owned();
        let up = StdStream::connect(&target).unwrap();
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n")
            .unwrap();
        let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut c2, &mut u2));
        let (mut up, mut client) = (up, client);
        let _ = std::io::copy(&mut up, &mut client);
        target
    });
    let mut cfg = config(
        &Url::parse(&format!("https://localhost:{port}")).unwrap(),
        None,
    );
    cfg.conn.tls = tls::client_config(Some(&testdata("ca.pem"))).unwrap();
    cfg.conn.servers[0].proxy = Some(proxy_url);
    let exit = run_runner(cfg, 10).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    srv.join().unwrap();
    assert_eq!(proxy.join().unwrap(), format!("localhost:{port}"));
}

fn read_control_any<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>) -> Envelope {
    loop {
        if let WsMessage::Text(t) = ws.read().unwrap() {
            if let Decoded::Known(e) = protocol::decode_control(t.as_str()).unwrap() {
                return e;
            }
        }
    }
}

#[test]
fn a_certificate_from_an_unknown_ca_is_a_logged_failure_not_an_exit() {
    use crate::net::transport::tests::{server_config, testdata};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _srv = server(move || {
        // Keep accepting: the runner retries after the failure.
        for _ in 0..3 {
            let Ok((sock, _)) = l.accept() else { return };
            let mut tls = rustls::StreamOwned::new(
                rustls::ServerConnection::new(server_config()).unwrap(),
                sock,
            );
            let _ = tls.read(&mut [0u8; 16]);
        }
    });
    let dir = std::env::temp_dir().join(format!("tether-conn-badca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = config(
        &Url::parse(&format!("https://127.0.0.1:{port}")).unwrap(),
        Some(dir.clone()),
    );
    cfg.conn.tls = tls::client_config(Some(&testdata("other-ca.pem"))).unwrap();
    let err = run_runner(cfg, 2).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    let status = state::read_status(&dir).unwrap().unwrap();
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("TLS certificate rejected"),
        "{status:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- telemetry through the connection --------------------------------

const METRICS_EVERY: Duration = Duration::from_millis(100);

fn metrics_config(url: &Url) -> RunConfig {
    let mut cfg = config(url, None);
    cfg.telemetry = TelemetryConfig::new(Some(METRICS_EVERY), None);
    cfg
}

/// Answer the hello with a welcome carrying `metrics_ts`.
fn welcome_with(ws: &mut ServerWs, metrics_ts: Option<u64>) -> Hello {
    let env = read_control(ws);
    let Control::Hello(h) = env.body else {
        panic!("expected hello, got {env:?}")
    };
    let w = Control::Welcome(Welcome {
        protocol: 1,
        runner_id: "rn_test".into(),
        server_version: "0.1.0-test".into(),
        acks: vec![],
        metrics_ts,
    });
    ws.send(WsMessage::text(protocol::encode_control(env.id, w)))
        .unwrap();
    h
}

/// The server's side of one connection's metrics stream: a fresh decoder,
/// as the server keeps one per connection.
struct MetricsStream {
    dec: crate::metrics::wire::Decoder,
    /// (ts, first byte of the record: 1 key, 2 delta)
    records: Vec<(u64, u8)>,
    /// Text messages in order: "metrics_schema" ... (checks the order).
    schemas: usize,
    frames: usize,
}

impl MetricsStream {
    fn new() -> MetricsStream {
        MetricsStream {
            dec: crate::metrics::wire::Decoder::new(),
            records: Vec::new(),
            schemas: 0,
            frames: 0,
        }
    }

    /// Read until `done` says so; every record must decode.
    fn read_until(&mut self, ws: &mut ServerWs, mut done: impl FnMut(&MetricsStream) -> bool) {
        while !done(self) {
            match next_text(ws) {
                WsMessage::Text(t) => match protocol::decode_control(t.as_str()).unwrap() {
                    Decoded::Known(Envelope {
                        body: Control::MetricsSchema(s),
                        ..
                    }) => {
                        self.schemas += 1;
                        self.dec.set_schema(s.schema).unwrap();
                    }
                    other => panic!("unexpected control message {other:?}"),
                },
                WsMessage::Binary(b) => {
                    let (h, payload) = protocol::decode_frame(&b).unwrap();
                    assert_eq!(h.kind, protocol::FrameKind::Metrics);
                    assert_eq!((h.channel, h.seq), (0, 0));
                    assert!(payload.len() <= protocol::MAX_DATA_PAYLOAD);
                    self.frames += 1;
                    for rec in crate::metrics::wire::split_batch(payload) {
                        let rec = rec.unwrap();
                        let d = self
                            .dec
                            .decode(rec)
                            .unwrap_or_else(|e| panic!("record {rec:?}: {e}"));
                        assert!(!d.values.is_empty());
                        self.records.push((d.ts_ms, rec[0]));
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn ts(&self) -> Vec<u64> {
        self.records.iter().map(|r| r.0).collect()
    }
}

fn assert_no_gap(ts: &[u64]) {
    for w in ts.windows(2) {
        assert!(w[0] < w[1], "not increasing: {ts:?}");
        assert!(
            w[1] - w[0] < 400,
            "a hole between {} and {}: {ts:?}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn after_welcome_the_schema_then_metrics_frames_arrive() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut ws, _, _) = accept(&l);
        let hello = welcome_with(&mut ws, None);
        // Nothing but metrics: the schema comes first.
        let mut m = MetricsStream::new();
        m.read_until(&mut ws, |m| m.schemas == 1);
        assert!(m.records.is_empty());
        m.read_until(&mut ws, |m| m.records.len() >= 5);
        close_with(&mut ws, close::REVOKED, "done");
        (hello, m.records, m.schemas)
    });
    let exit = run_runner(metrics_config(&url), 10).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    let (hello, records, schemas) = srv.join().unwrap();
    assert_eq!(hello.metrics_interval_ms, 100);
    assert_eq!(schemas, 1);
    assert_eq!(records[0].1, 0x01, "a key record first");
    assert!(records[1..].iter().all(|r| r.1 == 0x02), "then deltas");
    let ts: Vec<u64> = records.iter().map(|r| r.0).collect();
    assert_no_gap(&ts);
}

#[test]
fn welcome_metrics_ts_means_nothing_older_is_sent_again() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut first, _, _) = accept(&l);
        welcome_with(&mut first, None);
        let mut m1 = MetricsStream::new();
        m1.read_until(&mut first, |m| m.records.len() >= 5);
        // Stored (say), but the ack never made it: the link goes away.
        close_with(&mut first, close::GOING_AWAY, "restarting");
        let stored = *m1.ts().last().unwrap();
        let (mut second, _, _) = accept(&l);
        welcome_with(&mut second, Some(stored));
        let mut m2 = MetricsStream::new();
        m2.read_until(&mut second, |m| m.records.len() >= 5);
        close_with(&mut second, close::REVOKED, "done");
        (m1.ts(), m2)
    });
    let exit = run_runner(metrics_config(&url), 15).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    let (first, second) = srv.join().unwrap();
    let stored = *first.last().unwrap();
    let again = second.ts();
    assert_eq!(second.schemas, 1, "the schema again on the new connection");
    assert_eq!(second.records[0].1, 0x01, "starting with a key record");
    assert!(
        again[0] > stored,
        "{again:?} repeats what ended at {stored}"
    );
    // ... and nothing missing: it continues right after what is stored.
    let mut all = first.clone();
    all.extend(&again);
    assert_no_gap(&all);
}

#[test]
fn records_sent_into_a_cut_link_are_sent_again_after_the_last_ack() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut first, _, _) = accept(&l);
        welcome_with(&mut first, None);
        let mut m1 = MetricsStream::new();
        m1.read_until(&mut first, |m| m.records.len() >= 4);
        let acked = m1.records[1].0;
        let ack = Control::MetricsAck(protocol::MetricsAck { ts_ms: acked });
        first
            .send(WsMessage::text(protocol::encode_control(9, ack)))
            .unwrap();
        m1.read_until(&mut first, |m| m.records.len() >= 8);
        // The link dies: no close frame, no more acks.
        drop(first);
        let (mut second, _, _) = accept(&l);
        welcome_with(&mut second, None);
        let newest = *m1.ts().last().unwrap();
        let mut m2 = MetricsStream::new();
        m2.read_until(&mut second, |m| {
            m.records.iter().any(|r| r.0 > newest + 200)
        });
        close_with(&mut second, close::REVOKED, "done");
        (m1.ts(), acked, m2)
    });
    let exit = run_runner(metrics_config(&url), 15).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    let (first, acked, second) = srv.join().unwrap();
    let again = second.ts();
    assert_eq!(second.records[0].1, 0x01, "a key record first");
    // Everything after the acknowledged record comes again, nothing before.
    let unacked: Vec<u64> = first.iter().copied().filter(|&t| t > acked).collect();
    assert_eq!(
        &again[..unacked.len()],
        &unacked[..],
        "{first:?} then {again:?}"
    );
    assert_no_gap(&again);
}

#[test]
fn fingerprint_is_full_on_connect_and_again_on_resync() {
    let (l, url) = listen();
    let srv = server(move || {
        let (mut ws, _, _) = accept(&l);
        welcome_with(&mut ws, None);
        let next_report = |ws: &mut ServerWs| loop {
            let env = read_control(ws);
            if let Control::Fingerprint(r) = env.body {
                return r;
            }
        };
        let first = next_report(&mut ws);
        let resync = Control::FingerprintResync(protocol::Empty {});
        ws.send(WsMessage::text(protocol::encode_control(3, resync)))
            .unwrap();
        let second = next_report(&mut ws);
        close_with(&mut ws, close::REVOKED, "done");
        (first, second)
    });
    let mut cfg = config(&url, None);
    cfg.telemetry = TelemetryConfig::new(None, Some(Duration::from_secs(60)));
    let exit = run_runner(cfg, 20).unwrap();
    assert_eq!(exit, Exit::Revoked("done".into()));
    let (first, second) = srv.join().unwrap();
    let fp = first.full.expect("the first report is full");
    assert!(first.changes.is_empty());
    assert!(fp.kernel.is_some());
    assert_eq!(
        fp.runner_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    // Either the rules or a note saying why not.
    assert!(
        fp.firewall.is_some() || first.notes.iter().any(|n| n.starts_with("firewall")),
        "{:?}",
        first.notes
    );
    assert!(second.full.is_some(), "resync gets a full report");
}
