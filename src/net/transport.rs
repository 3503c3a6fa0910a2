//! The byte stream under the WebSocket: plain TCP (loopback only) or TLS,
//! over a **non-blocking** socket. It implements `Read + Write` with the
//! non-blocking contract tungstenite expects: `WouldBlock` means "come back
//! when the socket is ready", never a short write of zero.
//!
//! TLS here is a rustls `ClientConnection` pumped by hand:
//!
//! ```text
//!  read():  plaintext ready? ─yes─▶ return it
//!           └no─▶ read_tls(socket) ─WouldBlock─▶ WouldBlock
//!                 └─▶ process_new_packets ─▶ (alerts/acks to send? write_tls) ─▶ loop
//!  write(): push pending TLS records, buffer plaintext (bounded), push again;
//!           rustls buffer full ─▶ WouldBlock
//!  flush(): push pending TLS records until none left, or WouldBlock
//! ```
//!
//! Generic over the socket so tests can use a fake stream that returns
//! `WouldBlock` on a schedule.

use rustls::ClientConnection;
use std::io::{self, Read, Write};

/// Plaintext rustls may hold before `write` returns `WouldBlock`.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

pub enum Transport<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
}

pub struct TlsStream<S> {
    pub conn: ClientConnection,
    pub sock: S,
}

/// How the TLS handshake is going.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    Done,
    /// Waiting for the socket.
    WouldBlock,
}

impl<S: Read + Write> Transport<S> {
    pub fn plain(sock: S) -> Transport<S> {
        Transport::Plain(sock)
    }

    pub fn tls(mut conn: ClientConnection, sock: S) -> Transport<S> {
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Transport::Tls(Box::new(TlsStream { conn, sock }))
    }

    pub fn socket(&self) -> &S {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    pub fn socket_mut(&mut self) -> &mut S {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Whether TLS records are waiting for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.conn.wants_write(),
        }
    }

    /// Drive the TLS handshake as far as the socket allows. Errors carry the
    /// rustls error inside (see `tls::rustls_error`).
    pub fn handshake(&mut self) -> io::Result<Handshake> {
        let Transport::Tls(t) = self else {
            return Ok(Handshake::Done);
        };
        loop {
            while t.conn.wants_write() {
                match t.conn.write_tls(&mut t.sock) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Handshake::WouldBlock)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !t.conn.is_handshaking() {
                return Ok(Handshake::Done);
            }
            match t.conn.read_tls(&mut t.sock) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection during the TLS handshake",
                    ))
                }
                Ok(_) => t.process()?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Handshake::WouldBlock)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Queue a TLS close_notify (best effort; the caller flushes).
    pub fn close_notify(&mut self) {
        if let Transport::Tls(t) = self {
            t.conn.send_close_notify();
        }
    }
}

impl<S: Read + Write> TlsStream<S> {
    fn process(&mut self) -> io::Result<()> {
        if let Err(e) = self.conn.process_new_packets() {
            // Tell the peer why (the alert is queued by rustls), best effort.
            let _ = self.conn.write_tls(&mut self.sock);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    /// Write queued TLS records; `Ok` when none are left.
    fn push(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn ignore_would_block(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

impl<S: Read + Write> Read for Transport<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Transport::Plain(s) => return s.read(buf),
            Transport::Tls(t) => t,
        };
        let mut eof = false;
        loop {
            match t.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if eof {
                        return Ok(0);
                    }
                }
                // UnexpectedEof: the peer closed TCP without close_notify.
                Err(e) => return Err(e),
            }
            match t.conn.read_tls(&mut t.sock) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            t.process()?;
            // Session tickets, key updates and alerts may want an answer.
            ignore_would_block(t.push())?;
        }
    }
}

impl<S: Read + Write> Write for Transport<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            Transport::Plain(s) => return s.write(buf),
            Transport::Tls(t) => t,
        };
        ignore_would_block(t.push())?;
        let n = t.conn.writer().write(buf)?;
        ignore_would_block(t.push())?;
        if n == 0 && !buf.is_empty() {
            // rustls' buffer is at its limit: backpressure.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => {
                t.conn.writer().flush()?;
                t.push()
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// One direction of an in-memory pipe.
    #[derive(Default)]
    pub struct Pipe {
        pub bytes: VecDeque<u8>,
        pub closed: bool,
    }

    /// A fake socket: reads from `rx`, writes to `tx`, and returns
    /// `WouldBlock` when `rx` is empty or every `block_every`-th call.
    pub struct FakeSocket {
        pub rx: Rc<RefCell<Pipe>>,
        pub tx: Rc<RefCell<Pipe>>,
        pub calls: usize,
        pub block_every: usize,
        pub max_io: usize,
    }

    impl FakeSocket {
        fn hiccup(&mut self) -> bool {
            self.calls += 1;
            self.block_every > 0 && self.calls % self.block_every == 0
        }
    }

    impl Read for FakeSocket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.hiccup() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut rx = self.rx.borrow_mut();
            if rx.bytes.is_empty() {
                return if rx.closed {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(rx.bytes.len()).min(self.max_io);
            for b in buf.iter_mut().take(n) {
                *b = rx.bytes.pop_front().unwrap();
            }
            Ok(n)
        }
    }

    impl Write for FakeSocket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.hiccup() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.max_io);
            self.tx.borrow_mut().bytes.extend(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Two connected fake sockets.
    pub fn socket_pair(block_every: usize, max_io: usize) -> (FakeSocket, FakeSocket) {
        let a = Rc::new(RefCell::new(Pipe::default()));
        let b = Rc::new(RefCell::new(Pipe::default()));
        (
            FakeSocket {
                rx: a.clone(),
                tx: b.clone(),
                calls: 0,
                block_every,
                max_io,
            },
            FakeSocket {
                rx: b,
                tx: a,
                calls: 0,
                block_every,
                max_io,
            },
        )
    }

    #[test]
    fn plain_passes_through_and_would_block_surfaces() {
        let (a, mut b) = socket_pair(0, 1024);
        let mut t = Transport::plain(a);
        assert_eq!(t.write(b"hi").unwrap(), 2);
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap(), 2);
        assert_eq!(
            t.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!t.wants_write());
    }

    pub fn testdata(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/conn/testdata")
            .join(name)
    }

    /// A rustls server config with the test certificate (localhost, 127.0.0.1, ::1).
    pub fn server_config() -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<_> = CertificateDer::pem_file_iter(testdata("server.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(testdata("server.key")).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        std::sync::Arc::new(config)
    }

    /// Move whatever the server side can move; hiccups are retried later.
    fn pump_server(
        srv: &mut rustls::ServerConnection,
        sock: &mut FakeSocket,
    ) -> Result<(), rustls::Error> {
        loop {
            match srv.read_tls(sock) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    srv.process_new_packets()?;
                }
            }
        }
        // A few tries past a hiccup, so the fake's fixed WouldBlock rhythm
        // cannot lock step with this pump forever.
        let mut hiccups = 0;
        while srv.wants_write() && hiccups < 3 {
            if srv.write_tls(sock).is_err() {
                hiccups += 1;
            }
        }
        Ok(())
    }

    fn tls_client(ca: &str, sock: FakeSocket) -> Transport<FakeSocket> {
        let config = crate::net::tls::client_config(Some(&testdata(ca))).unwrap();
        let name = crate::net::tls::server_name("localhost").unwrap();
        Transport::tls(ClientConnection::new(config, name).unwrap(), sock)
    }

    #[test]
    fn tls_handshake_and_data_survive_would_block_at_every_turn() {
        for block_every in [0, 2, 3, 5] {
            for max_io in [1, 7, 100, 64 * 1024] {
                let (a, mut b) = socket_pair(block_every, max_io);
                let mut client = tls_client("ca.pem", a);
                let mut srv = rustls::ServerConnection::new(server_config()).unwrap();
                let mut rounds = 0;
                while client.handshake().unwrap() != Handshake::Done || srv.is_handshaking() {
                    pump_server(&mut srv, &mut b).unwrap();
                    rounds += 1;
                    assert!(
                        rounds < 100_000,
                        "handshake stuck ({block_every}, {max_io})"
                    );
                }

                // Client → server, through WouldBlock.
                let msg = vec![b'x'; 50_000];
                let mut sent = 0;
                let mut got = Vec::new();
                while got.len() < msg.len() {
                    if sent < msg.len() {
                        match client.write(&msg[sent..]) {
                            Ok(n) => sent += n,
                            Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                        }
                    }
                    match client.flush() {
                        Ok(()) => {}
                        Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                    }
                    pump_server(&mut srv, &mut b).unwrap();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = srv.reader().read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    rounds += 1;
                    assert!(rounds < 1_000_000, "send stuck ({block_every}, {max_io})");
                }
                assert_eq!(got, msg);

                // Server → client.
                srv.writer().write_all(b"welcome").unwrap();
                let mut back = Vec::new();
                while back.len() < 7 {
                    pump_server(&mut srv, &mut b).unwrap();
                    let mut buf = [0u8; 16];
                    match client.read(&mut buf) {
                        Ok(n) => back.extend_from_slice(&buf[..n]),
                        Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                    }
                    rounds += 1;
                    assert!(
                        rounds < 1_000_000,
                        "receive stuck ({block_every}, {max_io})"
                    );
                }
                assert_eq!(back, b"welcome");
            }
        }
    }

    #[test]
    fn unknown_issuer_is_a_certificate_error() {
        let (a, mut b) = socket_pair(0, 4096);
        let mut client = tls_client("other-ca.pem", a);
        let mut srv = rustls::ServerConnection::new(server_config()).unwrap();
        let err = loop {
            match client.handshake() {
                Ok(Handshake::Done) => panic!("handshake must fail"),
                Ok(Handshake::WouldBlock) => {
                    let _ = pump_server(&mut srv, &mut b);
                }
                Err(e) => break e,
            }
        };
        let tls = crate::net::tls::rustls_error(&err).expect("a rustls error");
        assert!(crate::net::tls::is_certificate_error(tls), "{tls:?}");
    }

    #[test]
    fn peer_hanging_up_mid_handshake_is_an_error_not_a_hang() {
        let (a, b) = socket_pair(0, 4096);
        let mut client = tls_client("ca.pem", a);
        assert_eq!(client.handshake().unwrap(), Handshake::WouldBlock);
        b.tx.borrow_mut().closed = true;
        assert_eq!(
            client.handshake().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
