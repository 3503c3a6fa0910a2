//! The signature check of terminals and container operations, before the
//! feature that would act on them sees them (`runner.rs` screens each
//! message from the server here). Jobs and deploys are checked by `jobs/`
//! itself, once it knows a job is new to this host; both use the one
//! [`Verifier`], so an action id is remembered once whatever its kind.
//!
//! ```text
//!  term_open ─────────────────────────────▶ Verifier::check(Terminal) ─ok─▶ terminals
//!  docker_request that changes state ─────▶ Verifier::check(Container) ─ok─▶ docker
//!  (list, inspect, log channels: read only, never checked)        └─refused─▶ error reply
//!                                                       signature_refused + the reason
//! ```
//!
//! Each checked action lands in the host's record (`audit.log`) with its
//! verdict. Refusals wait here for the connection (at most
//! [`MAX_REFUSALS`]: the server would not wait longer for the others).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{audit, Verifier, REFUSED_CODE};
use crate::link::Outgoing;
use crate::protocol::signed::{container_bytes, terminal_bytes, Kind, Signed};
use crate::protocol::{ErrorBody, Message as Control};

/// The verifier, shared by the gate and `jobs/` (one loop, one thread).
pub type Shared = Rc<RefCell<Verifier>>;

/// Refusals queued for the link at most; beyond, the oldest is dropped
/// (its request times out on the server, still refused).
pub const MAX_REFUSALS: usize = 64;

pub struct Gate {
    verifier: Shared,
    refusals: VecDeque<Outgoing>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Gate {
    pub fn new(verifier: Shared) -> Gate {
        Gate {
            verifier,
            refusals: VecDeque::new(),
        }
    }

    /// Whether request `id` may go on to its feature; if not, its refusal
    /// is queued (and written down).
    pub fn screen(&mut self, id: u64, msg: &Control) -> bool {
        let (kind, subject, signed) = match msg {
            Control::TermOpen(o) => {
                let target = match &o.container {
                    Some(c) => format!("container:{}", audit::field(c, 128)),
                    None => "host".to_owned(),
                };
                (
                    Kind::Terminal,
                    format!("terminal={target}"),
                    o.signed.as_ref(),
                )
            }
            Control::DockerRequest(r) if r.op.changes_state() => {
                let c = r.container.as_deref().unwrap_or("-");
                let subject = format!("container={} op={}", audit::field(c, 128), r.op.as_str());
                (Kind::Container, subject, r.signed.as_ref())
            }
            _ => return true,
        };
        let now = now_ms();
        let mut v = self.verifier.borrow_mut();
        let runner = v.runner_id().to_owned();
        let bytes = |s: &Signed| match msg {
            Control::TermOpen(o) => terminal_bytes(&runner, &s.action_id, s.not_after_ms, o),
            Control::DockerRequest(r) => container_bytes(&runner, &s.action_id, s.not_after_ms, r),
            _ => Vec::new(),
        };
        let verdict = v.check(kind, signed, bytes, now);
        v.record(&subject, kind, signed, &verdict, now);
        let Err(why) = verdict else {
            return true;
        };
        crate::warn!("trust", "{subject} refused: {why}");
        if self.refusals.len() >= MAX_REFUSALS {
            self.refusals.pop_front();
        }
        self.refusals.push_back(Outgoing::Reply {
            id,
            body: Box::new(Control::Error(ErrorBody {
                code: REFUSED_CODE.into(),
                message: why.to_string(),
            })),
        });
        false
    }

    /// The next refusal for the server.
    pub fn next_message(&mut self) -> Option<Outgoing> {
        self.refusals.pop_front()
    }
}
