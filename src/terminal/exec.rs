//! Container terminals: an Engine exec with a TTY whose hijacked connection
//! carries the terminal's bytes both ways (raw: a TTY exec is not
//! multiplexed). Every Engine call is an [`EngineCall`] driven by the event
//! loop with its own 5 s deadline, so a stalled engine stalls this
//! terminal only, never the loop (other terminals, jobs, metrics).
//!
//! ```text
//!  term_open ─▶ Creating ──201 {Id}──▶ Starting ──101 (hijack)──▶ Attached ──EOF──▶ Ending ──exited──▶ Ended("exited N")
//!     POST /containers/{c}/exec  POST /exec/{id}/start   raw stream in the     GET /exec/{id}/json
//!        │                         │                     loop, keystrokes       │ still running: again in 20 ms
//!        │ 404: no_such_container  │ error answer        that came before       │ (the stream ends a moment
//!        │ error, deadline         │ deadline            it are written now     │ before the engine records
//!        └────────────┬────────────┘                                            │ the exit); error: "exited"
//!                     ▼
//!          Refused(code, why): the term_open's error reply (a start that may
//!          have reached the engine is hung up as below)
//!
//!  hang-up (close, idle timeout, link down), in any state:
//!     Hangup: GET /exec/{id}/json ─▶ SIGHUP to its pid ─▶ SIGKILL after the grace (the caller's)
//!  resize: at most one POST /exec/{id}/resize in flight, fire and forget;
//!          sizes that come meanwhile collapse into the latest; one after
//!          attach, because engines before API 1.42 ignore ConsoleSize.
//! ```
//!
//! Why the hang-up signals the pid: closing the hijacked connection does not
//! end a TTY exec (the engine keeps the process, and with it the exec
//! session, running). The runner shares the host's pid namespace with the
//! engine, so the exec's `Pid` from inspect is ours to signal.

use super::TerminalTimer;
use crate::engine::api::{self, Api, CreatedExec, ExecConfig, ExecInspect};
use crate::engine::Engine;
use crate::engine::{Answer, CallError, EngineCall, Exchange, Got};
use crate::net::http::{Request, Response};
use crate::protocol::TermOpen;
use crate::reactor::{Ctx, TimerId};
use crate::{debug, warn};
use mio::net::UnixStream;
use mio::Token;
use std::path::PathBuf;
use std::time::Duration;

/// Between inspects while the engine has not recorded the exit yet.
const RETRY_EVERY: Duration = Duration::from_millis(20);
/// Inspects after EOF before giving up on the exit code (about 0.5 s).
const MAX_TRIES: u32 = 25;

/// What an exec's event meant for its terminal.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// The raw stream is up ([`Exec::stream`]); `early` came with the 101.
    Attached {
        early: Vec<u8>,
    },
    /// It never attached: the `term_open`'s error reply.
    Refused {
        code: &'static str,
        message: String,
    },
    /// The shell ended; the END frame's reason.
    Ended(String),
}

enum State {
    Creating(EngineCall),
    Starting(EngineCall),
    Attached(UnixStream),
    Ending {
        call: Option<EngineCall>,
        tries: u32,
        retry: Option<TimerId>,
    },
    Done,
}

/// One container terminal's exec.
pub struct Exec {
    socket: PathBuf,
    api: Api,
    state: State,
    exec_id: Option<String>,
    /// The start request went out: the process may run, hang-up needed.
    started: bool,
    /// The latest size asked for: (cols, rows).
    size: (u16, u16),
    resize: Option<EngineCall>,
    resize_due: bool,
}

impl Exec {
    /// Start creating the exec; `Err` is a `docker_error` reply (the
    /// socket cannot be reached).
    pub fn open(
        ctx: &mut Ctx<'_>,
        engine: Engine,
        container: &str,
        open: &TermOpen,
    ) -> Result<Exec, String> {
        let cmd = if open.command.is_empty() {
            vec!["sh".to_owned()]
        } else {
            open.command.clone()
        };
        let size = (open.cols.max(1), open.rows.max(1));
        let config = ExecConfig {
            attach_stdin: true,
            attach_stdout: true,
            attach_stderr: true,
            tty: true,
            cmd,
            env: vec!["TERM=xterm-256color".into()],
            working_dir: None,
            user: open.user.clone(),
            console_size: Some([size.1, size.0]),
        };
        let req = engine.api.exec_create(container, &config);
        let call = start_call(ctx, &engine.socket, &req, "exec create")?;
        Ok(Exec {
            socket: engine.socket,
            api: engine.api,
            state: State::Creating(call),
            exec_id: None,
            started: false,
            size,
            resize: None,
            resize_due: false,
        })
    }

    /// The raw stream, once attached.
    pub fn stream(&mut self) -> Option<&mut UnixStream> {
        match &mut self.state {
            State::Attached(s) => Some(s),
            _ => None,
        }
    }

    fn call(&self) -> Option<&EngineCall> {
        match &self.state {
            State::Creating(c) | State::Starting(c) => Some(c),
            State::Ending { call, .. } => call.as_ref(),
            State::Attached(_) | State::Done => None,
        }
    }

    /// A token of one of its calls (not the attached stream's: the
    /// terminal registers that under its own).
    pub fn owns(&self, token: Token) -> bool {
        self.call().is_some_and(|c| c.token() == token)
            || self.resize.as_ref().is_some_and(|c| c.token() == token)
    }

    pub fn owns_timer(&self, id: TimerId) -> bool {
        self.call().is_some_and(|c| c.timer() == Some(id))
            || self.resize.as_ref().is_some_and(|c| c.timer() == Some(id))
            || matches!(self.state, State::Ending { retry: Some(r), .. } if r == id)
    }

    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>, token: Token) -> Step {
        if let Some(c) = self.resize.as_mut().filter(|c| c.token() == token) {
            let got = got_result(c.what(), c.drive(ctx));
            if let Some(r) = got {
                self.resized(ctx, r);
            }
            return Step::Nothing;
        }
        let got = match &mut self.state {
            State::Creating(c) | State::Starting(c) => got_result(c.what(), c.drive(ctx)),
            State::Ending { call: Some(c), .. } => got_result(c.what(), c.drive(ctx)),
            _ => return Step::Nothing,
        };
        match got {
            None => Step::Nothing,
            Some(r) => self.answered(ctx, r),
        }
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId) -> Step {
        if let Some(c) = self.resize.as_ref().filter(|c| c.timer() == Some(id)) {
            let why = timed_out(c);
            self.resized(ctx, Err(why));
            return Step::Nothing;
        }
        if let State::Ending {
            call: None,
            tries,
            retry: Some(r),
        } = &self.state
        {
            if *r == id {
                let tries = *tries;
                return self.inspect(ctx, tries);
            }
        }
        match self.call() {
            Some(c) if c.timer() == Some(id) => {
                let why = timed_out(c);
                self.answered(ctx, Err(why))
            }
            _ => Step::Nothing,
        }
    }

    /// The terminal's new size; sent once attached, only the latest.
    pub fn resize(&mut self, ctx: &mut Ctx<'_>, cols: u16, rows: u16) {
        self.size = (cols.max(1), rows.max(1));
        self.resize_due = true;
        self.send_resize(ctx);
    }

    /// The raw stream ended (the caller deregistered it): find the exit
    /// code.
    pub fn on_eof(&mut self, ctx: &mut Ctx<'_>) -> Step {
        if !matches!(self.state, State::Attached(_)) {
            return Step::Nothing;
        }
        // Dropping the stream closes it.
        self.state = State::Done;
        self.close_resize(ctx);
        self.inspect(ctx, 0)
    }

    /// Stop everything of this exec. `Some` when the process may still run
    /// and must be signalled once its pid is known.
    pub fn hang_up(&mut self, ctx: &mut Ctx<'_>) -> Option<Hangup> {
        self.close_resize(ctx);
        match std::mem::replace(&mut self.state, State::Done) {
            State::Creating(c) | State::Starting(c) => c.close(ctx),
            State::Ending { call, retry, .. } => {
                if let Some(c) = call {
                    c.close(ctx);
                }
                if let Some(r) = retry {
                    ctx.cancel(r);
                }
            }
            // The caller deregistered it; dropping closes it.
            State::Attached(_) | State::Done => {}
        }
        if !self.started {
            return None;
        }
        let id = self.exec_id.clone()?;
        Hangup::start(ctx, &self.socket, &self.api, id)
    }

    // ---- internals -------------------------------------------------------

    /// The call of the current state finished (or its deadline passed).
    fn answered(&mut self, ctx: &mut Ctx<'_>, r: Answered) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Creating(c) => {
                c.close(ctx);
                let resp = match r {
                    Ok((resp, _)) => resp,
                    Err(why) => return refused("docker_error", why),
                };
                match api::parse_json::<CreatedExec>(resp) {
                    Ok(created) => self.start(ctx, created.id),
                    Err(e) if e.is_not_found() => refused("no_such_container", e.to_string()),
                    Err(e) => refused("docker_error", format!("exec create: {e}")),
                }
            }
            State::Starting(c) => match r {
                Ok((resp, early)) if resp.upgraded => {
                    self.state = State::Attached(c.into_stream(ctx));
                    // Engines before API 1.42 ignore ConsoleSize.
                    self.resize_due = true;
                    self.send_resize(ctx);
                    Step::Attached { early }
                }
                Ok((resp, _)) => {
                    c.close(ctx);
                    let status = resp.head.status;
                    let why = match api::check(resp) {
                        Err(e) => format!("exec start: {e}"),
                        Ok(_) => {
                            format!("the engine answered {status} to exec start, not a stream")
                        }
                    };
                    refused("docker_error", why)
                }
                Err(why) => {
                    c.close(ctx);
                    refused("docker_error", why)
                }
            },
            State::Ending {
                call: Some(c),
                tries,
                ..
            } => {
                c.close(ctx);
                let inspected = r.and_then(|(resp, _)| {
                    api::parse_json::<ExecInspect>(resp).map_err(|e| format!("exec inspect: {e}"))
                });
                match inspected {
                    Ok(x) if !x.running => Step::Ended(match x.exit_code {
                        Some(c) => format!("exited {c}"),
                        None => "exited".to_owned(),
                    }),
                    Ok(_) if tries < MAX_TRIES => {
                        let retry = ctx.schedule(RETRY_EVERY, TerminalTimer::Engine);
                        self.state = State::Ending {
                            call: None,
                            tries,
                            retry: Some(retry),
                        };
                        Step::Nothing
                    }
                    Ok(_) => Step::Ended("exited".to_owned()),
                    Err(why) => {
                        debug!("term", "after the stream ended: {why}");
                        Step::Ended("exited".to_owned())
                    }
                }
            }
            other => {
                self.state = other;
                Step::Nothing
            }
        }
    }

    fn start(&mut self, ctx: &mut Ctx<'_>, id: String) -> Step {
        let req = self.api.exec_start(&id, true);
        self.exec_id = Some(id);
        match start_call(ctx, &self.socket, &req, "exec start") {
            Ok(c) => {
                self.started = true;
                self.state = State::Starting(c);
                Step::Nothing
            }
            Err(why) => refused("docker_error", why),
        }
    }

    fn inspect(&mut self, ctx: &mut Ctx<'_>, tries: u32) -> Step {
        let Some(id) = &self.exec_id else {
            return Step::Ended("exited".to_owned());
        };
        let req = self.api.exec_inspect(id);
        match start_call(ctx, &self.socket, &req, "exec inspect") {
            Ok(c) => {
                self.state = State::Ending {
                    call: Some(c),
                    tries: tries + 1,
                    retry: None,
                };
                Step::Nothing
            }
            Err(why) => {
                debug!("term", "after the stream ended: {why}");
                self.state = State::Done;
                Step::Ended("exited".to_owned())
            }
        }
    }

    /// A resize answered, failed or timed out: send the next one if due.
    fn resized(&mut self, ctx: &mut Ctx<'_>, r: Answered) {
        self.close_resize(ctx);
        let r = r.and_then(|(resp, _)| api::check(resp).map_err(|e| e.to_string()));
        if let Err(why) = r {
            // Cosmetic: the shell keeps its old size.
            debug!(
                "term",
                "exec resize to {}x{}: {why}", self.size.0, self.size.1
            );
        }
        self.send_resize(ctx);
    }

    fn send_resize(&mut self, ctx: &mut Ctx<'_>) {
        if !self.resize_due || self.resize.is_some() || !matches!(self.state, State::Attached(_)) {
            return;
        }
        let Some(id) = &self.exec_id else { return };
        self.resize_due = false;
        let (cols, rows) = self.size;
        let req = self.api.exec_resize(id, rows, cols);
        match start_call(ctx, &self.socket, &req, "exec resize") {
            Ok(c) => self.resize = Some(c),
            Err(why) => debug!("term", "exec resize: {why}"),
        }
    }

    fn close_resize(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(c) = self.resize.take() {
            c.close(ctx);
        }
    }
}

fn refused(code: &'static str, message: String) -> Step {
    Step::Refused { code, message }
}

/// Deadline of each call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer kept (an exec inspect is about 1 KiB).
const MAX_ANSWER: usize = 256 * 1024;

/// What a finished call gave: the answer and the bytes read past it (a
/// hijack's first raw bytes), or why there is none.
pub type Answered = Result<(Response, Vec<u8>), String>;

/// An Engine call of this terminal: its answer whole, under the
/// terminal's deadline.
fn start_call(
    ctx: &mut Ctx<'_>,
    socket: &std::path::Path,
    req: &Request,
    what: &'static str,
) -> Result<EngineCall, String> {
    let x = Exchange::new(req, what, Answer::Whole(MAX_ANSWER));
    let call = EngineCall::start(ctx, socket, x).map_err(|e| match e {
        CallError::Connect(e) => format!("cannot reach the engine at {}: {e}", socket.display()),
        CallError::Io(e) => format!("cannot watch the engine socket: {e}"),
        e => format!("{what}: {e}"),
    })?;
    Ok(call.deadline(ctx, CALL_TIMEOUT, TerminalTimer::Engine))
}

/// The error of a call whose deadline passed.
fn timed_out(c: &EngineCall) -> String {
    format!(
        "the engine did not answer {} within {} s",
        c.what(),
        CALL_TIMEOUT.as_secs()
    )
}

/// `None` while the call waits.
fn got_result(what: &str, got: Got<'_>) -> Option<Answered> {
    match got {
        Got::Wait | Got::Again => None,
        Got::Answer(resp, rest) => Some(Ok((resp, rest))),
        Got::Failed(e) => Some(Err(format!("{what}: {e}"))),
        // A whole answer is never streamed.
        Got::Head(_) | Got::Body(_) | Got::End | Got::Eof => {
            Some(Err(format!("{what}: the engine's answer was cut short")))
        }
    }
}

/// A hung-up exec whose pid is being asked for.
pub struct Hangup {
    exec_id: String,
    call: EngineCall,
}

impl Hangup {
    fn start(ctx: &mut Ctx<'_>, socket: &std::path::Path, api: &Api, id: String) -> Option<Hangup> {
        match start_call(ctx, socket, &api.exec_inspect(&id), "exec inspect") {
            Ok(call) => Some(Hangup { exec_id: id, call }),
            Err(why) => {
                warn!("term", "cannot hang up exec {id}: {why}");
                None
            }
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.call.token() == token
    }

    pub fn owns_timer(&self, id: TimerId) -> bool {
        self.call.timer() == Some(id)
    }

    /// `None` while waiting; then the outcome, for [`finish`](Self::finish).
    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>) -> Option<Answered> {
        got_result(self.call.what(), self.call.drive(ctx))
    }

    /// The answer (or `None`: the deadline passed): the host pid of a
    /// process still running, to signal.
    pub fn finish(self, ctx: &mut Ctx<'_>, got: Option<Answered>) -> Option<i32> {
        let r = match got {
            Some(r) => r,
            None => Err(timed_out(&self.call)),
        };
        self.call.close(ctx);
        let r = r.and_then(|(resp, _)| {
            api::parse_json::<ExecInspect>(resp).map_err(|e| format!("exec inspect: {e}"))
        });
        match r {
            Ok(x) if x.running && x.pid > 0 => i32::try_from(x.pid).ok(),
            Ok(_) => None,
            Err(why) => {
                warn!("term", "cannot hang up exec {}: {why}", self.exec_id);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::api::ApiVersion;
    use crate::reactor::Reactor as EventLoop;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream as StdUnix};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// A fake engine: exec create gives an id, start a 101 and a prompt
    /// (the stream held until `hang` is set), each resize is answered
    /// 200 ms late (so others come while it is in flight), inspect says
    /// exited 3.
    fn fake_engine(path: &std::path::Path, seen: Arc<Mutex<Vec<String>>>, hang: Arc<AtomicBool>) {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let (seen, hang) = (seen.clone(), hang.clone());
                std::thread::spawn(move || serve(s, &seen, &hang));
            }
        });
    }

    fn serve(mut s: StdUnix, seen: &Mutex<Vec<String>>, hang: &AtomicBool) {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or("").to_owned();
        seen.lock().unwrap().push(line.clone());
        let json = |status: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let answer = if line.contains("/containers/web/exec ") {
            json("201 Created", r#"{"Id":"x1"}"#)
        } else if line.contains("/exec/x1/start ") {
            let _ = s.write_all(
                b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n/ # ",
            );
            while !hang.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            return;
        } else if line.contains("/exec/x1/resize") {
            std::thread::sleep(Duration::from_millis(200));
            json("200 OK", "")
        } else if line.contains("/exec/x1/json ") {
            json("200 OK", r#"{"Running":false,"ExitCode":3,"Pid":0}"#)
        } else {
            json("404 Not Found", r#"{"message":"no such thing"}"#)
        };
        let _ = s.write_all(answer.as_bytes());
    }

    /// Turn the loop for `x` until `want` says so (or 5 s).
    fn until(
        el: &mut EventLoop,
        x: &mut Exec,
        mut want: impl FnMut(&Step, &mut Exec) -> bool,
    ) -> Step {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            let (tokens, timers) = el.turn(Duration::from_millis(20));
            let mut steps = Vec::new();
            for t in tokens {
                steps.push(x.on_ready(&mut el.test_ctx(), t));
            }
            for (id, _) in timers {
                steps.push(x.on_timer(&mut el.test_ctx(), id));
            }
            steps.push(Step::Nothing);
            for s in steps {
                if want(&s, x) {
                    return s;
                }
            }
        }
        panic!("no such step within 5 s");
    }

    #[test]
    fn an_exec_attaches_coalesces_resizes_and_reports_its_exit_code() {
        let dir = std::env::temp_dir().join(format!("tether-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hang = Arc::new(AtomicBool::new(false));
        fake_engine(&socket, seen.clone(), hang.clone());
        let mut el = EventLoop::new().unwrap();
        let engine = Engine {
            socket: socket.clone(),
            api: Api::new(ApiVersion::new(1, 41)),
        };
        let open = TermOpen {
            channel: 1 << 31,
            container: Some("web".into()),
            command: Vec::new(),
            user: None,
            cols: 80,
            rows: 24,
            idle_timeout_s: 0,
            detach_timeout_s: 0,
            window: 0,
            signed: None,
        };
        let mut x = Exec::open(&mut el.test_ctx(), engine, "web", &open).unwrap();
        assert!(
            x.stream().is_none(),
            "not attached before the engine answers"
        );
        let step = until(&mut el, &mut x, |s, _| matches!(s, Step::Attached { .. }));
        let Step::Attached { early } = step else {
            unreachable!()
        };
        // The prompt came with the 101 or waits in the socket.
        assert!(early.is_empty() || early == b"/ # ", "{early:?}");
        assert!(x.stream().is_some());
        // The first resize (after attach) is in flight: these collapse.
        for (c, r) in [(50, 10), (60, 20), (70, 30)] {
            x.resize(&mut el.test_ctx(), c, r);
        }
        until(&mut el, &mut x, |_, x| {
            let n = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("/resize"))
                .count();
            n == 2 && x.resize.is_none()
        });
        std::thread::sleep(Duration::from_millis(300));
        let resizes: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("/resize"))
            .cloned()
            .collect();
        assert_eq!(resizes.len(), 2, "{resizes:?}");
        assert!(resizes[0].contains("h=24&w=80"), "{resizes:?}");
        assert!(
            resizes[1].contains("h=30&w=70"),
            "only the latest: {resizes:?}"
        );
        // The shell exits: the stream ends, the inspect gives the code.
        hang.store(true, Ordering::SeqCst);
        let step = x.on_eof(&mut el.test_ctx());
        assert_eq!(step, Step::Nothing, "the inspect is in flight");
        let step = until(&mut el, &mut x, |s, _| matches!(s, Step::Ended(_)));
        assert_eq!(step, Step::Ended("exited 3".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
