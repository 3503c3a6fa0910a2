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

use lexopt::prelude::*;
use std::error::Error;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tether::config::{self, ConfigError};
use tether::conn::tls::{self, TlsConfigError};
use tether::conn::{ConnConfig, Exit, HelloInfo};
use tether::docker::client::DockerConfig;
use tether::enroll::{EnrollError, EnrollOptions};
use tether::event_loop::EventLoop;
use tether::exit;
use tether::log::{self, Level};
use tether::signals::Signals;
use tether::state::{self, RunState, StateDir, StateError};
use tether::telemetry::{TelemetryConfig, DEFAULT_FINGERPRINT_INTERVAL};
use tether::terminal::TerminalConfig;

const MAIN_HELP: &str = "\
tether: the Tether runner. Holds one outbound TLS WebSocket to tether-server.

Usage: tether [GLOBAL OPTIONS] COMMAND [OPTIONS]

Commands:
  enroll    register this host with a server using a one-time token
  run       connect to the server and stay connected
  status    show the local connection state
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
                   (http:// only for loopback hosts)
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
                  [--docker-socket PATH] [--server URL] [--ca-file PEM] [--proxy URL]
                  [--no-host-terminal] [--host-terminal-user USER]

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
  --server URL          connect here instead of the enrolled server URL (same credential)
  --ca-file PEM         trust only this CA [env TETHER_CA_FILE; default <state-dir>/ca.pem
                        if enrollment stored one, else the public web PKI roots]
  --proxy URL           HTTP proxy for CONNECT, or `none` [env HTTPS_PROXY / https_proxy, minus NO_PROXY]
  --no-host-terminal    refuse terminals on this host (container terminals stay);
                        the server cannot override it [env TETHER_HOST_TERMINAL=off]
  --host-terminal-user USER
                        whose login shell a host terminal runs [env TETHER_HOST_TERMINAL_USER,
                        default: the user the runner runs as]
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

fn version_line() -> String {
    format!(
        "tether {} ({})\n",
        env!("CARGO_PKG_VERSION"),
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

fn cmd_run(mut parser: lexopt::Parser, mut global: Global) -> Result<u8, CliError> {
    let (mut heartbeat, mut ca_file, mut proxy, mut server) = (None, None, None, None);
    let (mut metrics_interval, mut fingerprint_interval) = (None, None);
    let mut docker_socket = None;
    let (mut no_host_terminal, mut host_terminal_user) = (false, None);
    while let Some(opt) = next_opt(&mut parser)? {
        if global.take(&opt, &mut parser)? {
            continue;
        }
        match &opt {
            o if o.is("heartbeat") => heartbeat = Some(os_string(parser.value()?)?),
            o if o.is("metrics-interval") => metrics_interval = Some(os_string(parser.value()?)?),
            o if o.is("docker-socket") => docker_socket = Some(os_string(parser.value()?)?),
            o if o.is("fingerprint-interval") => {
                fingerprint_interval = Some(os_string(parser.value()?)?)
            }
            o if o.is("ca-file") => ca_file = Some(PathBuf::from(parser.value()?)),
            o if o.is("proxy") => proxy = Some(os_string(parser.value()?)?),
            o if o.is("server") => server = Some(os_string(parser.value()?)?),
            o if o.is("no-host-terminal") => no_host_terminal = true,
            o if o.is("host-terminal-user") => {
                host_terminal_user = Some(os_string(parser.value()?)?)
            }
            o if o.is_help() => return print(RUN_HELP),
            _ => return Err(opt.unexpected()),
        }
    }
    global.apply_log_level()?;
    let heartbeat = match env_or(heartbeat, "TETHER_HEARTBEAT") {
        Some(h) => config::parse_duration(&h)
            .and_then(config::check_heartbeat)
            .map_err(CliError::Config)?,
        None => config::DEFAULT_HEARTBEAT,
    };
    let metrics_interval = match env_or(metrics_interval, "TETHER_METRICS_INTERVAL") {
        Some(s) => config::parse_interval(
            "metrics interval",
            &s,
            config::MIN_METRICS_INTERVAL,
            config::MAX_METRICS_INTERVAL,
        )
        .map_err(CliError::Config)?,
        None => Some(heartbeat),
    };
    let fingerprint_interval = match env_or(fingerprint_interval, "TETHER_FINGERPRINT_INTERVAL") {
        Some(s) => config::parse_interval(
            "fingerprint interval",
            &s,
            config::MIN_FINGERPRINT_INTERVAL,
            config::MAX_FINGERPRINT_INTERVAL,
        )
        .map_err(CliError::Config)?,
        None => Some(DEFAULT_FINGERPRINT_INTERVAL),
    };

    let host_terminal = match config::env("TETHER_HOST_TERMINAL").as_deref() {
        _ if no_host_terminal => false,
        None | Some("on") | Some("1") | Some("yes") => true,
        Some("off") | Some("0") | Some("no") => false,
        Some(other) => {
            return Err(CliError::Usage(format!(
                "TETHER_HOST_TERMINAL must be on or off, not {other:?}"
            )))
        }
    };
    let terminals = TerminalConfig {
        host_enabled: host_terminal,
        host_user: env_or(host_terminal_user, "TETHER_HOST_TERMINAL_USER"),
    };
    if let Some(u) = &terminals.host_user {
        // Fail at start, not at the first terminal.
        tether::terminal::pty::lookup_user(Some(u))
            .map_err(|e| CliError::Usage(format!("--host-terminal-user {u}: {e}")))?;
    }
    let docker_socket = DockerConfig::socket_from(
        docker_socket.as_deref(),
        config::env("TETHER_DOCKER_SOCKET").as_deref(),
        config::env("DOCKER_HOST").as_deref(),
    )
    .map_err(CliError::Usage)?;

    let state = StateDir::new(global.state_dir());
    let cred = state.load_credential().map_err(|e| match e {
        StateError::NotEnrolled { .. } => CliError::NotEnrolled(e),
        other => CliError::State(other),
    })?;
    // The state dir will hold the output spool; the run dir holds status.json.
    state.ensure_writable().map_err(CliError::StateDir)?;
    let run_dir = global.run_dir();
    state::ensure_writable_dir(&run_dir).map_err(CliError::StateDir)?;

    let server =
        config::server_url(server.as_deref().unwrap_or(&cred.server)).map_err(CliError::Config)?;
    let ca_file = ca_file
        .or_else(|| config::env("TETHER_CA_FILE").map(PathBuf::from))
        .or_else(|| state.stored_ca());
    let tls = tls::client_config(ca_file.as_deref()).map_err(CliError::Tls)?;
    let proxy = config::proxy_for(&server, proxy.as_deref()).map_err(CliError::Config)?;

    tether::info!(
        "main",
        "tether {} starting (pid {}, state dir {}, run dir {}, heartbeat {:?}, metrics {}, fingerprint {}{}{})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        state.path.display(),
        run_dir.display(),
        heartbeat,
        metrics_interval.map_or("off".to_owned(), |d| format!("every {d:?}")),
        fingerprint_interval.map_or("off".to_owned(), |d| format!("every {d:?}")),
        ca_file
            .as_ref()
            .map(|p| format!(", CA {}", p.display()))
            .unwrap_or_default(),
        proxy
            .as_ref()
            .map(|p| format!(", proxy {p}"))
            .unwrap_or_default(),
    );
    let cfg = ConnConfig {
        server,
        runner_id: cred.runner_id,
        credential: cred.credential,
        heartbeat,
        proxy,
        tls,
        phase_timeout: config::PHASE_TIMEOUT,
        hello: HelloInfo {
            capabilities: terminals.capabilities(),
            ..HelloInfo::from_host()
        },
        run_dir: Some(run_dir),
        telemetry: TelemetryConfig::new(metrics_interval, fingerprint_interval),
        docker: docker_socket.map(DockerConfig::new),
        terminals,
    };
    // SIGCHLD too: the firewall probes are child processes reaped by the loop.
    let signals = Signals::install(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD])
        .map_err(|e| CliError::Io("cannot install signal handlers", e))?;
    let event_loop =
        EventLoop::new().map_err(|e| CliError::Io("cannot create the event loop", e))?;
    match event_loop
        .run(cfg, Some(signals))
        .map_err(|e| CliError::Io("event loop failed", e))?
    {
        Exit::Shutdown => {
            tether::info!("main", "stopped");
            Ok(exit::OK)
        }
        Exit::Revoked(reason) => Err(CliError::Revoked(reason)),
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
    if let Some(e) = &st.last_error {
        out.push_str(&format!("last error:     {e}\n"));
    }
    print(&out)?;
    Ok(code)
}
