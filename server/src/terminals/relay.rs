//! A terminal session outlives its runner moving to another replica: the
//! session stays on the replica that opened it (its scrollback, keystroke
//! queue, client, recording and audit row), and the replica now holding
//! the runner's link relays the session's runner-side frames to it over
//! the internal channel (`cluster/internal.rs`: TLS, the cluster key's
//! proof), a WebSocket per (runner link, session replica).
//!
//! ```text
//!  runner ──link──▶ B                                   A (holds the sessions)
//!  term_alive [c1, c2]: c2 is B's own; c1 unknown
//!   ─▶ c1 Pending: its DATA kept (≤ the window), not ACKed
//!   ─▶ store: open sessions of the runner on other replicas ─▶ A
//!   ─▶ WSS A /internal/v1/terminal-relay?runner=   ──▶ A: is B the runner's holder
//!                                                       (runner_links)? else 409
//!      {"channels":[c1]} ─────────────────────────▶ A: relay installed (a newer one
//!                                                       replaces it); on_alive: the
//!                                                       runner is back for A's sessions
//!      ◀──────────────────────────── {"held":[c1]}      (those not listed end: lost)
//!   c1 Relay(A): DATA, END, ACK frames ──────────▶ A: Terminals::on_frame, as from a link
//!   runner ◀── keystrokes, ACKs, term_resize, term_close of c1 ◀── A (relay_of)
//!   a channel no replica claims (none holds it, or every holder said so)
//!      ─▶ term_close to the runner; its output ACKed here until its END
//!   relay broken (A stopped, the internal channel cut): c1 Pending again,
//!      its kept output sent again from A's last ACK on the next relay; A:
//!      the runner is away, and as it is linked to B, back: the next relay
//!      within 10 s, or the session ends (as a restarted runner's does:
//!      one that never says `term_alive` is seen by A the same way)
//!   B's link ends (the runner moves on to C): B's relays close; C relays
//!      anew, A takes C's (B's late request: not the holder, 409; B's late
//!      end: an old generation, nothing changes)
//!   the runner back on A itself: its link replaces the relay
//! ```
//!
//! Nothing lost or duplicated: the runner sends its output again from its
//! own ACK on every new link, so B keeps a channel's unacknowledged output
//! (the runner's window, 256 KiB: no more can be in flight) until A's ACK
//! passes back through B, and sends it again to a new relay; A drops what
//! it already has, as it does for a runner's resend. Keystrokes are sent
//! again from the runner's ACK when a relay starts (A's `on_alive`), and
//! the runner drops overlap. A slow hop slows the shell: B's buffer is the
//! window, A's queue to the relay is bounded and waits as the link's does.
//!
//! A session's replica killed: B's relay breaks, A's rows stay open until
//! a replica reaps A (`cluster/replica.rs`: silent for `STALE`, 10 s),
//! which closes them; B's next look (every [`RETRY`]) finds no holder and
//! hangs the shell up on the runner: within about 15 s of A's death, no
//! PTY is left behind.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tether::protocol::{
    decode_control, decode_frame, encode_frame, Decoded, FrameHeader, FrameKind, Message,
    StreamTag, MAX_DATA_PAYLOAD, MAX_TERMINALS, TERM_CHANNEL_BIT,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as PeerMessage;

use crate::cluster::internal::{PeerSocket, Peers, FROM_HEADER};
use crate::common::error::ApiError;
use crate::db::cluster::ClusterStore;
use crate::link::registry::Registry;
use crate::terminals::api::record_end;
use crate::terminals::{ack_frame, close_message, TerminalsCtx, ToRunner, SCROLLBACK};

/// The relay's route on the internal listener only (`app/serve.rs`).
pub const RELAY_PATH: &str = "/internal/v1/terminal-relay";
/// How often a replica looks again for the holder of a session it could
/// not relay yet (one unreachable, or not yet reaped).
pub const RETRY: Duration = Duration::from_secs(2);
/// Largest relay message: a frame (header and a DATA payload) or a
/// terminal's control message.
const MAX_MESSAGE: usize = MAX_DATA_PAYLOAD + 64 * 1024;
/// Until the other side's first message.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages for the runner waiting for the relay (as the link's outbox:
/// a sender waits, then gives up after its own timeout).
const QUEUE: usize = 64;
/// Unacknowledged output kept per channel: the runner's window, with room
/// for a frame; a runner sending past it is cut short (a gap A ignores).
const MAX_KEPT: usize = SCROLLBACK + MAX_DATA_PAYLOAD;
/// A message for the runner waits this long for its link's outbox.
const RUNNER_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames taken per turn of a relay's writer.
const FRAMES_PER_TURN: usize = 16;

/// What a replica of several relays with: its id, the internal channel
/// and the shared store.
#[derive(Clone)]
pub struct Cluster {
    pub id: Arc<str>,
    pub peers: Arc<Peers>,
    pub store: Arc<dyn ClusterStore>,
}

/// The runner's side's first message: the channels it asks about.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Alive {
    channels: Vec<u32>,
}

/// The sessions' side's answer: the channels it holds sessions on.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Held {
    held: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayParams {
    runner: String,
}

/// The relay's route, merged into the internal listener's routes only:
/// behind its gate (the cluster key), never on the public listener.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    TerminalsCtx: axum::extract::FromRef<S>,
{
    axum::Router::new().route(RELAY_PATH, axum::routing::get(accept))
}

// ---------------------------------------------------------------------
// The sessions' side (A): a relay of a runner linked to another replica.

/// `GET /internal/v1/terminal-relay?runner=` (WebSocket, internal
/// listener): the replica now holding the runner's link relays its
/// frames for the sessions held here. Only that replica may (fencing).
pub async fn accept(
    State(state): State<TerminalsCtx>,
    headers: HeaderMap,
    Query(p): Query<RelayParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let result = async {
        let cluster = state
            .cluster
            .clone()
            .ok_or_else(|| ApiError::not_found("this server is not a replica of several"))?;
        let from = headers
            .get(FROM_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::bad_request("which replica relays? (x-tether-forwarded-by)")
            })?;
        if p.runner.is_empty() || p.runner.len() > 64 {
            return Err(ApiError::bad_request("bad runner id"));
        }
        // A late relay from a link the runner left (it moved on, or came
        // back here) changes nothing.
        match cluster.store.holder_of(&p.runner).await? {
            Some((holder, _)) if holder == from => {}
            other => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_the_holder",
                    format!(
                        "replica {from} does not hold runner {}'s link ({})",
                        p.runner,
                        other.map_or_else(|| "no replica does".to_owned(), |(r, _)| r)
                    ),
                ))
            }
        }
        let upgrade = upgrade.map_err(|r| {
            ApiError::bad_request(format!("expected a WebSocket upgrade: {}", r.body_text()))
        })?;
        Ok::<_, ApiError>((upgrade, from))
    }
    .await;
    match result {
        Ok((upgrade, from)) => upgrade
            .max_message_size(MAX_MESSAGE)
            .on_upgrade(move |ws| sessions_side(state, ws, p.runner, from)),
        Err(e) => e.into_response(),
    }
}

async fn send_ws(
    sink: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
    m: ToRunner,
) -> Result<(), axum::Error> {
    match m {
        ToRunner::Binary(b) => sink.send(WsMessage::Binary(b.into())).await,
        ToRunner::Text(t) => sink.send(WsMessage::Text(t.into())).await,
    }
}

/// One relay, on the replica holding the sessions: the runner is back for
/// them while it lasts.
async fn sessions_side(state: TerminalsCtx, ws: WebSocket, runner: String, from: String) {
    let (mut sink, mut stream) = ws.split();
    let alive = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(WsMessage::Text(t)))) => serde_json::from_str::<Alive>(t.as_str()).ok(),
        _ => None,
    };
    let Some(mut alive) = alive else {
        tracing::debug!(runner, from, "terminal relay: no channels said");
        return;
    };
    alive.channels.truncate(MAX_TERMINALS);
    let (tx, mut rx) = mpsc::channel::<ToRunner>(QUEUE);
    let (generation, stop) = state.terminals.relay_install(&runner, tx.clone());
    let (to_send, lost) = state.terminals.on_alive(&runner, &alive.channels);
    for s in lost {
        record_end(&state.db, &s).await;
    }
    let held: Vec<u32> = alive
        .channels
        .iter()
        .copied()
        .filter(|c| state.terminals.holds_channel(&runner, *c))
        .collect();
    tracing::info!(
        runner,
        from,
        ?held,
        "terminal sessions relayed by another replica"
    );
    let hello = serde_json::to_string(&Held { held }).unwrap_or_default();
    let writer = async {
        if sink.send(WsMessage::Text(hello.into())).await.is_err() {
            return;
        }
        for m in to_send {
            if send_ws(&mut sink, m).await.is_err() {
                return;
            }
        }
        while let Some(m) = rx.recv().await {
            if send_ws(&mut sink, m).await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            let b = match msg {
                WsMessage::Binary(b) => b,
                WsMessage::Close(_) => break,
                _ => continue,
            };
            let Ok((header, payload)) = decode_frame(&b) else {
                tracing::warn!(runner, from, "terminal relay: a broken frame; closed");
                break;
            };
            let out = state.terminals.on_frame(&runner, &header, payload);
            if let Some(s) = out.ended {
                record_end(&state.db, &s).await;
            }
            if let Some(seq) = out.ack {
                if tx
                    .send(ToRunner::Binary(ack_frame(header.channel, seq)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
        () = stop.notified() => {}
    }
    if state.terminals.relay_ended(&runner, generation) && !state.registry.holds(&runner) {
        tracing::info!(runner, from, "terminal relay ended: the runner is away");
        state.terminals.runner_gone(&runner);
    }
}

// ---------------------------------------------------------------------
// The runner's side (B): the link's channels whose sessions are elsewhere.

/// Who a channel's frames go to.
#[derive(Clone)]
enum Owner {
    /// No replica claimed it yet: output kept, not acknowledged.
    Pending,
    /// Relay `id` (to one replica); its writer is woken by the notify.
    Relay(u64, Arc<Notify>),
    /// No replica holds its session: hung up, output acknowledged here
    /// until the runner's END.
    Closing,
}

/// One relayed channel: its unacknowledged output `[start, start + kept)`.
struct Chan {
    owner: Owner,
    kept: VecDeque<u8>,
    start: Option<u64>,
    /// Sent on the current relay up to here.
    sent: u64,
    tag: StreamTag,
    /// The runner's newest ACK of keystrokes, to pass on.
    ack_up: Option<u64>,
    end: Option<(FrameHeader, Vec<u8>)>,
    end_sent: bool,
}

impl Chan {
    fn new() -> Chan {
        Chan {
            owner: Owner::Pending,
            kept: VecDeque::new(),
            start: None,
            sent: 0,
            tag: StreamTag::Pty,
            ack_up: None,
            end: None,
            end_sent: false,
        }
    }

    fn kept_end(&self) -> u64 {
        self.start.unwrap_or(0) + self.kept.len() as u64
    }

    /// Output from the runner: the part not kept yet is kept.
    fn output(&mut self, header: &FrameHeader, payload: &[u8], runner: &str) {
        let start = *self.start.get_or_insert(header.seq);
        self.sent = self.sent.max(start);
        if self.kept.is_empty() && header.seq > start {
            // Everything kept was acknowledged: it goes on from here.
            self.start = Some(header.seq);
            self.sent = self.sent.max(header.seq);
        }
        self.tag = header.tag;
        let end = self.kept_end();
        let to = header.seq + payload.len() as u64;
        if header.seq > end {
            tracing::warn!(
                runner,
                channel = header.channel,
                seq = header.seq,
                have = end,
                "relayed terminal output with a gap; ignored"
            );
            return;
        }
        if to <= end {
            return;
        }
        let new = &payload[(end - header.seq) as usize..];
        if self.kept.len() + new.len() > MAX_KEPT {
            tracing::warn!(
                runner,
                channel = header.channel,
                "relayed terminal output past the window; ignored"
            );
            return;
        }
        self.kept.extend(new);
    }

    /// The session's replica stored the output up to `seq`.
    fn acked(&mut self, seq: u64) {
        let Some(start) = self.start else {
            return;
        };
        if seq <= start {
            return;
        }
        let n = ((seq - start) as usize).min(self.kept.len());
        self.kept.drain(..n);
        self.start = Some(seq);
        self.sent = self.sent.max(seq);
    }

    /// A new relay: everything kept is sent again.
    fn rewind(&mut self) {
        self.sent = self.start.unwrap_or(0);
        self.end_sent = false;
    }
}

#[derive(Default)]
struct Chans {
    map: HashMap<u32, Chan>,
    /// Live relays by replica: their ids.
    relays: HashMap<String, u64>,
    pumps: Vec<JoinHandle<()>>,
    next_relay: u64,
}

struct Inner {
    tenant: String,
    runner: String,
    registry: Arc<Registry>,
    cluster: Cluster,
    chans: Mutex<Chans>,
    /// A relay ended: look for the holders again now.
    changed: Notify,
    /// A send to the runner failed: this link is going, and a relay
    /// opened now would be a late one from it (the session's replica may
    /// still take it while the link's row stands).
    link_gone: std::sync::atomic::AtomicBool,
}

/// The relays of one runner link (held by its connection: they end with
/// it, or when the runner says `term_alive` again).
pub struct RunnerSide {
    inner: Arc<Inner>,
    manager: JoinHandle<()>,
}

impl Drop for RunnerSide {
    fn drop(&mut self) {
        self.manager.abort();
        for p in self.inner.lock().pumps.drain(..) {
            p.abort();
        }
    }
}

/// What became of a frame from the runner.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Not a relayed channel: the link's own sessions.
    No,
    /// Relayed (or kept for a relay).
    Yes,
    /// A hung-up channel's output: acknowledge it up to here.
    Ack(u64),
}

impl RunnerSide {
    /// Relays for `channels` (the runner's terminals this replica holds
    /// no session of), looked for at once.
    pub fn start(
        tenant: &str,
        runner: &str,
        registry: Arc<Registry>,
        cluster: Cluster,
        channels: &[u32],
    ) -> RunnerSide {
        let mut chans = Chans::default();
        for c in channels.iter().take(MAX_TERMINALS) {
            if c & TERM_CHANNEL_BIT != 0 {
                chans.map.insert(*c, Chan::new());
            }
        }
        let inner = Arc::new(Inner {
            tenant: tenant.to_owned(),
            runner: runner.to_owned(),
            registry,
            cluster,
            chans: Mutex::new(chans),
            changed: Notify::new(),
            link_gone: Default::default(),
        });
        let manager = tokio::spawn(manage(inner.clone()));
        RunnerSide { inner, manager }
    }

    /// A DATA, END or ACK frame from the runner.
    pub fn frame_of_runner(&self, header: &FrameHeader, payload: &[u8]) -> Taken {
        let mut chans = self.inner.lock();
        let Some(ch) = chans.map.get_mut(&header.channel) else {
            return Taken::No;
        };
        let closing = matches!(ch.owner, Owner::Closing);
        match header.kind {
            FrameKind::Data if closing => {
                return Taken::Ack(header.seq + payload.len() as u64);
            }
            FrameKind::Data => ch.output(header, payload, &self.inner.runner),
            FrameKind::End if closing => {
                chans.map.remove(&header.channel);
                return Taken::Yes;
            }
            FrameKind::End => ch.end = Some((*header, payload.to_vec())),
            FrameKind::Ack => ch.ack_up = Some(ch.ack_up.unwrap_or(0).max(header.seq)),
            _ => {}
        }
        if let Owner::Relay(_, wake) = &ch.owner {
            wake.notify_one();
        }
        Taken::Yes
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Chans> {
        self.chans.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> Vec<u32> {
        let chans = self.lock();
        let mut p: Vec<u32> = chans
            .map
            .iter()
            .filter(|(_, c)| matches!(c.owner, Owner::Pending))
            .map(|(n, _)| *n)
            .collect();
        p.sort_unstable();
        p
    }

    /// Frames for relay `id`: the runner's ACKs, kept output not sent yet,
    /// an END once everything before it is sent.
    fn take_frames(&self, id: u64) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut chans = self.lock();
        for (&channel, ch) in chans.map.iter_mut() {
            if !matches!(&ch.owner, Owner::Relay(r, _) if *r == id) {
                continue;
            }
            if let Some(seq) = ch.ack_up.take() {
                let header = FrameHeader {
                    kind: FrameKind::Ack,
                    tag: StreamTag::None,
                    channel,
                    seq,
                };
                frames.push(encode_frame(header, &[]));
            }
            let end = ch.kept_end();
            let start = ch.start.unwrap_or(0);
            ch.sent = ch.sent.max(start);
            while ch.sent < end && frames.len() < FRAMES_PER_TURN {
                let from = (ch.sent - start) as usize;
                let n = ((end - ch.sent) as usize).min(MAX_DATA_PAYLOAD);
                let payload: Vec<u8> = ch.kept.range(from..from + n).copied().collect();
                let header = FrameHeader {
                    kind: FrameKind::Data,
                    tag: ch.tag,
                    channel,
                    seq: ch.sent,
                };
                frames.push(encode_frame(header, &payload));
                ch.sent += n as u64;
            }
            if ch.sent >= end && !ch.end_sent {
                if let Some((header, reason)) = &ch.end {
                    frames.push(encode_frame(*header, reason));
                    ch.end_sent = true;
                }
            }
        }
        frames
    }

    /// A frame from relay `id`'s replica for the runner: passed on only
    /// for a channel that relay claimed; its ACK frees kept output.
    fn for_runner(&self, id: u64, header: &FrameHeader) -> bool {
        let mut chans = self.lock();
        let Some(ch) = chans.map.get_mut(&header.channel) else {
            return false;
        };
        if !matches!(&ch.owner, Owner::Relay(r, _) if *r == id) {
            return false;
        }
        if header.kind == FrameKind::Ack {
            ch.acked(header.seq);
        }
        true
    }

    fn owns(&self, id: u64, channel: u32) -> bool {
        self.lock()
            .map
            .get(&channel)
            .is_some_and(|ch| matches!(&ch.owner, Owner::Relay(r, _) if *r == id))
    }

    /// Relay `id` to `replica` ended: its channels wait for the next one.
    fn relay_gone(&self, id: u64, replica: &str) {
        let mut chans = self.lock();
        for ch in chans.map.values_mut() {
            if matches!(&ch.owner, Owner::Relay(r, _) if *r == id) {
                ch.owner = Owner::Pending;
                ch.rewind();
            }
        }
        if chans.relays.get(replica) == Some(&id) {
            chans.relays.remove(replica);
        }
        drop(chans);
        self.changed.notify_one();
    }

    /// Open a relay to `replica` for the pending channels; those it holds
    /// are its from now on. Whether it answered.
    async fn connect(self: &Arc<Self>, replica: &str, addr: &str) -> bool {
        let pending = self.pending();
        if pending.is_empty() {
            return true;
        }
        let path = format!("{RELAY_PATH}?runner={}", self.runner);
        let mut ws = match self.cluster.peers.websocket(addr, &path, MAX_MESSAGE).await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(runner = %self.runner, replica, "terminal relay: {e}");
                return false;
            }
        };
        let hello = serde_json::to_string(&Alive {
            channels: pending.clone(),
        })
        .unwrap_or_default();
        if ws.send(PeerMessage::Text(hello.into())).await.is_err() {
            return false;
        }
        let held = match tokio::time::timeout(HELLO_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(PeerMessage::Text(t)))) => serde_json::from_str::<Held>(t.as_str()).ok(),
            _ => None,
        };
        let Some(held) = held else {
            tracing::debug!(runner = %self.runner, replica, "terminal relay: no answer");
            return false;
        };
        let wake = Arc::new(Notify::new());
        let mut chans = self.lock();
        let id = chans.next_relay;
        chans.next_relay += 1;
        let mut claimed = Vec::new();
        for c in held.held {
            if let Some(ch) = chans.map.get_mut(&c) {
                if pending.contains(&c) && matches!(ch.owner, Owner::Pending) {
                    ch.owner = Owner::Relay(id, wake.clone());
                    ch.rewind();
                    claimed.push(c);
                }
            }
        }
        if claimed.is_empty() {
            // Nothing of ours there: the socket closes, so does A's relay.
            return true;
        }
        tracing::info!(runner = %self.runner, replica, channels = ?claimed, "relaying terminal sessions to their replica");
        chans.relays.insert(replica.to_owned(), id);
        chans.pumps.retain(|p| !p.is_finished());
        let pump = tokio::spawn(pump(self.clone(), id, replica.to_owned(), ws, wake));
        chans.pumps.push(pump);
        true
    }

    /// Hang up the pending channels no replica holds a session of.
    async fn close_pending(&self) {
        let mut orders = Vec::new();
        {
            let mut chans = self.lock();
            for (&channel, ch) in chans.map.iter_mut() {
                if !matches!(ch.owner, Owner::Pending) {
                    continue;
                }
                ch.owner = Owner::Closing;
                orders.push(ToRunner::Text(close_message(channel)));
                if !ch.kept.is_empty() {
                    orders.push(ToRunner::Binary(ack_frame(channel, ch.kept_end())));
                }
                ch.kept.clear();
                tracing::info!(runner = %self.runner, channel, "no replica holds this terminal's session: hung up on the runner");
            }
        }
        for m in orders {
            let sent = self
                .registry
                .send_terminal(&self.tenant, &self.runner, m, RUNNER_SEND_TIMEOUT)
                .await;
            if sent.is_err() {
                return;
            }
        }
    }

    /// One look for the replicas holding the pending channels' sessions.
    async fn round(self: &Arc<Self>) {
        let holders = match self
            .cluster
            .store
            .terminal_holders(&self.runner, &self.cluster.id)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(runner = %self.runner, "looking up terminal sessions' replicas: {e}");
                return;
            }
        };
        let mut answered = true;
        for (replica, addr) in holders {
            if self.lock().relays.contains_key(&replica) {
                continue;
            }
            answered &= self.connect(&replica, &addr).await;
        }
        if answered {
            self.close_pending().await;
        }
    }
}

/// Looks for the pending channels' replicas until the link ends.
async fn manage(inner: Arc<Inner>) {
    loop {
        if inner.link_gone.load(std::sync::atomic::Ordering::Relaxed)
            || !inner.registry.holds(&inner.runner)
        {
            return;
        }
        if !inner.pending().is_empty() {
            inner.round().await;
        }
        tokio::select! {
            () = inner.changed.notified() => {}
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// One relay to a session replica: the runner's frames there, that
/// replica's for the runner here.
async fn pump(inner: Arc<Inner>, id: u64, replica: String, ws: PeerSocket, wake: Arc<Notify>) {
    let (mut sink, mut stream) = ws.split();
    let writer = async {
        loop {
            let frames = inner.take_frames(id);
            if frames.is_empty() {
                wake.notified().await;
                continue;
            }
            for f in frames {
                if sink.send(PeerMessage::Binary(f.into())).await.is_err() {
                    return;
                }
            }
        }
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            let m = match msg {
                PeerMessage::Binary(b) => {
                    let Ok((header, _)) = decode_frame(&b) else {
                        break;
                    };
                    if !inner.for_runner(id, &header) {
                        continue;
                    }
                    ToRunner::Binary(b.to_vec())
                }
                PeerMessage::Text(t) => {
                    let channel = match decode_control(t.as_str()) {
                        Ok(Decoded::Known(env)) => match env.body {
                            Message::TermClose(c) => c.channel,
                            Message::TermResize(r) => r.channel,
                            _ => continue,
                        },
                        _ => continue,
                    };
                    if !inner.owns(id, channel) {
                        continue;
                    }
                    ToRunner::Text(t.as_str().to_owned())
                }
                PeerMessage::Close(_) => break,
                _ => continue,
            };
            let sent = inner
                .registry
                .send_terminal(&inner.tenant, &inner.runner, m, RUNNER_SEND_TIMEOUT)
                .await;
            if sent.is_err() {
                inner
                    .link_gone
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
    tracing::info!(runner = %inner.runner, replica, "terminal relay ended");
    inner.relay_gone(id, &replica);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: FrameKind, seq: u64) -> FrameHeader {
        FrameHeader {
            kind,
            tag: StreamTag::Pty,
            channel: TERM_CHANNEL_BIT | 1,
            seq,
        }
    }

    #[test]
    fn kept_output_is_deduplicated_freed_by_acks_and_sent_again_on_a_new_relay() {
        let mut ch = Chan::new();
        ch.output(&header(FrameKind::Data, 10), b"hello", "rn");
        // A resend overlapping what is kept: only the new part.
        ch.output(&header(FrameKind::Data, 12), b"llo world", "rn");
        assert_eq!((ch.start, ch.kept.len()), (Some(10), 11));
        // A gap is refused.
        ch.output(&header(FrameKind::Data, 30), b"x", "rn");
        assert_eq!(ch.kept_end(), 21);
        ch.sent = 21;
        ch.acked(16);
        assert_eq!(ch.start, Some(16));
        assert_eq!(ch.kept.iter().copied().collect::<Vec<u8>>(), b"world");
        ch.rewind();
        assert_eq!(ch.sent, 16, "a new relay gets what is not acknowledged");
        ch.acked(40);
        assert!(ch.kept.is_empty());
        // Everything acknowledged: output goes on from where it comes.
        ch.output(&header(FrameKind::Data, 40), b"!", "rn");
        assert_eq!((ch.start, ch.kept_end()), (Some(40), 41));
        // Never more than the window kept.
        let big = vec![b'y'; MAX_KEPT];
        ch.output(&header(FrameKind::Data, 41), &big, "rn");
        assert_eq!(ch.kept_end(), 41);
    }
}
