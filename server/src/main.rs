//! `tether-server`: the Tether control plane and its operator CLI.
//!
//! `serve` runs the server (`serve.rs`); every other subcommand is a client of
//! its REST API (`cli.rs`). Usage errors exit 2 (clap), `--help` works at
//! every level.
//!
//! Module map, one concern each:
//!
//! ```text
//! config     serve flags, data-dir files      serve      listener, TLS accept, shutdown
//! tls        cert loading, dev CA             app        shared state, route table
//! storage    SQLite, the only SQL             auth       secrets, hashing, callers
//! api        REST handlers                    error      the JSON error body
//! runner_ws  one runner's WebSocket           registry   live connections, routing
//! health     health changes + broadcast       events     SSE of health changes
//! clock      time formats                     cli        operator subcommands
//! telemetry  metrics + fingerprints from      metrics_store  metrics SQLite: samples,
//!            a runner socket, the writer                     rollups, retention, queries
//! telemetry_api  metrics/fingerprint REST     prometheus     text exposition
//! containers     Docker state, container      containers_api container REST: Docker
//!                view + events from a runner                 calls through the runner
//! users      dashboard users, sessions        web        the embedded dashboard files
//! stream_auth  streams re-check who they       quotas     per-tenant limits, job retention
//!              serve; WebSocket tickets
//! ```

mod api;
mod app;
mod auth;
mod cli;
mod clock;
mod config;
mod containers;
mod containers_api;
mod deploy_api;
mod deploy_store;
mod edge;
mod error;
mod events;
mod health;
mod job_store;
mod jobs;
mod jobs_api;
mod log_store;
mod logs;
mod logs_api;
mod metrics_store;
mod prometheus;
mod quotas;
mod registry;
mod runner_ws;
mod secrets;
mod serve;
mod storage;
mod stream_auth;
mod telemetry;
mod telemetry_api;
mod terminals;
mod terminals_api;
mod tls;
mod updates;
mod users;
mod web;

#[cfg(test)]
mod tests;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tether-server",
    version,
    about = "Tether control plane and operator CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    client: cli::ClientArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server
    // Boxed: the flags outweigh every client command (clippy large_enum_variant).
    Serve(Box<config::ServeArgs>),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match args.command {
        Command::Serve(serve_args) => serve::main(*serve_args),
        Command::Client(command) => cli::run(&args.client, command),
    }
}
