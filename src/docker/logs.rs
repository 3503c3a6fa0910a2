//! Container logs on data channels: the server's `log_open` becomes a
//! `GET /containers/{id}/logs?timestamps=1` stream whose lines go out as DATA
//! frames, at most a window of bytes ahead of the server's ACKs.
//!
//! Two parts: [`LogAssembler`] (sans-IO: body bytes in, whole timestamped
//! lines grouped into frame payloads out, lines the receiver already has
//! skipped) and [`LogFollows`] (the sockets, timers and channel state).
//!
//! One channel, as the event loop drives it:
//!
//! ```text
//!  log_open ─▶ Inspect ──found──▶ log_opened reply ─▶ Stream ──EOF / error──▶ Recheck (inspect again)
//!               │ 404, engine down: error reply, gone    ▲                         │
//!               │                                        │ running: since = cursor │
//!               │                                        └─────────────────────────┤
//!               │                       restarting, or the engine just came back:  │
//!               │                         inspect again in 1 s (Retry) ◀───────────┤
//!               │                       engine unreachable: Retry (1 s … 5 s) ◀────┤
//!               │                       stopped + keep (collection): Parked ◀──────┤
//!               │                         └─ `start` event for it ─▶ Stream        │
//!               │                       stopped, no keep / removed / not follow ───┴─▶ Ending ─▶ END frame, gone
//!  log_close, link down: dropped at once (the server reopens from its own cursor).
//! ```
//!
//! Resume without gap or duplicate: the assembler keeps the cursor of the
//! last line it produced: its timestamp and how many lines carry exactly that
//! timestamp. A reopened stream asks Docker for `since=` that time (Docker
//! includes it) and skips that many lines at it. The server does the same
//! across connections and runner restarts with the cursor it stored, so the
//! container's own log file is the spool: nothing is buffered here beyond the
//! window.
//!
//! Each follow sends on a [`crate::channel`] that keeps nothing once sent
//! (`Keep::UntilSent`): offsets, window, ACK and CREDIT are the channel's.
//! An ended follow stays (`Ending`, no socket, no timer) until its last
//! frames and the END are sent: until then the server counts it open.
//!
//! Backpressure: a stream is read only while its unacknowledged bytes are
//! under the window and the frames waiting for the link, over all channels,
//! are under [`MAX_OUTBOX_BYTES`]; otherwise the socket is left unread and
//! Docker stops reading the container's log for us.

use crate::channel::{Keep, Limits, OutChannel};
use crate::engine::api::{self, Api, ContainerInspect, LogsOptions};
use crate::engine::stream::{
    split_log_timestamp, StreamDecoder, StreamError, StreamKind, Timestamp,
};
use crate::engine::{Answer, CallError, EngineCall, Exchange, Got};
use crate::link::Outgoing;
use crate::net::http::{HttpError, Request};
use crate::protocol::{
    ErrorBody, FrameKind, LogOpen, LogOpened, Message as Control, StreamTag, DEFAULT_LOG_WINDOW,
    MAX_DATA_PAYLOAD, MAX_LOG_CHANNELS,
};
use crate::reactor::{Ctx, TimerId};
use crate::{debug, info, warn};
use mio::Token;
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Frames waiting for the link, over all channels; above it no stream is read.
const MAX_OUTBOX_BYTES: usize = 1024 * 1024;
/// Longest message kept; Docker splits lines at 16 KiB, a TTY line may be
/// longer and is cut here (with its newline kept).
const MAX_MESSAGE: usize = MAX_DATA_PAYLOAD - 1;
/// Largest window a `log_open` may ask for.
const MAX_WINDOW: u32 = 4 * 1024 * 1024;
/// Largest inspect answer.
const MAX_INSPECT: usize = 1024 * 1024;
/// An inspect that takes longer counts as "engine unreachable".
const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// After the engine came back, a stopped container may still be restarted
/// by its restart policy: look again for this long before ending a follow.
const COMEBACK_GRACE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Assembler

/// Where a stream resumes: lines at or after `ts`, skipping the first
/// `skip` of those stamped exactly `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: Timestamp,
    pub skip: u32,
}

/// Turns a logs body into frame payloads: whole lines of one stream, each
/// `timestamp SP message LF`, at most [`MAX_DATA_PAYLOAD`] bytes.
#[derive(Debug)]
pub struct LogAssembler {
    decoder: StreamDecoder,
    tty: bool,
    /// The message being assembled, per stream (stdout, stderr).
    msg: [Vec<u8>; 2],
    /// The payload being filled and its stream.
    frame: Vec<u8>,
    frame_tag: StreamTag,
    /// Lines to skip at the resume point.
    skip_at: Option<Cursor>,
    /// The last line produced (or the resume point): what a reopened stream
    /// starts from.
    cursor: Option<Cursor>,
    /// Lines skipped in the current stream.
    skipped_now: u32,
    /// Lines produced, and lines dropped as already sent.
    pub lines: u64,
    pub skipped: u64,
}

impl LogAssembler {
    pub fn new(tty: bool, resume: Option<Cursor>) -> LogAssembler {
        LogAssembler {
            decoder: StreamDecoder::for_tty(tty),
            tty,
            msg: [Vec::new(), Vec::new()],
            frame: Vec::new(),
            frame_tag: StreamTag::Stdout,
            skip_at: resume.filter(|c| c.skip > 0),
            cursor: resume,
            skipped_now: 0,
            lines: 0,
            skipped: 0,
        }
    }

    /// The resume point for the next stream of this channel.
    pub fn cursor(&self) -> Option<Cursor> {
        self.cursor
    }

    /// A new stream of the same container (after EOF): framing state is
    /// reset, the cursor kept. A partial message of the old stream is lost
    /// with it; Docker sends it again because it is at or after the cursor.
    pub fn restart(&mut self, tty: bool) {
        self.decoder = StreamDecoder::for_tty(tty);
        self.tty = tty;
        self.msg = [Vec::new(), Vec::new()];
        self.skip_at = self.cursor.filter(|c| c.skip > 0);
        self.skipped_now = 0;
    }

    /// Feed body bytes; finished payloads are pushed to `out`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<(StreamTag, Vec<u8>)>,
    ) -> Result<(), StreamError> {
        while !input.is_empty() {
            let step = self.decoder.feed(input)?;
            input = &input[step.consumed..];
            let Some(piece) = step.item else { break };
            let i = match piece.kind {
                StreamKind::Stdout => 0,
                StreamKind::Stderr => 1,
                StreamKind::SystemErr => {
                    warn!(
                        "docker",
                        "engine error inside a log stream: {}",
                        String::from_utf8_lossy(piece.data).trim_end()
                    );
                    continue;
                }
                StreamKind::Stdin => continue,
            };
            if self.tty {
                // No frames: a message ends at each newline.
                let mut data = piece.data;
                while let Some(p) = data.iter().position(|&b| b == b'\n') {
                    self.append(i, &data[..p]);
                    self.finish_message(i, out);
                    data = &data[p + 1..];
                }
                self.append(i, data);
            } else {
                self.append(i, piece.data);
                if piece.end {
                    self.finish_message(i, out);
                }
            }
        }
        Ok(())
    }

    /// The stream ended: a partial TTY line still counts; a cut frame does not.
    pub fn finish(&mut self, out: &mut Vec<(StreamTag, Vec<u8>)>) {
        if self.tty && !self.msg[0].is_empty() {
            self.finish_message(0, out);
        }
        self.msg = [Vec::new(), Vec::new()];
        self.flush(out);
    }

    /// Hand out the payload being filled, if any.
    pub fn flush(&mut self, out: &mut Vec<(StreamTag, Vec<u8>)>) {
        if !self.frame.is_empty() {
            out.push((self.frame_tag, std::mem::take(&mut self.frame)));
        }
    }

    fn append(&mut self, i: usize, data: &[u8]) {
        let m = &mut self.msg[i];
        let room = MAX_MESSAGE.saturating_sub(m.len());
        m.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn finish_message(&mut self, i: usize, out: &mut Vec<(StreamTag, Vec<u8>)>) {
        let mut msg = std::mem::take(&mut self.msg[i]);
        while msg.last() == Some(&b'\n') || msg.last() == Some(&b'\r') {
            msg.pop();
        }
        if msg.is_empty() {
            return;
        }
        // A line without a readable timestamp cannot be placed: it keeps the
        // cursor's time and is never skipped.
        let ts = split_log_timestamp(&msg).ok().map(|(ts, _)| ts);
        if let (Some(ts), Some(at)) = (ts, self.skip_at) {
            if ts < at.ts || (ts == at.ts && self.skipped_now < at.skip) {
                self.skipped_now += 1;
                self.skipped += 1;
                return;
            }
            if ts > at.ts {
                self.skip_at = None;
            }
        }
        if let Some(ts) = ts {
            self.cursor = Some(match self.cursor {
                Some(c) if c.ts == ts => Cursor {
                    ts,
                    skip: c.skip.saturating_add(1),
                },
                _ => Cursor { ts, skip: 1 },
            });
        }
        self.lines += 1;
        let tag = if i == 0 {
            StreamTag::Stdout
        } else {
            StreamTag::Stderr
        };
        if !self.frame.is_empty()
            && (self.frame_tag != tag || self.frame.len() + msg.len() + 1 > MAX_DATA_PAYLOAD)
        {
            self.flush(out);
        }
        self.frame_tag = tag;
        self.frame.extend_from_slice(&msg);
        self.frame.push(b'\n');
    }
}

// ---------------------------------------------------------------------------
// Channels

/// What the rest of the Docker client tells the follows: the socket always,
/// the API while the engine is available (`crate::engine::Engine` is the
/// available engine only).
pub struct EngineView<'a> {
    pub socket: &'a Path,
    /// `None` while the engine is not available.
    pub api: Option<Api>,
}

/// One Engine call of a follow: an inspect (answer whole) or the logs
/// stream.
struct LogCall {
    call: EngineCall,
    inspect: bool,
    /// The stream's status, once its head came.
    status: Option<u16>,
    /// A refused stream's body (bounded), for the reason.
    error_body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// First inspect; the `log_open` is answered after it.
    Opening,
    Streaming,
    /// Inspecting after the stream ended.
    Recheck,
    /// Waiting for the retry timer (engine down, container restarting).
    Retry,
    /// Collection of a stopped container: waits for its `start` event.
    Parked,
    /// Over: its last frames, then END (`end`), go out; then it is gone.
    Ending,
}

struct Follow {
    channel: u32,
    open: LogOpen,
    /// The `log_open` request, until it is answered.
    reply_id: Option<u64>,
    container_id: String,
    tty: bool,
    state: State,
    ex: Option<LogCall>,
    timer: Option<TimerId>,
    asm: LogAssembler,
    /// The frames out, within the window.
    chan: OutChannel,
    retry: Duration,
    /// The engine was unreachable since the stream last ended, and when
    /// we first saw it back.
    engine_lost: bool,
    back_since: Option<std::time::Instant>,
    /// Readable data may be waiting (the window or outbox was full).
    again: bool,
    /// The END's reason, once `Ending`.
    end: Option<String>,
    /// The stream ended (with an error, or `None`); handled once the
    /// frames read before it are queued.
    ended: Option<Option<String>>,
}

/// What an exchange or a timer led to.
enum Outcome {
    Wait,
    Inspected(Result<Box<ContainerInspect>, Failure>),
    StreamEnded(Option<String>),
}

#[derive(Debug)]
enum Failure {
    /// No answer from the socket: the engine is down or restarting.
    Unreachable(String),
    /// An answer, and it is an error (404 etc.).
    Engine(api::ApiError),
}

/// Every open log channel.
#[derive(Default)]
pub struct LogFollows {
    follows: Vec<Follow>,
    /// Replies to `log_open`, sent before any frame.
    replies: VecDeque<Outgoing>,
    /// Round-robin start for sending frames.
    next: usize,
}

impl LogFollows {
    pub fn new() -> LogFollows {
        LogFollows::default()
    }

    pub fn len(&self) -> usize {
        self.follows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.follows.is_empty()
    }

    pub fn owns(&self, token: Token) -> bool {
        self.follows
            .iter()
            .any(|f| f.ex.as_ref().is_some_and(|e| e.call.token() == token))
    }

    pub fn owns_timer(&self, id: TimerId) -> bool {
        self.follows.iter().any(|f| f.timer == Some(id))
    }

    pub fn wants_again(&self) -> bool {
        !self.outbox_full() && self.follows.iter().any(|f| f.again && f.has_room())
    }

    /// Frames waiting for the link, over all channels, reached the cap.
    fn outbox_full(&self) -> bool {
        let mut pending = 0;
        for f in &self.follows {
            pending += f.chan.pending();
        }
        pending >= MAX_OUTBOX_BYTES as u64
    }

    /// Replies first, then one frame per channel in turn; an ending one's
    /// END after its last frame, and then it is gone.
    pub fn next_message(&mut self) -> Option<Outgoing> {
        if let Some(m) = self.replies.pop_front() {
            return Some(m);
        }
        let n = self.follows.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let f = &mut self.follows[i];
            let mut frame = f.chan.next_frame();
            if frame.is_none() {
                frame = f.end.as_deref().and_then(|r| f.chan.end_frame(r));
                if frame.is_some() {
                    self.follows.swap_remove(i);
                }
            }
            if frame.is_some() {
                self.next = i + 1;
                return frame.map(Outgoing::Binary);
            }
        }
        None
    }

    /// `log_open` from the server (id `id`).
    pub fn open(&mut self, ctx: &mut Ctx<'_>, engine: &EngineView<'_>, id: u64, open: LogOpen) {
        if self.follows.iter().any(|f| f.channel == open.channel) {
            let why = format!("channel {} is already open", open.channel);
            return self.reply_error(id, "bad_request", why);
        }
        if self.follows.len() >= MAX_LOG_CHANNELS {
            let why = format!("this runner has {MAX_LOG_CHANNELS} log channels open already");
            return self.reply_error(id, "too_many_channels", why);
        }
        let Some(api) = engine.api else {
            let why = "the Docker engine is not available on this runner".to_owned();
            return self.reply_error(id, "docker_unavailable", why);
        };
        debug!(
            "docker",
            "log channel {} for {} (follow {}, keep {})",
            open.channel,
            open.container,
            open.follow,
            open.keep
        );
        let mut f = Follow::new(id, open);
        let req = api.inspect_container(&f.container_id);
        match f.start(ctx, engine.socket, req, true) {
            Ok(()) => self.follows.push(f),
            Err(e) => {
                let why = describe_connect(&e, engine.socket);
                self.reply_error(id, "docker_unavailable", why);
            }
        }
    }

    /// `log_close`: forget the channel, send nothing more on it.
    pub fn close(&mut self, ctx: &mut Ctx<'_>, channel: u32) {
        if let Some(i) = self.follows.iter().position(|f| f.channel == channel) {
            let mut f = self.follows.swap_remove(i);
            f.drop_io(ctx);
            debug!("docker", "log channel {channel} closed by the server");
        }
        // Frames still waiting for it (gone with its channel) would be
        // ignored by the server.
    }

    /// An ACK (or CREDIT) frame from the server.
    pub fn on_ack(&mut self, channel: u32, kind: FrameKind, seq: u64) {
        let Some(f) = self.follows.iter_mut().find(|f| f.channel == channel) else {
            return;
        };
        // In memory only, so the channel cannot fail to take it.
        let _ = f.chan.on_frame(kind, seq);
        if f.has_room() && f.state == State::Streaming {
            f.again = true;
        }
    }

    /// The link went down: every channel goes (the server reopens them).
    pub fn drop_all(&mut self, ctx: &mut Ctx<'_>) {
        for mut f in self.follows.drain(..) {
            f.drop_io(ctx);
        }
        self.replies.clear();
    }

    /// A container event from the engine's event stream.
    pub fn on_container_event(
        &mut self,
        ctx: &mut Ctx<'_>,
        engine: &EngineView<'_>,
        id: &str,
        action: &str,
    ) {
        let parked: Vec<u32> = self
            .follows
            .iter()
            .filter(|f| f.state == State::Parked && f.container_id == id)
            .map(|f| f.channel)
            .collect();
        for channel in parked {
            match action {
                "start" | "restart" => self.recheck(ctx, engine, channel),
                "destroy" => self.end(ctx, channel, "container removed"),
                _ => {}
            }
        }
    }

    /// The engine became available again: look at what was waiting for it.
    pub fn on_engine_back(&mut self, ctx: &mut Ctx<'_>, engine: &EngineView<'_>) {
        let waiting: Vec<u32> = self
            .follows
            .iter()
            .filter(|f| f.state == State::Retry)
            .map(|f| f.channel)
            .collect();
        for channel in waiting {
            self.recheck(ctx, engine, channel);
        }
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, engine: &EngineView<'_>, id: TimerId) {
        let Some(f) = self.follows.iter_mut().find(|f| f.timer == Some(id)) else {
            return;
        };
        f.timer = None;
        let channel = f.channel;
        match f.state {
            State::Retry => self.recheck(ctx, engine, channel),
            // The inspect did not answer in time.
            State::Opening | State::Recheck => {
                let why = format!(
                    "no answer from {} within {}s",
                    engine.socket.display(),
                    INSPECT_TIMEOUT.as_secs()
                );
                self.on_outcome(
                    ctx,
                    engine,
                    channel,
                    Outcome::Inspected(Err(Failure::Unreachable(why))),
                );
            }
            State::Streaming | State::Parked | State::Ending => {}
        }
    }

    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>, engine: &EngineView<'_>, token: Token) {
        let Some(f) = self
            .follows
            .iter_mut()
            .find(|f| f.ex.as_ref().is_some_and(|e| e.call.token() == token))
        else {
            return;
        };
        let channel = f.channel;
        self.drive(ctx, engine, channel);
    }

    pub fn on_again(&mut self, ctx: &mut Ctx<'_>, engine: &EngineView<'_>) {
        let ready: Vec<u32> = self
            .follows
            .iter()
            .filter(|f| f.again && f.has_room())
            .map(|f| f.channel)
            .collect();
        for channel in ready {
            if self.outbox_full() {
                return;
            }
            if let Some(f) = self.follows.iter_mut().find(|f| f.channel == channel) {
                f.again = false;
            }
            self.drive(ctx, engine, channel);
        }
    }

    // ---- internals -------------------------------------------------------

    fn drive(&mut self, ctx: &mut Ctx<'_>, engine: &EngineView<'_>, channel: u32) {
        let outbox_full = self.outbox_full();
        let Some(f) = self.follows.iter_mut().find(|f| f.channel == channel) else {
            return;
        };
        let outcome = f.drive(ctx, outbox_full);
        self.on_outcome(ctx, engine, channel, outcome);
    }

    fn on_outcome(
        &mut self,
        ctx: &mut Ctx<'_>,
        engine: &EngineView<'_>,
        channel: u32,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Wait => {}
            Outcome::Inspected(result) => self.on_inspected(ctx, engine, channel, result),
            Outcome::StreamEnded(error) => {
                let mut frames = Vec::new();
                let Some(f) = self.follows.iter_mut().find(|f| f.channel == channel) else {
                    return;
                };
                f.asm.finish(&mut frames);
                f.push(frames);
                f.drop_io(ctx);
                let follow = f.open.follow;
                match error {
                    Some(e) => debug!("docker", "log stream of channel {channel} broke: {e}"),
                    None => debug!("docker", "log stream of channel {channel} ended"),
                }
                if follow {
                    self.recheck(ctx, engine, channel);
                } else {
                    self.end(ctx, channel, "end of log");
                }
            }
        }
    }

    fn on_inspected(
        &mut self,
        ctx: &mut Ctx<'_>,
        engine: &EngineView<'_>,
        channel: u32,
        result: Result<Box<ContainerInspect>, Failure>,
    ) {
        let Some(i) = self.follows.iter().position(|f| f.channel == channel) else {
            return;
        };
        let f = &mut self.follows[i];
        f.drop_io(ctx);
        let opening = f.state == State::Opening;
        let info = match result {
            Ok(info) => info,
            Err(Failure::Engine(e)) if opening => {
                let code = if e.is_not_found() {
                    "no_such_container"
                } else {
                    "docker_error"
                };
                let id = f.reply_id.take().unwrap_or(0);
                self.follows.swap_remove(i);
                return self.reply_error(id, code, e.to_string());
            }
            Err(Failure::Unreachable(why)) if opening => {
                let id = f.reply_id.take().unwrap_or(0);
                self.follows.swap_remove(i);
                return self.reply_error(id, "docker_unavailable", why);
            }
            Err(Failure::Engine(e)) if e.is_not_found() => {
                return self.end(ctx, channel, "container removed")
            }
            Err(Failure::Engine(e)) => return self.end(ctx, channel, &e.to_string()),
            Err(Failure::Unreachable(why)) => {
                if !f.engine_lost {
                    info!(
                        "docker",
                        "log channel {channel}: {why}; waiting for the engine"
                    );
                }
                f.engine_lost = true;
                f.back_since = None;
                return f.schedule_retry(ctx);
            }
        };
        if opening {
            f.container_id = info.id.clone();
            f.tty = info.config.tty;
            f.asm.restart(f.tty);
            let reply = LogOpened {
                channel,
                container_id: info.id.clone(),
                name: info.name.trim_start_matches('/').to_owned(),
                tty: info.config.tty,
            };
            let id = f.reply_id.take().unwrap_or(0);
            self.replies.push_back(Outgoing::Reply {
                id,
                body: Box::new(Control::LogOpened(reply)),
            });
        }
        let Some(f) = self.follows.iter_mut().find(|f| f.channel == channel) else {
            return;
        };
        if f.engine_lost && f.back_since.is_none() {
            f.back_since = Some(ctx.now);
        }
        let st = &info.state;
        // A stream of a stopped container returns what is logged and ends,
        // which is what a first open or a non-follow wants.
        if opening || st.running || st.paused || !f.open.follow {
            return self.stream(ctx, engine, channel);
        }
        let just_back = f
            .back_since
            .is_some_and(|t| ctx.now.saturating_duration_since(t) < COMEBACK_GRACE);
        if st.restarting || (just_back && !f.open.keep) {
            return f.schedule_retry(ctx);
        }
        f.engine_lost = false;
        f.back_since = None;
        if f.open.keep {
            f.state = State::Parked;
            debug!(
                "docker",
                "log channel {channel}: container stopped; waiting for it to start"
            );
            // It may have started between the stream's end and this
            // answer, with its event already gone by: one more look.
            if st.started_at > st.finished_at {
                self.recheck(ctx, engine, channel);
            }
        } else {
            self.end(ctx, channel, "container stopped");
        }
    }

    /// Open (or reopen) the logs stream from the cursor.
    fn stream(&mut self, ctx: &mut Ctx<'_>, engine: &EngineView<'_>, channel: u32) {
        let Some(api) = engine.api else {
            let f = self.follows.iter_mut().find(|f| f.channel == channel);
            if let Some(f) = f {
                f.engine_lost = true;
                f.schedule_retry(ctx);
            }
            return;
        };
        let Some(f) = self.follows.iter_mut().find(|f| f.channel == channel) else {
            return;
        };
        let tty = f.tty;
        f.asm.restart(tty);
        let cursor = f.asm.cursor();
        let until = f.open.until_ns.map(|ns| Timestamp {
            secs: ns.div_euclid(1_000_000_000),
            nanos: ns.rem_euclid(1_000_000_000) as u32,
        });
        let opts = LogsOptions {
            follow: f.open.follow,
            stdout: f.open.stdout,
            stderr: f.open.stderr,
            timestamps: true,
            // `tail` counts only on the first stream; a reopen resumes.
            tail: if cursor.is_some() || f.chan.produced() > 0 {
                None
            } else {
                f.open.tail
            },
            since: cursor.map(|c| c.ts),
            until,
        };
        let req = api.logs(&f.container_id, &opts);
        if let Err(e) = f.start(ctx, engine.socket, req, false) {
            let why = describe_connect(&e, engine.socket);
            debug!("docker", "log channel {channel}: {why}");
            f.engine_lost = true;
            f.schedule_retry(ctx);
        }
    }

    fn recheck(&mut self, ctx: &mut Ctx<'_>, engine: &EngineView<'_>, channel: u32) {
        let Some(f) = self.follows.iter_mut().find(|f| f.channel == channel) else {
            return;
        };
        f.drop_io(ctx);
        let Some(api) = engine.api else {
            f.engine_lost = true;
            return f.schedule_retry(ctx);
        };
        let req = api.inspect_container(&f.container_id);
        f.state = State::Recheck;
        if let Err(e) = f.start(ctx, engine.socket, req, true) {
            let why = describe_connect(&e, engine.socket);
            self.on_outcome(
                ctx,
                engine,
                channel,
                Outcome::Inspected(Err(Failure::Unreachable(why))),
            );
        }
    }

    /// END frame with `reason`; the channel is gone.
    fn end(&mut self, ctx: &mut Ctx<'_>, channel: u32, reason: &str) {
        let Some(i) = self.follows.iter().position(|f| f.channel == channel) else {
            return;
        };
        let f = &mut self.follows[i];
        f.drop_io(ctx);
        debug!("docker", "log channel {channel} ends: {reason}");
        // Its last frames, then END (`next_message`).
        f.state = State::Ending;
        f.end = Some(reason.to_owned());
    }

    fn reply_error(&mut self, id: u64, code: &str, message: String) {
        debug!("docker", "log_open refused: {code}: {message}");
        let body = Control::Error(ErrorBody {
            code: code.into(),
            message,
        });
        self.replies.push_back(Outgoing::Reply {
            id,
            body: Box::new(body),
        });
    }
}

impl Follow {
    /// A follow for `log_open` `id`, before its first inspect.
    fn new(id: u64, open: LogOpen) -> Follow {
        let resume = open.since_ns.map(|ns| Cursor {
            ts: Timestamp {
                secs: ns.div_euclid(1_000_000_000),
                nanos: ns.rem_euclid(1_000_000_000) as u32,
            },
            skip: open.skip,
        });
        let window = match open.window {
            0 => DEFAULT_LOG_WINDOW,
            w => w.min(MAX_WINDOW),
        };
        // Memory bounds what a CREDIT may widen the window to.
        let limits = Limits {
            mem: MAX_WINDOW as usize,
            spool: 0,
            window: u64::from(window),
        };
        Follow {
            channel: open.channel,
            container_id: open.container.clone(),
            chan: OutChannel::new(open.channel, limits, Keep::UntilSent),
            open,
            reply_id: Some(id),
            tty: false,
            state: State::Opening,
            ex: None,
            timer: None,
            asm: LogAssembler::new(false, resume),
            retry: FIRST_RETRY,
            engine_lost: false,
            back_since: None,
            again: false,
            ended: None,
            end: None,
        }
    }

    fn has_room(&self) -> bool {
        self.chan.room() > 0
    }

    /// Payloads from the assembler onto the channel.
    fn push(&mut self, frames: Vec<(StreamTag, Vec<u8>)>) {
        for (tag, payload) in frames {
            self.chan.push(tag, payload);
        }
    }

    fn start(
        &mut self,
        ctx: &mut Ctx<'_>,
        socket: &Path,
        req: Request,
        inspect: bool,
    ) -> io::Result<()> {
        self.drop_io(ctx);
        let answer = if inspect {
            Answer::Whole(MAX_INSPECT)
        } else {
            Answer::Stream
        };
        let x = Exchange::new(&req, "logs", answer);
        // The follow keeps its own timer (inspect deadline or retry).
        let call = EngineCall::start(ctx, socket, x).map_err(|e| match e {
            CallError::Connect(e) | CallError::Io(e) => e,
            e => io::Error::other(e.to_string()),
        })?;
        if inspect {
            self.timer = Some(ctx.schedule(INSPECT_TIMEOUT, super::client::DockerTimer::Log));
        } else {
            self.state = State::Streaming;
        }
        self.ex = Some(LogCall {
            call,
            inspect,
            status: None,
            error_body: Vec::new(),
        });
        // Likely writable already; an edge may not come.
        self.again = true;
        Ok(())
    }

    fn schedule_retry(&mut self, ctx: &mut Ctx<'_>) {
        self.drop_io(ctx);
        self.state = State::Retry;
        self.timer = Some(ctx.schedule(self.retry, super::client::DockerTimer::Log));
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    fn drop_io(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel(t);
        }
        if let Some(ex) = self.ex.take() {
            ex.call.close(ctx);
        }
        self.again = false;
        self.ended = None;
    }

    /// Write, then read while the window and the outbox allow. A stream
    /// that ended sets `ended`, handled once its last frames are on the
    /// channel.
    fn drive(&mut self, ctx: &mut Ctx<'_>, outbox_full: bool) -> Outcome {
        let Some(ex) = self.ex.as_mut() else {
            return Outcome::Wait;
        };
        let streaming = !ex.inspect;
        let mut frames = Vec::new();
        loop {
            if streaming {
                self.push(std::mem::take(&mut frames));
                if outbox_full || !self.has_room() {
                    // Leave the rest in the socket: the loop comes back
                    // once there is room (an ACK, a drained outbox).
                    self.again = true;
                    break;
                }
            }
            let Some(ex) = self.ex.as_mut() else { break };
            match ex.call.drive(ctx) {
                Got::Wait => break,
                Got::Again => {
                    self.again = true;
                    break;
                }
                Got::Answer(resp, _) => {
                    return Outcome::Inspected(
                        api::parse_json::<ContainerInspect>(resp)
                            .map(Box::new)
                            .map_err(Failure::Engine),
                    )
                }
                Got::Failed(e) => return self.failed(e),
                Got::Head(h) => ex.status = Some(h.status),
                Got::Body(b) if ex.status == Some(200) => {
                    if let Err(e) = self.asm.feed(b, &mut frames) {
                        self.ended = Some(Some(e.to_string()));
                        break;
                    }
                }
                Got::Body(b) => {
                    let room = 4096usize.saturating_sub(ex.error_body.len());
                    ex.error_body.extend_from_slice(&b[..b.len().min(room)]);
                }
                Got::End => {
                    self.ended = Some(match ex.status {
                        Some(200) => None,
                        status => {
                            let msg = String::from_utf8_lossy(&ex.error_body).trim().to_owned();
                            Some(format!("engine answered {}: {msg}", status.unwrap_or(0)))
                        }
                    });
                    break;
                }
                Got::Eof => {
                    self.ended = Some(None);
                    break;
                }
            }
        }
        self.asm.flush(&mut frames);
        self.push(frames);
        match self.ended.take() {
            Some(e) => Outcome::StreamEnded(e),
            None => Outcome::Wait,
        }
    }

    fn failed(&mut self, e: CallError) -> Outcome {
        let inspect = self.ex.as_ref().is_some_and(|x| x.inspect);
        let why = match e {
            CallError::Http(e) if inspect => return Outcome::Inspected(Err(http_failure(e))),
            CallError::Io(e) => format!("reading from the engine: {e}"),
            CallError::Write(e) => format!("writing to the engine: {e}"),
            CallError::WriteZero => "the engine's socket took no bytes".into(),
            e => e.to_string(),
        };
        if inspect {
            Outcome::Inspected(Err(Failure::Unreachable(why)))
        } else {
            Outcome::StreamEnded(Some(why))
        }
    }
}

fn http_failure(e: HttpError) -> Failure {
    match e {
        HttpError::Closed => Failure::Unreachable("the engine closed the connection".into()),
        e => Failure::Engine(api::ApiError::Http(e)),
    }
}

fn describe_connect(e: &io::Error, socket: &Path) -> String {
    let p = socket.display();
    match e.kind() {
        io::ErrorKind::NotFound => format!("no socket at {p}"),
        io::ErrorKind::ConnectionRefused => format!("nothing listens on {p} (engine stopped?)"),
        _ => format!("cannot connect to {p}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mux(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ts(s: &str) -> Timestamp {
        crate::engine::stream::parse_rfc3339(s.as_bytes()).unwrap()
    }

    /// Lines per tag, joined, from every payload.
    fn collect(frames: &[(StreamTag, Vec<u8>)]) -> Vec<(StreamTag, String)> {
        let mut out = Vec::new();
        for (tag, p) in frames {
            assert!(p.len() <= MAX_DATA_PAYLOAD);
            assert_eq!(p.last(), Some(&b'\n'), "payloads hold whole lines");
            for line in String::from_utf8_lossy(p).lines() {
                out.push((*tag, line.to_owned()));
            }
        }
        out
    }

    fn sample_body() -> Vec<u8> {
        let mut body = mux(1, b"2026-11-28T10:00:00.000000001Z one\n");
        body.extend(mux(2, b"2026-11-28T10:00:00.000000002Z err\n"));
        body.extend(mux(1, b"2026-11-28T10:00:00.000000002Z two\n"));
        // A long line split by Docker: two messages, the first without LF.
        body.extend(mux(1, b"2026-11-28T10:00:01Z part-a"));
        body.extend(mux(1, b"2026-11-28T10:00:01.5Z part-b\n"));
        body.extend(mux(3, b"engine trouble"));
        body
    }

    /// A `log_open` for `channel` (follow, a small window).
    fn log_open(channel: u32, window: u32) -> LogOpen {
        let v = serde_json::json!({
            "channel": channel, "container": "web", "follow": true, "window": window
        });
        serde_json::from_value(v).unwrap()
    }

    fn frame_of(m: Outgoing) -> (FrameKind, u64, Vec<u8>) {
        let Outgoing::Binary(f) = m else {
            panic!("a frame, not {m:?}")
        };
        let (h, p) = crate::protocol::decode_frame(&f).unwrap();
        (h.kind, h.seq, p.to_vec())
    }

    /// An ended follow keeps its channel until the frames read before the
    /// end and then END are out (within the window, so ACKs still reach
    /// it); until then its number is taken; then it is gone.
    #[test]
    fn an_ended_follow_sends_its_last_frames_then_end_and_is_gone() {
        let mut reactor = crate::reactor::Reactor::new().unwrap();
        let mut ctx = reactor.ctx(crate::reactor::SourceId(1));
        let mut logs = LogFollows::new();
        let mut f = Follow::new(1, log_open(0x4000_0005, 100));
        f.state = State::Streaming;
        f.push(vec![(StreamTag::Stdout, vec![b'a'; 60]); 3]);
        assert!(!f.has_room(), "180 bytes unacknowledged, window 100");
        logs.follows.push(f);
        logs.end(&mut ctx, 0x4000_0005, "container stopped");
        assert_eq!(logs.len(), 1, "open until its END is out");

        let engine = EngineView {
            socket: Path::new("/nonexistent"),
            api: None,
        };
        logs.open(&mut ctx, &engine, 9, log_open(0x4000_0005, 0));
        let Some(Outgoing::Reply { id: 9, body }) = logs.next_message() else {
            panic!("a reply to the second log_open")
        };
        assert!(matches!(*body, Control::Error(ref e) if e.code == "bad_request"));

        assert_eq!(frame_of(logs.next_message().unwrap()).1, 0);
        assert_eq!(frame_of(logs.next_message().unwrap()).1, 60);
        assert!(logs.next_message().is_none(), "120 in flight ≥ window");
        logs.on_ack(0x4000_0005, FrameKind::Ack, 60);
        let (kind, seq, p) = frame_of(logs.next_message().unwrap());
        assert_eq!((kind, seq, p.len()), (FrameKind::Data, 120, 60));
        let (kind, seq, p) = frame_of(logs.next_message().unwrap());
        assert_eq!(
            (kind, seq, &p[..]),
            (FrameKind::End, 180, &b"container stopped"[..])
        );
        assert!(logs.is_empty() && logs.next_message().is_none());
    }

    #[test]
    fn messages_become_lines_at_every_split_point() {
        let body = sample_body();
        let want = vec![
            (
                StreamTag::Stdout,
                "2026-11-28T10:00:00.000000001Z one".to_owned(),
            ),
            (
                StreamTag::Stderr,
                "2026-11-28T10:00:00.000000002Z err".to_owned(),
            ),
            (
                StreamTag::Stdout,
                "2026-11-28T10:00:00.000000002Z two".to_owned(),
            ),
            (StreamTag::Stdout, "2026-11-28T10:00:01Z part-a".to_owned()),
            (
                StreamTag::Stdout,
                "2026-11-28T10:00:01.5Z part-b".to_owned(),
            ),
        ];
        for i in 0..=body.len() {
            let mut asm = LogAssembler::new(false, None);
            let mut out = Vec::new();
            asm.feed(&body[..i], &mut out).unwrap();
            asm.feed(&body[i..], &mut out).unwrap();
            asm.finish(&mut out);
            assert_eq!(collect(&out), want, "split at {i}");
            assert_eq!(
                asm.cursor(),
                Some(Cursor {
                    ts: ts("2026-11-28T10:00:01.5Z"),
                    skip: 1
                })
            );
        }
    }

    #[test]
    fn resume_skips_exactly_what_was_sent() {
        // Three lines share one timestamp; the receiver has two of them.
        let t = "2026-11-28T10:00:00.5Z";
        let mut body = Vec::new();
        for (n, kind) in [(1, 1u8), (2, 2), (3, 1)] {
            body.extend(mux(kind, format!("{t} same-{n}\n").as_bytes()));
        }
        body.extend(mux(1, b"2026-11-28T10:00:00.6Z later\n"));
        let resume = Cursor { ts: ts(t), skip: 2 };
        let mut asm = LogAssembler::new(false, Some(resume));
        let mut out = Vec::new();
        asm.feed(&body, &mut out).unwrap();
        asm.finish(&mut out);
        let got: Vec<String> = collect(&out).into_iter().map(|(_, l)| l).collect();
        assert_eq!(
            got,
            vec![
                format!("{t} same-3"),
                "2026-11-28T10:00:00.6Z later".to_owned()
            ]
        );
        assert_eq!(asm.skipped, 2);

        // Stop right after the third line: the cursor says 3 at that time.
        let mut asm = LogAssembler::new(false, Some(resume));
        let mut out = Vec::new();
        let cut = body.len() - mux(1, b"2026-11-28T10:00:00.6Z later\n").len();
        asm.feed(&body[..cut], &mut out).unwrap();
        assert_eq!(asm.cursor(), Some(Cursor { ts: ts(t), skip: 3 }));
        // A reopened stream from that cursor yields only the new line.
        asm.flush(&mut out);
        asm.restart(false);
        let mut out = Vec::new();
        asm.feed(&body, &mut out).unwrap();
        asm.finish(&mut out);
        let got: Vec<String> = collect(&out).into_iter().map(|(_, l)| l).collect();
        assert_eq!(got, vec!["2026-11-28T10:00:00.6Z later".to_owned()]);
    }

    #[test]
    fn tty_streams_split_at_newlines() {
        let body = b"2026-11-28T10:00:00Z a\r\n2026-11-28T10:00:01Z b\n2026-11-28T10:00:02Z tail";
        for i in 0..=body.len() {
            let mut asm = LogAssembler::new(true, None);
            let mut out = Vec::new();
            asm.feed(&body[..i], &mut out).unwrap();
            asm.feed(&body[i..], &mut out).unwrap();
            asm.finish(&mut out);
            let got: Vec<String> = collect(&out).into_iter().map(|(_, l)| l).collect();
            assert_eq!(
                got,
                vec![
                    "2026-11-28T10:00:00Z a",
                    "2026-11-28T10:00:01Z b",
                    "2026-11-28T10:00:02Z tail"
                ],
                "split at {i}"
            );
        }
    }

    #[test]
    fn payloads_stay_under_the_frame_limit() {
        let line = format!("2026-11-28T10:00:00Z {}\n", "x".repeat(1000));
        let mut body = Vec::new();
        for _ in 0..100 {
            body.extend(mux(1, line.as_bytes()));
        }
        // One message larger than a frame: cut, newline kept.
        body.extend(mux(
            2,
            format!("2026-11-28T10:00:01Z {}\n", "y".repeat(40_000)).as_bytes(),
        ));
        let mut asm = LogAssembler::new(false, None);
        let mut out = Vec::new();
        asm.feed(&body, &mut out).unwrap();
        asm.finish(&mut out);
        let lines = collect(&out);
        assert_eq!(lines.len(), 101);
        assert!(out.len() >= 4, "{} payloads", out.len());
        assert_eq!(lines[100].0, StreamTag::Stderr);
        assert_eq!(lines[100].1.len(), MAX_MESSAGE);
    }

    #[test]
    fn a_tty_stream_read_as_multiplexed_is_an_error() {
        let mut asm = LogAssembler::new(false, None);
        let mut out = Vec::new();
        let err = asm
            .feed(b"2026-11-28T10:00:00Z hi\n", &mut out)
            .unwrap_err();
        assert!(matches!(err, StreamError::BadFrameHeader(_)));
    }

    #[test]
    fn lines_without_a_timestamp_pass_and_keep_the_cursor() {
        let mut body = mux(1, b"2026-11-28T10:00:00Z a\n");
        body.extend(mux(1, b"garbage\n"));
        let mut asm = LogAssembler::new(false, None);
        let mut out = Vec::new();
        asm.feed(&body, &mut out).unwrap();
        asm.finish(&mut out);
        assert_eq!(collect(&out).len(), 2);
        assert_eq!(
            asm.cursor(),
            Some(Cursor {
                ts: ts("2026-11-28T10:00:00Z"),
                skip: 1
            })
        );
    }
}
