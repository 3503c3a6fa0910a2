//! Container terminals: an Engine exec with a TTY whose hijacked connection
//! carries the terminal's bytes both ways (raw: a TTY exec is not
//! multiplexed).
//!
//! ```text
//!  POST /containers/{id}/exec (Tty, stdin) ─▶ POST /exec/{id}/start (hijack)
//!     ─▶ 101 ─▶ raw stream in the loop ──EOF──▶ GET /exec/{id}/json: exit code
//!  resize: POST /exec/{id}/resize      hang-up: GET /exec/{id}/json ─▶ SIGHUP, later SIGKILL, to its host pid
//! ```
//!
//! The setup calls, resize and inspect are short request/answer exchanges
//! on the local unix socket, done blocking with a tight socket timeout
//! ([`CALL_TIMEOUT`]): a few milliseconds of the loop per terminal event,
//! against a state machine per call. The long-lived stream is non-blocking
//! and lives in the loop like any other source.
//!
//! Why the hang-up signals the pid: closing the hijacked connection does not
//! end a TTY exec (the engine keeps the process, and with it the exec
//! session, running). The runner shares the host's pid namespace with the
//! engine, so the exec's `Pid` from inspect is ours to signal.

use crate::docker::api::{self, Api, CreatedExec, ExecConfig, ExecInspect};
use crate::docker::http::{BufferedDecoder, Event, Request, Response, ResponseDecoder};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest any setup call, resize or inspect may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER: usize = 256 * 1024;

/// A request and its whole answer on a fresh connection.
pub fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the engine at {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(CALL_TIMEOUT)).ok();
    s.set_write_timeout(Some(CALL_TIMEOUT)).ok();
    s.write_all(&req.encode())
        .map_err(|e| format!("writing to the engine: {e}"))?;
    let mut dec = BufferedDecoder::new(req.expect(), MAX_ANSWER);
    let mut buf = [0u8; 16 * 1024];
    while !dec.is_done() {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading from the engine: {e}")),
        };
        if n == 0 {
            dec.eof().map_err(|e| e.to_string())?;
            break;
        }
        dec.feed(&buf[..n]).map_err(|e| e.to_string())?;
    }
    dec.take()
        .ok_or_else(|| "the engine closed the connection early".to_owned())
}

/// An engine error (404 etc.) keeps the engine's words.
pub enum ExecError {
    NotFound(String),
    Engine(String),
}

/// Create and start a TTY exec: its id, the raw stream (blocking mode; the
/// caller makes it non-blocking), and bytes that came with the upgrade.
pub fn start(
    socket: &Path,
    api: Api,
    container: &str,
    command: &[String],
    user: Option<&str>,
    cols: u16,
    rows: u16,
) -> Result<(String, UnixStream, Vec<u8>), ExecError> {
    let cmd = if command.is_empty() {
        vec!["sh".to_owned()]
    } else {
        command.to_vec()
    };
    let config = ExecConfig {
        attach_stdin: true,
        attach_stdout: true,
        attach_stderr: true,
        tty: true,
        cmd,
        env: vec!["TERM=xterm-256color".into()],
        working_dir: None,
        user: user.map(str::to_owned),
        console_size: Some([rows.max(1), cols.max(1)]),
    };
    let created = call(socket, &api.exec_create(container, &config)).map_err(ExecError::Engine)?;
    let created: CreatedExec = api::parse_json(created).map_err(|e| {
        if e.is_not_found() {
            ExecError::NotFound(e.to_string())
        } else {
            ExecError::Engine(e.to_string())
        }
    })?;
    let req = api.exec_start(&created.id, true);
    let mut s = UnixStream::connect(socket).map_err(|e| ExecError::Engine(e.to_string()))?;
    s.set_read_timeout(Some(CALL_TIMEOUT)).ok();
    s.set_write_timeout(Some(CALL_TIMEOUT)).ok();
    s.write_all(&req.encode())
        .map_err(|e| ExecError::Engine(format!("writing to the engine: {e}")))?;
    let mut dec = ResponseDecoder::new(req.expect());
    let mut buf = [0u8; 4096];
    let mut status = 0u16;
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| ExecError::Engine(format!("reading from the engine: {e}")))?;
        if n == 0 {
            return Err(ExecError::Engine(
                "the engine closed the exec before starting it".into(),
            ));
        }
        let mut input = &buf[..n];
        while !input.is_empty() {
            let step = dec
                .feed(input)
                .map_err(|e| ExecError::Engine(e.to_string()))?;
            input = &input[step.consumed..];
            match step.item {
                None => break,
                Some(Event::Head(h)) => status = h.status,
                Some(Event::Upgraded) => {
                    s.set_read_timeout(None).ok();
                    s.set_write_timeout(None).ok();
                    return Ok((created.id, s, input.to_vec()));
                }
                Some(Event::Body(_)) | Some(Event::End) => {
                    return Err(ExecError::Engine(format!(
                        "the engine answered {status} to exec start"
                    )))
                }
            }
        }
    }
}

/// Older engines ignore `ConsoleSize`; a resize after start always works.
pub fn resize(socket: &Path, api: Api, exec_id: &str, cols: u16, rows: u16) -> Result<(), String> {
    let resp = call(socket, &api.exec_resize(exec_id, rows.max(1), cols.max(1)))?;
    api::check(resp).map(|_| ()).map_err(|e| e.to_string())
}

pub fn inspect(socket: &Path, api: Api, exec_id: &str) -> Result<ExecInspect, String> {
    let resp = call(socket, &api.exec_inspect(exec_id))?;
    api::parse_json(resp).map_err(|e| e.to_string())
}
