//! Interactive terminal sessions on the server: the table of sessions, each
//! with its scrollback and its keystroke queue. Sessions outlive both the
//! runner's connection and the terminal client's WebSocket (a blip of
//! either is survived); the connection task (`terminals/link.rs`) and
//! the client task (`terminals/api.rs`) meet here.
//!
//! ```text
//!  POST/WS open ─▶ Opening ─term_opened─▶ Live ─────────END from the runner────────▶ Ended
//!                     │ error: gone            │ client WS gone ─▶ detached; none back in 60 s ─▶ term_close
//!                     │                        │ runner link gone ─▶ away; not back in 90 s ─────▶ Ended
//!                     │                        │ runner back: term_alive without it, or none in 10 s ─▶ Ended
//!                     │                        │ runner back on another replica: relayed (below);
//!                     │                        │   no relay in 10 s (a restarted runner) ─▶ Ended
//!                     │                        │ close (client, DELETE, idle on the runner) ─▶ term_close ─▶ END
//! ```
//!
//! On a replica of several, a session stays on the replica that opened it
//! when its runner relinks to another one (`relay.rs`): that replica relays
//! the session's frames here, and to the session the runner is simply back
//! (its `term_alive` comes through the relay); the relay's end is the
//! runner going away again.
//!
//! ```text
//!  runner ─link─▶ B ──relay (internal channel)──▶ A: Terminals::relay_install,
//!                                                    on_alive, on_frame (as from a link)
//!  A's client tasks ─▶ relay_of(runner) ─▶ B ─▶ runner   (else the link here)
//!  relay ends (B's link gone, A replaced it) ─▶ runner_gone, unless a newer
//!  relay or the runner's own link here took over (relay_drop on its welcome)
//! ```
//!
//! Output: DATA frames append to a scrollback ring of [`SCROLLBACK`] bytes
//! (offsets never reused). With a client attached the runner is ACKed only
//! for what the client took, so a slow client slows the shell, never grows
//! memory: the runner's window equals the ring, so no byte is overwritten
//! before the client has it. Detached, output is ACKed as it lands and the
//! ring keeps the newest 256 KiB for the next attach (bounded scrollback).
//!
//! Input: keystrokes wait in a queue of at most [`INPUT_WINDOW`] bytes
//! until the runner ACKs them (written to the pty); past it the client task
//! stops reading its WebSocket. After a runner reconnect (`term_alive`) the
//! queue is sent again from the runner's ACK; the runner drops overlap.
//!
//! Recording (`recorder.rs`): a session of a tenant that records has a
//! [`recorder::Recorder`] in its state; output, keystrokes (if the policy
//! says) and resizes are copied into it under the same lock, and the
//! session's watchdog encodes and writes them out in batches. `recordings.rs` serves
//! them (list, `.cast` download, the tenant's policy).

pub mod api;
pub mod link;
pub mod recorder;
pub mod recordings;
pub mod relay;

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct TerminalsCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    /// This server's address as the browser sees it (`--public-url`), for
    /// the `Origin` check of a cookie-authenticated WebSocket.
    pub public_url: Option<Arc<str>>,
    /// Interactive terminal sessions (they outlive runner connections).
    pub terminals: Arc<Terminals>,
    /// This replica's id, on a replica of several: recorded with each
    /// session it holds, so every replica lists the session as open.
    pub replica_id: Option<Arc<str>>,
    /// On a replica of several: the relays of sessions whose runner moved
    /// to another replica (`relay.rs`).
    pub cluster: Option<relay::Cluster>,
    pub tickets: Arc<Tickets>,
    pub quotas: Quotas,
    pub tuning: Tuning,
    /// Identifying the caller of a WebSocket outside the extractor.
    pub auth: AuthCtx,
}

/// Opening, attaching to, closing and auditing terminals.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    TerminalsCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use axum::routing::{delete, get, post};
    axum::Router::new()
        .route("/api/v1/runners/{id}/terminals", post(api::create))
        .route("/api/v1/runners/{id}/terminal", get(api::open_ws))
        .route("/api/v1/terminals", get(api::audit))
        .route("/api/v1/terminals/{tid}", delete(api::close))
        .route("/api/v1/terminals/{tid}/attach", get(api::attach_ws))
        .route("/api/v1/recordings", get(recordings::list))
        .route("/api/v1/recordings/{tid}", get(recordings::show))
        .route("/api/v1/recordings/{tid}/cast", get(recordings::download))
        .route(
            "/api/v1/recording-policy",
            get(recordings::policy).put(recordings::set_policy),
        )
}

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tether::protocol::{
    encode_frame, FrameHeader, FrameKind, StreamTag, DEFAULT_TERM_WINDOW, MAX_DATA_PAYLOAD,
    TERM_CHANNEL_BIT,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::common::auth::AuthCtx;
use crate::common::quotas::Quotas;
use crate::common::stream_auth::Tickets;
use crate::common::tuning::Tuning;
use crate::db::Db;
use crate::link::registry::Registry;

/// Output kept for a reattach; equal to the runner's window (see above).
pub const SCROLLBACK: usize = DEFAULT_TERM_WINDOW as usize;
/// Keystrokes in flight to the runner before the client is not read.
pub const INPUT_WINDOW: usize = 32 * 1024;
/// A session without a client is hung up after this long.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(60);
/// A session whose runner is gone this long ends.
pub const RUNNER_AWAY_TIMEOUT: Duration = Duration::from_secs(90);
/// Terminals open at once on the server, over all runners.
pub const MAX_SESSIONS: usize = 4096;

/// A message for a runner's connection task (no answer expected); the
/// link's type, which sends it as it is.
pub use crate::link::registry::ToRunner;

/// What a session is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Opening,
    Live,
    Ended(String),
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct State {
    pub phase: Phase,
    /// Output: `ring` holds offsets `[end - ring.len(), end)`.
    ring: VecDeque<u8>,
    pub end: u64,
    /// What the runner was last told is stored.
    pub acked: u64,
    /// The attached client (its generation) and how far it has read.
    pub client: Option<u64>,
    pub delivered: u64,
    pub detached_since: Option<Instant>,
    /// Keystrokes not yet acknowledged: offsets `[in_acked, in_acked + input.len())`.
    input: VecDeque<u8>,
    pub in_acked: u64,
    pub in_sent: u64,
    /// The runner's connection holds this terminal (`term_alive` said so,
    /// or it opened it on this connection).
    pub runner_here: bool,
    pub runner_away_since: Option<Instant>,
    /// The runner connected again after being away; `term_alive` must
    /// confirm the terminal soon (a restarted runner sends none).
    pub runner_back_at: Option<Instant>,
    /// A close was asked for: `term_close` is sent (or will be on reconnect).
    pub closing: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The session's recording, if its tenant records.
    pub rec: Option<recorder::Recorder>,
}

/// One terminal.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub tenant_id: String,
    pub runner_id: String,
    pub channel: u32,
    /// `host` or `container:NAME`.
    pub target: String,
    pub who: String,
    pub opened_ms: i64,
    state: Mutex<State>,
    /// Wakes the client task: output, the end, room for keystrokes.
    pub notify: Notify,
}

impl Session {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Output from `from` (at most `max` bytes), and where it really
    /// started (later than `from` if the ring no longer has it).
    pub fn output_from(&self, from: u64, max: usize) -> (u64, Vec<u8>) {
        let start = self.end - self.ring.len() as u64;
        let from = from.clamp(start, self.end);
        let skip = (from - start) as usize;
        let n = ((self.end - from) as usize).min(max);
        (from, self.ring.range(skip..skip + n).copied().collect())
    }

    pub fn ring_start(&self) -> u64 {
        self.end - self.ring.len() as u64
    }

    pub fn input_room(&self) -> usize {
        INPUT_WINDOW.saturating_sub(self.input.len())
    }

    /// Queue keystrokes; the frames to send now (if the runner is here).
    pub fn push_input(&mut self, channel: u32, data: &[u8]) -> Vec<Vec<u8>> {
        let n = data.len().min(self.input_room());
        self.input.extend(&data[..n]);
        if let Some(r) = self.rec.as_mut() {
            r.input(&data[..n]);
        }
        self.bytes_in += n as u64;
        if self.runner_here {
            self.unsent_input(channel)
        } else {
            Vec::new()
        }
    }

    /// DATA frames for keystrokes from `in_sent` on.
    pub fn unsent_input(&mut self, channel: u32) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let end = self.in_acked + self.input.len() as u64;
        while self.in_sent < end {
            let from = (self.in_sent - self.in_acked) as usize;
            let n = ((end - self.in_sent) as usize).min(MAX_DATA_PAYLOAD);
            let payload: Vec<u8> = self.input.range(from..from + n).copied().collect();
            let header = FrameHeader {
                kind: FrameKind::Data,
                tag: StreamTag::Pty,
                channel,
                seq: self.in_sent,
            };
            frames.push(encode_frame(header, &payload));
            self.in_sent += n as u64;
        }
        frames
    }

    /// The ACK to send the runner now, if the stored offset moved.
    pub fn ack_due(&mut self) -> Option<u64> {
        let to = if self.client.is_some() {
            self.delivered
        } else {
            self.end
        };
        (to > self.acked).then(|| {
            self.acked = to;
            to
        })
    }
}

/// An ACK frame for a terminal channel.
pub fn ack_frame(channel: u32, seq: u64) -> Vec<u8> {
    let header = FrameHeader {
        kind: FrameKind::Ack,
        tag: StreamTag::None,
        channel,
        seq,
    };
    encode_frame(header, &[])
}

/// What a DATA/END/ACK frame from the runner led to.
#[derive(Debug, Default)]
pub struct FrameOutcome {
    /// ACK the runner up to here.
    pub ack: Option<u64>,
    /// The session ended (END): its audit row is to be closed.
    pub ended: Option<Arc<Session>>,
}

/// Which limit refused a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Server,
    Tenant,
}

/// Every terminal session on this server.
#[derive(Default)]
pub struct Terminals {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    next_channel: AtomicU32,
    /// Runners whose link another replica holds and relays to this one's
    /// sessions (`relay.rs`): the newest relay per runner.
    relays: Mutex<HashMap<String, RelayRoute>>,
    relay_gen: AtomicU64,
}

/// Where a session's messages for its runner go when another replica
/// holds the runner's link.
struct RelayRoute {
    generation: u64,
    tx: tokio::sync::mpsc::Sender<ToRunner>,
    /// Told when a newer relay or the runner's own link here replaced it.
    stop: Arc<Notify>,
}

impl Terminals {
    /// The channel numbers start at a random point: replicas number their
    /// sessions independently, and a runner that moved holds sessions of
    /// several (a number another replica uses is refused by the runner).
    pub fn new() -> Terminals {
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        Terminals {
            next_channel: AtomicU32::new(u32::from_le_bytes(seed)),
            ..Terminals::default()
        }
    }

    fn relays(&self) -> MutexGuard<'_, HashMap<String, RelayRoute>> {
        self.relays.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A relay from the replica now holding `runner_id`'s link: it replaces
    /// any older one (which is told to stop). Its generation, for
    /// [`Terminals::relay_ended`], and its stop signal.
    pub fn relay_install(
        &self,
        runner_id: &str,
        tx: tokio::sync::mpsc::Sender<ToRunner>,
    ) -> (u64, Arc<Notify>) {
        let generation = self.relay_gen.fetch_add(1, Ordering::Relaxed) + 1;
        let stop = Arc::new(Notify::new());
        let old = self.relays().insert(
            runner_id.to_owned(),
            RelayRoute {
                generation,
                tx,
                stop: stop.clone(),
            },
        );
        if let Some(old) = old {
            old.stop.notify_one();
        }
        (generation, stop)
    }

    /// Relay `generation` ended: whether it was still the runner's route
    /// (a replaced one's end changes nothing).
    pub fn relay_ended(&self, runner_id: &str, generation: u64) -> bool {
        let mut relays = self.relays();
        if relays.get(runner_id).map(|r| r.generation) == Some(generation) {
            relays.remove(runner_id);
            return true;
        }
        false
    }

    /// The runner linked here again: its relay, if any, is replaced.
    pub fn relay_drop(&self, runner_id: &str) {
        if let Some(old) = self.relays().remove(runner_id) {
            old.stop.notify_one();
        }
    }

    /// The relay carrying messages to `runner_id`, if another replica
    /// holds its link for this one's sessions.
    pub fn relay_of(&self, runner_id: &str) -> Option<tokio::sync::mpsc::Sender<ToRunner>> {
        self.relays().get(runner_id).map(|r| r.tx.clone())
    }

    /// Whether this replica holds a session of `runner_id` on `channel`.
    pub fn holds_channel(&self, runner_id: &str, channel: u32) -> bool {
        self.by_channel(runner_id, channel).is_some()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session in `Opening`, unless the server is at
    /// [`MAX_SESSIONS`] or the tenant at `per_tenant` (an opening session
    /// counts: the slot is held while the runner is asked).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        id: String,
        tenant_id: &str,
        runner_id: &str,
        target: String,
        who: String,
        opened_ms: i64,
        per_tenant: usize,
    ) -> Result<Arc<Session>, Full> {
        let mut map = self.map();
        if map.len() >= MAX_SESSIONS {
            return Err(Full::Server);
        }
        let tenant_has = map.values().filter(|s| s.tenant_id == tenant_id).count();
        if tenant_has >= per_tenant {
            return Err(Full::Tenant);
        }
        let n = self.next_channel.fetch_add(1, Ordering::Relaxed) & !TERM_CHANNEL_BIT;
        let s = Arc::new(Session {
            id: id.clone(),
            tenant_id: tenant_id.to_owned(),
            runner_id: runner_id.to_owned(),
            channel: TERM_CHANNEL_BIT | n,
            target,
            who,
            opened_ms,
            state: Mutex::new(State {
                phase: Phase::Opening,
                ring: VecDeque::new(),
                end: 0,
                acked: 0,
                client: None,
                delivered: 0,
                detached_since: Some(Instant::now()),
                input: VecDeque::new(),
                in_acked: 0,
                in_sent: 0,
                runner_here: true,
                runner_away_since: None,
                runner_back_at: None,
                closing: false,
                bytes_in: 0,
                bytes_out: 0,
                rec: None,
            }),
            notify: Notify::new(),
        });
        map.insert(id, s.clone());
        Ok(s)
    }

    pub fn get(&self, tenant_id: &str, id: &str) -> Option<Arc<Session>> {
        self.map()
            .get(id)
            .filter(|s| s.tenant_id == tenant_id)
            .cloned()
    }

    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    fn by_channel(&self, runner_id: &str, channel: u32) -> Option<Arc<Session>> {
        self.map()
            .values()
            .find(|s| s.runner_id == runner_id && s.channel == channel)
            .cloned()
    }

    fn of_runner(&self, runner_id: &str) -> Vec<Arc<Session>> {
        self.map()
            .values()
            .filter(|s| s.runner_id == runner_id)
            .cloned()
            .collect()
    }

    /// A DATA, END or ACK frame from the runner on a terminal channel.
    pub fn on_frame(&self, runner_id: &str, header: &FrameHeader, payload: &[u8]) -> FrameOutcome {
        let mut out = FrameOutcome::default();
        let Some(s) = self.by_channel(runner_id, header.channel) else {
            return out;
        };
        let mut st = s.lock();
        match header.kind {
            FrameKind::Data => {
                let end = header.seq + payload.len() as u64;
                if end > st.end && header.seq <= st.end {
                    let skip = (st.end - header.seq) as usize;
                    let data = &payload[skip..];
                    if let Some(r) = st.rec.as_mut() {
                        r.output(data);
                    }
                    st.ring.extend(data);
                    let over = st.ring.len().saturating_sub(SCROLLBACK);
                    st.ring.drain(..over);
                    st.end = end;
                    st.bytes_out += data.len() as u64;
                    // Bytes the client never saw are gone (detached only).
                    let start = st.ring_start();
                    st.delivered = st.delivered.max(start);
                } else if header.seq > st.end {
                    tracing::warn!(runner = %runner_id, channel = header.channel, seq = header.seq, have = st.end, "terminal output with a gap; ignored");
                }
                out.ack = st.ack_due();
            }
            FrameKind::End => {
                let reason = String::from_utf8_lossy(payload).into_owned();
                st.phase = Phase::Ended(if reason.is_empty() {
                    "ended".into()
                } else {
                    reason
                });
                drop(st);
                self.remove(&s.id);
                out.ended = Some(s.clone());
            }
            FrameKind::Ack => {
                let end = st.in_acked + st.input.len() as u64;
                let seq = header.seq.min(end);
                if seq > st.in_acked {
                    let n = (seq - st.in_acked) as usize;
                    st.input.drain(..n);
                    st.in_acked = seq;
                    st.in_sent = st.in_sent.max(seq);
                }
            }
            _ => {}
        }
        s.notify.notify_one();
        out
    }

    /// `term_alive` on a new connection: the frames to send (keystrokes
    /// again from the runner's ACK, closes still owed) and the sessions the
    /// runner no longer has.
    pub fn on_alive(
        &self,
        runner_id: &str,
        channels: &[u32],
    ) -> (Vec<ToRunner>, Vec<Arc<Session>>) {
        let (mut send, mut lost) = (Vec::new(), Vec::new());
        for s in self.of_runner(runner_id) {
            let mut st = s.lock();
            if st.phase == Phase::Opening {
                continue;
            }
            if !channels.contains(&s.channel) {
                st.phase = Phase::Ended("the runner no longer has this terminal".into());
                drop(st);
                self.remove(&s.id);
                s.notify.notify_one();
                lost.push(s);
                continue;
            }
            st.runner_here = true;
            st.runner_away_since = None;
            st.runner_back_at = None;
            st.in_sent = st.in_acked;
            for f in st.unsent_input(s.channel) {
                send.push(ToRunner::Binary(f));
            }
            if st.closing {
                send.push(ToRunner::Text(close_message(s.channel)));
            }
            // The runner resends from our last ACK; say where it is.
            send.push(ToRunner::Binary(ack_frame(s.channel, st.acked)));
            drop(st);
            s.notify.notify_one();
        }
        (send, lost)
    }

    /// The runner connected again: the terminals it had wait for its
    /// `term_alive`.
    pub fn runner_back(&self, runner_id: &str) {
        let now = Instant::now();
        for s in self.of_runner(runner_id) {
            let mut st = s.lock();
            if !st.runner_here {
                st.runner_back_at = Some(now);
            }
        }
    }

    /// The runner's connection ended: its terminals wait for it.
    pub fn runner_gone(&self, runner_id: &str) {
        let now = Instant::now();
        for s in self.of_runner(runner_id) {
            let mut st = s.lock();
            st.runner_here = false;
            st.runner_back_at = None;
            st.runner_away_since.get_or_insert(now);
            drop(st);
            s.notify.notify_one();
        }
    }
}

/// `term_close` for `channel`, as sent to the runner.
pub fn close_message(channel: u32) -> String {
    tether::protocol::encode_control(
        0,
        tether::protocol::Message::TermClose(tether::protocol::ChannelRef { channel }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(channel: u32, seq: u64) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Data,
            tag: StreamTag::Pty,
            channel,
            seq,
        }
    }

    #[test]
    fn a_tenant_at_its_limit_is_refused_and_another_is_not() {
        let t = Terminals::new();
        let open = |id: &str, tenant: &str| {
            t.create(id.into(), tenant, "rn", "host".into(), "me".into(), 0, 2)
        };
        assert!(open("tm_1", "tn_a").is_ok());
        // Still opening (no answer from the runner yet): the slot counts.
        assert!(open("tm_2", "tn_a").is_ok());
        assert_eq!(open("tm_3", "tn_a").unwrap_err(), Full::Tenant);
        assert!(open("tm_4", "tn_b").is_ok(), "another tenant is unaffected");
        t.remove("tm_1");
        assert!(open("tm_5", "tn_a").is_ok(), "a freed slot is reusable");
    }

    #[test]
    fn output_is_deduplicated_bounded_and_acked_by_what_the_client_took() {
        let t = Terminals::new();
        let s = t
            .create("tm_1".into(), "tn", "rn", "host".into(), "me".into(), 0, 8)
            .unwrap();
        s.lock().phase = Phase::Live;
        let ch = s.channel;
        // Detached: ACKed as it lands.
        let o = t.on_frame("rn", &data(ch, 0), b"hello ");
        assert_eq!(o.ack, Some(6));
        // A resend overlapping what we have: only the new part counts.
        let o = t.on_frame("rn", &data(ch, 3), b"lo world");
        assert_eq!(o.ack, Some(11));
        assert_eq!(s.lock().output_from(0, 100), (0, b"hello world".to_vec()));
        // Attached: ACK only what the client read.
        {
            let mut st = s.lock();
            st.client = Some(1);
            st.delivered = 11;
        }
        let o = t.on_frame("rn", &data(ch, 11), b"!!");
        assert_eq!(o.ack, None);
        s.lock().delivered = 13;
        assert_eq!(s.lock().ack_due(), Some(13));
        // The ring keeps the newest SCROLLBACK bytes.
        s.lock().client = None;
        let big = vec![b'x'; MAX_DATA_PAYLOAD];
        let mut seq = 13;
        for _ in 0..(SCROLLBACK / MAX_DATA_PAYLOAD + 2) {
            t.on_frame("rn", &data(ch, seq), &big);
            seq += big.len() as u64;
        }
        let st = s.lock();
        assert_eq!(st.end, seq);
        assert_eq!(st.ring_start(), seq - SCROLLBACK as u64);
        let (from, bytes) = st.output_from(0, 10);
        assert_eq!((from, bytes.len()), (seq - SCROLLBACK as u64, 10));
    }

    #[tokio::test]
    async fn the_newest_relay_of_a_runner_is_its_route_and_an_old_ones_end_changes_nothing() {
        let t = Terminals::new();
        let (tx_b, _rx_b) = tokio::sync::mpsc::channel(1);
        let (tx_c, mut rx_c) = tokio::sync::mpsc::channel(1);
        let (b, stop_b) = t.relay_install("rn", tx_b);
        // The runner moved on to C: C's relay replaces B's, which is told.
        let (c, _stop_c) = t.relay_install("rn", tx_c);
        tokio::time::timeout(Duration::from_secs(1), stop_b.notified())
            .await
            .expect("the replaced relay is told to stop");
        t.relay_of("rn")
            .unwrap()
            .send(ToRunner::Text("x".into()))
            .await
            .unwrap();
        assert!(
            matches!(rx_c.recv().await, Some(ToRunner::Text(_))),
            "C carries it"
        );
        // B's late end: not the route any more, nothing changes.
        assert!(!t.relay_ended("rn", b));
        assert!(t.relay_of("rn").is_some());
        assert!(t.relay_ended("rn", c));
        assert!(t.relay_of("rn").is_none());
        // The runner's own link here replaces a relay.
        let (tx_d, _rx_d) = tokio::sync::mpsc::channel(1);
        let (d, _) = t.relay_install("rn", tx_d);
        t.relay_drop("rn");
        assert!(t.relay_of("rn").is_none());
        assert!(!t.relay_ended("rn", d));
    }

    #[test]
    fn keystrokes_are_bounded_and_resent_from_the_runners_ack() {
        let t = Terminals::new();
        let s = t
            .create("tm_2".into(), "tn", "rn", "host".into(), "me".into(), 0, 8)
            .unwrap();
        s.lock().phase = Phase::Live;
        let ch = s.channel;
        let frames = s.lock().push_input(ch, b"ls\n");
        assert_eq!(frames.len(), 1);
        let big = vec![b'y'; INPUT_WINDOW * 2];
        s.lock().push_input(ch, &big);
        assert_eq!(s.lock().input_room(), 0);
        // The runner wrote 3 bytes, then the link broke.
        let ack = FrameHeader {
            kind: FrameKind::Ack,
            tag: StreamTag::None,
            channel: ch,
            seq: 3,
        };
        t.on_frame("rn", &ack, &[]);
        t.runner_gone("rn");
        assert!(s.lock().push_input(ch, b"z").is_empty());
        let (send, lost) = t.on_alive("rn", &[ch]);
        assert!(lost.is_empty());
        let first = send
            .iter()
            .find_map(|m| match m {
                ToRunner::Binary(f) => Some(tether::protocol::decode_frame(f).unwrap().0),
                _ => None,
            })
            .unwrap();
        assert_eq!((first.kind, first.seq), (FrameKind::Data, 3));
        // A runner that lost the terminal ends it.
        let (_, lost) = t.on_alive("rn", &[]);
        assert_eq!(lost.len(), 1);
        assert!(matches!(s.lock().phase, Phase::Ended(_)));
        assert!(t.get("tn", "tm_2").is_none());
    }
}
