//! The runner WebSocket: hello, liveness, the registry of live
//! connections, and dispatch of inbound messages to the features that own
//! them (`runner_ws/{jobs,logs,terminals}.rs`).

pub mod registry;
pub mod runner_ws;
