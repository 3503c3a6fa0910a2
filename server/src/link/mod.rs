//! The runner WebSocket: hello, liveness, the registry of live
//! connections, and dispatch of inbound messages to the features that own
//! them (`runner_ws/{jobs,logs,terminals}.rs`).

pub mod registry;
pub mod runner_ws;

/// The one route of the link: a runner's WebSocket.
pub fn routes() -> axum::Router<crate::app::AppState> {
    axum::Router::new().route(
        tether::protocol::RUNNER_CONNECT_PATH,
        axum::routing::get(runner_ws::connect),
    )
}
