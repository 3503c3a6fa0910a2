//! Rogue clients on the runner endpoint: no credential, a wrong protocol
//! version, malformed and oversized frames, silence. Each is closed with a
//! clear reason while a real runner on the same server keeps being served.

use crate::util::*;
use serde_json::json;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_stream(server: &Server) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&server.ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "127.0.0.1".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// A WebSocket upgrade with `credential` (or none).
fn ws(server: &Server, credential: Option<&str>) -> Result<WebSocket<Tls>, tungstenite::Error> {
    let url = format!(
        "wss://{}{}",
        server.addr(),
        tether::protocol::RUNNER_CONNECT_PATH
    );
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
    if let Some(c) = credential {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {c}").parse().unwrap());
    }
    tungstenite::client(req, tls_stream(server))
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
        })
}

/// A runner credential made through the enroll API (no runner process).
fn credential(server: &Server, tenant: &Tenant) -> String {
    let (_, token) = tenant.enrollment_token(600);
    let body = json!({"token": token, "hostname": "rogue", "arch": "x86_64", "os": "linux", "version": "0.0.1"});
    let (st, v) = server
        .api()
        .call("POST", tether::protocol::ENROLL_PATH, None, Some(body));
    assert_eq!(st, 201, "{v}");
    v["credential"].as_str().unwrap().to_string()
}

fn hello(protocol: &[u16]) -> String {
    json!({"type": "hello", "id": 1, "protocol": protocol, "runner_version": "0.0.1", "arch": "x86_64",
           "os": "linux", "hostname": "rogue", "heartbeat_ms": 5000})
    .to_string()
}

/// Read until the server closes; return the close code and reason.
fn close_of(ws: &mut WebSocket<Tls>) -> (u16, String) {
    for _ in 0..100 {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                panic!("no close within the read timeout")
            }
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
    panic!("no close frame after 100 messages");
}

/// A bystander: a real runner that must stay active and answer pings.
struct Bystander {
    tenant: Tenant,
    runner: Runner,
}

impl Bystander {
    fn new(server: &Server) -> Bystander {
        let tenant = server.tenant("bystander");
        let mut runner = Runner::enroll(server, &tenant);
        runner.start(&["--heartbeat", "1s"]);
        tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
        Bystander { tenant, runner }
    }

    fn still_served(&self) {
        assert_eq!(self.tenant.health(&self.runner.id), "active");
        let (st, v) = self.tenant.call(
            "POST",
            &format!("/api/v1/runners/{}/ping", self.runner.id),
            None,
        );
        assert_eq!(st, 200, "bystander ping: {v}");
    }
}

#[test]
fn an_upgrade_without_a_valid_credential_is_refused_with_a_json_reason() {
    let server = Server::start();
    let by = Bystander::new(&server);
    for cred in [None, Some("trun_forged"), Some("")] {
        match ws(&server, cred) {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{cred:?}");
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            }
            Ok(_) => panic!("upgrade accepted without a valid credential ({cred:?})"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    by.still_served();
}

#[test]
fn a_wrong_protocol_version_is_closed_with_a_reason() {
    let server = Server::start();
    let by = Bystander::new(&server);
    let tenant = server.tenant("rogue");
    let mut ws = ws(&server, Some(&credential(&server, &tenant))).unwrap();
    ws.send(Message::text(hello(&[99, 100]))).unwrap();
    let (code, reason) = close_of(&mut ws);
    assert_eq!(
        code,
        tether::protocol::close::UNSUPPORTED_PROTOCOL,
        "{reason}"
    );
    assert!(
        reason.contains('1'),
        "the reason names the versions the server speaks: {reason}"
    );
    by.still_served();
}

#[test]
fn malformed_text_and_binary_frames_are_closed_with_a_reason() {
    let server = Server::start();
    let by = Bystander::new(&server);
    let tenant = server.tenant("rogue");
    let cred = credential(&server, &tenant);
    let bad: Vec<Message> = vec![
        Message::text("this is not json"),
        Message::text(r#"{"type":"ping","id":"seven"}"#),
        Message::binary(vec![1u8, 2, 3]),
        Message::binary(vec![1u8, 1, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
    ];
    for msg in bad {
        let mut ws = ws(&server, Some(&cred)).unwrap();
        ws.send(Message::text(hello(&[1]))).unwrap();
        let welcome = ws.read().unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome}");
        ws.send(msg.clone()).unwrap();
        let (code, reason) = close_of(&mut ws);
        assert_eq!(
            code,
            tether::protocol::close::PROTOCOL_VIOLATION,
            "{msg:?}: {reason}"
        );
        assert!(!reason.is_empty(), "a reason is given for {msg:?}");
    }
    by.still_served();
}

#[test]
fn an_oversized_message_is_closed() {
    let server = Server::start();
    let by = Bystander::new(&server);
    let tenant = server.tenant("rogue");
    let mut ws = ws(&server, Some(&credential(&server, &tenant))).unwrap();
    ws.send(Message::text(hello(&[1]))).unwrap();
    ws.read().unwrap();
    let big = vec![0u8; tether::protocol::MAX_WS_MESSAGE * 4];
    // The server may close while we are still writing; either way it must end.
    let _ = ws.send(Message::binary(big));
    let mut closed = false;
    for _ in 0..10 {
        match ws.read() {
            Ok(Message::Close(f)) => {
                if let Some(f) = f {
                    assert_eq!(f.code, CloseCode::Size, "{f:?}");
                }
                closed = true;
                break;
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the server kept an oversized sender connected");
    by.still_served();
}

#[test]
fn unknown_message_types_are_ignored_not_fatal() {
    let server = Server::start();
    let tenant = server.tenant("rogue");
    let mut ws = ws(&server, Some(&credential(&server, &tenant))).unwrap();
    ws.send(Message::text(hello(&[1]))).unwrap();
    ws.read().unwrap();
    ws.send(Message::text(
        r#"{"type":"from_the_future","id":5,"what":1}"#,
    ))
    .unwrap();
    // Unknown binary frame kind, well-formed header otherwise.
    ws.send(Message::binary(vec![
        200u8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    ]))
    .unwrap();
    ws.send(Message::Ping(vec![1, 2, 3].into())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], &[1, 2, 3]);
                break;
            }
            Message::Close(f) => panic!("closed for an unknown type: {f:?}"),
            _ => continue,
        }
    }
}

#[test]
fn a_client_that_never_says_hello_is_closed() {
    let server = Server::start();
    let tenant = server.tenant("rogue");
    let mut ws = ws(&server, Some(&credential(&server, &tenant))).unwrap();
    let started = std::time::Instant::now();
    let (code, _) = close_of(&mut ws);
    assert_eq!(code, tether::protocol::close::HELLO_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(15));
}
