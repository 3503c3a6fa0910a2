//! A webhook receiver on loopback for the alert tests: every POST it gets
//! is parsed (head, body by Content-Length) and handed to the test through
//! a channel; it answers 200. Bounded: at most 1 MiB a request, 5 s to
//! send it. Each notification gets the time it arrived ([`RECEIVED_MS`]).
//! [`hanging_url`] is a receiver that never answers.
//!
//! And an SMTP server on loopback ([`Smtp`]: Debian's python3-aiosmtpd,
//! which `packaging/dev-setup.sh` installs), requiring STARTTLS and AUTH as
//! a real relay does; each mail it takes is one line to the test.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const MAX_BODY: usize = 1 << 20;
/// The field [`Hooks`] adds to each notification: when it arrived (Unix ms).
pub const RECEIVED_MS: &str = "_received_ms";

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An HTTP server on loopback that accepts (up to 16 connections) and
/// never answers: a channel that hangs. Its URL; the sockets are held
/// until the test process ends.
pub fn hanging_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(16).collect();
        std::thread::sleep(Duration::from_secs(3600));
        drop(held);
    });
    url
}

pub struct Hooks {
    pub addr: SocketAddr,
    rx: Receiver<Value>,
}

impl Hooks {
    pub fn start() -> Hooks {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(stream);
                let mut len = 0usize;
                let mut line = String::new();
                let mut first = true;
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() && !first {
                        break;
                    }
                    first = false;
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0).min(MAX_BODY);
                        }
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
                if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
                    // When it arrived (Unix ms), for delay figures.
                    if let Some(o) = v.as_object_mut() {
                        o.insert(RECEIVED_MS.into(), now_ms().into());
                    }
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Hooks { addr, rx }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The first notification `want` accepts within `limit` (others are
    /// dropped: parallel tests make noise of their own).
    pub fn wait(&self, limit: Duration, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if want(&v) => return v,
                Ok(_) => {}
                Err(_) => panic!("no notification in {limit:?}: {what}"),
            }
        }
    }

    /// Every notification that arrives within `d`.
    pub fn drain_for(&self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        while let Ok(v) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            got.push(v);
        }
        got
    }
}

/// The SMTP server: STARTTLS with the given certificate, AUTH as
/// `alice`/`s3cret`; prints `MAIL <from> <to,..> tls=<bool> <body on one line>`.
const SMTP_SERVER: &str = r#"
import ssl, sys, time
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

/// A local SMTP server, killed when dropped.
pub struct Smtp {
    pub port: u16,
    child: std::process::Child,
    rx: Receiver<String>,
}

impl Smtp {
    /// Serves STARTTLS with `cert`/`key` (a certificate for 127.0.0.1).
    pub fn start(cert: &std::path::Path, key: &std::path::Path) -> Smtp {
        let port = super::free_port();
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(SMTP_SERVER)
            .arg(port.to_string())
            .arg(cert)
            .arg(key)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (packaging/dev-setup.sh installs python3-aiosmtpd)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let smtp = Smtp { port, child, rx };
        let ready = smtp.rx.recv_timeout(Duration::from_secs(15));
        assert_eq!(
            ready.as_deref().ok(),
            Some("READY"),
            "aiosmtpd did not start"
        );
        smtp
    }

    /// An email channel's config for this server (`ca_pem`: the CA of `cert`).
    pub fn channel(&self, ca_pem: &str) -> Value {
        serde_json::json!({"kind": "email", "host": "127.0.0.1", "port": self.port,
            "username": "alice", "password": "s3cret", "from": "Tether <tether@example.com>",
            "to": ["ops@example.com"], "ca_pem": ca_pem})
    }

    /// The first mail whose line `want` accepts within `limit`.
    pub fn wait(&self, limit: Duration, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if want(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("no mail in {limit:?}: {what}"),
            }
        }
    }

    /// Every mail that arrives within `d`.
    pub fn drain_for(&self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        while let Ok(l) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            got.push(l);
        }
        got
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
