//! The terminal channels of one runner connection, as the connection task
//! drives them (`terminals/mod.rs` holds the sessions, which outlive the
//! connection):
//!
//! ```text
//!  Outgoing::Terminal from a client task ─▶ keystrokes / ACK / resize / close to the runner
//!  DATA, END, ACK frames on a terminal channel ─▶ Terminals::on_frame ─▶ ACK now (no client)
//!  term_alive (after welcome) ─▶ keystrokes again from the runner's ACK; ended: the ones it lost
//!  connection ends ─▶ Terminals::runner_gone (sessions wait for the runner)
//! ```

use axum::body::Bytes;
use axum::extract::ws::Message as WsMessage;
use tether::protocol::{FrameHeader, TermAlive};

use super::{Connection, Ending};
use crate::terminals::api::record_end;
use crate::terminals::{ack_frame, ToRunner};

impl Connection {
    /// A frame or message a client task queued for this runner.
    pub(super) async fn send_terminal(&mut self, m: ToRunner) -> Result<(), Ending> {
        match m {
            ToRunner::Binary(b) => self.send(WsMessage::Binary(b.into())).await,
            ToRunner::Text(t) => self.send(WsMessage::Text(t.into())).await,
        }
    }

    /// A DATA, END or ACK frame on a terminal channel.
    pub(super) async fn on_terminal_frame(
        &mut self,
        header: FrameHeader,
        payload: Bytes,
    ) -> Result<(), Ending> {
        let out = self
            .state
            .terminals
            .on_frame(&self.runner.id, &header, &payload);
        if let Some(s) = out.ended {
            record_end(&self.state.db, &s).await;
        }
        match out.ack {
            Some(seq) => {
                self.send(WsMessage::Binary(ack_frame(header.channel, seq).into()))
                    .await
            }
            None => Ok(()),
        }
    }

    /// The runner says which terminals it still holds.
    pub(super) async fn on_term_alive(&mut self, alive: TermAlive) -> Result<(), Ending> {
        let (send, lost) = self
            .state
            .terminals
            .on_alive(&self.runner.id, &alive.channels);
        for s in lost {
            record_end(&self.state.db, &s).await;
        }
        for m in send {
            self.send_terminal(m).await?;
        }
        Ok(())
    }
}
