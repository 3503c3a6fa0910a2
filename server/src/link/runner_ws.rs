//! `GET /v1/runner/connect`: one runner's WebSocket, from upgrade to close.
//!
//! The credential is checked on the plain HTTP request, before anything is
//! upgraded (401 unknown, 403 revoked). After the upgrade one task per
//! connection runs this state machine (`docs/protocol.md` 1, 2, 6, 7):
//!
//! ```text
//!  upgrade ──▶ AwaitHello ──hello, version agreed──▶ attach ──welcome──▶ Live
//!                 │ 10 s: close 4008                   │ revoked: 4002     │
//!                 │ bad frame: error + 4004            │                   │
//!                 │ no common version: error + 4003    │                   │
//!                 ▼                                    ▼                   ▼
//!               Closed ◀──────────────────────────────────────────────── ends:
//!     peer close / reset      → unreachable ("connection closed" / "connection lost")
//!     silence > 2.5 heartbeat → unreachable ("no heartbeat"), close 4009
//!     bad frame               → unreachable, error + close 4004
//!     too big                 → unreachable, close 1009
//!     close order (registry)  → 4006 replaced / 4002 revoked / 1001 shutdown
//! ```
//!
//! In `Live`, messages and frames of a family a feature owns go to its
//! handler (`dispatch.rs`; telemetry, containers, updates, deploy, logs,
//! jobs, terminals, the fleet's labels at attach), and so do the registry's
//! outbox items addressed to a family; one timer serves the watchdog and
//! whatever the families have due, and their background work (a job
//! output batch stored) is awaited beside the socket. A reply
//! (`docker_response`, `pong`, `error`, ...) is offered to the families,
//! then goes to the request waiting for its id.
//!
//! Liveness: any frame counts as a sign of life. WebSocket Pings are answered
//! by tungstenite, which only queues the Pong; it is flushed explicitly here
//! so it leaves at once. Every send has a timeout, so a runner that stops
//! reading cannot stall its task, and each connection is its own task, so a
//! rogue one cannot affect the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tether::protocol::{
    self, api_error, close, decode_control, decode_frame, encode_control, negotiate,
    silence_limit_ms, Decoded, Envelope, ErrorBody, FrameError, FrameHeader, FrameKind, Hello,
    Message, Pong, StreamTag, Welcome,
};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use crate::common::auth::{bearer, hash_secret};
use crate::common::clock;
use crate::common::edge::PeerAddr;
use crate::common::error::ApiError;
use crate::common::http::SERVER_VERSION;
use crate::db::{ConnectedInfo, RunnerIdentity};
use crate::link::dispatch::{
    families_of, family_of_channel, note_ignored, Answer, Conns, Ending, ErrorReply, FamilyId, Wire,
};
use crate::link::registry::{AttachError, Outgoing, Session, ToRunner};
use crate::link::LinkCtx;

/// Heartbeats a runner may announce; outside this range they are clamped.
const HEARTBEAT_MIN_MS: u64 = 200;
const HEARTBEAT_MAX_MS: u64 = 300_000;
/// tungstenite's read buffer. Its default (128 KiB) would be most of the
/// per-runner memory budget; an idle runner sends a few bytes per heartbeat,
/// and the buffer grows for a large message when one comes.
const READ_BUFFER: usize = 4 * 1024;
/// Upper bound on queued outgoing bytes per connection (backpressure beyond).
const MAX_WRITE_BUFFER: usize = 2 * protocol::MAX_WS_MESSAGE;
/// A close reason must fit a control frame: 125 bytes minus the 2-byte code.
const MAX_CLOSE_REASON: usize = 123;
/// Pending request ids after which abandoned ones (timed-out callers) are swept.
const PENDING_SWEEP: usize = 64;
/// Longest stored hostname, version, arch, os.
const MAX_HELLO_FIELD: usize = 255;

pub async fn connect(
    State(state): State<LinkCtx>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let runner = match authenticate(&state, &headers).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => {
            return ApiError::bad_request(format!(
                "expected a WebSocket upgrade: {}",
                rejection.body_text()
            ))
            .into_response()
        }
    };
    let peer = peer.map(|Extension(PeerAddr(a))| a);
    upgrade
        .max_message_size(protocol::MAX_WS_MESSAGE)
        .max_frame_size(protocol::MAX_WS_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        // Write each message out at once: control traffic is latency-bound and
        // a coalescing buffer would be per-runner memory.
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| run(state, runner, peer, socket))
}

async fn authenticate(state: &LinkCtx, headers: &HeaderMap) -> Result<RunnerIdentity, ApiError> {
    let token =
        bearer(headers).ok_or_else(|| ApiError::unauthorized("missing runner credential"))?;
    let runner = state
        .db
        .control
        .runner_by_credential(&hash_secret(token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown runner credential"))?;
    if runner.revoked {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            api_error::RUNNER_REVOKED,
            format!("runner {} was revoked", runner.id),
        ));
    }
    Ok(runner)
}

/// What one received frame amounts to, once checked.
enum Inbound {
    /// Boxed: a message with a whole fingerprint or a container event is large.
    Control(Box<Envelope>),
    /// A DATA or END frame of a data channel, with its payload.
    Data(FrameHeader, Bytes),
    /// The payload of a METRICS frame: a batch of records.
    Metrics(Bytes),
    /// Ping, Pong, or something ignored (unknown type or frame kind).
    Nothing,
}

struct Connection {
    wire: Wire,
    state: LinkCtx,
    runner: RunnerIdentity,
    /// Each dispatched family's state on this connection (made at attach).
    families: Conns,
}

async fn run(state: LinkCtx, runner: RunnerIdentity, peer: Option<SocketAddr>, socket: WebSocket) {
    let registry = state.registry.clone();
    let _task = registry.task_guard();
    let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let send_timeout = state.tuning.send_timeout;
    let mut conn = Connection {
        wire: Wire {
            socket,
            send_timeout,
        },
        state,
        runner,
        families: Conns::default(),
    };

    let (hello_id, hello) = match conn.await_hello().await {
        Ok(h) => h,
        Err(ending) => {
            tracing::info!(runner = %conn.runner.id, %peer, "connection ended before hello: {}", describe(&ending));
            return conn.finish(ending).await;
        }
    };
    let Some(version) = negotiate(&hello.protocol) else {
        let speaks = protocol::SUPPORTED_VERSIONS
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let reason = format!(
            "no common protocol version: runner offers {:?}, server speaks {speaks}",
            hello.protocol
        );
        tracing::warn!(runner = %conn.runner.id, %peer, "{reason}");
        let ending = Ending::Close {
            code: close::UNSUPPORTED_PROTOCOL,
            reason: format!("unsupported protocol; server speaks version {speaks}"),
            error: Some(ErrorReply {
                id: hello_id,
                code: "unsupported_protocol",
                message: reason,
            }),
            health_reason: "unsupported protocol",
        };
        return conn.finish(ending).await;
    };
    let heartbeat_ms = hello.heartbeat_ms.clamp(HEARTBEAT_MIN_MS, HEARTBEAT_MAX_MS);
    let info = ConnectedInfo {
        name: clip(&hello.hostname),
        version: clip(&hello.runner_version),
        arch: clip(&hello.arch),
        os: clip(&hello.os),
        protocol: version,
    };
    let runner_id = conn.runner.id.clone();
    let attached = registry
        .attach(&runner_id, &conn.runner.tenant_id, &info, clock::now_ms())
        .await;
    let mut session = match attached {
        Ok(s) => s,
        Err(e) => {
            let ending = match e {
                AttachError::Revoked => Ending::close(close::REVOKED, "runner revoked", "revoked"),
                AttachError::ShuttingDown => {
                    Ending::close(close::GOING_AWAY, "server shutting down", "shutdown")
                }
                AttachError::Storage(e) => {
                    tracing::error!(runner = %runner_id, "recording connect: {e}");
                    Ending::close(1011, "internal server error", "internal error")
                }
            };
            return conn.finish(ending).await;
        }
    };
    tracing::info!(
        runner = %runner_id, %peer, version = info.version, protocol = version, heartbeat_ms,
        "runner connected"
    );
    // Each family's state; the fleet stores the proposed labels here.
    conn.families = conn.state.families.attach(&conn.runner, &hello).await;

    let metrics_ts = match conn.state.db.metrics.last_ts(&runner_id).await {
        Ok(ts) => ts.and_then(|t| u64::try_from(t).ok()),
        Err(e) => {
            // The runner then resends its whole backlog; storing is idempotent.
            tracing::error!(runner = %runner_id, "reading the newest metrics time: {e}");
            None
        }
    };
    let mut welcome = Welcome {
        protocol: version,
        runner_id: runner_id.clone(),
        server_version: SERVER_VERSION.to_owned(),
        acks: Vec::new(),
        metrics_ts,
    };
    // The families' parts (the job acks).
    for family in conn.families.iter_mut() {
        family.welcoming(&conn.runner, &mut welcome).await;
    }
    let welcome = Message::Welcome(welcome);
    let mut sent = conn
        .send(WsMessage::Text(encode_control(hello_id, welcome).into()))
        .await;
    // The families' first words (the update offer, then the jobs waiting
    // for this runner), in table order.
    for family in conn.families.iter_mut() {
        if sent.is_err() {
            break;
        }
        sent = family.welcomed(&mut conn.wire, &conn.runner).await;
    }
    let ending = match sent {
        Ok(()) => {
            conn.live(
                &mut session,
                Duration::from_millis(silence_limit_ms(heartbeat_ms)),
            )
            .await
        }
        Err(ending) => ending,
    };
    // Health first: the runner is unreachable from now, however long the
    // close handshake takes.
    registry
        .detach(&runner_id, session.generation, ending.health_reason())
        .await;
    for family in conn.families.iter_mut() {
        family.detached(&conn.runner).await;
    }
    tracing::info!(runner = %runner_id, %peer, "runner connection ended: {}", describe(&ending));
    conn.finish(ending).await;
}

impl Connection {
    async fn await_hello(&mut self) -> Result<(u64, Hello), Ending> {
        let limit = self.state.tuning.hello_timeout;
        let deadline = Instant::now() + limit;
        loop {
            let Ok(frame) = timeout_at(deadline, self.wire.socket.recv()).await else {
                return Err(Ending::close(
                    close::HELLO_TIMEOUT,
                    format!("no hello within {} ms", limit.as_millis()),
                    "no hello",
                ));
            };
            match self.inbound(frame).await? {
                Inbound::Control(envelope) => match *envelope {
                    Envelope {
                        id,
                        body: Message::Hello(hello),
                    } => return Ok((id, hello)),
                    other => {
                        return Err(Ending::violation(
                            other.id,
                            format!("expected hello first, got '{}'", other.body.type_name()),
                        ))
                    }
                },
                Inbound::Data(..) | Inbound::Metrics(_) => {
                    return Err(Ending::violation(0, "data frame before hello"))
                }
                Inbound::Nothing => {}
            }
        }
    }

    /// The attached connection: route requests, answer pings, watch the silence.
    async fn live(&mut self, session: &mut Session, silence: Duration) -> Ending {
        let mut last_frame = Instant::now();
        let watchdog = sleep_until(last_frame + silence);
        tokio::pin!(watchdog);
        let mut pending: HashMap<u64, oneshot::Sender<Envelope>> = HashMap::new();
        let mut outbox_open = true;
        // Made once and again only after it fires, not on every turn.
        let nudges = session.nudges.clone();
        let nudged = nudges.wait();
        tokio::pin!(nudged);
        loop {
            tokio::select! {
                order = &mut session.close => {
                    return match order {
                        Ok(order) => Ending::close(order.code, order.reason, "closed by server"),
                        // The registry dropped this connection without an
                        // order; it cannot route to it any more, so go.
                        Err(_) => Ending::close(close::GOING_AWAY, "connection dropped by server", "dropped"),
                    };
                }
                out = session.outbox.recv(), if outbox_open => match out {
                    Some(Outgoing::Request { id, text, reply }) => {
                        if pending.len() >= PENDING_SWEEP {
                            pending.retain(|_, waiting| !waiting.is_closed());
                        }
                        pending.insert(id, reply);
                        if let Err(ending) = self.send(WsMessage::Text(text.into())).await {
                            return ending;
                        }
                    }
                    Some(Outgoing::Family { family, id, item, reply }) => {
                        if pending.len() >= PENDING_SWEEP {
                            pending.retain(|_, waiting| !waiting.is_closed());
                        }
                        let answer = match self.families.get(family) {
                            Some(conn) => conn.request(&mut self.wire, &self.runner, id, item).await,
                            None => Ok(Answer::Refused(ErrorBody {
                                code: "internal".into(),
                                message: format!("no handler for {family:?} on this server"),
                            })),
                        };
                        match answer {
                            Err(ending) => return ending,
                            Ok(Answer::Sent) => {
                                pending.insert(id, reply);
                            }
                            Ok(Answer::Refused(e)) => {
                                // The caller may have given up (timeout); that is fine.
                                let _ = reply.send(Envelope { id, body: Message::Error(e) });
                            }
                        }
                        self.rearm(&mut watchdog, last_frame + silence);
                    }
                    Some(Outgoing::Notify { text }) => {
                        if let Err(ending) = self.send(WsMessage::Text(text.into())).await {
                            return ending;
                        }
                    }
                    Some(Outgoing::Terminal(m)) => {
                        let m = match m {
                            ToRunner::Binary(b) => WsMessage::Binary(b.into()),
                            ToRunner::Text(t) => WsMessage::Text(t.into()),
                        };
                        if let Err(ending) = self.send(m).await {
                            return ending;
                        }
                    }
                    None => outbox_open = false,
                },
                bits = &mut nudged => {
                    nudged.set(nudges.wait());
                    for family in FamilyId::of_bits(bits) {
                        if let Some(conn) = self.families.get(family) {
                            if let Err(ending) = conn.nudge(&mut self.wire, &self.runner).await {
                                return ending;
                            }
                        }
                    }
                    self.rearm(&mut watchdog, last_frame + silence);
                }
                frame = self.wire.socket.recv() => {
                    last_frame = Instant::now();
                    session.last_seen.store(clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
                    match self.inbound(frame).await {
                        Err(ending) => return ending,
                        Ok(Inbound::Control(envelope)) => {
                            if let Err(ending) = self.on_control(*envelope, &mut pending).await {
                                return ending;
                            }
                            self.rearm(&mut watchdog, last_frame + silence);
                        }
                        Ok(Inbound::Data(h, payload)) => {
                            if let Some(family) = self.families.get(family_of_channel(h.channel)) {
                                if let Err(ending) = family.frame(&mut self.wire, &self.runner, h, payload).await {
                                    return ending;
                                }
                            }
                            self.rearm(&mut watchdog, last_frame + silence);
                        }
                        Ok(Inbound::Metrics(payload)) => {
                            if let Some(family) = self.families.get(FamilyId::Telemetry) {
                                let header = FrameHeader { kind: FrameKind::Metrics, tag: StreamTag::None, channel: 0, seq: 0 };
                                if let Err(ending) = family.frame(&mut self.wire, &self.runner, header, payload).await {
                                    return ending;
                                }
                            }
                            // An ack may now be due before the watchdog.
                            self.rearm(&mut watchdog, last_frame + silence);
                        }
                        Ok(Inbound::Nothing) => {}
                    }
                }
                index = std::future::poll_fn(|cx| self.families.poll_work(cx)) => {
                    if let Err(ending) = self.families.work(index, &mut self.wire, &self.runner).await {
                        return ending;
                    }
                    self.rearm(&mut watchdog, last_frame + silence);
                }
                () = &mut watchdog => {
                    // Re-armed lazily: frames only move `last_frame`, the timer
                    // is touched when it fires (for the watchdog or an ack).
                    let now = Instant::now();
                    let due = last_frame + silence;
                    if now >= due {
                        return Ending::close(
                            close::WATCHDOG,
                            format!("no frame for {} ms", silence.as_millis()),
                            "no heartbeat",
                        );
                    }
                    for family in self.families.iter_mut() {
                        if family.due().is_some_and(|d| now >= d) {
                            if let Err(ending) = family.tick(&mut self.wire, &self.runner, now).await {
                                return ending;
                            }
                        }
                    }
                    watchdog.as_mut().reset(self.next_due(due));
                }
            }
        }
    }

    async fn on_control(
        &mut self,
        envelope: Envelope,
        pending: &mut HashMap<u64, oneshot::Sender<Envelope>>,
    ) -> Result<(), Ending> {
        let families = families_of(&envelope.body);
        if !families.is_empty() {
            let mut heard = false;
            for &id in families {
                if let Some(family) = self.families.get(id) {
                    family
                        .message(&mut self.wire, &self.runner, &envelope)
                        .await?;
                    heard = true;
                }
            }
            if !heard {
                note_ignored(
                    &format!("message type '{}' (no handler)", envelope.body.type_name()),
                    &self.runner.id,
                );
            }
            return Ok(());
        }
        match &envelope.body {
            Message::Ping(ping) => {
                let pong = Message::Pong(Pong {
                    sent_ms: ping.sent_ms,
                    now_ms: u64::try_from(clock::now_ms()).unwrap_or(0),
                    version: SERVER_VERSION.to_owned(),
                });
                self.send(WsMessage::Text(encode_control(envelope.id, pong).into()))
                    .await
            }
            Message::Pong(_)
            | Message::Error(_)
            | Message::DockerResponse(_)
            | Message::LogOpened(_)
            | Message::TermOpened(_)
            | Message::JobAccepted(_) => {
                let own = self.families.reply(&self.runner, &envelope).await;
                if let Some(waiting) = pending.remove(&envelope.id) {
                    // The caller may have given up (timeout); that is fine.
                    let _ = waiting.send(envelope);
                } else if own {
                    // The server's own request (a collection open, a
                    // job_start): its family handled it.
                } else if let Message::Error(e) = &envelope.body {
                    tracing::warn!(runner = %self.runner.id, code = %e.code, "runner reported an error: {}", e.message);
                } else {
                    tracing::debug!(runner = %self.runner.id, id = envelope.id, "{} for no pending request", envelope.body.type_name());
                }
                Ok(())
            }
            Message::Hello(_) => Err(Ending::violation(envelope.id, "hello sent twice")),
            Message::SecretsLost(_)
            | Message::MetricsSchema(_)
            | Message::Fingerprint(_)
            | Message::DockerState(_)
            | Message::ContainerSnapshot(_)
            | Message::ContainerEvent(_)
            | Message::UpdateStatus(_)
            | Message::TermAlive(_)
            | Message::JobResult(_) => Ok(()), // dispatched above
            Message::MetricsAck(_)
            | Message::FingerprintResync(_)
            | Message::DockerRequest(_)
            | Message::LogOpen(_)
            | Message::LogClose(_)
            | Message::JobStart(_)
            | Message::JobCancel(_)
            | Message::JobResultAck(_)
            | Message::Update(_)
            | Message::TermOpen(_)
            | Message::TermResize(_)
            | Message::TermClose(_) => {
                note_ignored(
                    &format!(
                        "message type '{}' (server to runner only)",
                        envelope.body.type_name()
                    ),
                    &self.runner.id,
                );
                Ok(())
            }
            Message::Welcome(_) => {
                note_ignored(
                    "message type 'welcome' (server to runner only)",
                    &self.runner.id,
                );
                Ok(())
            }
        }
    }

    /// The timer's next deadline: the silence limit, or whatever work is due before it.
    fn next_due(&self, silence_due: Instant) -> Instant {
        self.families
            .due()
            .map_or(silence_due, |d| d.min(silence_due))
    }

    /// Bring the timer forward if work is due before it.
    fn rearm(&self, watchdog: &mut std::pin::Pin<&mut tokio::time::Sleep>, silence_due: Instant) {
        let due = self.next_due(silence_due);
        if due < watchdog.deadline() {
            watchdog.as_mut().reset(due);
        }
    }

    /// Check one received frame; `Err` ends the connection.
    async fn inbound(
        &mut self,
        frame: Option<Result<WsMessage, axum::Error>>,
    ) -> Result<Inbound, Ending> {
        let message = match frame {
            None => {
                return Err(Ending::Gone {
                    health_reason: "connection closed",
                })
            }
            Some(Err(e)) => return Err(read_error(e)),
            Some(Ok(m)) => m,
        };
        match message {
            WsMessage::Text(text) => match decode_control(text.as_str()) {
                Ok(Decoded::Known(envelope)) => Ok(Inbound::Control(Box::new(envelope))),
                Ok(Decoded::Unknown { type_name, .. }) => {
                    note_ignored(&format!("message type '{type_name}'"), &self.runner.id);
                    Ok(Inbound::Nothing)
                }
                Err(e) => Err(Ending::violation(0, e.to_string())),
            },
            WsMessage::Binary(bytes) => match decode_frame(&bytes) {
                Ok((header, _)) if header.kind == FrameKind::Metrics => {
                    if header.channel != 0 || header.seq != 0 {
                        return Err(Ending::violation(
                            0,
                            format!(
                                "metrics frame with channel {} and seq {} (both must be 0)",
                                header.channel, header.seq
                            ),
                        ));
                    }
                    Ok(Inbound::Metrics(bytes.slice(protocol::FRAME_HEADER_LEN..)))
                }
                Ok((header, _)) if matches!(header.kind, FrameKind::Data | FrameKind::End) => Ok(
                    Inbound::Data(header, bytes.slice(protocol::FRAME_HEADER_LEN..)),
                ),
                // A terminal's runner acknowledges the keystrokes it wrote.
                Ok((header, _))
                    if header.kind == FrameKind::Ack
                        && header.channel & protocol::TERM_CHANNEL_BIT != 0 =>
                {
                    Ok(Inbound::Data(header, Bytes::new()))
                }
                // ACK and CREDIT: the server sends no data to runners.
                Ok(_) => Ok(Inbound::Nothing),
                Err(FrameError::UnknownKind(k)) => {
                    note_ignored(&format!("binary frame kind {k}"), &self.runner.id);
                    Ok(Inbound::Nothing)
                }
                Err(FrameError::UnknownTag(t)) => {
                    note_ignored(&format!("stream tag {t}"), &self.runner.id);
                    Ok(Inbound::Nothing)
                }
                Err(e) => Err(Ending::violation(0, e.to_string())),
            },
            WsMessage::Ping(_) => {
                // tungstenite queued the Pong; push it out now rather than on
                // the next read.
                self.flush().await?;
                Ok(Inbound::Nothing)
            }
            WsMessage::Pong(_) => Ok(Inbound::Nothing),
            WsMessage::Close(_) => Err(Ending::Gone {
                health_reason: "connection closed",
            }),
        }
    }

    async fn send(&mut self, message: WsMessage) -> Result<(), Ending> {
        self.wire.send(message).await
    }

    async fn flush(&mut self) -> Result<(), Ending> {
        self.wire.flush().await
    }

    /// Say why (if the server is the one closing), close, and wait briefly for
    /// the runner's close frame so ours is not lost in a connection reset.
    async fn finish(&mut self, ending: Ending) {
        let Ending::Close {
            code,
            reason,
            error,
            ..
        } = ending
        else {
            return;
        };
        if let Some(err) = error {
            let body = Message::Error(ErrorBody {
                code: err.code.to_owned(),
                message: err.message,
            });
            if self
                .send(WsMessage::Text(encode_control(err.id, body).into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let frame = CloseFrame {
            code,
            reason: truncate_reason(&reason).into(),
        };
        if self.send(WsMessage::Close(Some(frame))).await.is_err() {
            return;
        }
        let drain = async { while let Some(Ok(_)) = self.wire.socket.recv().await {} };
        let _ = timeout(self.state.tuning.close_wait, drain).await;
    }
}

/// Map a WebSocket read error to how the connection ends.
fn read_error(e: axum::Error) -> Ending {
    use tungstenite::error::{Error as WsError, ProtocolError};
    let Ok(e) = e.into_inner().downcast::<WsError>() else {
        return Ending::Gone {
            health_reason: "connection lost",
        };
    };
    match *e {
        WsError::Capacity(c) => Ending::close(
            close::TOO_BIG,
            format!("message too big: {c}"),
            "message too big",
        ),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) | WsError::Io(_) => {
            Ending::Gone {
                health_reason: "connection lost",
            }
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => Ending::Gone {
            health_reason: "connection closed",
        },
        WsError::Protocol(p) => Ending::violation(0, format!("websocket protocol error: {p}")),
        WsError::Utf8(_) => Ending::violation(0, "text frame is not valid UTF-8"),
        other => {
            tracing::debug!("websocket read error: {other}");
            Ending::Gone {
                health_reason: "connection lost",
            }
        }
    }
}

fn describe(ending: &Ending) -> String {
    match ending {
        Ending::Gone { health_reason } => (*health_reason).to_owned(),
        Ending::Close { code, reason, .. } => format!("closed {code} ({reason})"),
    }
}

/// Cut a close reason to what a close frame can carry, on a char boundary.
fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Bound a runner-supplied string before storing it.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(MAX_HELLO_FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(100); // 200 bytes
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 122, "cut on a char boundary");
        assert_eq!(clip(&"x".repeat(300)).len(), MAX_HELLO_FIELD);
    }

    /// The size of the future behind `f`, without calling it.
    fn future_size<A, B, C, D, F: std::future::Future>(_: &impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A connection's task is allocated whole for as long as the runner
    /// stays, so its future's size is per-runner memory (issue 16): rarely
    /// taken large branches are boxed, the connection is not moved into
    /// `finish`. The bound is for a debug build (larger than a release one)
    /// and has some room; crossing it means something large is now held
    /// across an await of every connection.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(&run);
        assert!(size <= 6 * 1024, "runner_ws::run's future is {size} bytes");
    }
}
