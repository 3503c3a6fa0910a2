//! A TCP proxy the test controls, for injecting network faults from outside
//! the programs under test: forward, black-hole (stop forwarding without
//! closing, like a dead link), refuse new connections, cut live ones. It can
//! also act as an HTTP CONNECT proxy (a corporate proxy) and counts what it sees.
//!
//! Threads and blocking sockets: the proxy is test scaffolding, not product.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Pass bytes both ways.
    Forward = 0,
    /// Accept and keep connections, swallow every byte: a silent dead link.
    Blackhole = 1,
    /// Close each new connection at once (the server is down); live ones stay.
    Refuse = 2,
}

enum Target {
    Fixed(SocketAddr),
    /// Read an HTTP CONNECT request and tunnel to the address it names.
    HttpConnect,
}

struct Shared {
    mode: AtomicU8,
    stop: AtomicBool,
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    live: Mutex<Vec<TcpStream>>,
    connect_requests: Mutex<Vec<String>>,
}

pub struct TcpProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TcpProxy {
    /// Forward everything to `target`.
    pub fn to(target: &str) -> TcpProxy {
        let t: SocketAddr = target.parse().expect("proxy target must be ip:port");
        TcpProxy::start(Target::Fixed(t))
    }

    /// An HTTP CONNECT proxy.
    pub fn http_connect() -> TcpProxy {
        TcpProxy::start(Target::HttpConnect)
    }

    fn start(target: Target) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Forward as u8),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
            connect_requests: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let target = Arc::new(target);
        thread::spawn(move || accept_loop(listener, sh, target));
        TcpProxy { addr, shared }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    pub fn set_mode(&self, m: Mode) {
        self.shared.mode.store(m as u8, Ordering::SeqCst);
    }

    /// Close every live connection (both directions), as a reset would.
    pub fn cut(&self) {
        for s in self.shared.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded client → server and server → client.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.bytes_up.load(Ordering::SeqCst),
            self.shared.bytes_down.load(Ordering::SeqCst),
        )
    }

    /// The targets of the CONNECT requests seen (HTTP CONNECT mode).
    pub fn connect_requests(&self) -> Vec<String> {
        self.shared.connect_requests.lock().unwrap().clone()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn mode(sh: &Shared) -> Mode {
    match sh.mode.load(Ordering::SeqCst) {
        1 => Mode::Blackhole,
        2 => Mode::Refuse,
        _ => Mode::Forward,
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>, target: Arc<Target>) {
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                sh.accepted.fetch_add(1, Ordering::SeqCst);
                if mode(&sh) == Mode::Refuse {
                    drop(client);
                    continue;
                }
                let sh = sh.clone();
                let target = target.clone();
                thread::spawn(move || handle(client, sh, &target));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn handle(mut client: TcpStream, sh: Arc<Shared>, target: &Target) {
    client.set_nonblocking(false).unwrap();
    let upstream = match target {
        Target::Fixed(a) => TcpStream::connect_timeout(a, Duration::from_secs(5)),
        Target::HttpConnect => match read_connect(&mut client) {
            Some(dest) => {
                sh.connect_requests.lock().unwrap().push(dest.clone());
                let up = TcpStream::connect(dest.as_str());
                if up.is_ok() {
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                } else {
                    let _ =
                        client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
                }
                up
            }
            None => return,
        },
    };
    let Ok(upstream) = upstream else { return };
    {
        let mut live = sh.live.lock().unwrap();
        live.push(client.try_clone().unwrap());
        live.push(upstream.try_clone().unwrap());
    }
    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let sh2 = sh.clone();
    thread::spawn(move || pump(c2, u2, &sh2, true));
    pump(upstream, client, &sh, false);
}

/// Read a CONNECT request up to its blank line; return "host:port".
fn read_connect(client: &mut TcpStream) -> Option<String> {
    client.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).ok()? == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next()?.split_whitespace();
    (parts.next()? == "CONNECT").then_some(())?;
    parts.next().map(str::to_string)
}

fn pump(mut from: TcpStream, mut to: TcpStream, sh: &Shared, up: bool) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !sh.stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if mode(sh) == Mode::Blackhole {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                let counter = if up { &sh.bytes_up } else { &sh.bytes_down };
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
