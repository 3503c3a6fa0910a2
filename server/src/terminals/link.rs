//! Terminals on the runner connection (dispatched by `link/dispatch.rs`;
//! `terminals/mod.rs` holds the sessions, which outlive the connection):
//!
//! ```text
//!  welcome sent ─▶ Terminals::runner_back
//!  DATA, END, ACK frames on a terminal channel ─▶ Terminals::on_frame ─▶ ACK now (no client)
//!  term_alive (after welcome) ─▶ keystrokes again from the runner's ACK; ended: the ones it lost
//!  connection ends ─▶ Terminals::runner_gone (sessions wait for the runner),
//!                     unless a newer connection took over
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
use crate::terminals::{ack_frame, Terminals, ToRunner};

/// The terminals family's handler; the sessions are its state.
pub struct TerminalsLink {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub terminals: Arc<Terminals>,
}

#[async_trait]
impl Family for TerminalsLink {
    async fn attached(self: Arc<Self>, _: &RunnerIdentity, _: &Hello) -> Box<dyn FamilyConn> {
        Box::new(TerminalsConn(self))
    }
}

struct TerminalsConn(Arc<TerminalsLink>);

async fn send(wire: &mut Wire, m: ToRunner) -> Result<(), Ending> {
    match m {
        ToRunner::Binary(b) => wire.send(WsMessage::Binary(b.into())).await,
        ToRunner::Text(t) => wire.send(WsMessage::Text(t.into())).await,
    }
}

#[async_trait]
impl FamilyConn for TerminalsConn {
    async fn welcomed(&mut self, _: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        self.0.terminals.runner_back(&runner.id);
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
        let (to_send, lost) = self.0.terminals.on_alive(&runner.id, &alive.channels);
        for s in lost {
            record_end(&self.0.db, &s).await;
        }
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
        let out = self.0.terminals.on_frame(&runner.id, &header, &payload);
        if let Some(s) = out.ended {
            record_end(&self.0.db, &s).await;
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
        // A newer connection may have replaced this one already: its
        // `term_alive` owns the terminals then.
        if self
            .0
            .registry
            .live_last_seen(&runner.tenant_id, &runner.id)
            .is_none()
        {
            self.0.terminals.runner_gone(&runner.id);
        }
    }
}
