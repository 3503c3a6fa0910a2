//! The one Engine API call: every feature that talks to the Docker engine
//! (container management, terminal exec, and in time logs and deploys)
//! sends its request and reads its answer through [`call`], on its own
//! non-blocking unix socket in the event loop, under its owner's deadline.
//!
//! ```text
//! api.rs         Engine API requests for one negotiated version, and their answers
//! stream.rs      what Docker puts inside bodies: stdout/stderr frames or raw TTY bytes,
//!                lines, log timestamps
//! call.rs        Exchange (sans-IO: request out, answer in, whole or as a stream of
//!                events, read budget per pass) and EngineCall (socket, token, timer)
//! ```
//!
//! It stands on `net` (the HTTP codec) and the loop's context; it names
//! no feature: the owner says which timer its deadline fires. Nothing
//! here touches a socket but [`call::EngineCall`].

pub mod api;
pub mod call;
pub mod stream;

use api::Api;
use std::path::PathBuf;

pub use call::{Answer, CallError, EngineCall, Exchange, Got, Upload};

/// Where the engine is and which API version it speaks, while it is
/// available: what `docker::client` hands to the features that call it.
#[derive(Debug, Clone)]
pub struct Engine {
    pub socket: PathBuf,
    pub api: Api,
}
