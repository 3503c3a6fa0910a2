//! The runner's one sans-IO HTTP/1.1 codec: [`Request`] encodes what we send
//! to the Docker socket, [`ResponseDecoder`] turns what a peer answers into
//! [`Event`]s, and [`BufferedDecoder`] collects small answers whole, under a
//! size limit. The same decoder reads the Docker engine's answers, the
//! blocking client's (`crate::http`: enrollment, release downloads) and a
//! proxy's answer to CONNECT ([`super::proxy`], [`Expect::Connect`]).
//!
//! The decoder owns no socket and no body: body bytes are handed out as
//! slices of the caller's input, so a `logs?follow=1` stream that runs for
//! weeks costs nothing here. The only bytes it keeps are a response head
//! (at most [`MAX_HEAD`]) and a few counters while reading chunk framing.
//!
//! ```text
//!            new(expect) / after End
//!                   │
//!                   ▼
//!   ┌──────────▶ Head ──(bytes not "HTTP/1.")──▶ Err(NotHttp)
//!   │  1xx, not 101 │ "\r\n\r\n" ─▶ emits Head
//!   └───────────────┤
//!                   ├─ 101, or 2xx without length to a Hijack ─▶ Upgraded (raw stream; terminal)
//!                   ├─ 2xx to a CONNECT ─▶ Upgraded (the tunnel)
//!                   ├─ HEAD request, 204, 304, Content-Length: 0 ───────▶ End
//!                   ├─ Transfer-Encoding: chunked ─▶ Chunked:
//!                   │     Size ─(;ext)─▶ SizeLf ─┬─ n>0 ─▶ Data(n) ─▶ CRLF ─▶ Size …
//!                   │                            └─ 0 ──▶ Trailer lines ─▶ End
//!                   ├─ Content-Length: n ─▶ Fixed(n) ─▶ End
//!                   └─ neither ───────────▶ UntilClose ─(eof)─▶ End
//!
//!   End ─▶ Head again (keep-alive); any error ─▶ Failed (every later call repeats it)
//! ```

use super::Step;
use std::fmt;

/// Largest response head (status line and headers) we hold by default
/// ([`ResponseDecoder::with_max_head`] sets a smaller one).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers in one response; Docker sends fewer than ten.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most trailer bytes after the last chunk (Docker sends none).
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Docker refuses requests without a Host header; any name will do.
const HOST: &str = "docker";
const USER_AGENT: &str = "tether";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The first bytes are not an HTTP status line: whatever listens on the
    /// socket is not an HTTP server (an SSH banner, a TLS alert, …).
    NotHttp,
    BadStatusLine,
    BadHeader,
    HeadTooLarge,
    TooManyHeaders,
    BadContentLength,
    /// A transfer coding other than plain `chunked` (we cannot frame it).
    UnsupportedTransferEncoding,
    BadChunkSize,
    ChunkSizeOverflow,
    /// Chunk data not followed by CRLF: the size lied.
    BadChunkEnd,
    BadTrailer,
    /// A [`BufferedDecoder`] answer beyond its caller-given limit.
    BodyTooLarge {
        limit: usize,
    },
    /// The connection closed inside a response.
    Truncated,
    /// The connection closed before any byte of the expected response.
    Closed,
    /// `feed` after `Upgraded`: those bytes are the raw stream, not HTTP.
    AfterUpgrade,
    /// `expect_next` while a response is still being read.
    Busy,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::NotHttp => write!(f, "answer is not http (is this the docker socket?)"),
            HttpError::BadStatusLine => write!(f, "bad status line"),
            HttpError::BadHeader => write!(f, "bad header line"),
            HttpError::HeadTooLarge => write!(f, "response head too large"),
            HttpError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} response headers"),
            HttpError::BadContentLength => write!(f, "bad content-length"),
            HttpError::UnsupportedTransferEncoding => write!(f, "unsupported transfer-encoding"),
            HttpError::BadChunkSize => write!(f, "bad chunk size"),
            HttpError::ChunkSizeOverflow => write!(f, "chunk size overflow"),
            HttpError::BadChunkEnd => write!(f, "chunk data not followed by crlf"),
            HttpError::BadTrailer => write!(f, "bad chunked trailer"),
            HttpError::BodyTooLarge { limit } => {
                write!(f, "response body larger than {limit} bytes")
            }
            HttpError::Truncated => write!(f, "truncated response"),
            HttpError::Closed => write!(f, "connection closed before a response"),
            HttpError::AfterUpgrade => write!(f, "connection was upgraded to a raw stream"),
            HttpError::Busy => write!(f, "a response is still being read"),
        }
    }
}

impl std::error::Error for HttpError {}

// ---------------------------------------------------------------------------
// Requests

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// What the decoder must know about the request to frame its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Status and headers decide whether a body follows.
    Normal,
    /// A HEAD request: never a body, whatever Content-Length says.
    NoBody,
    /// A request that hijacks the connection (exec start, attach): a 101,
    /// or a success without length, turns the socket into a raw stream.
    Hijack,
    /// A CONNECT to a proxy: any 2xx makes the connection the tunnel (such
    /// an answer has no body, RFC 9110 9.3.6, whatever its headers say).
    Connect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RequestBody {
    None,
    Bytes {
        content_type: String,
        data: Vec<u8>,
    },
    /// Sent after the head with [`encode_chunk`] and [`LAST_CHUNK`].
    Chunked {
        content_type: String,
    },
}

/// One request to the engine. Paths and queries are encoded here, so a
/// container name from the server can never reach another endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    path: String,
    query: String,
    headers: Vec<(&'static str, String)>,
    body: RequestBody,
    hijack: bool,
}

impl Request {
    /// Build `path` from [`path_segment`]s. Bytes that cannot appear in a
    /// request line (controls, space, non-ASCII, `#`) are percent-encoded
    /// here as well, so no path can split the request.
    pub fn new(method: Method, path: impl Into<String>) -> Request {
        Request {
            method,
            path: clean_target(path.into()),
            query: String::new(),
            headers: Vec::new(),
            body: RequestBody::None,
            hijack: false,
        }
    }

    pub fn get(path: impl Into<String>) -> Request {
        Request::new(Method::Get, path)
    }

    pub fn post(path: impl Into<String>) -> Request {
        Request::new(Method::Post, path)
    }

    pub fn delete(path: impl Into<String>) -> Request {
        Request::new(Method::Delete, path)
    }

    pub fn head(path: impl Into<String>) -> Request {
        Request::new(Method::Head, path)
    }

    /// Add `key=value`, both percent-encoded (filters are JSON: `{`, `"`, `=`…).
    pub fn query(mut self, key: &str, value: &str) -> Request {
        self.query
            .push(if self.query.is_empty() { '?' } else { '&' });
        self.query.push_str(&percent_encode(key));
        self.query.push('=');
        self.query.push_str(&percent_encode(value));
        self
    }

    /// `key=value` when there is a value; nothing otherwise.
    pub fn query_opt(self, key: &str, value: Option<&str>) -> Request {
        match value {
            Some(v) => self.query(key, v),
            None => self,
        }
    }

    /// An extra header. CR, LF and NUL are dropped from the value: a value
    /// that came from outside must not be able to start a header of its own.
    pub fn header(mut self, name: &'static str, value: &str) -> Request {
        self.headers.push((name, header_value(value)));
        self
    }

    /// A whole body, sent with Content-Length.
    pub fn body(mut self, content_type: &str, data: Vec<u8>) -> Request {
        self.body = RequestBody::Bytes {
            content_type: header_value(content_type),
            data,
        };
        self
    }

    pub fn json(self, data: Vec<u8>) -> Request {
        self.body("application/json", data)
    }

    /// A body streamed after the head (`POST /build` with a tar context of
    /// unknown size): write [`encode_chunk`] pieces, then [`LAST_CHUNK`].
    pub fn chunked(mut self, content_type: &str) -> Request {
        self.body = RequestBody::Chunked {
            content_type: header_value(content_type),
        };
        self
    }

    /// Ask to hijack the connection. Docker answers `101 UPGRADED` to
    /// `Upgrade: tcp`; engines before that answered 200 and hijacked anyway.
    pub fn hijack(mut self) -> Request {
        self.hijack = true;
        self
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// Path and query as they go on the request line.
    pub fn target(&self) -> String {
        format!("{}{}", self.path, self.query)
    }

    /// How the answer to this request is framed; give it to the decoder.
    pub fn expect(&self) -> Expect {
        if self.method == Method::Head {
            Expect::NoBody
        } else if self.hijack {
            Expect::Hijack
        } else {
            Expect::Normal
        }
    }

    /// True when the body is streamed with [`encode_chunk`] after the head.
    pub fn is_chunked(&self) -> bool {
        matches!(self.body, RequestBody::Chunked { .. })
    }

    /// The head, and the body when it is a whole one.
    pub fn encode(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {}{} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: {USER_AGENT}\r\n",
            self.method.as_str(),
            self.path,
            self.query
        );
        match &self.body {
            RequestBody::Bytes { content_type, .. } | RequestBody::Chunked { content_type } => {
                head.push_str(&format!("Content-Type: {content_type}\r\n"));
            }
            RequestBody::None => {}
        }
        if self.hijack {
            head.push_str("Connection: Upgrade\r\nUpgrade: tcp\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        match &self.body {
            RequestBody::Bytes { data, .. } => {
                head.push_str(&format!("Content-Length: {}\r\n", data.len()));
            }
            RequestBody::Chunked { .. } => head.push_str("Transfer-Encoding: chunked\r\n"),
            // A POST without a length is legal, but some proxies in front
            // of the socket (socket-proxy setups) wait for one.
            RequestBody::None if matches!(self.method, Method::Post | Method::Put) => {
                head.push_str("Content-Length: 0\r\n");
            }
            RequestBody::None => {}
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let RequestBody::Bytes { data, .. } = &self.body {
            out.extend_from_slice(data);
        }
        out
    }
}

/// The terminating chunk of a chunked request body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One chunk of a chunked request body. Empty input gives empty output: an
/// empty chunk would end the body early.
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut out = chunk_head(data.len()).into_bytes();
    out.reserve(data.len() + 2);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The size line for a chunk of `len` bytes, for writers that send head,
/// data and the closing `\r\n` without copying the data.
pub fn chunk_head(len: usize) -> String {
    format!("{len:x}\r\n")
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    out
}

fn header_value(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect()
}

fn clean_target(path: String) -> String {
    if path.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return path;
    }
    let mut out = String::with_capacity(path.len() + 8);
    for c in path.chars() {
        if c.is_ascii_graphic() && c != '#' {
            out.push(c);
        } else {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// One path segment (an id, a name), encoded so it stays one segment:
/// `../images` becomes `..%2Fimages`, which Docker treats as a name.
pub fn path_segment(s: &str) -> String {
    // `.` and `..` are unreserved, yet as a whole segment they would move
    // the request to another path (`containers/../json`): encode them.
    match s {
        "." => "%2E".to_owned(),
        ".." => "%2E%2E".to_owned(),
        _ => percent_encode(s),
    }
}

// ---------------------------------------------------------------------------
// Response head

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub version: Version,
    pub status: u16,
    pub reason: String,
    /// In order of arrival, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The media type without parameters, lowercased.
    pub fn media_type(&self) -> Option<String> {
        let v = self.header("content-type")?;
        Some(
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase(),
        )
    }

    /// Whether any `name` header lists `token` (comma-separated, any case).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the server lets the connection carry another request.
    pub fn keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.has_token("connection", "close"),
            Version::Http10 => self.has_token("connection", "keep-alive"),
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse a complete head, `\r\n\r\n` included.
pub fn parse_head(bytes: &[u8]) -> Result<Head, HttpError> {
    let bytes = bytes
        .strip_suffix(b"\r\n\r\n")
        .ok_or(HttpError::BadHeader)?;
    let mut lines = CrlfLines(bytes);
    let status_line = lines.next().ok_or(HttpError::BadStatusLine)?;
    let (version, rest) = if let Some(r) = status_line.strip_prefix(b"HTTP/1.1 ") {
        (Version::Http11, r)
    } else if let Some(r) = status_line.strip_prefix(b"HTTP/1.0 ") {
        (Version::Http10, r)
    } else {
        return Err(HttpError::BadStatusLine);
    };
    let (code, reason) = match rest.iter().position(|&b| b == b' ') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &b""[..]), // "HTTP/1.1 200" with no reason is allowed
    };
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadStatusLine);
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) || reason.iter().any(|&b| b < 0x20 && b != b'\t') {
        return Err(HttpError::BadStatusLine);
    }
    let mut headers = Vec::new();
    for line in lines {
        // Bare LF inside the head, and obsolete line folding, are refused:
        // Docker never sends them, and guessing invites smuggling bugs.
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::BadHeader)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
            return Err(HttpError::BadHeader);
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HttpError::BadHeader);
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        // Names are tokens (ASCII); values may carry obs-text, kept lossily.
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_owned();
        headers.push((name, value));
    }
    Ok(Head {
        version,
        status,
        reason: String::from_utf8_lossy(reason).into_owned(),
        headers,
    })
}

/// Lines split at CRLF only: a bare LF stays inside its line, where the
/// control-character check refuses it.
struct CrlfLines<'a>(&'a [u8]);

impl<'a> Iterator for CrlfLines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.windows(2).position(|w| w == b"\r\n") {
            Some(p) => {
                let line = &self.0[..p];
                self.0 = &self.0[p + 2..];
                Some(line)
            }
            None => Some(std::mem::take(&mut self.0)),
        }
    }
}

/// Whether `buf` can still be the start of an HTTP/1.x status line; lets
/// us refuse an SSH banner at its first byte instead of waiting for a head.
fn plausible_start(buf: &[u8]) -> bool {
    const START: &[u8] = b"HTTP/1.x ";
    buf.iter()
        .zip(START)
        .enumerate()
        .all(|(i, (&b, &want))| match i {
            7 => b == b'0' || b == b'1',
            _ => b == want,
        })
}

/// Index just past the first `\r\n\r\n` in `buf`, searching from `from`.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

/// How the body of a response is framed, decided from its head.
fn framing(head: &Head, expect: Expect) -> Result<State, HttpError> {
    if head.status == 101 || (expect == Expect::Connect && head.is_success()) {
        return Ok(State::EmitUpgraded);
    }
    let te = head.header("transfer-encoding");
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    // Docker hijacks on success: `HTTP/1.1 200 OK` with a raw-stream or
    // multiplexed-stream Content-Type and no length, then the socket is the
    // process's stdio. Older engines do this even to `Upgrade: tcp`.
    if expect == Expect::Hijack && head.is_success() && te.is_none() && lengths.is_empty() {
        return Ok(State::EmitUpgraded);
    }
    // Docker sends 204 (started, stopped, removed) and 304 (already
    // started/stopped) with no body; a HEAD answer has the GET's headers.
    if expect == Expect::NoBody || head.status == 204 || head.status == 304 {
        return Ok(State::EmitEnd);
    }
    if let Some(te) = te {
        // Only `chunked` alone: any other coding would hand out bytes we
        // cannot decode, and Docker never compresses.
        let only_chunked = head
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .all(|t| t.eq_ignore_ascii_case("chunked"));
        if !only_chunked || te.trim().is_empty() {
            return Err(HttpError::UnsupportedTransferEncoding);
        }
        // Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
        return Ok(State::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
        }));
    }
    let mut length: Option<u64> = None;
    for v in lengths {
        if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::BadContentLength);
        }
        let n: u64 = v.parse().map_err(|_| HttpError::BadContentLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::BadContentLength);
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => State::EmitEnd,
        Some(n) => State::Fixed { remaining: n },
        None => State::UntilClose,
    })
}

// ---------------------------------------------------------------------------
// Response decoder

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// Status line and headers. Interim 1xx answers (not 101) are skipped.
    Head(Head),
    /// Body bytes, chunk framing removed, borrowed from the input.
    Body(&'a [u8]),
    /// The response is complete.
    End,
    /// The connection is now a raw stream: the bytes after `consumed`, and
    /// every byte read later, belong to it (hijacked exec/attach).
    Upgraded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of the size; `digits` counts the line length so far.
    Size {
        value: u64,
        digits: usize,
    },
    /// `;name=value` extensions (ignored) up to the CR.
    Ext {
        value: u64,
        len: usize,
    },
    /// The LF ending the size line.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// Trailer field lines after the last chunk (parsed for framing only;
    /// Docker sends none); `len` is the current line's length.
    Trailer {
        len: usize,
        total: usize,
    },
    TrailerLf {
        empty: bool,
        total: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    EmitEnd,
    EmitUpgraded,
    Fixed { remaining: u64 },
    Chunked(Chunk),
    UntilClose,
    Upgraded,
    Failed(HttpError),
}

/// Incremental response decoder for one connection; see the module doc.
#[derive(Debug)]
pub struct ResponseDecoder {
    state: State,
    expect: Expect,
    /// A request is outstanding: EOF before its first byte is an error.
    awaiting: bool,
    head_buf: Vec<u8>,
    /// Bound of `head_buf`: [`MAX_HEAD`] unless the caller chose less.
    max_head: usize,
    keep_alive: bool,
}

impl ResponseDecoder {
    pub fn new(expect: Expect) -> ResponseDecoder {
        ResponseDecoder::with_max_head(expect, MAX_HEAD)
    }

    /// A decoder that refuses heads over `max_head` bytes (at most
    /// [`MAX_HEAD`]): a proxy's or a web server's answer is much smaller
    /// than what Docker may send.
    pub fn with_max_head(expect: Expect, max_head: usize) -> ResponseDecoder {
        ResponseDecoder {
            state: State::Head,
            expect,
            awaiting: true,
            head_buf: Vec::new(),
            max_head: max_head.min(MAX_HEAD),
            keep_alive: true,
        }
    }

    /// Before the next response on a kept-alive connection: what its
    /// request was. Without this call the next response is read as
    /// [`Expect::Normal`].
    pub fn expect_next(&mut self, expect: Expect) -> Result<(), HttpError> {
        if self.state != State::Head || !self.head_buf.is_empty() {
            return Err(HttpError::Busy);
        }
        self.expect = expect;
        self.awaiting = true;
        Ok(())
    }

    /// Between responses, and the last one allows another request.
    pub fn can_reuse(&self) -> bool {
        self.state == State::Head && self.head_buf.is_empty() && !self.awaiting && self.keep_alive
    }

    /// Bytes held inside the decoder (a partial head); never above its
    /// head bound ([`MAX_HEAD`] at most).
    pub fn buffered(&self) -> usize {
        self.head_buf.len()
    }

    /// Decode from `input`; see [`Step`]. After an error every call returns
    /// that error again.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<Step<Event<'a>>, HttpError> {
        let result = self.step(input);
        if let Err(e) = &result {
            if *e != HttpError::AfterUpgrade {
                self.state = State::Failed(e.clone());
            }
        }
        result
    }

    /// The peer closed the connection. `Some(End)` when that ended a
    /// read-until-close body; `None` when we were between responses.
    pub fn eof(&mut self) -> Result<Option<Event<'static>>, HttpError> {
        let result = match &self.state {
            State::Failed(e) => Err(e.clone()),
            State::Head if !self.head_buf.is_empty() => Err(HttpError::Truncated),
            State::Head if self.awaiting => Err(HttpError::Closed),
            State::Head | State::Upgraded => Ok(None),
            State::EmitEnd | State::UntilClose => {
                self.keep_alive = false;
                self.message_done();
                Ok(Some(Event::End))
            }
            State::EmitUpgraded => {
                self.state = State::Upgraded;
                Ok(Some(Event::Upgraded))
            }
            State::Fixed { .. } | State::Chunked(_) => Err(HttpError::Truncated),
        };
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result
    }

    fn message_done(&mut self) {
        self.state = State::Head;
        self.expect = Expect::Normal;
        self.awaiting = false;
    }

    fn step<'a>(&mut self, input: &'a [u8]) -> Result<Step<Event<'a>>, HttpError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let none = Step {
                consumed: used,
                item: None,
            };
            match &mut self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Upgraded => return Err(HttpError::AfterUpgrade),
                State::EmitEnd => {
                    self.message_done();
                    return Ok(Step {
                        consumed: used,
                        item: Some(Event::End),
                    });
                }
                State::EmitUpgraded => {
                    self.state = State::Upgraded;
                    return Ok(Step {
                        consumed: used,
                        item: Some(Event::Upgraded),
                    });
                }
                State::Head => {
                    if rest.is_empty() {
                        return Ok(none);
                    }
                    self.awaiting = true;
                    let old = self.head_buf.len();
                    // Copy no more than the head may still grow by, so a
                    // large read holding head and body is never copied whole.
                    let take = rest.len().min(self.max_head - old);
                    self.head_buf.extend_from_slice(&rest[..take]);
                    if !plausible_start(&self.head_buf) {
                        return Err(HttpError::NotHttp);
                    }
                    let Some(end) = find_head_end(&self.head_buf, old.saturating_sub(3)) else {
                        if self.head_buf.len() >= self.max_head {
                            return Err(HttpError::HeadTooLarge);
                        }
                        return Ok(Step {
                            consumed: used + take,
                            item: None,
                        });
                    };
                    let head = parse_head(&self.head_buf[..end])?;
                    used += end - old;
                    self.head_buf.clear();
                    if (100..200).contains(&head.status) && head.status != 101 {
                        continue; // 100 Continue and friends: the real answer follows
                    }
                    self.state = framing(&head, self.expect)?;
                    self.keep_alive = head.keep_alive() && self.state != State::UntilClose;
                    return Ok(Step {
                        consumed: used,
                        item: Some(Event::Head(head)),
                    });
                }
                State::Fixed { remaining } => {
                    if rest.is_empty() {
                        return Ok(none);
                    }
                    let n = take_len(*remaining, rest.len());
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::EmitEnd;
                    }
                    return Ok(Step {
                        consumed: used + n,
                        item: Some(Event::Body(&rest[..n])),
                    });
                }
                State::UntilClose => {
                    if rest.is_empty() {
                        return Ok(none);
                    }
                    return Ok(Step {
                        consumed: input.len(),
                        item: Some(Event::Body(rest)),
                    });
                }
                State::Chunked(chunk) => {
                    let Some(&b) = rest.first() else {
                        return Ok(none);
                    };
                    if let Chunk::Data { remaining } = chunk {
                        let n = take_len(*remaining, rest.len());
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            *chunk = Chunk::DataCr;
                        }
                        return Ok(Step {
                            consumed: used + n,
                            item: Some(Event::Body(&rest[..n])),
                        });
                    }
                    used += 1;
                    if chunk_byte(chunk, b)? {
                        self.message_done();
                        return Ok(Step {
                            consumed: used,
                            item: Some(Event::End),
                        });
                    }
                }
            }
        }
    }
}

fn take_len(remaining: u64, available: usize) -> usize {
    // Compared as u64 first: on 32-bit targets a chunk may exceed usize.
    if remaining < available as u64 {
        remaining as usize
    } else {
        available
    }
}

fn hex_value(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// Advance chunk framing by one byte; true when the message ended.
fn chunk_byte(chunk: &mut Chunk, b: u8) -> Result<bool, HttpError> {
    match chunk {
        Chunk::Size { value, digits } => {
            if let Some(d) = hex_value(b) {
                if *value > u64::MAX >> 4 {
                    return Err(HttpError::ChunkSizeOverflow);
                }
                *value = *value << 4 | d;
                *digits += 1;
                if *digits > MAX_CHUNK_LINE {
                    return Err(HttpError::BadChunkSize); // endless leading zeros
                }
            } else if *digits == 0 {
                return Err(HttpError::BadChunkSize);
            } else {
                match b {
                    b'\r' => *chunk = Chunk::SizeLf { value: *value },
                    // Extensions, after optional whitespace (RFC 9112 BWS).
                    b';' | b' ' | b'\t' => {
                        *chunk = Chunk::Ext {
                            value: *value,
                            len: *digits + 1,
                        };
                    }
                    _ => return Err(HttpError::BadChunkSize),
                }
            }
        }
        Chunk::Ext { value, len } => match b {
            b'\r' => *chunk = Chunk::SizeLf { value: *value },
            b'\n' | 0 => return Err(HttpError::BadChunkSize),
            _ => {
                *len += 1;
                if *len > MAX_CHUNK_LINE {
                    return Err(HttpError::BadChunkSize);
                }
            }
        },
        Chunk::SizeLf { value } => {
            if b != b'\n' {
                return Err(HttpError::BadChunkSize);
            }
            *chunk = if *value == 0 {
                Chunk::Trailer { len: 0, total: 0 }
            } else {
                Chunk::Data { remaining: *value }
            };
        }
        Chunk::Data { .. } => {} // handled by the caller, which slices
        Chunk::DataCr => {
            if b != b'\r' {
                return Err(HttpError::BadChunkEnd);
            }
            *chunk = Chunk::DataLf;
        }
        Chunk::DataLf => {
            if b != b'\n' {
                return Err(HttpError::BadChunkEnd);
            }
            *chunk = Chunk::Size {
                value: 0,
                digits: 0,
            };
        }
        Chunk::Trailer { len, total } => match b {
            b'\r' => {
                *chunk = Chunk::TrailerLf {
                    empty: *len == 0,
                    total: *total,
                }
            }
            b'\n' | 0 => return Err(HttpError::BadTrailer),
            _ => {
                *len += 1;
                *total += 1;
                if *total > MAX_TRAILERS {
                    return Err(HttpError::BadTrailer);
                }
            }
        },
        Chunk::TrailerLf { empty, total } => {
            if b != b'\n' {
                return Err(HttpError::BadTrailer);
            }
            if *empty {
                return Ok(true);
            }
            *chunk = Chunk::Trailer {
                len: 0,
                total: *total,
            };
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------------------
// Whole answers

/// A complete, buffered answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
    /// The answer was a hijack; the bytes after it are a raw stream.
    pub upgraded: bool,
}

/// Collects one answer whole (ping, version, inspect, list), refusing a body
/// larger than the caller's limit as soon as that is known.
#[derive(Debug)]
pub struct BufferedDecoder {
    inner: ResponseDecoder,
    limit: usize,
    head: Option<Head>,
    body: Vec<u8>,
    done: bool,
    upgraded: bool,
}

impl BufferedDecoder {
    pub fn new(expect: Expect, limit: usize) -> BufferedDecoder {
        BufferedDecoder::with_decoder(ResponseDecoder::new(expect), limit)
    }

    /// Around a decoder made with its own head bound.
    pub fn with_decoder(inner: ResponseDecoder, limit: usize) -> BufferedDecoder {
        BufferedDecoder {
            inner,
            limit,
            head: None,
            body: Vec::new(),
            done: false,
            upgraded: false,
        }
    }

    /// Feed bytes; returns how many were used. Fewer than given only once
    /// the answer is complete: the rest belongs to the next answer (or to
    /// the raw stream after an upgrade).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, HttpError> {
        let mut used = 0;
        while !self.done {
            let step = self.inner.feed(&input[used..])?;
            used += step.consumed;
            match step.item {
                None => break,
                Some(event) => self.on_event(event)?,
            }
        }
        Ok(used)
    }

    /// The peer closed the connection.
    pub fn eof(&mut self) -> Result<(), HttpError> {
        if self.done {
            return Ok(());
        }
        match self.inner.eof()? {
            Some(event) => self.on_event(event),
            None => Err(HttpError::Closed),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The answer, once [`is_done`](Self::is_done).
    pub fn take(&mut self) -> Option<Response> {
        if !self.done {
            return None;
        }
        let head = self.head.take()?;
        Some(Response {
            head,
            body: std::mem::take(&mut self.body),
            upgraded: self.upgraded,
        })
    }

    /// The decoder, for keep-alive: [`ResponseDecoder::expect_next`] and
    /// [`ResponseDecoder::can_reuse`].
    pub fn into_inner(self) -> ResponseDecoder {
        self.inner
    }

    fn on_event(&mut self, event: Event<'_>) -> Result<(), HttpError> {
        match event {
            Event::Head(head) => {
                let declared = head
                    .header("content-length")
                    .and_then(|v| v.parse::<u64>().ok());
                let has_body = self.inner.state != State::EmitEnd;
                if has_body && declared.is_some_and(|n| n > self.limit as u64) {
                    return Err(self.fail(HttpError::BodyTooLarge { limit: self.limit }));
                }
                self.head = Some(head);
            }
            Event::Body(bytes) => {
                if bytes.len() > self.limit - self.body.len() {
                    return Err(self.fail(HttpError::BodyTooLarge { limit: self.limit }));
                }
                self.body.extend_from_slice(bytes);
            }
            Event::End => self.done = true,
            Event::Upgraded => {
                self.done = true;
                self.upgraded = true;
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: HttpError) -> HttpError {
        self.inner.state = State::Failed(e.clone());
        self.body = Vec::new();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(expect: Expect, input: &[u8]) -> Result<Vec<String>, HttpError> {
        let mut dec = ResponseDecoder::new(expect);
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            let step = dec.feed(rest)?;
            rest = &rest[step.consumed..];
            match step.item {
                None => break,
                Some(Event::Head(h)) => out.push(format!("head {}", h.status)),
                Some(Event::Body(b)) => out.push(format!("body {}", String::from_utf8_lossy(b))),
                Some(Event::End) => out.push("end".into()),
                Some(Event::Upgraded) => {
                    out.push(format!("upgraded {}", String::from_utf8_lossy(rest)));
                    return Ok(out);
                }
            }
        }
        if let Some(e) = dec.eof()? {
            out.push(format!("eof {e:?}"));
        }
        Ok(out)
    }

    #[test]
    fn parses_a_simple_head() {
        let h = parse_head(b"HTTP/1.1 404 Not Found\r\nApi-Version:  1.41 \r\nX:\r\n\r\n").unwrap();
        assert_eq!(h.status, 404);
        assert_eq!(h.reason, "Not Found");
        assert_eq!(h.header("api-version"), Some("1.41"));
        assert_eq!(h.header("x"), Some(""));
        assert_eq!(parse_head(b"HTTP/1.0 200\r\n\r\n").unwrap().reason, "");
    }

    #[test]
    fn refuses_bad_heads() {
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 999 Nope\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err(HttpError::BadStatusLine), "{bad:?}");
        }
        for bad in [
            &b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\x01c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\nB: c\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err(HttpError::BadHeader), "{bad:?}");
        }
    }

    #[test]
    fn content_length_body_then_keep_alive() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            events(Expect::Normal, two).unwrap(),
            ["head 200", "body OK", "end", "head 204", "end"]
        );
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3;name=val\r\nabc\r\n2 ; x\r\nde\r\n000\r\nX-Trailer: 1\r\nY: 2\r\n\r\n";
        assert_eq!(
            events(Expect::Normal, r).unwrap(),
            ["head 200", "body abc", "body de", "end"]
        );
    }

    #[test]
    fn chunk_errors() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: [(&str, HttpError); 7] = [
            ("zz\r\n", HttpError::BadChunkSize),
            ("\r\n", HttpError::BadChunkSize),
            ("3x\r\n", HttpError::BadChunkSize),
            ("3\n", HttpError::BadChunkSize),
            ("1ffffffffffffffff\r\n", HttpError::ChunkSizeOverflow),
            ("3\r\nabcX", HttpError::BadChunkEnd),
            ("0\r\nX: y\n", HttpError::BadTrailer),
        ];
        for (body, want) in cases {
            let input = format!("{head}{body}");
            assert_eq!(
                events(Expect::Normal, input.as_bytes()),
                Err(want),
                "{body:?}"
            );
        }
        // Leading zeros are fine up to the line limit.
        let zeros = format!("{head}{}1\r\nx\r\n0\r\n\r\n", "0".repeat(100));
        assert!(events(Expect::Normal, zeros.as_bytes()).is_ok());
        let endless = format!("{head}{}", "0".repeat(MAX_CHUNK_LINE + 1));
        assert_eq!(
            events(Expect::Normal, endless.as_bytes()),
            Err(HttpError::BadChunkSize)
        );
    }

    #[test]
    fn no_body_statuses_and_head_requests() {
        let r = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(events(Expect::Normal, r).unwrap(), ["head 304", "end"]);
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(events(Expect::NoBody, r).unwrap(), ["head 200", "end"]);
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(
            events(Expect::Normal, r).unwrap(),
            ["head 200", "body x", "end"]
        );
    }

    #[test]
    fn read_until_close() {
        let r = b"HTTP/1.0 200 OK\r\n\r\nsome bytes";
        assert_eq!(
            events(Expect::Normal, r).unwrap(),
            ["head 200", "body some bytes", "eof End"]
        );
    }

    #[test]
    fn upgrades() {
        let r = b"HTTP/1.1 101 UPGRADED\r\nUpgrade: tcp\r\n\r\nraw";
        assert_eq!(
            events(Expect::Hijack, r).unwrap(),
            ["head 101", "upgraded raw"]
        );
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\nraw";
        assert_eq!(
            events(Expect::Hijack, r).unwrap(),
            ["head 200", "upgraded raw"]
        );
        // The same head to an ordinary request is a read-until-close body.
        assert_eq!(
            events(Expect::Normal, r).unwrap(),
            ["head 200", "body raw", "eof End"]
        );
        // A failed hijack is an ordinary answer.
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            events(Expect::Hijack, r).unwrap(),
            ["head 404", "body {}", "end"]
        );
    }

    #[test]
    fn a_connect_answer_is_the_tunnel() {
        // Any 2xx to CONNECT: its headers never frame a body.
        let r = b"HTTP/1.1 200 Connection established\r\nContent-Length: 0\r\n\r\n\x16tls";
        assert_eq!(
            events(Expect::Connect, r).unwrap(),
            ["head 200", "upgraded \u{16}tls"]
        );
        let r = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(
            events(Expect::Connect, r).unwrap(),
            ["head 407", "body no", "end"]
        );
    }

    #[test]
    fn framing_errors() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(
            events(Expect::Normal, r),
            Err(HttpError::UnsupportedTransferEncoding)
        );
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(events(Expect::Normal, r), Err(HttpError::BadContentLength));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(events(Expect::Normal, r), Err(HttpError::BadContentLength));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert_eq!(events(Expect::Normal, r), Err(HttpError::BadContentLength));
    }

    #[test]
    fn not_http_is_noticed_at_the_first_byte() {
        let mut dec = ResponseDecoder::new(Expect::Normal);
        assert_eq!(dec.feed(b"S"), Err(HttpError::NotHttp));
        assert_eq!(
            dec.feed(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(HttpError::NotHttp)
        );
        let mut dec = ResponseDecoder::new(Expect::Normal);
        assert!(dec.feed(b"HTTP/1.").is_ok());
        assert_eq!(dec.feed(b"2 200 OK\r\n"), Err(HttpError::NotHttp));
    }

    #[test]
    fn head_is_bounded() {
        let mut dec = ResponseDecoder::new(Expect::Normal);
        let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
        input.resize(MAX_HEAD + 10, b'a');
        let mut rest = &input[..];
        let err = loop {
            match dec.feed(&rest[..rest.len().min(1000)]) {
                Ok(step) => {
                    assert!(dec.buffered() <= MAX_HEAD);
                    rest = &rest[step.consumed..];
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err, HttpError::HeadTooLarge);
        // A head just under the limit is fine even inside a larger read.
        let mut ok = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        ok.resize(MAX_HEAD - 4, b'a');
        ok.extend_from_slice(b"\r\n\r\n");
        ok.extend(std::iter::repeat_n(b'b', 100_000));
        let mut dec = ResponseDecoder::new(Expect::Normal);
        let step = dec.feed(&ok).unwrap();
        assert_eq!(step.consumed, MAX_HEAD);
        assert!(matches!(step.item, Some(Event::Head(_))));
    }

    #[test]
    fn eof_cases() {
        let mut dec = ResponseDecoder::new(Expect::Normal);
        assert_eq!(dec.eof(), Err(HttpError::Closed));
        let mut dec = ResponseDecoder::new(Expect::Normal);
        dec.feed(b"HTTP/1.1 2").unwrap();
        assert_eq!(dec.eof(), Err(HttpError::Truncated));
        let mut dec = ResponseDecoder::new(Expect::Normal);
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab";
        let head = dec.feed(r).unwrap();
        assert!(matches!(head.item, Some(Event::Head(_))));
        let body = dec.feed(&r[head.consumed..]).unwrap();
        assert_eq!(body.item, Some(Event::Body(b"ab")));
        assert_eq!(dec.eof(), Err(HttpError::Truncated));
        assert_eq!(
            dec.feed(b"cde\r\n"),
            Err(HttpError::Truncated),
            "stays failed"
        );
        // Clean close between responses.
        let mut dec = ResponseDecoder::new(Expect::Normal);
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        let step = dec.feed(r).unwrap();
        assert_eq!(step.consumed, r.len());
        assert_eq!(dec.feed(&[]).unwrap().item, Some(Event::End));
        assert!(dec.can_reuse());
        assert_eq!(dec.eof(), Ok(None));
    }

    #[test]
    fn connection_close_is_not_reusable() {
        let mut dec = ResponseDecoder::new(Expect::Normal);
        let r = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        dec.feed(r).unwrap();
        assert_eq!(dec.feed(&[]).unwrap().item, Some(Event::End));
        assert!(!dec.can_reuse());
    }

    #[test]
    fn expect_next_only_between_responses() {
        let mut dec = ResponseDecoder::new(Expect::Normal);
        dec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap();
        assert_eq!(dec.expect_next(Expect::NoBody), Err(HttpError::Busy));
        assert_eq!(
            dec.feed(b"hello").unwrap().item,
            Some(Event::Body(b"hello"))
        );
        assert_eq!(dec.feed(b"").unwrap().item, Some(Event::End));
        dec.expect_next(Expect::NoBody).unwrap();
        dec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap();
        assert_eq!(dec.feed(b"").unwrap().item, Some(Event::End));
    }

    #[test]
    fn buffered_limits() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";
        let mut dec = BufferedDecoder::new(Expect::Normal, 10);
        assert_eq!(dec.feed(r), Err(HttpError::BodyTooLarge { limit: 10 }));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n";
        let mut dec = BufferedDecoder::new(Expect::Normal, 10);
        assert_eq!(dec.feed(r), Err(HttpError::BodyTooLarge { limit: 10 }));
        let mut dec = BufferedDecoder::new(Expect::Normal, 11);
        assert_eq!(dec.feed(r), Ok(r.len()));
        let resp = dec.take().unwrap();
        assert_eq!(resp.body, b"hello world");
        // A 304 may declare a length it does not send; that is no reason to refuse.
        let mut dec = BufferedDecoder::new(Expect::Normal, 0);
        dec.feed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n")
            .unwrap();
        assert!(dec.is_done());
    }

    #[test]
    fn request_encoding() {
        let req = Request::get("/v1.41/containers/json")
            .query("all", "1")
            .query("filters", r#"{"label":["a=b c"]}"#);
        assert_eq!(
            String::from_utf8(req.encode()).unwrap(),
            "GET /v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%3Db%20c%22%5D%7D HTTP/1.1\r\n\
             Host: docker\r\nUser-Agent: tether\r\n\r\n"
        );
        let req = Request::post("/x")
            .json(b"{}".to_vec())
            .header("X-A", "b\r\nEvil: 1");
        assert_eq!(
            String::from_utf8(req.encode()).unwrap(),
            "POST /x HTTP/1.1\r\nHost: docker\r\nUser-Agent: tether\r\n\
             Content-Type: application/json\r\nX-A: bEvil: 1\r\nContent-Length: 2\r\n\r\n{}"
        );
        let req = Request::post("/exec/1/start").hijack();
        assert_eq!(req.expect(), Expect::Hijack);
        assert!(String::from_utf8(req.encode())
            .unwrap()
            .contains("Connection: Upgrade\r\nUpgrade: tcp\r\n"));
        assert_eq!(Request::head("/_ping").expect(), Expect::NoBody);
        assert_eq!(path_segment("../images/x"), "..%2Fimages%2Fx");
        // A whole-segment `..` or `.` would move the request elsewhere.
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("."), "%2E");
        assert_eq!(path_segment("..x"), "..x");
        let req = Request::get("/a b\r\nX: y#é");
        assert_eq!(req.target(), "/a%20b%0D%0AX:%20y%23%C3%A9");
    }

    #[test]
    fn chunked_upload_round_trips() {
        let req = Request::post("/build").chunked("application/x-tar");
        let mut wire = req.encode();
        assert!(String::from_utf8_lossy(&wire).contains("Transfer-Encoding: chunked\r\n"));
        let body = wire.len();
        for piece in [&b"hello "[..], b"", &[b'x'; 300]] {
            wire.extend(encode_chunk(piece));
        }
        wire.extend_from_slice(LAST_CHUNK);
        // Our own decoder reads it back (a request body frames like a response body).
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        resp.extend_from_slice(&wire[body..]);
        let mut dec = BufferedDecoder::new(Expect::Normal, 1000);
        assert_eq!(dec.feed(&resp), Ok(resp.len()));
        let mut want = b"hello ".to_vec();
        want.extend([b'x'; 300]);
        assert_eq!(dec.take().unwrap().body, want);
        assert_eq!(chunk_head(300), "12c\r\n");
    }
}
