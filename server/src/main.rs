//! `tether-server`: the Tether control plane and its operator CLI.
//!
//! `serve` runs the server (`app/serve.rs`), `backup` copies a data dir
//! (`app/backup.rs`), `migrate` moves one into PostgreSQL
//! (`app/migrate.rs`); every other subcommand is a client of its REST API
//! (`cli.rs`). Usage errors exit 2 (clap), `--help` works at
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
    /// Copy every database of a data dir (online) and its key files into a new directory
    Backup(tether_server::app::backup::BackupArgs),
    /// Copy a stopped SQLite data dir into PostgreSQL and compare the counts
    Migrate(tether_server::app::migrate::MigrateArgs),
    #[command(flatten)]
    Client(tether_server::cli::ClientCommand),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match args.command {
        Command::Serve(serve_args) => tether_server::app::serve::main(*serve_args),
        Command::Backup(a) => tether_server::app::backup::main(a),
        Command::Migrate(a) => tether_server::app::migrate::main(a),
        Command::Client(command) => tether_server::cli::run(&args.client, command),
    }
}
