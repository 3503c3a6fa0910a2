//! One Engine API exchange for a terminal (exec create, start, resize,
//! inspect), on its own non-blocking unix socket in the event loop, under a
//! deadline timer. A stalled engine costs this terminal its deadline and
//! nothing else: the loop never waits on the socket.
//!
//! ```text
//!  connect ─▶ Writing ──all sent──▶ Reading ──whole answer──▶ Answer(resp, rest)
//!    │         │ EPIPE: read what     │                          exec start: a 101 ends the
//!    │         └ the engine said ─────┤                          answer; `rest` and the socket
//!    │                                │                          are the raw stream from there
//!    │ no socket, refused             │ EOF early, bad HTTP, too big
//!    ▼                                ▼
//!  Err at once                      Failed(why)
//!  deadline timer (owner's) ─▶ "the engine did not answer exec create within 5 s"
//! ```
//!
//! [`Exchange`] is the sans-IO part (any `Read + Write`, tested with
//! streams that return `WouldBlock` on a schedule); [`EngineCall`] adds
//! the socket, its token and the timer.

use super::TerminalTimer;
use crate::docker::http::{BufferedDecoder, Request, Response};
use crate::reactor::{Ctx, TimerId};
use mio::net::UnixStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

/// Deadline of each call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer kept (an exec inspect is about 1 KiB).
const MAX_ANSWER: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// What driving an exchange gave.
#[derive(Debug)]
pub enum Got {
    /// Wait for readiness.
    Wait,
    /// The whole answer, and bytes read past it (after a hijack: the
    /// first bytes of the raw stream).
    Answer(Response, Vec<u8>),
    Failed(String),
}

/// The request going out and the answer coming in, without a socket.
pub struct Exchange {
    what: &'static str,
    out: Vec<u8>,
    written: usize,
    dec: BufferedDecoder,
    /// A write failed; the engine may still have answered why.
    write_error: Option<io::Error>,
}

impl Exchange {
    /// `what` names the call in errors: "exec create".
    pub fn new(req: &Request, what: &'static str) -> Exchange {
        Exchange {
            what,
            out: req.encode(),
            written: 0,
            dec: BufferedDecoder::new(req.expect(), MAX_ANSWER),
            write_error: None,
        }
    }

    pub fn what(&self) -> &'static str {
        self.what
    }

    pub fn interest(&self) -> Interest {
        if self.written < self.out.len() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// Write what the stream takes, then read until `WouldBlock` or the
    /// answer is whole. Reads are bounded by the answer limit, so one pass
    /// cannot run away with the loop.
    pub fn pump<S: Read + Write>(&mut self, s: &mut S) -> Got {
        while self.written < self.out.len() {
            match s.write(&self.out[self.written..]) {
                Ok(0) => return Got::Failed(format!("the engine took no bytes of {}", self.what)),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EPIPE/ECONNRESET: read the answer sent before it closed.
                    self.write_error = Some(e);
                    self.written = self.out.len();
                }
            }
        }
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let n = match s.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let e = self.write_error.take().unwrap_or(e);
                    return Got::Failed(format!(
                        "{}: connection to the engine failed: {e}",
                        self.what
                    ));
                }
            };
            if n == 0 {
                return self.on_eof();
            }
            let used = match self.dec.feed(&buf[..n]) {
                Ok(u) => u,
                Err(e) => {
                    return Got::Failed(format!("{}: bad answer from the engine: {e}", self.what))
                }
            };
            if self.dec.is_done() {
                return self.take(buf[used..n].to_vec());
            }
        }
    }

    fn on_eof(&mut self) -> Got {
        match (self.dec.eof(), self.write_error.take()) {
            (Ok(()), _) => self.take(Vec::new()),
            (Err(_), Some(w)) => Got::Failed(format!("{}: writing to the engine: {w}", self.what)),
            (Err(e), None) => {
                Got::Failed(format!("{}: bad answer from the engine: {e}", self.what))
            }
        }
    }

    fn take(&mut self, rest: Vec<u8>) -> Got {
        match self.dec.take() {
            Some(resp) => Got::Answer(resp, rest),
            None => Got::Failed(format!(
                "{}: the engine closed the connection early",
                self.what
            )),
        }
    }
}

/// An [`Exchange`] on its own socket, registered with the loop.
pub struct EngineCall {
    token: Token,
    stream: UnixStream,
    x: Exchange,
    registered: Interest,
    timer: TimerId,
}

impl EngineCall {
    /// Connect and register; the first readiness event writes the request.
    /// A unix connect never waits: it succeeds, or fails at once (no
    /// socket, refused, or a full backlog: `EAGAIN`).
    pub fn start(
        ctx: &mut Ctx<'_>,
        socket: &Path,
        req: &Request,
        what: &'static str,
    ) -> Result<EngineCall, String> {
        let mut stream = UnixStream::connect(socket)
            .map_err(|e| format!("cannot reach the engine at {}: {e}", socket.display()))?;
        let x = Exchange::new(req, what);
        let token = ctx.token();
        let registered = x.interest();
        ctx.registry
            .register(&mut stream, token, registered)
            .map_err(|e| format!("cannot watch the engine socket: {e}"))?;
        let timer = ctx.schedule(CALL_TIMEOUT, TerminalTimer::Engine);
        Ok(EngineCall {
            token,
            stream,
            x,
            registered,
            timer,
        })
    }

    pub fn token(&self) -> Token {
        self.token
    }

    pub fn timer(&self) -> TimerId {
        self.timer
    }

    /// The error of a call whose deadline passed.
    pub fn timed_out(&self) -> String {
        format!(
            "the engine did not answer {} within {} s",
            self.x.what(),
            CALL_TIMEOUT.as_secs()
        )
    }

    /// On readiness (or right after `start`): move bytes, follow interest.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Got {
        let got = self.x.pump(&mut self.stream);
        if let Got::Wait = got {
            let want = self.x.interest();
            if want != self.registered {
                if let Err(e) = ctx.registry.reregister(&mut self.stream, self.token, want) {
                    return Got::Failed(format!("cannot watch the engine socket: {e}"));
                }
                self.registered = want;
            }
        }
        got
    }

    /// Done with it (answered, failed, timed out or no longer wanted): the
    /// timer is cancelled and the socket closed.
    pub fn close(mut self, ctx: &mut Ctx<'_>) {
        ctx.cancel(self.timer);
        let _ = ctx.registry.deregister(&mut self.stream);
    }

    /// After a hijack: the socket, now a raw stream, out of the loop's
    /// registry (its new owner registers it under its own token).
    pub fn into_stream(mut self, ctx: &mut Ctx<'_>) -> UnixStream {
        ctx.cancel(self.timer);
        let _ = ctx.registry.deregister(&mut self.stream);
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::http::Request;
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
    fn run(x: &mut Exchange, s: &mut Scripted) -> (Got, usize) {
        let mut waits = 0;
        loop {
            match x.pump(s) {
                Got::Wait => waits += 1,
                other => return (other, waits),
            }
            assert!(waits < 10_000, "no progress");
        }
    }

    const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
        Content-Length: 13\r\n\r\n{\"Id\":\"abc\"}\n";

    #[test]
    fn a_request_written_in_pieces_gets_its_answer_at_every_split_point() {
        let req = Request::post("/v1.41/containers/web/exec").json(b"{}".to_vec());
        for split in 1..=CREATED.len() {
            let mut x = Exchange::new(&req, "exec create");
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
            let mut x = Exchange::new(&req, "exec start");
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
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"Ru",
            b"SSH-2.0-OpenSSH_9.6\r\n",
        ] {
            let mut x = Exchange::new(&req, "exec inspect");
            let mut s = scripted(bad, bad.len());
            match run(&mut x, &mut s).0 {
                Got::Failed(why) => assert!(why.starts_with("exec inspect: "), "{why}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_refused_write_still_reads_the_engines_reason() {
        let req = Request::post("/v1.41/exec/abc/resize?h=1&w=1");
        let answer =
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 26\r\n\r\n{\"message\":\"no such exec\"}";
        let mut x = Exchange::new(&req, "exec resize");
        let mut s = scripted(answer, answer.len());
        s.write_err = Some(io::ErrorKind::BrokenPipe);
        match run(&mut x, &mut s).0 {
            Got::Answer(resp, _) => assert_eq!(resp.head.status, 404),
            other => panic!("{other:?}"),
        }
        // And with nothing to read, the write error is what is reported.
        let mut x = Exchange::new(&req, "exec resize");
        let mut s = scripted(b"", 0);
        s.write_err = Some(io::ErrorKind::BrokenPipe);
        match run(&mut x, &mut s).0 {
            Got::Failed(why) => assert!(why.contains("writing to the engine"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
