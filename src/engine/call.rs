//! One Engine API exchange on its own non-blocking unix socket in the
//! event loop, under its owner's deadline timer. A stalled engine costs
//! that call its deadline and nothing else: the loop never waits on the
//! socket. Container management, terminal execs (and in time logs and
//! deploys) all call the engine through this.
//!
//! ```text
//!  connect ─▶ Writing ──all sent──▶ Reading ─┬─ Whole: whole answer ──▶ Answer(resp, rest)
//!    │         │ EPIPE: read what            │   exec start: a 101 ends the answer; `rest`
//!    │         └ the engine said ────────────┤   and the socket are the raw stream from there
//!    │                                       └─ Stream: Head, Body…, End / Eof (events, logs)
//!    │ no socket, refused                     EOF early, bad HTTP, too big ─▶ Failed(why)
//!    ▼                                        read budget spent ─▶ Again (drive again this turn)
//!  Err at once
//!  deadline timer (owner's) ─▶ the owner closes the call
//! ```
//!
//! [`Exchange`] is the sans-IO part (any `Read + Write`, tested with
//! streams that return `WouldBlock` on a schedule); [`EngineCall`] adds
//! the socket, its token and the timer.

use crate::net::http::{
    encode_chunk, BufferedDecoder, Event, Head, HttpError, Request, Response, ResponseDecoder,
    LAST_CHUNK,
};
use crate::reactor::{Ctx, TimerId, TimerKind};
use mio::net::UnixStream;
use mio::{Interest, Token};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

const READ_CHUNK: usize = 16 * 1024;
/// Bytes a streamed answer reads per pass before other sources get a turn.
const MAX_READ_PER_PASS: usize = 256 * 1024;

/// Bytes of an upload read per chunk (a build context).
const UPLOAD_CHUNK: usize = 64 * 1024;

/// A request body streamed after the head as chunks (a build context of
/// unknown size), for a [`Request::chunked`] request.
pub trait Upload {
    /// Append up to `max` bytes to `out`; `Ok(false)` once all was given.
    fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> io::Result<bool>;
}

/// How the answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Collected whole, refused above this many body bytes.
    Whole(usize),
    /// Handed out as it comes ([`Got::Head`], [`Got::Body`], [`Got::End`]):
    /// `/events`, logs, a build's progress.
    Stream,
}

/// Why a call gave no answer.
#[derive(Debug)]
pub enum CallError {
    /// No connection: no socket, refused, permission denied.
    Connect(io::Error),
    /// The socket failed (for a write error the engine said nothing about,
    /// see `Write`), or the loop could not watch it.
    Io(io::Error),
    /// Writing failed and the engine closed without an answer.
    Write(io::Error),
    /// The engine took no bytes.
    WriteZero,
    /// The answer is not HTTP, over its limit, or cut short.
    Http(HttpError),
    /// The upload's source failed.
    Upload(io::Error),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "cannot reach the engine: {e}"),
            CallError::Io(e) => write!(f, "connection to the engine failed: {e}"),
            CallError::Write(e) => write!(f, "writing to the engine: {e}"),
            CallError::WriteZero => write!(f, "the engine took no bytes"),
            CallError::Http(HttpError::Closed) => {
                write!(f, "the engine closed the connection early")
            }
            CallError::Http(e) => write!(f, "bad answer from the engine: {e}"),
            CallError::Upload(e) => write!(f, "reading the upload: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

/// What driving an exchange gave.
#[derive(Debug)]
pub enum Got<'a> {
    /// Wait for readiness.
    Wait,
    /// A streamed answer spent its read budget with data maybe left:
    /// drive it again this turn, after the other sources.
    Again,
    /// The whole answer, and bytes read past it (after a hijack: the
    /// first bytes of the raw stream).
    Answer(Response, Vec<u8>),
    /// A streamed answer's head.
    Head(Head),
    /// Body bytes of a streamed answer, framing removed.
    Body(&'a [u8]),
    /// A streamed answer ended (or turned into a raw stream).
    End,
    /// The engine closed the connection of a streamed answer.
    Eof,
    Failed(CallError),
}

enum Reader {
    Whole(BufferedDecoder),
    Stream(ResponseDecoder),
}

/// The request going out and the answer coming in, without a socket.
pub struct Exchange {
    what: &'static str,
    out: Vec<u8>,
    written: usize,
    /// The chunked body still to send, after `out`.
    upload: Option<Box<dyn Upload>>,
    reader: Reader,
    /// Read bytes not yet decoded (a streamed answer hands them out in
    /// several events): `buf[pos..len]`.
    buf: Box<[u8; READ_CHUNK]>,
    pos: usize,
    len: usize,
    /// The stream decoder gave an item: it may have another without more
    /// input (`End` after a `Content-Length` body).
    pending: bool,
    budget: usize,
    /// A write failed; the engine may still have answered why.
    write_error: Option<io::Error>,
}

impl Exchange {
    /// `what` names the call in errors: "exec create".
    pub fn new(req: &Request, what: &'static str, answer: Answer) -> Exchange {
        let reader = match answer {
            Answer::Whole(limit) => Reader::Whole(BufferedDecoder::new(req.expect(), limit)),
            Answer::Stream => Reader::Stream(ResponseDecoder::new(req.expect())),
        };
        Exchange {
            what,
            out: req.encode(),
            written: 0,
            upload: None,
            reader,
            buf: Box::new([0; READ_CHUNK]),
            pos: 0,
            len: 0,
            pending: false,
            budget: MAX_READ_PER_PASS,
            write_error: None,
        }
    }

    /// Stream `body` after the head (the request is [`Request::chunked`]).
    pub fn with_upload(mut self, body: Box<dyn Upload>) -> Exchange {
        self.upload = Some(body);
        self
    }

    pub fn what(&self) -> &'static str {
        self.what
    }

    pub fn interest(&self) -> Interest {
        if self.written < self.out.len() || self.upload.is_some() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// Write what the stream takes, then read until `WouldBlock`, the
    /// answer is whole, or the next event of a streamed answer. A whole
    /// answer is bounded by its limit; a stream by a budget per pass, so
    /// one pass cannot run away with the loop.
    pub fn pump<S: Read + Write>(&mut self, s: &mut S) -> Got<'_> {
        loop {
            if self.written == self.out.len() {
                match self.next_chunk() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Got::Failed(e),
                }
            }
            match s.write(&self.out[self.written..]) {
                Ok(0) => return Got::Failed(CallError::WriteZero),
                Ok(n) => self.written += n,
                // With an upload, read meanwhile: the engine may answer
                // before it is through (a refused build).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.upload.is_some() => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EPIPE/ECONNRESET: read the answer sent before it closed.
                    self.write_error = Some(e);
                    self.written = self.out.len();
                    self.upload = None;
                }
            }
        }
        loop {
            if self.pos < self.len || self.pending {
                match self.decode() {
                    Some(Ok((start, end))) => return Got::Body(&self.buf[start..end]),
                    Some(Err(got)) => return got,
                    None => {}
                }
                continue;
            }
            if matches!(self.reader, Reader::Stream(_)) && self.budget == 0 {
                self.budget = MAX_READ_PER_PASS;
                return Got::Again;
            }
            let n = match s.read(&mut self.buf[..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.budget = MAX_READ_PER_PASS;
                    return Got::Wait;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let e = self.write_error.take().unwrap_or(e);
                    return Got::Failed(CallError::Io(e));
                }
            };
            if n == 0 {
                return self.on_eof();
            }
            self.budget = self.budget.saturating_sub(n);
            self.pos = 0;
            self.len = n;
        }
    }

    /// After [`Got::Eof`] on a streamed answer: `Ok(true)` when the close
    /// ended a read-until-close body, `Ok(false)` when it came between
    /// answers, the error when it cut one short.
    pub fn stream_eof(&mut self) -> Result<bool, HttpError> {
        match &mut self.reader {
            Reader::Stream(dec) => dec.eof().map(|e| e.is_some()),
            Reader::Whole(_) => Ok(false),
        }
    }

    /// The next piece of the upload into `out`; `false` when there is
    /// nothing more to write.
    fn next_chunk(&mut self) -> Result<bool, CallError> {
        let Some(up) = self.upload.as_mut() else {
            return Ok(false);
        };
        let mut data = Vec::with_capacity(UPLOAD_CHUNK);
        let more = up
            .fill(&mut data, UPLOAD_CHUNK)
            .map_err(CallError::Upload)?;
        self.out = encode_chunk(&data);
        self.written = 0;
        if !more {
            self.out.extend_from_slice(LAST_CHUNK);
            self.upload = None;
        }
        Ok(true)
    }

    /// Decode from `buf[pos..len]`: body bytes as their range in `buf`,
    /// another outcome, or `None` when all was used and more is needed.
    #[allow(clippy::type_complexity)]
    fn decode(&mut self) -> Option<Result<(usize, usize), Got<'static>>> {
        let input = &self.buf[self.pos..self.len];
        match &mut self.reader {
            Reader::Whole(dec) => {
                let used = match dec.feed(input) {
                    Ok(u) => u,
                    Err(e) => return Some(Err(Got::Failed(CallError::Http(e)))),
                };
                let done = dec.is_done().then(|| input[used..].to_vec());
                self.pos = self.len;
                done.map(|rest| Err(take(dec, rest)))
            }
            Reader::Stream(dec) => {
                let step = match dec.feed(input) {
                    Ok(s) => s,
                    Err(e) => return Some(Err(Got::Failed(CallError::Http(e)))),
                };
                let at = self.pos;
                self.pos += step.consumed;
                self.pending = step.item.is_some();
                match step.item? {
                    Event::Head(h) => Some(Err(Got::Head(h))),
                    Event::Body(b) => {
                        // `b` ends where the step's input use ends.
                        Some(Ok((at + step.consumed - b.len(), at + step.consumed)))
                    }
                    Event::End | Event::Upgraded => Some(Err(Got::End)),
                }
            }
        }
    }

    fn on_eof(&mut self) -> Got<'static> {
        let dec = match &mut self.reader {
            Reader::Whole(dec) => dec,
            Reader::Stream(_) => return Got::Eof,
        };
        match (dec.eof(), self.write_error.take()) {
            (Ok(()), _) => take(dec, Vec::new()),
            (Err(HttpError::Closed), Some(w)) => Got::Failed(CallError::Write(w)),
            (Err(e), _) => Got::Failed(CallError::Http(e)),
        }
    }
}

fn take(dec: &mut BufferedDecoder, rest: Vec<u8>) -> Got<'static> {
    match dec.take() {
        Some(resp) => Got::Answer(resp, rest),
        None => Got::Failed(CallError::Http(HttpError::Closed)),
    }
}

/// An [`Exchange`] on its own socket, registered with the loop.
pub struct EngineCall {
    token: Token,
    stream: UnixStream,
    x: Exchange,
    registered: Interest,
    timer: Option<TimerId>,
}

impl EngineCall {
    /// Connect and register; the first readiness event (or the owner's
    /// first `drive`) writes the request. A unix connect never waits: it
    /// succeeds, or fails at once (no socket, refused, or a full backlog:
    /// `EAGAIN`). A call with a deadline gets it from
    /// [`deadline`](Self::deadline) next.
    pub fn start(ctx: &mut Ctx<'_>, socket: &Path, x: Exchange) -> Result<EngineCall, CallError> {
        let mut stream = UnixStream::connect(socket).map_err(CallError::Connect)?;
        let token = ctx.token();
        let registered = x.interest();
        ctx.registry
            .register(&mut stream, token, registered)
            .map_err(CallError::Io)?;
        Ok(EngineCall {
            token,
            stream,
            x,
            registered,
            timer: None,
        })
    }

    /// The owner's timer for this call, of the owner's own kind: due
    /// `after` from now, cancelled with the call. (The kind is the owner's,
    /// so engine/ names no feature.)
    pub fn deadline(mut self, ctx: &mut Ctx<'_>, after: Duration, kind: impl TimerKind) -> Self {
        self.timer = Some(ctx.schedule(after, kind));
        self
    }

    pub fn token(&self) -> Token {
        self.token
    }

    pub fn timer(&self) -> Option<TimerId> {
        self.timer
    }

    pub fn what(&self) -> &'static str {
        self.x.what()
    }

    /// On readiness (or right after `start`): follow the interest the last
    /// pass left (once the request is out, only reads; the writable edge
    /// that may come before costs one empty pass), then move bytes.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Got<'_> {
        let want = self.x.interest();
        if want != self.registered {
            if let Err(e) = ctx.registry.reregister(&mut self.stream, self.token, want) {
                return Got::Failed(CallError::Io(e));
            }
            self.registered = want;
        }
        self.x.pump(&mut self.stream)
    }

    /// See [`Exchange::stream_eof`].
    pub fn stream_eof(&mut self) -> Result<bool, HttpError> {
        self.x.stream_eof()
    }

    /// Done with it (answered, failed, timed out or no longer wanted): the
    /// timer is cancelled and the socket closed.
    pub fn close(mut self, ctx: &mut Ctx<'_>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel(t);
        }
        let _ = ctx.registry.deregister(&mut self.stream);
    }

    /// After a hijack: the socket, now a raw stream, out of the loop's
    /// registry (its new owner registers it under its own token).
    pub fn into_stream(mut self, ctx: &mut Ctx<'_>) -> UnixStream {
        if let Some(t) = self.timer.take() {
            ctx.cancel(t);
        }
        let _ = ctx.registry.deregister(&mut self.stream);
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::http::Request;
    use std::collections::VecDeque;

    /// A stream that takes at most `take` bytes per write and hands out
    /// `chunks` one per read, with `WouldBlock` where a chunk is `None`.
    struct Scripted {
        take: usize,
        written: Vec<u8>,
        write_err: Option<io::ErrorKind>,
        chunks: VecDeque<Option<Vec<u8>>>,
    }

    impl Write for Scripted {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if let Some(k) = self.write_err {
                return Err(io::Error::from(k));
            }
            if self.take == 0 {
                self.take = 3;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.take);
            self.take = 0;
            self.written.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.chunks.pop_front() {
                None => Ok(0),
                Some(None) => Err(io::ErrorKind::WouldBlock.into()),
                Some(Some(c)) => {
                    let n = c.len().min(buf.len());
                    buf[..n].copy_from_slice(&c[..n]);
                    Ok(n)
                }
            }
        }
    }

    fn scripted(answer: &[u8], split: usize) -> Scripted {
        let mut chunks = VecDeque::new();
        chunks.push_back(None);
        chunks.push_back(Some(answer[..split].to_vec()));
        chunks.push_back(None);
        if split < answer.len() {
            chunks.push_back(Some(answer[split..].to_vec()));
        }
        Scripted {
            take: 7,
            written: Vec::new(),
            write_err: None,
            chunks,
        }
    }

    /// Drive until the exchange is over; count the `Wait`s.
    fn run(x: &mut Exchange, s: &mut Scripted) -> (Got<'static>, usize) {
        let mut waits = 0;
        loop {
            match x.pump(s) {
                Got::Wait => waits += 1,
                Got::Answer(resp, rest) => return (Got::Answer(resp, rest), waits),
                Got::Failed(e) => return (Got::Failed(e), waits),
                other => panic!("a whole answer gave {other:?}"),
            }
            assert!(waits < 10_000, "no progress");
        }
    }

    const WHOLE: Answer = Answer::Whole(256 * 1024);

    const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
        Content-Length: 13\r\n\r\n{\"Id\":\"abc\"}\n";

    #[test]
    fn a_request_written_in_pieces_gets_its_answer_at_every_split_point() {
        let req = Request::post("/v1.41/containers/web/exec").json(b"{}".to_vec());
        for split in 1..=CREATED.len() {
            let mut x = Exchange::new(&req, "exec create", WHOLE);
            let mut s = scripted(CREATED, split);
            let (got, waits) = run(&mut x, &mut s);
            assert_eq!(s.written, req.encode(), "split {split}");
            assert!(waits > 1, "the writes and reads waited");
            match got {
                Got::Answer(resp, rest) => {
                    assert_eq!(resp.head.status, 201);
                    assert_eq!(resp.body, b"{\"Id\":\"abc\"}\n");
                    assert!(rest.is_empty());
                }
                other => panic!("split {split}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_hijack_hands_over_the_bytes_after_the_head() {
        let answer =
            b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n\
            Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n/ # ";
        let req = Request::post("/v1.41/exec/abc/start")
            .json(b"{}".to_vec())
            .hijack();
        let head_len = answer.len() - 4;
        for split in 1..=answer.len() {
            let mut x = Exchange::new(&req, "exec start", WHOLE);
            let mut s = scripted(answer, split);
            match run(&mut x, &mut s).0 {
                Got::Answer(resp, rest) => {
                    assert!(resp.upgraded);
                    // What came with the head's end is handed over; the
                    // rest stays in the socket for its new owner.
                    let expect = if split < head_len {
                        &answer[head_len..]
                    } else {
                        &answer[head_len..split]
                    };
                    assert_eq!(rest, expect, "split {split}");
                }
                other => panic!("split {split}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_early_close_or_garbage_is_a_clear_failure_not_a_panic() {
        let req = Request::get("/v1.41/exec/abc/json");
        for (bad, want) in [
            (&b""[..], HttpError::Closed),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"Ru",
                HttpError::Truncated,
            ),
            (b"SSH-2.0-OpenSSH_9.6\r\n", HttpError::NotHttp),
        ] {
            let mut x = Exchange::new(&req, "exec inspect", WHOLE);
            let mut s = scripted(bad, bad.len());
            match run(&mut x, &mut s).0 {
                Got::Failed(CallError::Http(e)) => assert_eq!(e, want, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_streamed_answer_comes_out_as_events_at_every_split_point() {
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            6\r\n{\"a\":1\r\n3\r\n}\n{\r\n0\r\n\r\n";
        let req = Request::get("/v1.41/events");
        for split in 1..=answer.len() {
            let mut x = Exchange::new(&req, "events", Answer::Stream);
            let mut s = scripted(answer, split);
            let (mut status, mut body, mut waits) = (None, Vec::new(), 0);
            loop {
                match x.pump(&mut s) {
                    Got::Wait => waits += 1,
                    Got::Head(h) => status = Some(h.status),
                    Got::Body(b) => {
                        assert!(!b.is_empty());
                        body.extend_from_slice(b);
                    }
                    Got::End => break,
                    other => panic!("split {split}: {other:?}"),
                }
                assert!(waits < 100, "no progress");
            }
            assert_eq!((status, &body[..]), (Some(200), &b"{\"a\":1}\n{"[..]));
            // Then the engine closes the connection.
            let mut after = x.pump(&mut s);
            if let Got::Wait = after {
                after = x.pump(&mut s);
            }
            assert!(matches!(after, Got::Eof), "split {split}: {after:?}");
        }
    }

    #[test]
    fn a_streamed_answer_with_a_length_ends_without_more_input() {
        // A refused stream (a build, logs): Docker answers with a length
        // and keeps the connection open, so `End` must come from no bytes.
        let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}";
        let req = Request::get("/v1.41/containers/x/logs");
        for split in 1..=answer.len() {
            let mut x = Exchange::new(&req, "logs", Answer::Stream);
            let mut s = scripted(answer, split);
            s.chunks.push_back(None); // the engine keeps the socket open
            let mut seen = Vec::new();
            loop {
                match x.pump(&mut s) {
                    Got::Wait => {}
                    Got::Head(h) => seen.push(format!("head {}", h.status)),
                    Got::Body(b) => seen.push(String::from_utf8_lossy(b).into_owned()),
                    Got::End => break,
                    other => panic!("split {split}: {other:?} after {seen:?}"),
                }
                assert!(seen.len() < 10);
            }
            let body: String = seen[1..].concat();
            assert_eq!(
                (seen[0].as_str(), body.as_str()),
                ("head 400", "{}"),
                "split {split}"
            );
        }
    }

    #[test]
    fn a_refused_write_still_reads_the_engines_reason() {
        let req = Request::post("/v1.41/exec/abc/resize?h=1&w=1");
        let answer =
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 26\r\n\r\n{\"message\":\"no such exec\"}";
        let mut x = Exchange::new(&req, "exec resize", WHOLE);
        let mut s = scripted(answer, answer.len());
        s.write_err = Some(io::ErrorKind::BrokenPipe);
        match run(&mut x, &mut s).0 {
            Got::Answer(resp, _) => assert_eq!(resp.head.status, 404),
            other => panic!("{other:?}"),
        }
        // And with nothing to read, the write error is what is reported.
        let mut x = Exchange::new(&req, "exec resize", WHOLE);
        let mut s = scripted(b"", 0);
        s.write_err = Some(io::ErrorKind::BrokenPipe);
        match run(&mut x, &mut s).0 {
            Got::Failed(e @ CallError::Write(_)) => {
                assert!(e.to_string().contains("writing to the engine"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
