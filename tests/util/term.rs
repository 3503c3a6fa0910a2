//! A terminal client for the tests: the server's terminal WebSocket over
//! real TLS (tungstenite + rustls, blocking with a short read timeout), as
//! xterm.js or the CLI would use it.

use super::Server;
use serde_json::{json, Value};
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

type Stream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub struct TermClient {
    ws: WebSocket<Stream>,
    pub session: String,
    /// Output offset of `out[0]`.
    pub start: u64,
    pub out: Vec<u8>,
    pub ended: Option<String>,
    pub notes: Vec<Value>,
}

fn connect(server: &Server, token: &str, path: &str) -> Result<WebSocket<Stream>, (u16, String)> {
    connect_with(
        server,
        &[("Authorization", &format!("Bearer {token}"))],
        path,
    )
}

/// The upgrade with these headers (a browser's: `Cookie` and `Origin`).
fn connect_with(
    server: &Server,
    headers: &[(&str, &str)],
    path: &str,
) -> Result<WebSocket<Stream>, (u16, String)> {
    let addr = server.addr();
    let tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let cfg = tether::net::tls::client_config(Some(&server.ca)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1".to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let stream = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!("wss://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, v.parse().expect("a header value"));
    }
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => {
            ws.get_ref()
                .sock
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("terminal websocket: {e}"),
    }
}

impl TermClient {
    /// Open a terminal on `runner` and attach (`query`: `container=...&cols=...`).
    pub fn open(
        server: &Server,
        token: &str,
        runner: &str,
        query: &str,
    ) -> Result<TermClient, (u16, String)> {
        let ws = connect(
            server,
            token,
            &format!("/api/v1/runners/{runner}/terminal?{query}"),
        )?;
        Ok(TermClient::attached(ws))
    }

    /// Attach to an open session from `offset`.
    pub fn attach(server: &Server, token: &str, session: &str, offset: u64) -> TermClient {
        let ws = connect(
            server,
            token,
            &format!("/api/v1/terminals/{session}/attach?offset={offset}"),
        )
        .unwrap_or_else(|e| panic!("attach {session}: {e:?}"));
        TermClient::attached(ws)
    }

    /// Attach to an open session as a browser would: its session cookie
    /// and `Origin`, no token.
    pub fn attach_as_browser(
        server: &Server,
        cookie: &str,
        origin: Option<&str>,
        session: &str,
    ) -> Result<TermClient, (u16, String)> {
        let mut headers = vec![("Cookie", cookie)];
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        let path = format!("/api/v1/terminals/{session}/attach?offset=0");
        Ok(TermClient::attached(connect_with(server, &headers, &path)?))
    }

    /// Attach with a single-use ticket in the URL and nothing else.
    pub fn attach_with_ticket(
        server: &Server,
        ticket: &str,
        session: &str,
    ) -> Result<TermClient, (u16, String)> {
        let path = format!("/api/v1/terminals/{session}/attach?offset=0&ticket={ticket}");
        Ok(TermClient::attached(connect_with(server, &[], &path)?))
    }

    /// Whether the server closed the socket (read until it is gone).
    pub fn wait_closed(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if !self.pump() {
                return true;
            }
        }
        false
    }

    fn attached(ws: WebSocket<Stream>) -> TermClient {
        let mut c = TermClient {
            ws,
            session: String::new(),
            start: 0,
            out: Vec::new(),
            ended: None,
            notes: Vec::new(),
        };
        let end = Instant::now() + Duration::from_secs(10);
        while c.session.is_empty() && Instant::now() < end {
            c.pump();
        }
        assert!(!c.session.is_empty(), "no 'attached' message");
        c
    }

    /// Offset after the last byte received.
    pub fn offset(&self) -> u64 {
        self.start + self.out.len() as u64
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .unwrap();
    }

    pub fn resize(&mut self, cols: u16, rows: u16) {
        let m = json!({"type": "resize", "cols": cols, "rows": rows});
        self.ws.send(Message::Text(m.to_string().into())).unwrap();
    }

    pub fn close(&mut self) {
        let m = json!({"type": "close"});
        self.ws.send(Message::Text(m.to_string().into())).unwrap();
    }

    /// Read what is there (up to one read timeout); false once the socket is gone.
    pub fn pump(&mut self) -> bool {
        match self.ws.read() {
            Ok(Message::Binary(b)) => self.out.extend_from_slice(&b),
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("attached") => {
                        self.session = v["session"].as_str().unwrap().to_owned();
                        self.start = v["offset"].as_u64().unwrap();
                    }
                    Some("end") => self.ended = Some(v["reason"].as_str().unwrap().to_owned()),
                    _ => {}
                }
                self.notes.push(v);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
        true
    }

    /// Read until the output (after `from`) contains `needle`.
    pub fn read_until(&mut self, from: usize, needle: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if String::from_utf8_lossy(&self.out[from.min(self.out.len())..]).contains(needle) {
                return true;
            }
            if !self.pump() {
                break;
            }
        }
        String::from_utf8_lossy(&self.out[from.min(self.out.len())..]).contains(needle)
    }

    /// Send a command line and wait for `needle` in what follows.
    pub fn run(&mut self, line: &str, needle: &str) -> String {
        let from = self.out.len();
        self.send(format!("{line}\n").as_bytes());
        assert!(
            self.read_until(from, needle, Duration::from_secs(15)),
            "no {needle:?} after {line:?}; got {:?}",
            String::from_utf8_lossy(&self.out[from..])
        );
        String::from_utf8_lossy(&self.out[from..]).into_owned()
    }

    /// Wait for the end message; its reason.
    pub fn wait_end(&mut self, limit: Duration) -> Option<String> {
        let end = Instant::now() + limit;
        while self.ended.is_none() && Instant::now() < end {
            if !self.pump() {
                break;
            }
        }
        self.ended.clone()
    }
}
