//! `tether`: the runner binary. Parses the command line (lexopt), runs the
//! command, prints the error chain once and maps it to an exit code.
//!
//! Exit codes (see `tether::exit` and `tether --help`):
//!
//! | code | meaning |
//! |---:|---|
//! | 0 | ok (`status`: connected) |
//! | 1 | other error |
//! | 2 | usage error |
//! | 3 | `enroll`/`run`: state dir not writable; `status`: not connected or not running |
//! | 4 | server unreachable (DNS, TCP, proxy, timeout) |
//! | 5 | TLS certificate rejected |
//! | 6 | enrollment token invalid |
//! | 7 | enrollment token expired |
//! | 8 | enrollment token already used |
//! | 9 | enrollment token revoked, or runner revoked |
//! | 10 | protocol or server error |
//! | 11 | not enrolled |
//! | 12 | `update`: release refused, nothing changed |
//! | 13 | `update`: the new version failed and was rolled back |

// `unsafe` lives in `tether::sys` only.
#![deny(unsafe_code)]

use lexopt::prelude::*;
use std::error::Error;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tether::config::{self, ConfigError};
use tether::conn::{ConnConfig, Endpoint, HelloInfo};
use tether::docker::client::DockerConfig;
use tether::enroll::{EnrollError, EnrollOptions};
use tether::exit;
use tether::jobs::JobsConfig;
use tether::link::Exit;
use tether::log::{self, Level};
use tether::net::tls::{self, TlsConfigError};
use tether::runner::{self, RunConfig};
use tether::signals::Signals;
use tether::state::{self, RunState, StateDir, StateError, Status};
use tether::telemetry::{TelemetryConfig, DEFAULT_FINGERPRINT_INTERVAL};
use tether::terminal::TerminalConfig;
use tether::update::record::Record;
use tether::update::{self, Start, UpdateConfig, UpdateError, Verdict};

const MAIN_HELP: &str = "\
tether: the Tether runner. Holds one outbound TLS WebSocket to tether-server.

Usage: tether [GLOBAL OPTIONS] COMMAND [OPTIONS]

Commands:
  enroll    register this host with a server using a one-time token
  run       connect to the server and stay connected
  status    show the local connection state
  update    install a signed release by hand (air-gapped), or --check
  audit     what this host was asked to run, on whose signature, and the outcome
  version   print the version

Global options (also accepted after the command):
  --state-dir DIR     credential and CA copy [env TETHER_STATE_DIR, default /var/lib/tether]
  --run-dir DIR       status.json [env TETHER_RUN_DIR, default: the state dir]
  --log-level LEVEL   error, warn, info or debug [env TETHER_LOG, default info]
  -h, --help          help (also `tether COMMAND --help`)
  -V, --version       print the version

";

const ENROLL_HELP: &str = "\
Usage: tether enroll --server URL --token TOKEN [--ca-file PEM] [--proxy URL] [--name NAME]

Trade a one-time enrollment token for a runner credential, stored in
<state-dir>/credential.json (mode 0600). Prints the runner id.

Options:
  --server URL     the server, https://host[:port] [env TETHER_SERVER]
                   (http:// only for loopback hosts); several, comma-separated,
                   for replicas of one cluster: tried in turn, all kept for `run`
  --token TOKEN    enrollment token from `tether-server token create` [env TETHER_TOKEN]
  --ca-file PEM    trust only this CA (copied to <state-dir>/ca.pem for `run`)
                   [env TETHER_CA_FILE; default: the public web PKI roots]
  --proxy URL      HTTP proxy for CONNECT, http://[user:pass@]host:port, or `none`
                   [env HTTPS_PROXY / https_proxy, minus NO_PROXY]
  --name NAME      name to register under [default: the host name]
  -h, --help       this help
";

const RUN_HELP: &str = "\
Usage: tether run [--heartbeat 5s] [--metrics-interval 5s] [--fingerprint-interval 60s]
                  [--docker-socket PATH] [--max-jobs N] [--no-jobs]
                  [--no-host-terminal] [--host-terminal-user USER]
                  [--no-container-terminal] [--no-container-control]
                  [--require-signed jobs,deploys,terminals,containers] [--operator-keys FILE]
                  [--server URL] [--ca-file PEM] [--proxy URL] [--label KEY=VALUE]...

Connect to the server with the stored credential and stay connected,
reconnecting with backoff. SIGTERM/SIGINT close the connection cleanly.
Host metrics are sampled and kept while disconnected (bounded), then sent;
the host fingerprint (OS, sockets, firewall rules, ...) is reported on
each connection and then as changes.

Options:
  --heartbeat DURATION  WebSocket ping interval, e.g. 5s, 500ms [env TETHER_HEARTBEAT, default 5s]
  --metrics-interval DURATION
                        metrics sampling interval, 0 or off to disable
                        [env TETHER_METRICS_INTERVAL, default: the heartbeat]
  --fingerprint-interval DURATION
                        fingerprint collection interval, 0 or off to disable
                        [env TETHER_FINGERPRINT_INTERVAL, default 60s]
  --docker-socket PATH  the Docker engine's socket, or `off` [env TETHER_DOCKER_SOCKET,
                        else DOCKER_HOST=unix://PATH, default /var/run/docker.sock]
  --max-jobs N          jobs run at once; more wait in a queue [env TETHER_MAX_JOBS, default 4]
  --no-jobs             refuse every job and script: the host owner's choice, which
                        the server cannot override [env TETHER_JOBS=off]
  --server URL          connect here instead of the enrolled server URL(s) (same credential);
                        repeat it or separate URLs by commas: tried in turn, each failure
                        moving to the next (one backoff policy for the list), at most 16
  --ca-file PEM         trust only this CA [env TETHER_CA_FILE; default <state-dir>/ca.pem
                        if enrollment stored one, else the public web PKI roots]
  --proxy URL           HTTP proxy for CONNECT, or `none` [env HTTPS_PROXY / https_proxy, minus NO_PROXY]
  --no-host-terminal    refuse terminals on this host (container terminals stay);
                        the server cannot override it [env TETHER_HOST_TERMINAL=off]
  --no-container-terminal
                        refuse terminals in containers (docker exec); the server
                        cannot override it [env TETHER_CONTAINER_TERMINAL=off]
  --no-container-control
                        refuse the server's calls that change containers and images
                        (start, stop, restart, kill, remove, prune); listing,
                        inspecting and logs stay, deploys are jobs (--no-jobs)
                        [env TETHER_CONTAINER_CONTROL=off]
  --label KEY=VALUE     a label this host proposes to the server (repeatable; the
                        server shows it as proposed until an operator accepts it)
                        [also one per line in <state-dir>/labels, as install.sh writes]
  --require-signed LIST  jobs, deploys, terminals, containers (comma-separated, or all,
                        or none) run only when signed by a trusted operator key (the
                        CLI's --sign-key); refused with the reason otherwise; the server
                        cannot override it. containers: operations that change a
                        container or image (list and inspect are never checked)
                        [env TETHER_REQUIRE_SIGNED, default none]
  --operator-keys FILE  trusted operator public keys (minisign, several allowed)
                        [env TETHER_OPERATOR_KEYS, default <state-dir>/operator-keys.pub]
  --host-terminal-user USER
                        whose login shell a host terminal runs [env TETHER_HOST_TERMINAL_USER,
                        default: the user the runner runs as]
  --update-keys FILE    trusted minisign public keys for self-update (several for rotation)
                        [env TETHER_UPDATE_KEYS, default <state-dir>/update-keys.pub;
                        no keys: updates are refused]
  --health-timeout DURATION
                        a new version must connect within this or the previous one
                        comes back [env TETHER_UPDATE_HEALTH_TIMEOUT, default 60s]
  -h, --help            this help

Self-update: TETHER_UPDATE=off refuses the server's update offers (reported
to the server as rejected; the distro packages set it: their package manager
owns the binary);
TETHER_UPDATE_ALLOW_DOWNGRADE=1 allows installing older versions.
";

const UPDATE_HELP: &str = "\
Usage: tether update --file BINARY --sig BINARY.minisig [--allow-downgrade]
       tether update --check [--file BINARY --sig BINARY.minisig]

Install a release copied by hand (air-gapped hosts). The signature must be
by a key this host trusts and name this host's architecture; the version
must be newer than the running one unless downgrades are allowed. With a
runner running, it is handed the files (SIGUSR1) and swaps itself with the
usual trial, health deadline and rollback; with none, the swap is done here
and the next start runs the new version.

--check changes nothing: it prints the update settings, the state of any
update in progress, the versions that failed here, and what would happen
to the given files. Exit 0 if they would be installed.

Options:
  --file PATH           the release binary (tether-<arch>)
  --sig PATH            its minisign signature
  --allow-downgrade     allow an older version [env TETHER_UPDATE_ALLOW_DOWNGRADE=1]
  --update-keys FILE    trusted minisign public keys, one or more
                        [env TETHER_UPDATE_KEYS, default <state-dir>/update-keys.pub]
  --check               say what would happen, change nothing
  -h, --help            this help
";

const STATUS_HELP: &str = "\
Usage: tether status [--json]

Print the runner's local state from <run-dir>/status.json. Exit 0 when
connected, 3 when not connected or not running.

Options:
  --json       print the raw status JSON
  -h, --help   this help
";

const AUDIT_HELP: &str = "\
Usage: tether audit

Print this host's own record of the jobs, deploys, terminals and container
operations the server asked for, oldest first, from <state-dir>/audit.log:
one line per action with the time (UTC), what it was (job=ID,
terminal=host or terminal=container:NAME, container=NAME op=OP), the kind
(job, deploy, terminal, container), the signed action id
(- if none), the signer's key id (or unsigned) and the outcome: ran (let
through to run), ran unchecked (signed, but this host does not require
signatures for that kind) or refused: the reason. The runner writes it,
not the server. Bounded: past 64 KiB audit.log becomes audit.log.1 and the
older one is dropped, so the last 64-128 KiB of actions are kept.

Exit 0 when printed (nothing recorded yet: a note on stderr), 1 when the
record cannot be read.

Options:
  -h, --help   this help
";

const VERSION_HELP: &str = "\
Usage: tether version

Print the version and build target.
";

/// Everything that can end a command, and its exit code.
#[derive(Debug)]
enum CliError {
    Usage(String),
    Config(ConfigError),
    Enroll(EnrollError),
    NotEnrolled(StateError),
    StateDir(StateError),
    State(StateError),
    Tls(TlsConfigError),
    Revoked(String),
    Io(&'static str, io::Error),
    Update(UpdateError),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => exit::USAGE,
            CliError::Enroll(e) => e.exit_code(),
            CliError::NotEnrolled(_) => exit::NOT_ENROLLED,
            CliError::StateDir(_) => exit::STATE_DIR,
            CliError::Revoked(_) => exit::REVOKED,
            CliError::State(_) | CliError::Tls(_) | CliError::Io(..) => exit::OTHER,
            CliError::Update(UpdateError::Rejected(_)) => exit::UPDATE_REJECTED,
            CliError::Update(_) => exit::UPDATE_FAILED,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m}"),
            CliError::Config(e) => write!(f, "{e}"),
            CliError::Enroll(e) => write!(f, "{e}"),
            CliError::NotEnrolled(e) | CliError::StateDir(e) | CliError::State(e) => write!(f, "{e}"),
            CliError::Tls(e) => write!(f, "{e}"),
            CliError::Revoked(m) => write!(
                f,
                "this runner was revoked by the server ({m}); enroll again with a new token to reconnect"
            ),
            CliError::Io(what, _) => write!(f, "{what}"),
            CliError::Update(e) => write!(f, "{e}"),
        }
    }
}

impl Error for CliError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CliError::Enroll(e) => e.source(),
            CliError::NotEnrolled(e) | CliError::StateDir(e) | CliError::State(e) => e.source(),
            CliError::Tls(e) => e.source(),
            CliError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> CliError {
        CliError::Usage(e.to_string())
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            let _ = writeln!(io::stderr(), "tether: error: {msg}");
            if let CliError::Usage(_) = e {
                let _ = writeln!(io::stderr(), "run `tether --help` for usage");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// An argument detached from the parser's borrow.
#[derive(Debug)]
enum Opt {
    Short(char),
    Long(String),
    Value(OsString),
}

impl Opt {
    fn is(&self, long: &str) -> bool {
        matches!(self, Opt::Long(l) if l == long)
    }

    fn is_help(&self) -> bool {
        matches!(self, Opt::Short('h')) || self.is("help")
    }

    fn unexpected(self) -> CliError {
        CliError::Usage(match self {
            Opt::Short(c) => format!("unexpected option '-{c}'"),
            Opt::Long(l) => format!("unexpected option '--{l}'"),
            Opt::Value(v) => format!("unexpected argument '{}'", v.to_string_lossy()),
        })
    }
}

fn next_opt(parser: &mut lexopt::Parser) -> Result<Option<Opt>, CliError> {
    Ok(parser.next()?.map(|arg| match arg {
        Short(c) => Opt::Short(c),
        Long(l) => Opt::Long(l.to_owned()),
        Value(v) => Opt::Value(v),
    }))
}

/// Options every command accepts.
#[derive(Debug, Default)]
struct Global {
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    log_level: Option<String>,
}

impl Global {
    /// Consume a global option if `arg` is one.
    fn take(&mut self, opt: &Opt, parser: &mut lexopt::Parser) -> Result<bool, CliError> {
        let Opt::Long(name) = opt else {
            return Ok(false);
        };
        match name.as_str() {
            "state-dir" => self.state_dir = Some(parser.value()?.into()),
            "run-dir" => self.run_dir = Some(parser.value()?.into()),
            "log-level" => self.log_level = Some(parser.value()?.string()?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| config::env("TETHER_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_STATE_DIR))
    }

    fn run_dir(&self) -> PathBuf {
        self.run_dir
            .clone()
            .or_else(|| config::env("TETHER_RUN_DIR").map(PathBuf::from))
            .unwrap_or_else(|| self.state_dir())
    }

    fn apply_log_level(&self) -> Result<(), CliError> {
        if let Some(l) = self.log_level.clone().or_else(|| config::env("TETHER_LOG")) {
            let level: Level = l.parse().map_err(CliError::Usage)?;
            log::set_level(level);
        }
        Ok(())
    }
}

fn print(text: &str) -> Result<u8, CliError> {
    // A closed stdout (`tether status | head -1`) is not an error worth a report.
    match io::stdout().write_all(text.as_bytes()) {
        Ok(()) => Ok(exit::OK),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(CliError::Io("cannot write to stdout", e)),
    }
}

/// The release name first (what `install.sh` and the update check ask for:
/// `uname -m` cannot tell mips from mipsel), then the build target.
fn version_line() -> String {
    format!(
        "tether {} ({}, {})\n",
        tether::version::version(),
        tether::sys::RELEASE_ARCH,
        tether::sys::build_target()
    )
}

fn run() -> Result<u8, CliError> {
    let mut parser = lexopt::Parser::from_env();
    let mut global = Global::default();
    let command = loop {
        let Some(opt) = next_opt(&mut parser)? else {
            print(MAIN_HELP)?;
            print(exit::HELP_TABLE)?;
            return Ok(exit::USAGE);
        };
        if global.take(&opt, &mut parser)? {
            continue;
        }
        match opt {
            o if o.is_help() => {
                print(MAIN_HELP)?;
                return print(exit::HELP_TABLE);
            }
            Opt::Short('V') => return print(&version_line()),
            o if o.is("version") => return print(&version_line()),
            Opt::Value(v) => break v.string()?,
            other => return Err(other.unexpected()),
        }
    };
    match command.as_str() {
        "enroll" => cmd_enroll(parser, global),
        "run" => cmd_run(parser, global),
        "status" => cmd_status(parser, global),
        "update" => cmd_update(parser, global),
        "audit" => cmd_audit(parser, global),
        "version" => {
            if let Some(ret) = parse_no_options(&mut parser, &mut global, VERSION_HELP)? {
                return Ok(ret);
            }
            print(&version_line())
        }
        "help" => {
            print(MAIN_HELP)?;
            print(exit::HELP_TABLE)
        }
        other => Err(CliError::Usage(format!("unknown command '{other}'"))),
    }
}

/// For commands without options: globals and --help only.
fn parse_no_options(
    parser: &mut lexopt::Parser,
    global: &mut Global,
    help: &str,
) -> Result<Option<u8>, CliError> {
    while let Some(opt) = next_opt(parser)? {
        if global.take(&opt, parser)? {
            continue;
        }
        if opt.is_help() {
            return print(help).map(Some);
        }
        return Err(opt.unexpected());
    }
    Ok(None)
}

/// A capability the host owner may switch off: `--no-…` or `VAR=off`.
fn switch(off_flag: bool, var: &str) -> Result<bool, CliError> {
    match config::env(var).as_deref() {
        _ if off_flag => Ok(false),
        None | Some("on") | Some("1") | Some("yes") => Ok(true),
        Some("off") | Some("0") | Some("no") => Ok(false),
        Some(other) => Err(CliError::Usage(format!(
            "{var} must be on or off, not {other:?}"
        ))),
    }
}

fn env_or(flag: Option<String>, var: &str) -> Option<String> {
    flag.or_else(|| config::env(var))
}

fn os_string(v: OsString) -> Result<String, CliError> {
    Ok(v.string()?)
}

fn cmd_enroll(mut parser: lexopt::Parser, mut global: Global) -> Result<u8, CliError> {
    let (mut server, mut token, mut ca_file, mut proxy, mut name) = (None, None, None, None, None);
    while let Some(opt) = next_opt(&mut parser)? {
        if global.take(&opt, &mut parser)? {
            continue;
        }
        match &opt {
            o if o.is("server") => server = Some(os_string(parser.value()?)?),
            o if o.is("token") => token = Some(os_string(parser.value()?)?),
            o if o.is("ca-file") => ca_file = Some(PathBuf::from(parser.value()?)),
            o if o.is("proxy") => proxy = Some(os_string(parser.value()?)?),
            o if o.is("name") => name = Some(os_string(parser.value()?)?),
            o if o.is_help() => return print(ENROLL_HELP),
            _ => return Err(opt.unexpected()),
        }
    }
    global.apply_log_level()?;
    let server = env_or(server, "TETHER_SERVER")
        .ok_or_else(|| CliError::Usage("enroll needs --server URL (or TETHER_SERVER)".into()))?;
    let token = env_or(token, "TETHER_TOKEN")
        .ok_or_else(|| CliError::Usage("enroll needs --token TOKEN (or TETHER_TOKEN)".into()))?;
    let ca_file = ca_file.or_else(|| config::env("TETHER_CA_FILE").map(PathBuf::from));
    let opts = EnrollOptions {
        server,
        token,
        ca_file,
        proxy,
        name,
        state_dir: global.state_dir(),
        timeout: config::PHASE_TIMEOUT,
    };
    let cred = tether::enroll::enroll(&opts).map_err(CliError::Enroll)?;
    print(&format!("{}\n", cred.runner_id))
}

/// `--label`s, then the lines of `<state-dir>/labels` (install.sh
/// writes it). The server checks each label's syntax again.
fn proposed_labels(mut labels: Vec<String>, state_dir: &Path) -> Result<Vec<String>, CliError> {
    if let Ok(text) = std::fs::read_to_string(state_dir.join("labels")) {
        labels.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    if labels.len() > 32 {
        return Err(CliError::Usage("at most 32 labels".into()));
    }
    match labels.iter().find(|l| !l.contains('=') || l.len() > 127) {
        Some(bad) => Err(CliError::Usage(format!(
            "label {bad:?}: KEY=VALUE, at most 127 bytes"
        ))),
        None => Ok(labels),
    }
}

/// `tether run`: parse the flags, decide the settings, run the loop.
fn cmd_run(mut parser: lexopt::Parser, mut global: Global) -> Result<u8, CliError> {
    let Some(flags) = RunFlags::parse(&mut parser, &mut global)? else {
        return print(RUN_HELP);
    };
    global.apply_log_level()?;
    let plan = RunPlan::decide(flags, &global)?;
    serve(plan)
}

/// `tether run`'s command line as typed (ripgrep's "low args"): each flag
/// as given, not yet merged with its environment variable nor checked.
#[derive(Debug, Default)]
struct RunFlags {
    heartbeat: Option<String>,
    metrics_interval: Option<String>,
    fingerprint_interval: Option<String>,
    docker_socket: Option<String>,
    max_jobs: Option<String>,
    no_jobs: bool,
    ca_file: Option<PathBuf>,
    proxy: Option<String>,
    /// Each `--server` value (a URL or a comma-separated list), in order.
    servers: Vec<String>,
    no_host_terminal: bool,
    host_terminal_user: Option<String>,
    no_container_terminal: bool,
    no_container_control: bool,
    labels: Vec<String>,
    require_signed: Option<String>,
    operator_keys: Option<PathBuf>,
    update_keys: Option<PathBuf>,
    health_timeout: Option<String>,
}

impl RunFlags {
    /// The flags, and the global options among them; `None`: `--help`
    /// came (what follows it is not read).
    fn parse(
        parser: &mut lexopt::Parser,
        global: &mut Global,
    ) -> Result<Option<RunFlags>, CliError> {
        let mut f = RunFlags::default();
        while let Some(opt) = next_opt(parser)? {
            if global.take(&opt, parser)? {
                continue;
            }
            match &opt {
                o if o.is("update-keys") => f.update_keys = Some(parser.value()?.into()),
                o if o.is("health-timeout") => f.health_timeout = Some(value(parser)?),
                o if o.is("heartbeat") => f.heartbeat = Some(value(parser)?),
                o if o.is("metrics-interval") => f.metrics_interval = Some(value(parser)?),
                o if o.is("docker-socket") => f.docker_socket = Some(value(parser)?),
                o if o.is("fingerprint-interval") => f.fingerprint_interval = Some(value(parser)?),
                o if o.is("max-jobs") => f.max_jobs = Some(value(parser)?),
                o if o.is("no-jobs") => f.no_jobs = true,
                o if o.is("ca-file") => f.ca_file = Some(parser.value()?.into()),
                o if o.is("proxy") => f.proxy = Some(value(parser)?),
                o if o.is("server") => f.servers.push(value(parser)?),
                o if o.is("no-host-terminal") => f.no_host_terminal = true,
                o if o.is("no-container-terminal") => f.no_container_terminal = true,
                o if o.is("no-container-control") => f.no_container_control = true,
                o if o.is("label") => f.labels.push(value(parser)?),
                o if o.is("require-signed") => f.require_signed = Some(value(parser)?),
                o if o.is("operator-keys") => f.operator_keys = Some(parser.value()?.into()),
                o if o.is("host-terminal-user") => f.host_terminal_user = Some(value(parser)?),
                o if o.is_help() => return Ok(None),
                _ => return Err(opt.unexpected()),
            }
        }
        Ok(Some(f))
    }
}

/// An option's value as UTF-8.
fn value(parser: &mut lexopt::Parser) -> Result<String, CliError> {
    os_string(parser.value()?)
}

/// `tether run`'s settings decided (ripgrep's "high args"): the flags
/// merged with the environment and checked, the credential loaded, the
/// state and run dirs proven writable, the update state looked at.
struct RunPlan {
    cfg: RunConfig,
    /// Self-update (`None`: off; `cfg.update_off` says why).
    update: Option<UpdateConfig>,
    state: StateDir,
}

/// The intervals of `run`: heartbeat, metrics and fingerprint (`None`: off).
struct Intervals {
    heartbeat: Duration,
    metrics: Option<Duration>,
    fingerprint: Option<Duration>,
}

impl RunPlan {
    /// Checks in the order a host owner meets them: flags and environment
    /// first (usage errors, exit 2), then the credential (11), the
    /// directories (3), TLS and proxy, the update state.
    fn decide(f: RunFlags, global: &Global) -> Result<RunPlan, CliError> {
        let intervals = Intervals::decide(&f)?;
        let terminals = terminal_config(&f)?;
        let container_control = switch(f.no_container_control, "TETHER_CONTAINER_CONTROL")?;
        let docker_socket = DockerConfig::socket_from(
            f.docker_socket.as_deref(),
            config::env("TETHER_DOCKER_SOCKET").as_deref(),
            config::env("DOCKER_HOST").as_deref(),
        )
        .map_err(CliError::Usage)?;
        let max_jobs = max_jobs(f.max_jobs)?;
        let jobs_off = f.no_jobs
            || config::env("TETHER_JOBS")
                .is_some_and(|v| matches!(v.as_str(), "off" | "0" | "no" | "false"));

        let require = require_signed(f.require_signed)?;

        let state = StateDir::new(global.state_dir());
        let cred = state.load_credential().map_err(|e| match e {
            StateError::NotEnrolled { .. } => CliError::NotEnrolled(e),
            other => CliError::State(other),
        })?;
        let trust = trust_config(require, f.operator_keys, &state, &cred.runner_id)?;
        // The state dir will hold the output spool; the run dir holds status.json.
        state.ensure_writable().map_err(CliError::StateDir)?;
        let run_dir = global.run_dir();
        state::ensure_writable_dir(&run_dir).map_err(CliError::StateDir)?;

        let servers = match f.servers.is_empty() {
            true => config::server_urls(&cred.server),
            false => config::server_urls(&f.servers.join(",")),
        }
        .map_err(CliError::Config)?;
        let ca_file = f
            .ca_file
            .or_else(|| config::env("TETHER_CA_FILE").map(PathBuf::from))
            .or_else(|| state.stored_ca());
        let tls = tls::client_config(ca_file.as_deref()).map_err(CliError::Tls)?;
        let servers = servers
            .into_iter()
            .map(|url| {
                let proxy = config::proxy_for(&url, f.proxy.as_deref())?;
                Ok(Endpoint { url, proxy })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::Config)?;
        log_start(&state, &run_dir, &intervals, ca_file.as_deref(), &servers);

        // A trial run of a new version (update/mod.rs) only proves it can
        // connect: no status.json (the runner that started it owns that).
        let trial = config::env(update::TRIAL_ENV);
        let health_timeout = match env_or(f.health_timeout, "TETHER_UPDATE_HEALTH_TIMEOUT") {
            Some(s) => config::parse_duration(&s).map_err(CliError::Config)?,
            None => update::DEFAULT_HEALTH_TIMEOUT,
        };
        let (update_cfg, update_off) = update_setting(&state, f.update_keys, health_timeout);
        let health_deadline = match (&update_cfg, &trial) {
            (Some(u), None) => probation(u),
            _ => None,
        };
        // Secrets delivered as files live here, in memory (jobs/secret_files.rs).
        let secrets_dir = run_dir.join("secrets");
        let cfg = RunConfig {
            conn: ConnConfig {
                servers,
                runner_id: cred.runner_id,
                credential: cred.credential,
                heartbeat: intervals.heartbeat,
                tls,
                phase_timeout: config::PHASE_TIMEOUT,
                hello: HelloInfo {
                    capabilities: terminals.capabilities(),
                    labels: proposed_labels(f.labels, &state.path)?,
                    ..HelloInfo::from_host()
                },
                run_dir: if trial.is_some() { None } else { Some(run_dir) },
                metrics_interval_ms: 0,
                switched_off: Vec::new(),
            },
            telemetry: TelemetryConfig::new(intervals.metrics, intervals.fingerprint),
            docker: docker_socket.clone().map(|s| DockerConfig {
                control_enabled: container_control,
                ..DockerConfig::new(s)
            }),
            jobs: (!jobs_off).then(|| {
                let mut j = JobsConfig::new(&state.path);
                j.max_concurrent = max_jobs;
                j.docker_socket = docker_socket;
                j.secrets_dir = Some(secrets_dir);
                j
            }),
            update: update_cfg.clone(),
            update_trial: trial,
            update_off,
            health_deadline,
            terminals,
            trust,
        };
        Ok(RunPlan {
            cfg,
            update: update_cfg,
            state,
        })
    }
}

impl Intervals {
    fn decide(f: &RunFlags) -> Result<Intervals, CliError> {
        let heartbeat = match env_or(f.heartbeat.clone(), "TETHER_HEARTBEAT") {
            Some(h) => config::parse_duration(&h)
                .and_then(config::check_heartbeat)
                .map_err(CliError::Config)?,
            None => config::DEFAULT_HEARTBEAT,
        };
        let metrics = match env_or(f.metrics_interval.clone(), "TETHER_METRICS_INTERVAL") {
            Some(s) => config::parse_interval(
                "metrics interval",
                &s,
                config::MIN_METRICS_INTERVAL,
                config::MAX_METRICS_INTERVAL,
            )
            .map_err(CliError::Config)?,
            None => Some(heartbeat),
        };
        let fingerprint = match env_or(
            f.fingerprint_interval.clone(),
            "TETHER_FINGERPRINT_INTERVAL",
        ) {
            Some(s) => config::parse_interval(
                "fingerprint interval",
                &s,
                config::MIN_FINGERPRINT_INTERVAL,
                config::MAX_FINGERPRINT_INTERVAL,
            )
            .map_err(CliError::Config)?,
            None => Some(DEFAULT_FINGERPRINT_INTERVAL),
        };
        Ok(Intervals {
            heartbeat,
            metrics,
            fingerprint,
        })
    }
}

/// What the host owner allows of terminals; a named user must exist (fail
/// at start, not at the first terminal).
fn terminal_config(f: &RunFlags) -> Result<TerminalConfig, CliError> {
    let host_enabled = switch(f.no_host_terminal, "TETHER_HOST_TERMINAL")?;
    let container_enabled = switch(f.no_container_terminal, "TETHER_CONTAINER_TERMINAL")?;
    let terminals = TerminalConfig {
        host_enabled,
        container_enabled,
        host_user: env_or(f.host_terminal_user.clone(), "TETHER_HOST_TERMINAL_USER"),
    };
    if let Some(u) = &terminals.host_user {
        tether::terminal::pty::lookup_user(Some(u))
            .map_err(|e| CliError::Usage(format!("--host-terminal-user {u}: {e}")))?;
    }
    Ok(terminals)
}

/// `--max-jobs` / `TETHER_MAX_JOBS`: 1 to 64.
fn max_jobs(flag: Option<String>) -> Result<usize, CliError> {
    let Some(n) = env_or(flag, "TETHER_MAX_JOBS") else {
        return Ok(tether::jobs::DEFAULT_MAX_JOBS);
    };
    match n.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(CliError::Usage(format!(
            "--max-jobs {n:?}: a number from 1 to 64"
        ))),
    }
}

/// `--require-signed` / `TETHER_REQUIRE_SIGNED`: a usage error (what this
/// runner cannot enforce is refused, not accepted), so checked before the
/// credential.
fn require_signed(flag: Option<String>) -> Result<tether::trust::Require, CliError> {
    Ok(env_or(flag, "TETHER_REQUIRE_SIGNED")
        .map(|s| tether::trust::Require::parse(&s))
        .transpose()
        .map_err(CliError::Usage)?
        .unwrap_or_default())
}

/// Which actions need an operator's signature, and the keys that may sign.
fn trust_config(
    require: tether::trust::Require,
    operator_keys: Option<PathBuf>,
    state: &StateDir,
    runner_id: &str,
) -> Result<tether::trust::TrustConfig, CliError> {
    let keys_file = operator_keys
        .or_else(|| config::env("TETHER_OPERATOR_KEYS").map(PathBuf::from))
        .unwrap_or_else(|| state.path.join(tether::trust::KEYS_FILE));
    tether::trust::TrustConfig::load(require, &keys_file, runner_id, &state.path)
        .map_err(CliError::Usage)
}

fn log_start(
    state: &StateDir,
    run_dir: &Path,
    intervals: &Intervals,
    ca_file: Option<&Path>,
    servers: &[Endpoint],
) {
    let proxies: Vec<String> = servers
        .iter()
        .filter_map(|e| e.proxy.as_ref().map(|p| p.to_string()))
        .collect();
    let mut proxies_text = proxies.join(", ");
    if !proxies.is_empty() {
        proxies_text.insert_str(0, ", proxy ");
    }
    tether::info!(
        "main",
        "tether {} starting (pid {}, state dir {}, run dir {}, heartbeat {:?}, metrics {}, fingerprint {}{}{})",
        tether::version::version(),
        std::process::id(),
        state.path.display(),
        run_dir.display(),
        intervals.heartbeat,
        intervals.metrics.map_or("off".to_owned(), |d| format!("every {d:?}")),
        intervals.fingerprint.map_or("off".to_owned(), |d| format!("every {d:?}")),
        ca_file
            .map(|p| format!(", CA {}", p.display()))
            .unwrap_or_default(),
        proxies_text,
    );
}

/// Self-update's settings, or why it is off (`TETHER_UPDATE=off`, no keys,
/// this binary not found: logged, the runner runs on).
fn update_setting(
    state: &StateDir,
    keys: Option<PathBuf>,
    health_timeout: Duration,
) -> (Option<UpdateConfig>, Option<String>) {
    if config::env("TETHER_UPDATE").is_some_and(|v| v.eq_ignore_ascii_case("off")) {
        return (None, Some("TETHER_UPDATE=off".to_owned()));
    }
    match update_config(state, keys, false, health_timeout) {
        Ok(u) => (Some(u), None),
        Err(why) => {
            tether::error!("update", "self-update is off: {why}");
            (None, Some(why))
        }
    }
}

/// A new version on probation gets its health deadline; one that has had
/// its chances puts the previous version back (an exec: no return unless
/// that fails).
fn probation(u: &UpdateConfig) -> Option<Duration> {
    match u.on_start() {
        Start::Run { health_deadline } => health_deadline,
        Start::RollBack(why) => {
            let e = u.roll_back_and_exec(&why);
            tether::error!("update", "cannot roll back: {e}; running this version");
            None
        }
    }
}

/// The loop, again after each installed update or failed one, until a
/// signal, a revocation or an update that ends this process.
fn serve(plan: RunPlan) -> Result<u8, CliError> {
    let RunPlan {
        mut cfg,
        update,
        state,
    } = plan;
    // SIGCHLD too: the firewall probes are child processes reaped by the loop.
    // SIGUSR1: `tether update --file` left a release in the state dir.
    let signals = Signals::install(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGUSR1])
        .map_err(|e| CliError::Io("cannot install signal handlers", e))?;
    loop {
        let exit = runner::run(cfg.clone(), Some(&signals))
            .map_err(|e| CliError::Io("event loop failed", e))?;
        // Probation ends with the first loop: it connected, or it is rolled back.
        cfg.health_deadline = None;
        let Some(upd) = &update else {
            return ended(exit);
        };
        let mut stop = false;
        let mut interrupted = || {
            let _ = signals.drain(|sig| stop |= sig == libc::SIGTERM || sig == libc::SIGINT);
            stop
        };
        // Installing execs the new version: what returns is why not.
        let result = match exit {
            Exit::Shutdown | Exit::Revoked(_) => return ended(exit),
            Exit::Update(offer) => install_offer(upd, &cfg, &offer, &mut interrupted),
            Exit::UpdateFromFile => match update::take_incoming(&state.path) {
                Ok((bin, sig)) => {
                    upd.install(&bin, &sig, None, update::now_ms(), true, &mut interrupted)
                }
                Err(e) => Err(UpdateError::Rejected(format!(
                    "no release in {}: {e}",
                    state.path.join(update::INCOMING_DIR).display()
                ))),
            },
            Exit::Unhealthy => {
                let why = format!("did not connect within {:?}", upd.health_timeout);
                let e = upd.roll_back_and_exec(&why);
                Err(UpdateError::Failed(format!("cannot roll back: {e}")))
            }
        };
        match result {
            Ok(v) => tether::info!("update", "installed {v}"),
            Err(UpdateError::Interrupted) => {
                tether::info!("main", "stopped during an update; nothing changed");
                return Ok(exit::OK);
            }
            Err(e) => tether::warn!(
                "update",
                "{e}; reconnecting as {}",
                tether::version::version()
            ),
        }
    }
}

/// The loop ended without an update to make: revoked (exit 9) or
/// stopped (exit 0).
fn ended(exit: Exit) -> Result<u8, CliError> {
    match exit {
        Exit::Revoked(reason) => Err(CliError::Revoked(reason)),
        _ => {
            tether::info!("main", "stopped");
            Ok(exit::OK)
        }
    }
}

/// The server offered a version: download it (a failure is recorded as
/// rejected) and install it.
fn install_offer(
    upd: &UpdateConfig,
    cfg: &RunConfig,
    offer: &tether::protocol::UpdateOffer,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<String, UpdateError> {
    let offered = update::now_ms();
    // Any of the servers may hold the release: the first that serves it
    // (one without it answers 404, and the next is asked).
    let mut fetched = Err(UpdateError::Rejected("no server to download from".into()));
    for endpoint in &cfg.conn.servers {
        let client = tether::http::Client::new(
            cfg.conn.tls.clone(),
            endpoint.proxy.clone(),
            update::DOWNLOAD_TIMEOUT,
        );
        fetched = upd.download(&client, &endpoint.url, &cfg.conn.credential, offer);
        if fetched.is_ok() {
            break;
        }
    }
    match fetched {
        Ok((bin, sig)) => upd.install(&bin, &sig, Some(&offer.version), offered, true, interrupted),
        Err(e) => {
            upd.report_only(
                &offer.version,
                tether::protocol::update_state::REJECTED,
                &e.to_string(),
            );
            Err(e)
        }
    }
}

/// The update settings, or why self-update is off (unreadable or empty key
/// file, binary not found).
fn update_config(
    state: &StateDir,
    keys: Option<PathBuf>,
    allow_downgrade: bool,
    health_timeout: Duration,
) -> Result<UpdateConfig, String> {
    let keys_path = keys
        .or_else(|| config::env("TETHER_UPDATE_KEYS").map(PathBuf::from))
        .unwrap_or_else(|| state.path.join("update-keys.pub"));
    let keys = update::release::load_keys(&keys_path).map_err(|e| e.to_string())?;
    let binary = update::current_binary().map_err(|e| format!("cannot find this binary: {e}"))?;
    let allow_downgrade = allow_downgrade
        || config::env("TETHER_UPDATE_ALLOW_DOWNGRADE")
            .is_some_and(|v| v == "1" || v == "yes" || v == "true");
    Ok(UpdateConfig {
        binary,
        state_dir: state.path.clone(),
        keys,
        keys_source: keys_path.display().to_string(),
        allow_downgrade,
        health_timeout,
        run_args: std::env::args_os().skip(1).collect(),
    })
}

/// `tether update`: parse, decide the update settings, then report
/// (`--check`), hand the release to the running runner, or install it here.
fn cmd_update(mut parser: lexopt::Parser, mut global: Global) -> Result<u8, CliError> {
    let Some(flags) = UpdateFlags::parse(&mut parser, &mut global)? else {
        return print(UPDATE_HELP);
    };
    global.apply_log_level()?;
    let state = StateDir::new(global.state_dir());
    let health_timeout = match config::env("TETHER_UPDATE_HEALTH_TIMEOUT") {
        Some(s) => config::parse_duration(&s).map_err(CliError::Config)?,
        None => update::DEFAULT_HEALTH_TIMEOUT,
    };
    let mut upd = update_config(&state, flags.keys, flags.allow_downgrade, health_timeout)
        .map_err(|why| CliError::Update(UpdateError::Rejected(why)))?;
    // The trial run and the next start use the runner's usual command.
    upd.run_args = vec![
        "--state-dir".into(),
        state.path.clone().into_os_string(),
        "run".into(),
    ];
    let files = match (flags.file, flags.sig) {
        (Some(f), Some(s)) => Some((f, s)),
        (None, None) => None,
        _ => return Err(CliError::Usage("--file and --sig go together".into())),
    };
    if files.is_none() && !flags.check {
        return Err(CliError::Usage(
            "update needs --file PATH --sig PATH, or --check".into(),
        ));
    }
    let runner = state::read_status(&global.run_dir())
        .ok()
        .flatten()
        .filter(|st| st.state != RunState::Stopped && tether::sys::pid_alive(st.pid));
    if flags.check {
        return update_check(&upd, &state, runner.as_ref(), files.as_ref());
    }
    let (bin, sig) = read_release(&files.unwrap_or_default())?;
    let rel = upd
        .check_release(&bin, &sig, None)
        .map_err(CliError::Update)?;
    let version = rel.version.text.clone();
    match runner {
        Some(st) => hand_to_runner(&upd, &state, &global, &st, &bin, &sig, &version),
        None => {
            let mut never = || false;
            let v = upd
                .install(&bin, &sig, None, update::now_ms(), false, &mut never)
                .map_err(CliError::Update)?;
            print(&format!(
                "installed {v} at {}; the next start of the runner runs it\n",
                upd.binary.display()
            ))
        }
    }
}

/// `tether update`'s command line as typed.
#[derive(Debug, Default)]
struct UpdateFlags {
    file: Option<PathBuf>,
    sig: Option<PathBuf>,
    check: bool,
    allow_downgrade: bool,
    keys: Option<PathBuf>,
}

impl UpdateFlags {
    /// `None`: `--help` came.
    fn parse(
        parser: &mut lexopt::Parser,
        global: &mut Global,
    ) -> Result<Option<UpdateFlags>, CliError> {
        let mut f = UpdateFlags::default();
        while let Some(opt) = next_opt(parser)? {
            if global.take(&opt, parser)? {
                continue;
            }
            match &opt {
                o if o.is("file") => f.file = Some(parser.value()?.into()),
                o if o.is("sig") => f.sig = Some(parser.value()?.into()),
                o if o.is("check") => f.check = true,
                o if o.is("allow-downgrade") => f.allow_downgrade = true,
                o if o.is("update-keys") => f.keys = Some(parser.value()?.into()),
                o if o.is_help() => return Ok(None),
                _ => return Err(opt.unexpected()),
            }
        }
        Ok(Some(f))
    }
}

/// The release binary and its signature (bounded: a signature is small).
fn read_release(files: &(PathBuf, PathBuf)) -> Result<(Vec<u8>, String), CliError> {
    let bin = std::fs::read(&files.0).map_err(|e| CliError::Io("cannot read --file", e))?;
    let sig = std::fs::read(&files.1).map_err(|e| CliError::Io("cannot read --sig", e))?;
    if sig.len() > update::release::MAX_SIGNATURE {
        return Err(CliError::Update(UpdateError::Rejected(
            "--sig is not a minisign signature (too large)".into(),
        )));
    }
    Ok((bin, String::from_utf8_lossy(&sig).into_owned()))
}

/// `--check`: the settings, the update in progress, the versions that
/// failed here, and what would become of the given files (exit 12 if
/// refused). Changes nothing.
fn update_check(
    upd: &UpdateConfig,
    state: &StateDir,
    runner: Option<&Status>,
    files: Option<&(PathBuf, PathBuf)>,
) -> Result<u8, CliError> {
    let rec = Record::load(&state.path);
    let dir = upd.binary.parent().unwrap_or(std::path::Path::new("/"));
    let writable = state::ensure_writable_dir(dir).is_ok();
    let mut out = format!(
        "version:          {}\nbinary:           {} ({})\ntrusted keys:     {} from {}\ndowngrades:       {}\nhealth deadline:  {:?}\nrunner:           {}\n",
        tether::version::version(),
        upd.binary.display(),
        if writable { "writable" } else { "NOT writable: updates will be rejected" },
        upd.keys.len(),
        upd.keys_source,
        if upd.allow_downgrade { "allowed" } else { "refused" },
        upd.health_timeout,
        runner.as_ref().map_or("not running".to_owned(), |st| format!("pid {}, {}", st.pid, st.state.as_str())),
    );
    if let Some(p) = &rec.pending {
        out.push_str(&format!(
            "in progress:      {} → {} ({:?})\n",
            p.from_version, p.version, p.phase
        ));
    }
    for f in &rec.failed {
        out.push_str(&format!(
            "failed here:      {} ({}), not tried again\n",
            f.version, f.reason
        ));
    }
    let mut code = exit::OK;
    if let Some(files) = &files {
        let (bin, sig) = read_release(files)?;
        match upd.check_release(&bin, &sig, None) {
            Ok(rel) => out.push_str(&format!(
                "would install:    {} ({}, signed by trusted key #{})\n",
                rel.version,
                match upd.verdict(&rel.version.text, &rec) {
                    Verdict::Install { upgrade: false } => "downgrade",
                    _ => "upgrade",
                },
                rel.key_index + 1
            )),
            Err(e) => {
                out.push_str(&format!("would refuse:     {e}\n"));
                code = exit::UPDATE_REJECTED;
            }
        }
    }
    print(&out)?;
    Ok(code)
}

/// A runner is running: the release goes into its state dir, SIGUSR1 tells
/// it, and the outcome is read from its update record and status.
fn hand_to_runner(
    upd: &UpdateConfig,
    state: &StateDir,
    global: &Global,
    st: &Status,
    bin: &[u8],
    sig: &str,
    version: &str,
) -> Result<u8, CliError> {
    let asked = update::now_ms();
    update::put_incoming(&state.path, bin, sig)
        .map_err(|e| CliError::Io("cannot write the release into the state dir", e))?;
    if !tether::sys::process::kill_pid(st.pid as libc::pid_t, libc::SIGUSR1) {
        return Err(CliError::Io(
            "cannot signal the runner",
            io::Error::last_os_error(),
        ));
    }
    print(&format!(
        "verified {version}; handed to the runner (pid {}), waiting\n",
        st.pid
    ))?;
    let deadline = std::time::Instant::now() + upd.health_timeout * 2 + update::DOWNLOAD_TIMEOUT;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let rec = Record::load(&state.path);
        if let Some(f) = rec.has_failed(version) {
            return Err(CliError::Update(UpdateError::Failed(f.reason.clone())));
        }
        if let Some(f) = rec
            .recently_rejected(version, update::now_ms())
            .filter(|f| f.at_ms >= asked)
        {
            return Err(CliError::Update(UpdateError::Rejected(f.reason.clone())));
        }
        let now = state::read_status(&global.run_dir()).ok().flatten();
        if rec.pending.is_none()
            && now
                .as_ref()
                .is_some_and(|s| s.version == version && s.state == RunState::Connected)
        {
            return print(&format!("installed {version}: the runner is connected\n"));
        }
        if std::time::Instant::now() > deadline {
            return Err(CliError::Update(UpdateError::Failed(
                "no outcome in time; see the runner's log".into(),
            )));
        }
    }
}

fn cmd_audit(mut parser: lexopt::Parser, mut global: Global) -> Result<u8, CliError> {
    if let Some(ret) = parse_no_options(&mut parser, &mut global, AUDIT_HELP)? {
        return Ok(ret);
    }
    let dir = global.state_dir();
    match tether::trust::audit::read(&dir) {
        Ok(Some(text)) => print(&text),
        Ok(None) => {
            let _ = writeln!(
                io::stderr(),
                "tether: no actions recorded yet ({})",
                dir.join(tether::trust::audit::FILE).display()
            );
            Ok(exit::OK)
        }
        Err(e) => Err(CliError::Io("cannot read the audit record", e)),
    }
}

fn cmd_status(mut parser: lexopt::Parser, mut global: Global) -> Result<u8, CliError> {
    let mut json = false;
    while let Some(opt) = next_opt(&mut parser)? {
        if global.take(&opt, &mut parser)? {
            continue;
        }
        match &opt {
            o if o.is("json") => json = true,
            o if o.is_help() => return print(STATUS_HELP),
            _ => return Err(opt.unexpected()),
        }
    }
    global.apply_log_level()?;
    let run_dir = global.run_dir();
    let status = state::read_status(&run_dir).map_err(CliError::State)?;
    let Some(st) = status else {
        if json {
            print("{\"state\":\"not running\"}\n")?;
        } else {
            print(&format!(
                "state:          not running (no {})\n",
                state::status_path(&run_dir).display()
            ))?;
        }
        return Ok(exit::NOT_CONNECTED);
    };
    let alive = st.state != RunState::Stopped && tether::sys::pid_alive(st.pid);
    let code = if alive && st.state == RunState::Connected {
        exit::OK
    } else {
        exit::NOT_CONNECTED
    };
    if json {
        let raw = std::fs::read_to_string(state::status_path(&run_dir))
            .map_err(|e| CliError::Io("cannot read status.json", e))?;
        print(&raw)?;
        return Ok(code);
    }
    let state_line = if alive {
        st.state.as_str().to_owned()
    } else if st.state == RunState::Stopped {
        "not running (stopped)".to_owned()
    } else {
        format!(
            "not running (pid {} is gone; last state: {})",
            st.pid,
            st.state.as_str()
        )
    };
    let mut out = format!(
        "state:          {state_line}\nserver:         {}\nrunner id:      {}\nsince:          {}\nlast heartbeat: {}\npid:            {}\nversion:        {}\n",
        st.server,
        st.runner_id,
        st.since,
        st.last_heartbeat.as_deref().unwrap_or("never"),
        st.pid,
        st.version,
    );
    if let Some(m) = &st.metrics {
        out.push_str(&format!(
            "metrics:        {} records ({} bytes) not yet stored by the server, {} dropped; last sample {}\n",
            m.backlog_records,
            m.backlog_bytes,
            m.dropped,
            m.last_sample.as_deref().unwrap_or("never"),
        ));
    }
    if st.terminals > 0 {
        out.push_str(&format!("terminals:      {} open\n", st.terminals));
    }
    if !st.switched_off.is_empty() {
        out.push_str(&format!(
            "switched off:   {} (by this host's owner)\n",
            st.switched_off.join(", ")
        ));
    }
    if let Some(e) = &st.last_error {
        out.push_str(&format!("last error:     {e}\n"));
    }
    print(&out)?;
    Ok(code)
}
