//! A small **blocking** HTTPS/1.1 client for the runner's few plain
//! requests (enrollment, release downloads), on the runner's one response
//! decoder ([`crate::net::http`]).
//!
//! It uses std sockets with read/write timeouts (a CLI command may block;
//! the event loop never calls it), the same rustls config as the runner
//! connection ([`crate::net::tls`]), and the same CONNECT codec for proxies
//! ([`crate::net::proxy`]).

use crate::net::dns;
use crate::net::http::{BufferedDecoder, Expect, HttpError, ResponseDecoder};
use crate::net::proxy::{self, ConnectResponse, Progress, ProxyError};
use crate::net::tls;
use crate::url::Url;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::net::http::Response;

/// Largest response head: the server's and a release host's answers are
/// small, whatever Docker may send.
pub const MAX_HEAD: usize = 16 * 1024;

/// The decoder for one answer: heads up to [`MAX_HEAD`], a body up to
/// `max_body`; never a body after a HEAD request.
pub fn answer_decoder(head_request: bool, max_body: usize) -> BufferedDecoder {
    let expect = if head_request {
        Expect::NoBody
    } else {
        Expect::Normal
    };
    BufferedDecoder::with_decoder(ResponseDecoder::with_max_head(expect, MAX_HEAD), max_body)
}

/// The `{"error": {"code", "message"}}` body of a non-2xx answer, if any.
pub fn error_body(resp: &Response) -> Option<crate::protocol::ErrorBody> {
    serde_json::from_slice::<crate::protocol::ApiError>(&resp.body)
        .ok()
        .map(|e| e.error)
}

#[derive(Debug)]
pub enum ClientError {
    Resolve {
        host: String,
        source: io::Error,
    },
    Connect {
        addr: String,
        source: io::Error,
    },
    /// A phase took longer than its timeout.
    Timeout {
        phase: &'static str,
    },
    Proxy(ProxyError),
    /// TLS failed (the certificate, or the handshake itself).
    Tls(rustls::Error),
    Io {
        phase: &'static str,
        source: io::Error,
    },
    /// The answer is not HTTP, or over its bounds.
    Parse(HttpError),
}

impl ClientError {
    /// DNS, TCP, proxy or timeout: "the server is unreachable".
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Resolve { .. }
                | ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Proxy(_)
        ) || matches!(self, ClientError::Io { source, .. } if is_connection_loss(source))
    }

    pub fn is_certificate(&self) -> bool {
        matches!(self, ClientError::Tls(e) if tls::is_certificate_error(e))
    }
}

fn is_connection_loss(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Resolve { host, .. } => write!(f, "cannot resolve {host}"),
            ClientError::Connect { addr, .. } => write!(f, "cannot connect to {addr}"),
            ClientError::Timeout { phase } => write!(f, "timed out during {phase}"),
            ClientError::Proxy(e) => write!(f, "{e}"),
            ClientError::Tls(e) => write!(f, "{}", tls::describe(e)),
            ClientError::Io { phase, .. } => write!(f, "i/o error during {phase}"),
            ClientError::Parse(e) => write!(f, "unexpected answer from the server: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Resolve { source, .. }
            | ClientError::Connect { source, .. }
            | ClientError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A small blocking HTTPS/1.1 client: one request per connection.
#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<Url>,
    /// Timeout of each phase: DNS, TCP, proxy, TLS, and each read/write.
    timeout: Duration,
}

/// Either side of the connection once set up.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Client {
    pub fn new(tls: Arc<rustls::ClientConfig>, proxy: Option<Url>, timeout: Duration) -> Client {
        Client {
            tls,
            proxy,
            timeout,
        }
    }

    /// Send one request and read the whole answer (body at most `max_body`).
    /// `body` is `(content type, bytes)`.
    pub fn request(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
        max_body: usize,
    ) -> Result<Response, ClientError> {
        let mut stream = self.open(url)?;

        let mut req = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tether/{}\r\nAccept: application/json\r\nConnection: close\r\n",
            url.path,
            url.host_header(),
            env!("CARGO_PKG_VERSION")
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some((ctype, bytes)) = body {
            req.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        if let Some((_, bytes)) = body {
            out.extend_from_slice(bytes);
        }
        stream
            .write_all(&out)
            .map_err(|e| io_error("sending the request", e))?;
        stream
            .flush()
            .map_err(|e| io_error("sending the request", e))?;

        let mut dec = answer_decoder(method.eq_ignore_ascii_case("HEAD"), max_body);
        let deadline = Instant::now() + self.timeout * 3;
        let mut buf = [0u8; 4096];
        while !dec.is_done() {
            if Instant::now() > deadline {
                return Err(ClientError::Timeout {
                    phase: "reading the response",
                });
            }
            match stream.read(&mut buf) {
                Ok(0) => dec.eof().map_err(ClientError::Parse)?,
                Ok(n) => {
                    dec.feed(&buf[..n]).map_err(ClientError::Parse)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A server that closes without close_notify after a
                // close-delimited body is common; rustls reports it as
                // UnexpectedEof.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    dec.eof().map_err(ClientError::Parse)?
                }
                Err(e) => return Err(io_error("reading the response", e)),
            }
        }
        dec.take().ok_or(ClientError::Parse(HttpError::Truncated))
    }

    /// TCP (through the proxy if any), then TLS for https.
    fn open(&self, url: &Url) -> Result<Stream, ClientError> {
        let (host, port) = match &self.proxy {
            Some(p) => (p.host.as_str(), p.port),
            None => (url.host.as_str(), url.port),
        };
        let addrs =
            dns::resolve_blocking(host, port, self.timeout).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => ClientError::Timeout {
                    phase: "DNS lookup",
                },
                _ => ClientError::Resolve {
                    host: host.to_owned(),
                    source: e,
                },
            })?;
        let mut tcp = connect_any(&addrs, self.timeout)?;
        tcp.set_read_timeout(Some(self.timeout))
            .map_err(|e| io_error("socket setup", e))?;
        tcp.set_write_timeout(Some(self.timeout))
            .map_err(|e| io_error("socket setup", e))?;
        let _ = tcp.set_nodelay(true);

        let mut leftover = Vec::new();
        if let Some(p) = &self.proxy {
            let auth = p.userinfo.as_ref().map(|(u, pw)| (u.as_str(), pw.as_str()));
            tcp.write_all(&proxy::connect_request(&url.authority(), auth))
                .map_err(|e| io_error("proxy CONNECT", e))?;
            let mut codec = ConnectResponse::new();
            let mut buf = [0u8; 1024];
            let deadline = Instant::now() + self.timeout;
            leftover = loop {
                if Instant::now() > deadline {
                    return Err(ClientError::Timeout {
                        phase: "proxy CONNECT",
                    });
                }
                match tcp.read(&mut buf) {
                    Ok(0) => return Err(ClientError::Proxy(codec.eof())),
                    Ok(n) => match codec.feed(&buf[..n]).map_err(ClientError::Proxy)? {
                        Progress::NeedMore => {}
                        Progress::Established { leftover } => break leftover,
                    },
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_error("proxy CONNECT", e)),
                }
            };
        }

        if !url.scheme.is_secure() {
            return Ok(Stream::Plain(tcp));
        }
        let name = tls::server_name(&url.host).map_err(ClientError::Tls)?;
        let mut conn =
            rustls::ClientConnection::new(self.tls.clone(), name).map_err(ClientError::Tls)?;
        if !leftover.is_empty() {
            conn.read_tls(&mut &leftover[..])
                .map_err(|e| io_error("TLS handshake", e))?;
        }
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                return Err(match tls::rustls_error(&e) {
                    Some(t) => ClientError::Tls(t.clone()),
                    None => io_error("TLS handshake", e),
                });
            }
        }
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }
}

fn io_error(phase: &'static str, e: io::Error) -> ClientError {
    if let Some(t) = tls::rustls_error(&e) {
        return ClientError::Tls(t.clone());
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout { phase },
        _ => ClientError::Io { phase, source: e },
    }
}

fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ClientError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((addr, e)),
        }
    }
    match last {
        Some((_, e))
            if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock =>
        {
            Err(ClientError::Timeout {
                phase: "TCP connect",
            })
        }
        Some((addr, e)) => Err(ClientError::Connect {
            addr: addr.to_string(),
            source: e,
        }),
        None => Err(ClientError::Resolve {
            host: "server".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        }),
    }
}

#[cfg(test)]
mod tests {
    //! Answers as the server and release hosts send them, through the
    //! decoder [`Client::request`] uses.
    use super::*;

    const LENGTH: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nContent-Length: 63\r\ndate: Sat, 28 Nov 2026 12:00:00 GMT\r\n\r\n{\"runner_id\":\"rn_1\",\"tenant_id\":\"tn_1\",\"credential\":\"trun_abc\"}";
    const CHUNKED: &[u8] = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n1a;ext=1\r\n{\"error\":{\"code\":\"token_ex\r\n2A\r\npired\",\"message\":\"the token has expired\"}}\r\n0\r\nX-Trailer: yes\r\n\r\n";
    const CONTINUE_THEN_204: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nServer: x\r\n\r\n";
    const UNTIL_EOF: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, world";

    /// Feed `input` in two parts split at `at`, then EOF when `eof`.
    fn parse_split(
        input: &[u8],
        at: usize,
        eof: bool,
        max_body: usize,
    ) -> Result<(Response, usize), HttpError> {
        let mut p = answer_decoder(false, max_body);
        let mut used = p.feed(&input[..at])?;
        if used == at {
            used += p.feed(&input[at..])?;
        }
        if eof {
            p.eof()?;
        }
        Ok((p.take().expect("done"), used))
    }

    #[test]
    fn content_length_at_every_split_point() {
        for at in 0..=LENGTH.len() {
            let (r, used) =
                parse_split(LENGTH, at, false, 1024).unwrap_or_else(|e| panic!("split {at}: {e}"));
            assert_eq!(used, LENGTH.len());
            assert_eq!(r.head.status, 201);
            assert_eq!(r.head.header("CONTENT-TYPE"), Some("application/json"));
            let er: crate::protocol::EnrollResponse = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(er.credential, "trun_abc");
        }
    }

    #[test]
    fn chunked_at_every_split_point_and_byte_by_byte() {
        for at in 0..=CHUNKED.len() {
            let (r, used) =
                parse_split(CHUNKED, at, false, 1024).unwrap_or_else(|e| panic!("split {at}: {e}"));
            assert_eq!(used, CHUNKED.len(), "split {at}");
            assert_eq!(r.head.status, 401);
            let e = error_body(&r).expect("api error body");
            assert_eq!(e.code, "token_expired");
        }
        let mut p = answer_decoder(false, 1024);
        for b in CHUNKED {
            assert!(!p.is_done());
            p.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(p.is_done());
    }

    #[test]
    fn interim_answer_is_skipped_and_204_has_no_body() {
        for at in 0..=CONTINUE_THEN_204.len() {
            let (r, _) = parse_split(CONTINUE_THEN_204, at, false, 16).unwrap();
            assert_eq!(r.head.status, 204);
            assert!(r.body.is_empty());
        }
    }

    #[test]
    fn close_delimited_body_needs_eof() {
        for at in 0..=UNTIL_EOF.len() {
            let (r, _) = parse_split(UNTIL_EOF, at, true, 64).unwrap();
            assert_eq!(r.body, b"hello, world");
        }
        let mut p = answer_decoder(false, 64);
        p.feed(UNTIL_EOF).unwrap();
        assert!(!p.is_done());
    }

    #[test]
    fn bytes_after_the_response_are_not_consumed() {
        let mut input = LENGTH.to_vec();
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut p = answer_decoder(false, 1024);
        assert_eq!(p.feed(&input).unwrap(), LENGTH.len());
        assert!(p.is_done());
    }

    #[test]
    fn truncated_answers_are_errors_at_eof() {
        for input in [LENGTH, CHUNKED] {
            for at in 0..input.len() {
                let mut p = answer_decoder(false, 1024);
                p.feed(&input[..at]).unwrap();
                // Nothing at all is `Closed`; a part of the answer `Truncated`.
                let want = if at == 0 {
                    HttpError::Closed
                } else {
                    HttpError::Truncated
                };
                assert_eq!(p.eof(), Err(want), "cut at {at}");
            }
        }
    }

    #[test]
    fn limits_and_garbage() {
        // Declared length over the limit is refused before reading it.
        assert_eq!(
            parse_split(LENGTH, 10, false, 10).unwrap_err(),
            HttpError::BodyTooLarge { limit: 10 }
        );
        // Chunked bodies are counted as they arrive.
        assert_eq!(
            parse_split(CHUNKED, 0, false, 30).unwrap_err(),
            HttpError::BodyTooLarge { limit: 30 }
        );
        let bad: &[&[u8]] = &[
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY",
        ];
        for input in bad {
            let mut p = answer_decoder(false, 64);
            assert!(
                p.feed(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(
            answer_decoder(false, 64).feed(&huge),
            Err(HttpError::HeadTooLarge)
        );
    }

    #[test]
    fn head_request_has_no_body() {
        let mut p = answer_decoder(true, 64);
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            .unwrap();
        assert!(p.is_done());
    }

    mod live {
        //! The blocking client against real sockets: a TLS server with the
        //! test certificate and a CONNECT proxy, both in threads.
        use super::super::*;
        use crate::net::http::find_head_end;
        use crate::net::transport::tests::{server_config, testdata};
        use std::net::TcpListener;

        /// Serve `n` connections over TLS, answering every request with "ok".
        fn tls_server(n: usize) -> SocketAddr {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            std::thread::spawn(move || {
                for _ in 0..n {
                    let (sock, _) = l.accept().unwrap();
                    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let conn = rustls::ServerConnection::new(server_config()).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, sock);
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while find_head_end(&head, 0).is_none() {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if find_head_end(&head, 0).is_some() {
                        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        let _ = tls.flush();
                    }
                }
            });
            addr
        }

        /// One CONNECT: answer `status`; on 200, tunnel both ways.
        fn connect_proxy(status: &'static str) -> (Url, std::thread::JoinHandle<String>) {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = Url::parse(&format!("http://u:p@{}", l.local_addr().unwrap())).unwrap();
            let h = std::thread::spawn(move || {
                let (mut client, _) = l.accept().unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while find_head_end(&head, 0).is_none() {
                    client.read_exact(&mut b).unwrap();
                    head.push(b[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.split_whitespace().nth(1).unwrap().to_owned();
                client
                    .write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
                    .unwrap();
                if status.starts_with("200") {
                    let up = TcpStream::connect(&target).unwrap();
                    let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                    std::thread::spawn(move || std::io::copy(&mut c2, &mut u2));
                    let (mut up, mut client) = (up, client);
                    let _ = std::io::copy(&mut up, &mut client);
                }
                head
            });
            (url, h)
        }

        fn client(ca: &str, proxy: Option<Url>) -> Client {
            let tls = tls::client_config(Some(&testdata(ca))).unwrap();
            Client::new(tls, proxy, Duration::from_secs(5))
        }

        #[test]
        fn https_through_a_connect_proxy() {
            let server = tls_server(1);
            let (proxy, seen) = connect_proxy("200 Connection established");
            let url = Url::parse(&format!("https://127.0.0.1:{}/x", server.port())).unwrap();
            let resp = client("ca.pem", Some(proxy))
                .request("GET", &url, &[], None, 64)
                .unwrap();
            assert_eq!((resp.head.status, resp.body.as_slice()), (200, &b"ok"[..]));
            let head = seen.join().unwrap();
            assert!(
                head.starts_with(&format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n", server.port())),
                "{head}"
            );
            assert!(
                head.contains("Proxy-Authorization: Basic dTpw\r\n"),
                "{head}"
            );
        }

        #[test]
        fn an_untrusted_certificate_is_told_apart() {
            let server = tls_server(1);
            let url = Url::parse(&format!("https://127.0.0.1:{}/", server.port())).unwrap();
            let e = client("other-ca.pem", None)
                .request("GET", &url, &[], None, 64)
                .unwrap_err();
            assert!(e.is_certificate(), "{e:?}");
            assert!(!e.is_unreachable());
        }

        #[test]
        fn a_refusing_proxy_counts_as_unreachable() {
            let (proxy, _seen) = connect_proxy("407 Proxy Authentication Required");
            let url = Url::parse("https://127.0.0.1:9/").unwrap();
            let e = client("ca.pem", Some(proxy))
                .request("GET", &url, &[], None, 64)
                .unwrap_err();
            assert!(
                matches!(e, ClientError::Proxy(ProxyError::AuthRequired)),
                "{e:?}"
            );
            assert!(e.is_unreachable());
        }
    }
}
