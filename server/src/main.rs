//! `tether-server`: the Tether control plane and its operator CLI.
//!
//! `serve` runs the server (`app/serve.rs`); every other subcommand is a client of
//! its REST API (`cli.rs`). Usage errors exit 2 (clap), `--help` works at
//! every level. Everything else lives in the library (`lib.rs`, which holds
//! the module map).

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
    client: tether_server::cli::ClientArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server
    // Boxed: the flags outweigh every client command (clippy large_enum_variant).
    Serve(Box<tether_server::app::config::ServeArgs>),
    #[command(flatten)]
    Client(tether_server::cli::ClientCommand),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match args.command {
        Command::Serve(serve_args) => tether_server::app::serve::main(*serve_args),
        Command::Client(command) => tether_server::cli::run(&args.client, command),
    }
}
