//! The session on an established WebSocket: hello and welcome, the
//! server's messages (its own: welcome, ping, error; every other one handed
//! on as a [`LinkEvent`] for the feature owning its family), liveness (ping
//! timer, watchdog), and the close handshake.

use super::*;

/// What the server's close code asks of us (docs/protocol.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// 4002: the runner was revoked; exit with code 9, never retry.
    ExitRevoked,
    /// 4003: back off, keep retrying slowly.
    ReconnectSlowly,
    /// Everything else: reconnect with the normal backoff.
    Reconnect,
}

pub fn close_action(code: u16) -> CloseAction {
    match code {
        close::REVOKED => CloseAction::ExitRevoked,
        close::UNSUPPORTED_PROTOCOL => CloseAction::ReconnectSlowly,
        _ => CloseAction::Reconnect,
    }
}

/// The hello this runner sends.
pub fn hello_message(cfg: &ConnConfig) -> Control {
    Control::Hello(protocol::Hello {
        protocol: protocol::SUPPORTED_VERSIONS.to_vec(),
        runner_version: crate::version::version().to_owned(),
        arch: cfg.hello.arch.clone(),
        os: cfg.hello.os.clone(),
        hostname: cfg.hello.hostname.clone(),
        heartbeat_ms: cfg.heartbeat.as_millis() as u64,
        capabilities: cfg.hello.capabilities.clone(),
        // Data channels arrive with jobs; nothing to resume yet.
        open_channels: Vec::new(),
        metrics_interval_ms: cfg.metrics_interval_ms,
        labels: cfg.hello.labels.clone(),
    })
}

/// The answer to a server `ping`.
pub fn pong_for(ping: &protocol::Ping) -> Control {
    Control::Pong(protocol::Pong {
        sent_ms: ping.sent_ms,
        now_ms: crate::log::now_ms(),
        version: crate::version::version().to_owned(),
    })
}

pub(super) fn truncate_reason(s: &str) -> String {
    clip(s, MAX_CLOSE_REASON).to_owned()
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(super) fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An established WebSocket.
pub(super) struct Link {
    pub(super) ws: Ws,
    /// Output is queued that the socket did not take yet: want WRITABLE.
    pub(super) unflushed: bool,
    /// Last frame of any kind from the server (watchdog).
    pub(super) last_frame: Instant,
}

impl Link {
    /// Push queued output; `WouldBlock` just means "later".
    pub(super) fn flush(&mut self) -> Result<(), tungstenite::Error> {
        match self.ws.flush() {
            Ok(()) => {
                self.unflushed = false;
                Ok(())
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.unflushed = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Queue and push one message. A `WouldBlock` means the message is
    /// queued in tungstenite's (bounded) buffer.
    pub(super) fn send(&mut self, msg: WsMessage) -> Result<(), tungstenite::Error> {
        match self.ws.write(msg) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.unflushed = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.flush()
    }

    pub(super) fn send_control(
        &mut self,
        id: u64,
        body: Control,
    ) -> Result<(), tungstenite::Error> {
        self.send(WsMessage::text(protocol::encode_control(id, body)))
    }
}

/// Where an established link stands.
pub(super) enum LinkStage {
    Hello { hello_id: u64 },
    Connected,
    Closing(AfterClose),
}

impl LinkStage {
    fn into_phase(self, link: Link) -> Phase {
        match self {
            LinkStage::Hello { hello_id } => Phase::Hello { link, hello_id },
            LinkStage::Connected => Phase::Connected { link },
            LinkStage::Closing(then) => Phase::Closing { link, then },
        }
    }
}

/// What a message asks the link to do next.
pub(super) enum Flow {
    Continue,
    /// Send a close frame and wait for the reply.
    Close {
        code: u16,
        reason: String,
        then: AfterClose,
    },
    /// Hang up now.
    Drop(AfterClose),
}

pub(super) fn ws_failure(e: tungstenite::Error) -> Failure {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Failure::Dropped
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Failure::Dropped
        }
        tungstenite::Error::Io(error) => match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => {
                if let Some(t) = tls::rustls_error(&error) {
                    return Failure::Tls(t.clone());
                }
                Failure::Dropped
            }
            _ => io_failure("connection", error),
        },
        tungstenite::Error::Capacity(c) => Failure::Violation(c.to_string()),
        // Our own backpressure: the server stopped reading (not its protocol error).
        tungstenite::Error::WriteBufferFull(_) => Failure::Io {
            phase: "sending",
            error: io::Error::new(
                io::ErrorKind::WouldBlock,
                "send buffer full: the server is not reading",
            ),
        },
        tungstenite::Error::Utf8(d) => {
            Failure::Violation(format!("invalid UTF-8 in a text frame: {d}"))
        }
        other => Failure::WebSocket(other.to_string()),
    }
}

impl Connection {
    pub(super) fn start_hello(&mut self, ctx: &mut Ctx<'_>, ws: Ws) -> Step {
        let mut link = Link {
            ws,
            unflushed: false,
            last_frame: ctx.now,
        };
        let hello_id = self.request_id();
        self.hello_error = None;
        self.arm_phase_timer(ctx, self.cfg.phase_timeout);
        if let Err(e) = link.send_control(hello_id, hello_message(&self.cfg)) {
            return self.link_failed(ctx, link, ws_failure(e));
        }
        debug!("conn", "upgraded; hello sent");
        // The welcome may already sit in tungstenite's buffer: read at once.
        Step::Again(Phase::Hello { link, hello_id })
    }

    pub(super) fn drive_link(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut link: Link,
        mut stage: LinkStage,
    ) -> Step {
        if let Err(e) = link.flush() {
            return self.link_ended(ctx, link, stage, e);
        }
        for _ in 0..MAX_MESSAGES_PER_PASS {
            match link.ws.read() {
                Ok(msg) => {
                    link.last_frame = ctx.now;
                    match self.on_message(ctx, &mut link, &mut stage, msg) {
                        Flow::Continue => {}
                        Flow::Close { code, reason, then } => {
                            return self.start_close(ctx, link, code, &reason, then)
                        }
                        Flow::Drop(then) => return self.finish_close(ctx, link, then),
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    // tungstenite may have queued a pong or close reply.
                    if let Err(e) = link.flush() {
                        return self.link_ended(ctx, link, stage, e);
                    }
                    return Step::Wait(stage.into_phase(link));
                }
                Err(e) => return self.link_ended(ctx, link, stage, e),
            }
        }
        // Cap reached: let other sources run, come back before sleeping.
        self.again = true;
        if let Err(e) = link.flush() {
            return self.link_ended(ctx, link, stage, e);
        }
        Step::Wait(stage.into_phase(link))
    }

    pub(super) fn on_message(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: &mut Link,
        stage: &mut LinkStage,
        msg: WsMessage,
    ) -> Flow {
        if let LinkStage::Closing(_) = stage {
            // Only the close reply matters now.
            if let WsMessage::Close(_) = msg {
                let LinkStage::Closing(then) = std::mem::replace(stage, LinkStage::Connected)
                else {
                    unreachable!()
                };
                return Flow::Drop(then);
            }
            return Flow::Continue;
        }
        match msg {
            WsMessage::Text(text) => self.on_control(ctx, link, stage, text.as_str()),
            WsMessage::Binary(bytes) => self.on_data(link, &bytes),
            WsMessage::Pong(payload) => {
                self.on_pong(&payload);
                Flow::Continue
            }
            // tungstenite queued the Pong; drive_link flushes it.
            WsMessage::Ping(_) | WsMessage::Frame(_) => Flow::Continue,
            WsMessage::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    None => (close::NORMAL, String::new()),
                };
                // Send tungstenite's queued close reply before hanging up.
                let _ = link.flush();
                match close_action(code) {
                    CloseAction::ExitRevoked => {
                        error!(
                            "conn",
                            "runner revoked: the server closed the connection with {code} {reason}"
                        );
                        Flow::Drop(AfterClose::Exit(Exit::Revoked(reason)))
                    }
                    CloseAction::ReconnectSlowly => {
                        let why = self.hello_error.take().unwrap_or(reason);
                        Flow::Drop(AfterClose::Reconnect(Failure::NoCommonProtocol(why)))
                    }
                    CloseAction::Reconnect => {
                        Flow::Drop(AfterClose::Reconnect(Failure::Closed { code, reason }))
                    }
                }
            }
        }
    }

    pub(super) fn on_control(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: &mut Link,
        stage: &mut LinkStage,
        text: &str,
    ) -> Flow {
        let envelope = match protocol::decode_control(text) {
            Ok(Decoded::Known(env)) => env,
            Ok(Decoded::Unknown { type_name, .. }) => {
                self.note_unknown(format!("message type '{type_name}'"));
                return Flow::Continue;
            }
            Err(e) => return self.undecodable(link, stage, text, e),
        };
        match envelope.body {
            Control::Welcome(w) => {
                let LinkStage::Hello { .. } = stage else {
                    debug!("conn", "ignoring a welcome outside the hello phase");
                    return Flow::Continue;
                };
                if !protocol::SUPPORTED_VERSIONS.contains(&w.protocol) {
                    return self.violation(
                        link,
                        format!(
                            "welcome settled on protocol {} which this runner does not speak",
                            w.protocol
                        ),
                    );
                }
                if w.runner_id != self.cfg.runner_id {
                    warn!(
                        "conn",
                        "server calls this runner {} but credential.json says {}",
                        w.runner_id,
                        self.cfg.runner_id
                    );
                }
                *stage = LinkStage::Connected;
                self.on_connected(ctx, &w);
                Flow::Continue
            }
            Control::Ping(p) => {
                if let Err(e) = link.send_control(envelope.id, pong_for(&p)) {
                    debug!("conn", "cannot answer ping: {e}");
                }
                Flow::Continue
            }
            Control::Error(e) => {
                warn!(
                    "conn",
                    "server reported an error: {}: {}", e.code, e.message
                );
                if let LinkStage::Hello { .. } = stage {
                    self.hello_error = Some(format!("{}: {}", e.code, e.message));
                }
                Flow::Continue
            }
            body => {
                if crate::link::family(&body).is_none() {
                    debug!(
                        "conn",
                        "ignoring an unexpected '{}' message",
                        body.type_name()
                    );
                } else if let LinkStage::Connected = stage {
                    // Handed on as decoded: the feature owning its family
                    // takes it (runner.rs routes it).
                    self.push_link_event(LinkEvent::Message {
                        id: envelope.id,
                        body: Box::new(body),
                    });
                }
                Flow::Continue
            }
        }
    }

    pub(super) fn on_data(&mut self, link: &mut Link, bytes: &[u8]) -> Flow {
        match protocol::decode_frame(bytes) {
            Ok((header, _)) if matches!(header.kind, FrameKind::Ack | FrameKind::Credit) => {
                // For a channel that is gone this is ignored downstream.
                self.push_link_event(LinkEvent::ChannelAck {
                    channel: header.channel,
                    kind: header.kind,
                    seq: header.seq,
                });
                Flow::Continue
            }
            Ok((header, payload)) if header.kind == FrameKind::Data => {
                // Keystrokes for a terminal; ignored downstream if unknown.
                self.push_link_event(LinkEvent::ChannelData {
                    channel: header.channel,
                    seq: header.seq,
                    payload: payload.to_vec(),
                });
                Flow::Continue
            }
            Ok((header, payload)) => {
                debug!(
                    "conn",
                    "ignoring a {:?} frame for channel {} ({} bytes)",
                    header.kind,
                    header.channel,
                    payload.len()
                );
                Flow::Continue
            }
            Err(protocol::FrameError::UnknownKind(k)) => {
                self.note_unknown(format!("binary frame kind {k}"));
                Flow::Continue
            }
            Err(e) => self.violation(link, e.to_string()),
        }
    }

    /// A control message this runner cannot take. Once connected, one that
    /// is too large or has bad fields is refused for its request id and the
    /// link stays: closing would only bring the same message again after
    /// the reconnect (the server resends what it thinks was not received),
    /// and the health would flap. What is not JSON at all, or anything
    /// before the welcome, is a protocol violation.
    pub(super) fn undecodable(
        &mut self,
        link: &mut Link,
        stage: &LinkStage,
        text: &str,
        e: protocol::DecodeError,
    ) -> Flow {
        let code = match &e {
            protocol::DecodeError::TooLarge(_) => protocol::TOO_LARGE,
            protocol::DecodeError::BadFields { .. } => protocol::api_error::BAD_REQUEST,
            protocol::DecodeError::Malformed(_) => return self.violation(link, e.to_string()),
        };
        if !matches!(stage, LinkStage::Connected) {
            return self.violation(link, e.to_string());
        }
        match protocol::request_id(text).filter(|&id| id != 0) {
            Some(id) => {
                // serde quotes the offending value: keep the answer small.
                let why = clip(&e.to_string(), MAX_REFUSAL).to_owned();
                warn!("conn", "refusing request {id} from the server: {why}");
                let body = Control::Error(protocol::ErrorBody {
                    code: code.into(),
                    message: format!("the runner cannot take this message: {why}"),
                });
                if let Err(err) = link.send_control(id, body) {
                    debug!("conn", "cannot answer request {id}: {err}");
                }
            }
            // A notice (id 0) has nobody to answer: it is dropped.
            None => warn!(
                "conn",
                "ignoring a message from the server: {}",
                clip(&e.to_string(), MAX_REFUSAL)
            ),
        }
        Flow::Continue
    }

    /// Tell the server what was wrong, then close with 4004 and reconnect.
    pub(super) fn violation(&mut self, link: &mut Link, detail: String) -> Flow {
        warn!("conn", "protocol violation by the server: {detail}");
        let body = Control::Error(protocol::ErrorBody {
            code: "protocol_violation".into(),
            message: detail.clone(),
        });
        let id = self.request_id();
        let _ = link.send_control(id, body);
        Flow::Close {
            code: close::PROTOCOL_VIOLATION,
            reason: truncate_reason(&detail),
            then: AfterClose::Reconnect(Failure::Violation(detail)),
        }
    }

    pub(super) fn note_unknown(&mut self, what: String) {
        if self.unknown_seen.contains(&what) {
            return;
        }
        if self.unknown_seen.len() < MAX_REMEMBERED_UNKNOWN {
            info!(
                "conn",
                "ignoring {what} from the server (newer server?); logged once"
            );
            self.unknown_seen.push(what);
        } else {
            debug!("conn", "ignoring {what} from the server");
        }
    }

    pub(super) fn on_connected(&mut self, ctx: &mut Ctx<'_>, w: &protocol::Welcome) {
        self.cancel_phase_timer(ctx);
        self.connected_since = Some(ctx.now);
        let after = match self.attempts_failed {
            0 => String::new(),
            n => format!(" after {n} failed attempt{}", if n == 1 { "" } else { "s" }),
        };
        info!(
            "conn",
            "connected to {} as {} (protocol {}, server {}){after}",
            self.endpoint().url,
            w.runner_id,
            w.protocol,
            w.server_version
        );
        self.attempts_failed = 0;
        self.last_logged_failure = None;
        self.status.last_error = None;
        self.set_state(RunState::Connected);
        self.schedule_ping(ctx);
        self.schedule_watchdog(ctx, ctx.now);
        self.push_link_event(LinkEvent::Up {
            metrics_ts: w.metrics_ts,
            acks: w.acks.clone(),
        });
    }

    /// Queue a link event for the feed; consecutive metrics acks collapse
    /// into one.
    pub(super) fn push_link_event(&mut self, event: LinkEvent) {
        if let (
            Some(LinkEvent::Message { body: prev, .. }),
            LinkEvent::Message { body: next, .. },
        ) = (self.link_events.last_mut(), &event)
        {
            if let (Control::MetricsAck(prev), Control::MetricsAck(next)) = (&mut **prev, &**next) {
                prev.ts_ms = prev.ts_ms.max(next.ts_ms);
                return;
            }
        }
        self.link_events.push(event);
    }

    pub(super) fn on_pong(&mut self, payload: &[u8]) {
        if let Ok(bytes) = <[u8; 8]>::try_from(payload) {
            let sent = u64::from_be_bytes(bytes);
            debug!(
                "conn",
                "pong after {} ms",
                crate::log::now_ms().saturating_sub(sent)
            );
        }
        self.status.last_heartbeat = Some(crate::log::rfc3339(SystemTime::now()));
        self.write_status();
    }

    pub(super) fn on_ping_timer(&mut self, ctx: &mut Ctx<'_>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let Phase::Connected { mut link } = phase else {
            self.phase = phase;
            return;
        };
        let payload = crate::log::now_ms().to_be_bytes().to_vec();
        let step = match link.send(WsMessage::Ping(payload.into())) {
            Ok(()) => {
                self.schedule_ping(ctx);
                Step::Wait(Phase::Connected { link })
            }
            Err(e) => self.link_ended(ctx, link, LinkStage::Connected, e),
        };
        self.run(ctx, step);
    }

    pub(super) fn on_watchdog(&mut self, ctx: &mut Ctx<'_>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let Phase::Connected { link } = phase else {
            self.phase = phase;
            return;
        };
        let silent = ctx.now.saturating_duration_since(link.last_frame);
        let limit = self.watchdog_limit();
        let step = if silent >= limit {
            warn!(
                "conn",
                "no frame from the server for {:.1}s; closing (watchdog)",
                silent.as_secs_f64()
            );
            self.start_close(
                ctx,
                link,
                close::WATCHDOG,
                "watchdog: silence too long",
                AfterClose::Reconnect(Failure::Watchdog(silent)),
            )
        } else {
            let last = link.last_frame;
            self.schedule_watchdog(ctx, last);
            Step::Wait(Phase::Connected { link })
        };
        self.run(ctx, step);
    }

    /// Send a close frame and wait (≤ CLOSE_WAIT) for the reply.
    pub(super) fn start_close(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut link: Link,
        code: u16,
        reason: &str,
        then: AfterClose,
    ) -> Step {
        self.cancel_link_timers(ctx);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate_reason(reason).into(),
        };
        match link.ws.close(Some(frame)) {
            Ok(()) => link.unflushed = false,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                link.unflushed = true
            }
            Err(e) => {
                debug!("conn", "cannot send close frame: {e}");
                return self.finish_close(ctx, link, then);
            }
        }
        self.arm_phase_timer(ctx, CLOSE_WAIT);
        Step::Again(Phase::Closing { link, then })
    }

    /// The link is over: say goodbye to TLS, drop the socket, then exit or
    /// back off.
    pub(super) fn finish_close(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut link: Link,
        then: AfterClose,
    ) -> Step {
        link.ws.get_mut().close_notify();
        let _ = link.ws.get_mut().flush();
        self.drop_link(ctx, link);
        match then {
            AfterClose::Exit(exit) => Step::Wait(self.stop(ctx, exit)),
            AfterClose::Reconnect(failure) => self.fail(ctx, failure),
        }
    }

    /// A read, write or flush on the link failed.
    pub(super) fn link_ended(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: Link,
        stage: LinkStage,
        e: tungstenite::Error,
    ) -> Step {
        match stage {
            LinkStage::Closing(then) => self.finish_close(ctx, link, then),
            _ if matches!(e, tungstenite::Error::Capacity(_)) => {
                // A frame above MAX_RUNNER_READ: tungstenite stopped after
                // its header, so the rest of the stream cannot be read as
                // frames any more (reading on trips an assertion in its
                // debug builds). Say why, write-only, and drop the link
                // without waiting for a close reply.
                let failure = ws_failure(e);
                let frame = CloseFrame {
                    code: CloseCode::from(close::TOO_BIG),
                    reason: truncate_reason(&failure.to_string()).into(),
                };
                let mut link = link;
                if link.ws.close(Some(frame)).is_ok() {
                    let _ = link.flush();
                }
                warn!("conn", "closing the connection: {failure}");
                self.link_failed(ctx, link, failure)
            }
            _ => {
                let failure = ws_failure(e);
                if let Failure::WebSocket(_) | Failure::Violation(_) = failure {
                    // Broken framing from the server: tell it, then reconnect.
                    let code = close::PROTOCOL_VIOLATION;
                    let reason = failure.to_string();
                    return self.start_close(
                        ctx,
                        link,
                        code,
                        &reason,
                        AfterClose::Reconnect(failure),
                    );
                }
                self.link_failed(ctx, link, failure)
            }
        }
    }

    pub(super) fn link_failed(&mut self, ctx: &mut Ctx<'_>, link: Link, failure: Failure) -> Step {
        self.drop_link(ctx, link);
        self.fail(ctx, failure)
    }

    pub(super) fn drop_link(&mut self, ctx: &mut Ctx<'_>, mut link: Link) {
        self.deregister(ctx, link.ws.get_mut().socket_mut());
    }
}
