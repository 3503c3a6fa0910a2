//! A webhook receiver on loopback for the alert tests: every POST it gets
//! is parsed (head, body by Content-Length) and handed to the test through
//! a channel; it answers 200. Bounded: at most 1 MiB a request, 5 s to
//! send it.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const MAX_BODY: usize = 1 << 20;

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
                if let Ok(v) = serde_json::from_slice(&body) {
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
