//! Terminals on the runner connection (dispatched by `link/dispatch.rs`;
//! `terminals/mod.rs` holds the sessions, which outlive the connection):
//!
//! ```text
//!  welcome sent ─▶ Terminals::runner_back
//!  DATA, END, ACK frames on a terminal channel ─▶ Terminals::on_frame ─▶ ACK now (no client)
//!  term_alive (after welcome) ─▶ keystrokes again from the runner's ACK; ended: the ones it lost
//!                     on a replica of several: channels it holds no session
//!                     of ─▶ relay::RunnerSide (their sessions are on another
//!                     replica: relayed there, or hung up if none has them)
//!  DATA, END, ACK of a relayed channel ─▶ the relay, not the sessions here
//!  connection ends ─▶ Terminals::runner_gone (sessions wait for the runner),
//!                     unless a newer connection (or a relay from the
//!                     replica that holds it now) took over; its relays end
//! ```
//!
//! What client tasks queue for the runner (`ToRunner`) the link sends as it
//! is.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::ws::Message as WsMessage;
use tether::protocol::{Envelope, FrameHeader, Hello, Message};

use crate::db::{Db, RunnerIdentity};
use crate::link::dispatch::{Ending, Family, FamilyConn, Wire};
use crate::link::registry::Registry;
use crate::terminals::api::record_end;
use crate::terminals::relay::{Cluster, RunnerSide, Taken};
use crate::terminals::{ack_frame, Terminals, ToRunner};

/// The terminals family's handler; the sessions are its state.
pub struct TerminalsLink {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub terminals: Arc<Terminals>,
    /// On a replica of several: relays to the sessions of other replicas.
    pub cluster: Option<Cluster>,
}

#[async_trait]
impl Family for TerminalsLink {
    async fn attached(self: Arc<Self>, _: &RunnerIdentity, _: &Hello) -> Box<dyn FamilyConn> {
        Box::new(TerminalsConn {
            link: self,
            relay: None,
        })
    }
}

struct TerminalsConn {
    link: Arc<TerminalsLink>,
    /// This connection's relays of channels whose sessions are elsewhere.
    relay: Option<RunnerSide>,
}

async fn send(wire: &mut Wire, m: ToRunner) -> Result<(), Ending> {
    match m {
        ToRunner::Binary(b) => wire.send(WsMessage::Binary(b.into())).await,
        ToRunner::Text(t) => wire.send(WsMessage::Text(t.into())).await,
    }
}

#[async_trait]
impl FamilyConn for TerminalsConn {
    async fn welcomed(&mut self, _: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        // The runner's own link here replaces a relay by another replica.
        self.link.terminals.relay_drop(&runner.id);
        self.link.terminals.runner_back(&runner.id);
        Ok(())
    }

    /// The runner says which terminals it still holds (`term_alive`).
    async fn message(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending> {
        let Message::TermAlive(alive) = &envelope.body else {
            return Ok(());
        };
        let terminals = &self.link.terminals;
        let (to_send, lost) = terminals.on_alive(&runner.id, &alive.channels);
        for s in lost {
            record_end(&self.link.db, &s).await;
        }
        // Channels of sessions this replica does not hold: another may.
        self.relay = self.link.cluster.as_ref().and_then(|cluster| {
            let mut elsewhere: Vec<u32> = alive
                .channels
                .iter()
                .copied()
                .filter(|c| !terminals.holds_channel(&runner.id, *c))
                .collect();
            elsewhere.sort_unstable();
            elsewhere.dedup();
            (!elsewhere.is_empty()).then(|| {
                RunnerSide::start(
                    &runner.tenant_id,
                    &runner.id,
                    self.link.registry.clone(),
                    cluster.clone(),
                    &elsewhere,
                )
            })
        });
        for m in to_send {
            send(wire, m).await?;
        }
        Ok(())
    }

    /// A DATA, END or ACK frame on a terminal channel.
    async fn frame(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        header: FrameHeader,
        payload: Bytes,
    ) -> Result<(), Ending> {
        if let Some(relay) = &self.relay {
            match relay.frame_of_runner(&header, &payload) {
                Taken::No => {}
                Taken::Yes => return Ok(()),
                Taken::Ack(seq) => {
                    let ack = ack_frame(header.channel, seq);
                    return wire.send(WsMessage::Binary(ack.into())).await;
                }
            }
        }
        let out = self.link.terminals.on_frame(&runner.id, &header, &payload);
        if let Some(s) = out.ended {
            record_end(&self.link.db, &s).await;
        }
        match out.ack {
            Some(seq) => {
                wire.send(WsMessage::Binary(ack_frame(header.channel, seq).into()))
                    .await
            }
            None => Ok(()),
        }
    }

    async fn detached(&mut self, runner: &RunnerIdentity) {
        // Its relays end with it (their sessions see the runner away).
        self.relay = None;
        // A newer connection may have replaced this one already: its
        // `term_alive` owns the terminals then; so does a relay from the
        // replica the runner linked to instead (this link was fenced).
        if self
            .link
            .registry
            .live_last_seen(&runner.tenant_id, &runner.id)
            .is_none()
            && self.link.terminals.relay_of(&runner.id).is_none()
        {
            self.link.terminals.runner_gone(&runner.id);
        }
    }
}
