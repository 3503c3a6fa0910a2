//! HTTP/1.1 for the runner's few plain requests (enrollment now, downloads
//! later): a sans-IO response parser, and a small **blocking** HTTPS client
//! built on it.
//!
//! The parser takes bytes as they come and is tested by feeding recorded
//! answers split at every point:
//!
//! ```text
//!  Head ──\r\n\r\n──▶ 1xx (not 101)? ──▶ Head        (skip interim answers)
//!                     no body (HEAD, 101, 204, 304)? ─▶ Done
//!                     Transfer-Encoding: chunked ──▶ Chunked: Size ─▶ Data ─▶ DataEnd ─▶ Size … 0 ─▶ Trailer ─▶ Done
//!                     Content-Length: n ──────────▶ Length(n) ─▶ Done
//!                     neither ────────────────────▶ UntilEof ─(eof)▶ Done
//! ```
//!
//! The client uses std sockets with read/write timeouts (a CLI command may
//! block; the event loop never calls it), the same rustls config as the
//! runner connection, and the same CONNECT codec for proxies.

use crate::conn::dns;
use crate::conn::proxy::{self, ConnectResponse, Progress, ProxyError};
use crate::conn::tls;
use crate::url::Url;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest response head.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_CHUNK_LINE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// In order of arrival; names as sent.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    HeadTooLarge,
    TooManyHeaders,
    BadStatusLine,
    BadHeader,
    BadContentLength,
    UnsupportedTransferEncoding,
    BadChunk,
    BodyTooLarge(usize),
    UnexpectedEof,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::HeadTooLarge => write!(f, "response head exceeds {MAX_HEAD} bytes"),
            ParseError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} response headers"),
            ParseError::BadStatusLine => write!(f, "bad status line"),
            ParseError::BadHeader => write!(f, "bad header line"),
            ParseError::BadContentLength => write!(f, "bad or conflicting content-length"),
            ParseError::UnsupportedTransferEncoding => write!(f, "unsupported transfer-encoding"),
            ParseError::BadChunk => write!(f, "bad chunked encoding"),
            ParseError::BodyTooLarge(max) => write!(f, "response body exceeds {max} bytes"),
            ParseError::UnexpectedEof => {
                write!(f, "connection closed in the middle of the response")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Index just past the first `\r\n\r\n` in `buf`, searching from `from`.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

/// Parse a complete head (status line, headers, blank line).
pub fn parse_head(head: &[u8]) -> Result<ResponseHead, ParseError> {
    let text = std::str::from_utf8(head).map_err(|_| ParseError::BadHeader)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or(ParseError::BadStatusLine)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !(version == "HTTP/1.1" || version == "HTTP/1.0") {
        return Err(ParseError::BadStatusLine);
    }
    let code = parts.next().ok_or(ParseError::BadStatusLine)?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadStatusLine);
    }
    let status: u16 = code.parse().map_err(|_| ParseError::BadStatusLine)?;
    if !(100..=599).contains(&status) {
        return Err(ParseError::BadStatusLine);
    }
    let reason = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue; // the blank line(s) at the end
        }
        let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader)?;
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !name_ok {
            return Err(ParseError::BadHeader);
        }
        if headers.len() == MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(ResponseHead {
        status,
        reason,
        headers,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size line.
    Size {
        line: Vec<u8>,
    },
    Data {
        remaining: u64,
    },
    /// The CRLF after a chunk's data; `seen_cr` once the `\r` is in.
    DataEnd {
        seen_cr: bool,
    },
    /// Trailer lines after the last chunk, until an empty line.
    Trailer {
        line_len: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head { buf: Vec<u8> },
    Length { remaining: u64 },
    Chunked(Chunk),
    UntilEof,
    Done,
}

/// A whole response: head and (bounded) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

impl Response {
    /// The `{"error": {"code", "message"}}` body of a non-2xx answer, if any.
    pub fn api_error(&self) -> Option<crate::protocol::ErrorBody> {
        serde_json::from_slice::<crate::protocol::ApiError>(&self.body)
            .ok()
            .map(|e| e.error)
    }
}

/// Incremental response parser.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    head: Option<ResponseHead>,
    body: Vec<u8>,
    max_body: usize,
    head_request: bool,
}

impl ResponseParser {
    /// `max_body` bounds the body kept in memory; `head_request` when the
    /// request was HEAD (the answer then never has a body).
    pub fn new(max_body: usize, head_request: bool) -> ResponseParser {
        ResponseParser {
            state: State::Head { buf: Vec::new() },
            head: None,
            body: Vec::new(),
            max_body,
            head_request,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feed bytes; returns how many were consumed. Fewer than given only once
    /// the response is complete (the rest is not part of it).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ParseError> {
        let mut used = 0;
        while used < input.len() && !self.is_done() {
            used += self.step(&input[used..])?;
        }
        Ok(used)
    }

    /// The peer closed the connection.
    pub fn eof(&mut self) -> Result<(), ParseError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilEof => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(ParseError::UnexpectedEof),
        }
    }

    /// The response, once [`is_done`](Self::is_done).
    pub fn finish(self) -> Option<Response> {
        match (self.state, self.head) {
            (State::Done, Some(head)) => Some(Response {
                head,
                body: self.body,
            }),
            _ => None,
        }
    }

    fn push_body(&mut self, bytes: &[u8]) -> Result<(), ParseError> {
        if self.body.len() + bytes.len() > self.max_body {
            return Err(ParseError::BodyTooLarge(self.max_body));
        }
        self.body.extend_from_slice(bytes);
        Ok(())
    }

    /// Make progress on a non-empty `input`; returns bytes consumed (> 0 or an error).
    fn step(&mut self, input: &[u8]) -> Result<usize, ParseError> {
        match &mut self.state {
            State::Head { buf } => {
                let scan_from = buf.len().saturating_sub(3);
                let old = buf.len();
                buf.extend_from_slice(input);
                let Some(end) = find_head_end(buf, scan_from) else {
                    if buf.len() > MAX_HEAD {
                        return Err(ParseError::HeadTooLarge);
                    }
                    return Ok(input.len());
                };
                if end > MAX_HEAD {
                    return Err(ParseError::HeadTooLarge);
                }
                let head = parse_head(&buf[..end])?;
                let consumed = end - old;
                self.begin_body(head)?;
                Ok(consumed)
            }
            State::Length { remaining } => {
                let n = (*remaining).min(input.len() as u64) as usize;
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.state = State::Done;
                }
                self.push_body(&input[..n])?;
                Ok(n)
            }
            State::UntilEof => {
                self.push_body(input)?;
                Ok(input.len())
            }
            State::Chunked(chunk) => match chunk {
                Chunk::Size { line } => {
                    let b = input[0];
                    if b != b'\n' {
                        if line.len() == MAX_CHUNK_LINE {
                            return Err(ParseError::BadChunk);
                        }
                        line.push(b);
                        return Ok(1);
                    }
                    let text = std::str::from_utf8(line).map_err(|_| ParseError::BadChunk)?;
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    let hex = text.split(';').next().unwrap_or("").trim();
                    if hex.is_empty() || hex.len() > 15 {
                        return Err(ParseError::BadChunk);
                    }
                    let size = u64::from_str_radix(hex, 16).map_err(|_| ParseError::BadChunk)?;
                    *chunk = if size == 0 {
                        Chunk::Trailer { line_len: 0 }
                    } else {
                        Chunk::Data { remaining: size }
                    };
                    Ok(1)
                }
                Chunk::Data { remaining } => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        *chunk = Chunk::DataEnd { seen_cr: false };
                    }
                    self.push_body(&input[..n])?;
                    Ok(n)
                }
                Chunk::DataEnd { seen_cr } => {
                    match (input[0], *seen_cr) {
                        (b'\r', false) => *seen_cr = true,
                        (b'\n', _) => *chunk = Chunk::Size { line: Vec::new() },
                        _ => return Err(ParseError::BadChunk),
                    }
                    Ok(1)
                }
                Chunk::Trailer { line_len } => {
                    match input[0] {
                        b'\n' if *line_len == 0 => self.state = State::Done,
                        b'\n' => *line_len = 0,
                        b'\r' if *line_len == 0 => {}
                        _ if *line_len >= MAX_CHUNK_LINE => return Err(ParseError::BadChunk),
                        _ => *line_len += 1,
                    }
                    Ok(1)
                }
            },
            State::Done => Ok(0),
        }
    }

    fn begin_body(&mut self, head: ResponseHead) -> Result<(), ParseError> {
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim answer (100 Continue): the real one follows.
            self.state = State::Head { buf: Vec::new() };
            return Ok(());
        }
        let no_body = self.head_request || status == 101 || status == 204 || status == 304;
        self.state = if no_body {
            State::Done
        } else if let Some(te) = head.header("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(ParseError::UnsupportedTransferEncoding);
            }
            State::Chunked(Chunk::Size { line: Vec::new() })
        } else {
            let mut len: Option<u64> = None;
            for (n, v) in &head.headers {
                if n.eq_ignore_ascii_case("content-length") {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(ParseError::BadContentLength);
                    }
                    let v: u64 = v.parse().map_err(|_| ParseError::BadContentLength)?;
                    if len.is_some_and(|l| l != v) {
                        return Err(ParseError::BadContentLength);
                    }
                    len = Some(v);
                }
            }
            match len {
                Some(0) => State::Done,
                Some(n) if n > self.max_body as u64 => {
                    return Err(ParseError::BodyTooLarge(self.max_body))
                }
                Some(n) => State::Length { remaining: n },
                None => State::UntilEof,
            }
        };
        self.head = Some(head);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The blocking client.

#[derive(Debug)]
pub enum HttpError {
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
    Parse(ParseError),
}

impl HttpError {
    /// DNS, TCP, proxy or timeout: "the server is unreachable".
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            HttpError::Resolve { .. }
                | HttpError::Connect { .. }
                | HttpError::Timeout { .. }
                | HttpError::Proxy(_)
        ) || matches!(self, HttpError::Io { source, .. } if is_connection_loss(source))
    }

    pub fn is_certificate(&self) -> bool {
        matches!(self, HttpError::Tls(e) if tls::is_certificate_error(e))
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

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Resolve { host, .. } => write!(f, "cannot resolve {host}"),
            HttpError::Connect { addr, .. } => write!(f, "cannot connect to {addr}"),
            HttpError::Timeout { phase } => write!(f, "timed out during {phase}"),
            HttpError::Proxy(e) => write!(f, "{e}"),
            HttpError::Tls(e) => write!(f, "{}", tls::describe(e)),
            HttpError::Io { phase, .. } => write!(f, "i/o error during {phase}"),
            HttpError::Parse(e) => write!(f, "unexpected answer from the server: {e}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Resolve { source, .. }
            | HttpError::Connect { source, .. }
            | HttpError::Io { source, .. } => Some(source),
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
    ) -> Result<Response, HttpError> {
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

        let mut parser = ResponseParser::new(max_body, method.eq_ignore_ascii_case("HEAD"));
        let deadline = Instant::now() + self.timeout * 3;
        let mut buf = [0u8; 4096];
        while !parser.is_done() {
            if Instant::now() > deadline {
                return Err(HttpError::Timeout {
                    phase: "reading the response",
                });
            }
            match stream.read(&mut buf) {
                Ok(0) => parser.eof().map_err(HttpError::Parse)?,
                Ok(n) => {
                    parser.feed(&buf[..n]).map_err(HttpError::Parse)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A server that closes without close_notify after a
                // close-delimited body is common; rustls reports it as
                // UnexpectedEof.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    parser.eof().map_err(HttpError::Parse)?
                }
                Err(e) => return Err(io_error("reading the response", e)),
            }
        }
        Ok(parser.finish().expect("parser is done"))
    }

    /// TCP (through the proxy if any), then TLS for https.
    fn open(&self, url: &Url) -> Result<Stream, HttpError> {
        let (host, port) = match &self.proxy {
            Some(p) => (p.host.as_str(), p.port),
            None => (url.host.as_str(), url.port),
        };
        let addrs =
            dns::resolve_blocking(host, port, self.timeout).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => HttpError::Timeout {
                    phase: "DNS lookup",
                },
                _ => HttpError::Resolve {
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
                    return Err(HttpError::Timeout {
                        phase: "proxy CONNECT",
                    });
                }
                match tcp.read(&mut buf) {
                    Ok(0) => return Err(HttpError::Proxy(codec.eof())),
                    Ok(n) => match codec.feed(&buf[..n]).map_err(HttpError::Proxy)? {
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
        let name = tls::server_name(&url.host).map_err(HttpError::Tls)?;
        let mut conn =
            rustls::ClientConnection::new(self.tls.clone(), name).map_err(HttpError::Tls)?;
        if !leftover.is_empty() {
            conn.read_tls(&mut &leftover[..])
                .map_err(|e| io_error("TLS handshake", e))?;
        }
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                return Err(match tls::rustls_error(&e) {
                    Some(t) => HttpError::Tls(t.clone()),
                    None => io_error("TLS handshake", e),
                });
            }
        }
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }
}

fn io_error(phase: &'static str, e: io::Error) -> HttpError {
    if let Some(t) = tls::rustls_error(&e) {
        return HttpError::Tls(t.clone());
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout { phase },
        _ => HttpError::Io { phase, source: e },
    }
}

fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, HttpError> {
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
            Err(HttpError::Timeout {
                phase: "TCP connect",
            })
        }
        Some((addr, e)) => Err(HttpError::Connect {
            addr: addr.to_string(),
            source: e,
        }),
        None => Err(HttpError::Resolve {
            host: "server".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        }),
    }
}

#[cfg(test)]
mod tests {
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
    ) -> Result<(Response, usize), ParseError> {
        let mut p = ResponseParser::new(max_body, false);
        let mut used = p.feed(&input[..at])?;
        if used == at {
            used += p.feed(&input[at..])?;
        }
        if eof {
            p.eof()?;
        }
        Ok((p.finish().expect("done"), used))
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
            let e = r.api_error().expect("api error body");
            assert_eq!(e.code, "token_expired");
        }
        let mut p = ResponseParser::new(1024, false);
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
        let mut p = ResponseParser::new(64, false);
        p.feed(UNTIL_EOF).unwrap();
        assert!(!p.is_done());
    }

    #[test]
    fn bytes_after_the_response_are_not_consumed() {
        let mut input = LENGTH.to_vec();
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut p = ResponseParser::new(1024, false);
        assert_eq!(p.feed(&input).unwrap(), LENGTH.len());
        assert!(p.is_done());
    }

    #[test]
    fn truncated_answers_are_errors_at_eof() {
        for input in [LENGTH, CHUNKED] {
            for at in 0..input.len() {
                let mut p = ResponseParser::new(1024, false);
                p.feed(&input[..at]).unwrap();
                assert_eq!(p.eof(), Err(ParseError::UnexpectedEof), "cut at {at}");
            }
        }
    }

    #[test]
    fn limits_and_garbage() {
        // Declared length over the limit is refused before reading it.
        assert_eq!(
            parse_split(LENGTH, 10, false, 10).unwrap_err(),
            ParseError::BodyTooLarge(10)
        );
        // Chunked bodies are counted as they arrive.
        assert_eq!(
            parse_split(CHUNKED, 0, false, 30).unwrap_err(),
            ParseError::BodyTooLarge(30)
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
            let mut p = ResponseParser::new(64, false);
            assert!(
                p.feed(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(
            ResponseParser::new(64, false).feed(&huge),
            Err(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn head_request_has_no_body() {
        let mut p = ResponseParser::new(64, true);
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            .unwrap();
        assert!(p.is_done());
    }

    mod live {
        //! The blocking client against real sockets: a TLS server with the
        //! test certificate and a CONNECT proxy, both in threads.
        use super::super::*;
        use crate::conn::transport::tests::{server_config, testdata};
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
                matches!(e, HttpError::Proxy(ProxyError::AuthRequired)),
                "{e:?}"
            );
            assert!(e.is_unreachable());
        }
    }
}
