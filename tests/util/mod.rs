//! Shared helpers for the integration tests: start the real `tether-server`
//! and `tether` binaries on loopback with real TLS, talk to the REST API, and
//! inject network faults with a TCP proxy the test controls.
//!
//! Every helper cleans up on drop (processes killed and reaped, temp dirs
//! removed), and every wait is bounded.

#![allow(dead_code)]

pub mod docker;
pub mod engine_proxy;
pub mod git;
pub mod hooks;
pub mod netns;
pub mod pg;
pub mod prev;
pub mod proxy;
pub mod term;

use serde_json::{json, Value};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where cargo put the workspace's binaries.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

/// Path of the runner binary this test build was made with.
pub fn runner_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tether"))
}

/// Path of the server binary: a sibling of the runner binary (same profile),
/// built by `cargo build --workspace` (the Makefile does it before testing).
pub fn server_bin() -> PathBuf {
    let p = runner_bin().with_file_name("tether-server");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first (make test does)",
        p.display()
    );
    p
}

/// `tether-server key generate` into `dir/name`: the operator's secret key
/// file (its public key beside it, `name.pub`).
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new(server_bin())
        .args(["key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    key
}

/// A child process killed and reaped however the test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tether-sim` running `count` simulated runners (a heartbeat every 5 s,
/// for `duration`) enrolled with `token` on `server`, to be started.
pub fn sims_command(server: &Server, token: &str, count: u64, duration: &str) -> Command {
    let mut cmd = Command::new(runner_bin().with_file_name("tether-sim"));
    cmd.args(["--api", &server.url, "--token", token, "--ca-file"])
        .arg(&server.ca)
        .args([
            "--count",
            &count.to_string(),
            "--heartbeat",
            "5s",
            "--duration",
            duration,
        ]);
    cmd
}

/// [`sims_command`] started (its stderr shown, its stdout not); killed on
/// drop.
pub fn start_sims(server: &Server, token: &str, count: u64, duration: &str) -> KillOnDrop {
    KillOnDrop(
        sims_command(server, token, count, duration)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start tether-sim: {e}")),
    )
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("tether-test-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Poll `f` every 20 ms until it returns `Some`, or panic after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Send a signal to a child (SIGTERM = 15, SIGKILL = 9, SIGSTOP = 19 ...).
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we own; a stale pid at worst returns ESRCH.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Wait up to `limit` for a child to exit.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// A running `tether-server` with its own data dir and dev certificate.
pub struct Server {
    pub child: Child,
    pub dir: TempDir,
    pub url: String,
    pub admin_token: String,
    pub ca: PathBuf,
    /// Flags after `serve --listen … --data-dir …`, kept for restarts.
    pub extra: Vec<String>,
    /// `--data-dir`: `dir` unless started with [`Server::start_on`]; the
    /// log stays in `dir`.
    pub data: PathBuf,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        let dir = TempDir::new("server");
        let data = dir.path().to_owned();
        Server::start_in(dir, data, extra)
    }

    /// With its data on `data` (a small filesystem the caller owns).
    pub fn start_on(data: &Path, extra: &[&str]) -> Server {
        Server::start_in(TempDir::new("server"), data.to_owned(), extra)
    }

    fn start_in(dir: TempDir, data: PathBuf, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn_server(dir.path(), &data, "127.0.0.1:0", &extra);
        let mut s = Server {
            child,
            url: String::new(),
            admin_token: String::new(),
            ca: data.join("tls/ca.pem"),
            dir,
            extra,
            data,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let url_file = self.data.join("server.url");
        let child = &mut self.child;
        let dir = self.dir.path().to_path_buf();
        self.url = wait_for(Duration::from_secs(30), "server.url", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "tether-server exited with {st} before listening:\n{}",
                    read_log(&dir)
                );
            }
            fs::read_to_string(&url_file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
        self.admin_token = fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
    }

    /// The host:port the server listens on.
    pub fn addr(&self) -> String {
        self.url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string()
    }

    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// Stop (SIGTERM) and start again on the same port and data dir.
    pub fn restart(&mut self) {
        self.stop();
        let _ = fs::remove_file(self.data.join("server.url"));
        let addr = self.addr();
        self.child = spawn_server(self.dir.path(), &self.data, &addr, &self.extra);
        self.wait_ready();
    }

    /// `kill -9`, then start again on the same data dir but at `addr`
    /// (`127.0.0.1:0`: any free port): a replica lost, another taking over.
    pub fn kill_and_start_at(&mut self, addr: &str) {
        kill_and_reap(&mut self.child);
        let _ = fs::remove_file(self.data.join("server.url"));
        self.child = spawn_server(self.dir.path(), &self.data, addr, &self.extra);
        self.wait_ready();
    }

    pub fn stop(&mut self) {
        signal(&self.child, libc::SIGTERM);
        if wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
            kill_and_reap(&mut self.child);
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.ca)
    }

    /// A fresh tenant with its API token.
    pub fn tenant(&self, name: &str) -> Tenant {
        let (st, v) = self.api().call(
            "POST",
            "/api/v1/tenants",
            Some(&self.admin_token),
            Some(json!({ "name": name })),
        );
        assert_eq!(st, 201, "create tenant: {v}");
        Tenant {
            id: v["id"].as_str().unwrap().to_string(),
            token: v["api_token"].as_str().unwrap().to_string(),
            api: self.api(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!("---- tether-server log ----\n{}", self.log());
        }
    }
}

fn spawn_server(dir: &Path, data: &Path, listen: &str, extra: &[String]) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    Command::new(server_bin())
        .arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("TETHER_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start tether-server")
}

fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// A TCP port free on 127.0.0.1 now, and below the kernel's ephemeral
/// range (32768-60999 on Debian): a port from `bind(0)` is one the kernel
/// also hands to other tests' outgoing connections and `bind(0)`s, which
/// can take it before the process this port is for binds it ("Address
/// already in use": CI failed on it). One from 20000-32767 is never
/// handed out; a random pick keeps two tests picking at once apart.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_768) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A small blocking REST client that trusts the server's dev CA.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub agent: ureq::Agent,
}

impl Api {
    pub fn new(base: &str, ca: &Path) -> Api {
        let pem = fs::read(ca).expect("read dev CA");
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap().to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            // The server closes a connection idle for 10 s (its header-read
            // timeout); reusing one older than that races the close.
            .max_idle_age(Duration::from_secs(5))
            .build()
            .new_agent();
        Api {
            base: base.to_string(),
            agent,
        }
    }

    /// One request; returns the status and the JSON body (Null when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => {
                let req = req
                    .header("Content-Type", "application/json")
                    .body(b.to_string())
                    .unwrap();
                self.agent.run(req)
            }
            None => self.agent.run(req.body(()).unwrap()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    /// POST raw bytes (a release file); the status and the JSON answer.
    pub fn upload(&self, path: &str, token: &str, bytes: &[u8]) -> (u16, Value) {
        let mut resp = self
            .agent
            .post(format!("{}{}", self.base, path))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/octet-stream")
            .config()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .send(bytes)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET raw bytes without a token (public downloads).
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let mut resp = self
            .agent
            .get(format!("{}{}", self.base, path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        (status, bytes)
    }

    /// Open a streaming GET (for Server-Sent Events).
    pub fn stream(&self, path: &str, token: &str) -> impl Read {
        let resp = self
            .agent
            .get(format!("{}{}", self.base, path))
            .header("Authorization", format!("Bearer {token}"))
            .config()
            .timeout_global(None)
            .build()
            .call()
            .unwrap();
        resp.into_body().into_reader()
    }
}

/// A tenant and its API token.
pub struct Tenant {
    pub id: String,
    pub token: String,
    pub api: Api,
}

impl Tenant {
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api.call(method, path, Some(&self.token), body)
    }

    /// A fresh one-time enrollment token.
    pub fn enrollment_token(&self, ttl_secs: u64) -> (String, String) {
        let (st, v) = self.call(
            "POST",
            "/api/v1/tokens",
            Some(json!({ "ttl_secs": ttl_secs })),
        );
        assert_eq!(st, 201, "create enrollment token: {v}");
        (
            v["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    }

    pub fn runner(&self, id: &str) -> Value {
        let (st, v) = self.call("GET", &format!("/api/v1/runners/{id}"), None);
        assert_eq!(st, 200, "get runner {id}: {v}");
        v
    }

    pub fn health(&self, id: &str) -> String {
        self.runner(id)["health"].as_str().unwrap_or("").to_string()
    }

    /// Wait until the runner's health is `want`; returns how long it took.
    pub fn wait_health(&self, id: &str, want: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        wait_for(limit, &format!("runner {id} to be {want}"), || {
            (self.health(id) == want).then_some(())
        });
        start.elapsed()
    }
}

/// A runner's state dir and, once started, its process.
pub struct Runner {
    pub dir: TempDir,
    pub child: Option<Child>,
    pub id: String,
    /// The runner binary (the test build by default; benches use the static one).
    pub bin: PathBuf,
    /// Extra environment for every command (`TETHER_UPDATE=off`, ...).
    pub env: Vec<(String, String)>,
    /// `--state-dir` when not `dir` (a small filesystem; the log stays in `dir`).
    pub state_dir: Option<PathBuf>,
}

impl Runner {
    pub fn new() -> Runner {
        Runner {
            dir: TempDir::new("runner"),
            child: None,
            id: String::new(),
            bin: runner_bin(),
            env: Vec::new(),
            state_dir: None,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--state-dir")
            .arg(self.state_dir.as_deref().unwrap_or(self.dir.path()))
            .env("TETHER_LOG", "debug")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// `tether enroll` against `server_url`; returns the process output.
    pub fn enroll_at(&self, server_url: &str, ca: &Path, token: &str) -> Output {
        self.cmd()
            .args([
                "enroll",
                "--server",
                server_url,
                "--token",
                token,
                "--ca-file",
            ])
            .arg(ca)
            .output()
            .unwrap()
    }

    /// Enroll with a fresh token of `tenant` and remember the runner id.
    pub fn enroll(server: &Server, tenant: &Tenant) -> Runner {
        let mut r = Runner::new();
        let (_, token) = tenant.enrollment_token(600);
        let out = r.enroll_at(&server.url, &server.ca, &token);
        assert!(
            out.status.success(),
            "enroll failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let cred: Value =
            serde_json::from_slice(&fs::read(r.dir.path().join("credential.json")).unwrap())
                .unwrap();
        r.id = cred["runner_id"].as_str().unwrap().to_string();
        r
    }

    /// Enroll a runner of `tenant` that trusts the operator key `key` (see
    /// [`Runner::trust_key`]), start it with `args` and wait until it is
    /// active.
    pub fn trusting(server: &Server, tenant: &Tenant, key: &Path, args: &[&str]) -> Runner {
        let mut r = Runner::enroll(server, tenant);
        r.trust_key(key);
        r.start(args);
        tenant.wait_health(&r.id, "active", Duration::from_secs(15));
        r
    }

    /// Trust the operator key `key` (a file `keygen` wrote): its public
    /// key becomes the runner's `operator-keys.pub`.
    pub fn trust_key(&self, key: &Path) {
        let mut public = key.as_os_str().to_owned();
        public.push(".pub");
        fs::copy(public, self.dir.path().join("operator-keys.pub")).unwrap();
    }

    /// Start `tether run` with extra arguments (e.g. `--heartbeat 1s`).
    pub fn start(&mut self, args: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("runner.log"))
            .unwrap();
        let child = self
            .cmd()
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("runner.log")).unwrap_or_default()
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("runner not started")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("runner not started").id()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill_and_reap(c);
        }
        // A deploy with secrets as files mounted a tmpfs at <run dir>/secrets
        // (the run dir is the state dir here); it outlives the runner by design.
        for dir in [Some(self.dir.path()), self.state_dir.as_deref()]
            .into_iter()
            .flatten()
        {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(dir.join("secrets"))
                .stderr(Stdio::null())
                .output();
        }
        if std::thread::panicking() {
            eprintln!("---- runner log ({}) ----\n{}", self.id, self.log());
        }
    }
}

/// A small tmpfs mounted for one test (we are root), unmounted on drop:
/// a filesystem that fills up for real.
pub struct Tmpfs {
    pub dir: TempDir,
}

impl Tmpfs {
    pub fn mount(label: &str, size: &str) -> Tmpfs {
        let dir = TempDir::new(label);
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs (the full-disk tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free (statvfs).
    pub fn free(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(self.path())
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        v.first().copied().unwrap_or(0) * v.get(1).copied().unwrap_or(0)
    }

    /// Fill what is left with a file (`dd` stops at ENOSPC).
    pub fn fill(&self, name: &str) {
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", self.path().join(name).display()))
            .arg("bs=4k")
            .output();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file in it cannot keep it mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Resident set size of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process in clock ticks, from /proc/PID/stat.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name; utime and stime are
    // fields 14 and 15 of the whole line, so 12 and 13 after it.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ut + st
}
