//! The host fingerprint: what this machine is (OS, kernel, CPU, memory,
//! virtualization), what it exposes (listening sockets and their owners)
//! and how it is guarded (firewall rules), collected every 60 s.
//!
//! ```text
//!  collect(root, extras) ──▶ Fingerprint ──first report──▶ server keeps it
//!                                │
//!             next collect ──▶ diff(prev, new) ──▶ [Change…] ──▶ server: apply(copy, changes) == new
//!                                                                         stores changes as history
//! ```
//!
//! Parsers ([`os_release`], [`cpuinfo`], [`sockets`], [`virt`], [`firewall`])
//! are pure; [`collect`] and [`sockets::scan_socket_owners`] read files
//! under a root directory (`/` on a host, a fixture tree in tests). The
//! caller runs the commands (`nft -j list ruleset`, `iptables-save`,
//! `docker version`) and passes their results in [`Extras`].
//!
//! Missing sources leave fields `None` and produce [`Note`]s, as the
//! metrics sampler does. Field order is fixed by the struct (serde keeps
//! it), so the JSON of equal fingerprints is equal.

pub mod cpuinfo;
pub mod diff;
pub mod firewall;
pub mod os_release;
pub mod sockets;
pub mod virt;

pub use diff::{apply, diff, ApplyError, Change};
pub use firewall::Firewall;
pub use os_release::OsRelease;

use crate::metrics::proc::meminfo::parse_meminfo;
use crate::metrics::proc::stat::{parse_btime, parse_stat};
use crate::metrics::Note;
use serde::{Deserialize, Serialize};
use sockets::{Endian, Proto};
use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

/// Largest file read for the fingerprint (a TCP table of ~25 000 sockets).
const MAX_FILE: u64 = 4 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub hostname: Option<String>,
    pub os: OsRelease,
    /// `/proc/sys/kernel/osrelease`, e.g. `6.1.0-18-amd64`.
    pub kernel: Option<String>,
    /// `/proc/sys/kernel/version`, e.g. `#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1`.
    pub kernel_version: Option<String>,
    /// `uname -m`, e.g. `x86_64`, `aarch64`, `mips`.
    pub arch: Option<String>,
    pub cpu_model: Option<String>,
    /// Board or SoC on ARM and MIPS (`Raspberry Pi 4 Model B`, `MediaTek MT7621`).
    pub board: Option<String>,
    pub cpu_count: Option<u32>,
    /// Bytes.
    pub mem_total: Option<u64>,
    /// Seconds since the epoch.
    pub boot_time: Option<u64>,
    /// Hypervisor: `kvm`, `vmware`, `hyper-v`, … or `hypervisor` when unnamed.
    pub virtualization: Option<String>,
    /// Container runtime the runner is in: `docker`, `podman`, `lxc`, `kubernetes`, …
    pub container: Option<String>,
    /// Sorted, without duplicates.
    pub listening: Vec<Listener>,
    pub firewall: Option<Firewall>,
    pub docker_version: Option<String>,
    pub runner_version: Option<String>,
}

/// A listening TCP socket or bound UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Listener {
    /// `tcp` or `udp`.
    pub proto: String,
    pub addr: IpAddr,
    pub port: u16,
    /// The owning process's name (`comm`), `kernel` for kernel sockets, or
    /// None when not visible. The pid is left out on purpose: it changes on
    /// every restart and would make the fingerprint churn.
    pub process: Option<String>,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{} {a}:{}", self.proto, self.port)?,
            IpAddr::V6(a) => write!(f, "{} [{a}]:{}", self.proto, self.port)?,
        }
        if let Some(p) = &self.process {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

impl Fingerprint {
    /// The kernel derives `btime` from the clock and uptime, so it can move
    /// by a second between readings. Keep the previous value when the new
    /// one is within 2 s, so a diff does not report a reboot that was not.
    pub fn settle_boot_time(&mut self, prev: &Fingerprint) {
        if let (Some(new), Some(old)) = (self.boot_time, prev.boot_time) {
            if new.abs_diff(old) <= 2 {
                self.boot_time = Some(old);
            }
        }
    }
}

/// What the caller supplies: results of commands, and facts from libc.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `crate::sys::machine()`.
    pub arch: Option<String>,
    /// From [`firewall::from_nft_json`] or [`firewall::from_iptables_save`].
    pub firewall: Option<Firewall>,
    pub docker_version: Option<String>,
    pub runner_version: Option<String>,
}

fn read(root: &Path, rel: &str) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(root.join(rel))?
        .take(MAX_FILE)
        .read_to_string(&mut s)?;
    Ok(s)
}

fn read_bytes(root: &Path, rel: &str) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(root.join(rel))?
        .take(MAX_FILE)
        .read_to_end(&mut v)?;
    Ok(v)
}

/// Gathers a fingerprint from the files under `root` (`/` on a host):
/// `proc/…`, `etc/os-release`, `sys/class/dmi/id/…`, `.dockerenv`,
/// `run/.containerenv`. Blocking file reads; about a millisecond on a
/// small host, more with thousands of open files (the socket owner scan).
pub fn collect(root: &Path, extras: Extras) -> (Fingerprint, Vec<Note>) {
    let mut notes = Vec::new();
    let mut fp = Fingerprint::default();
    let text = |rel: &str, what: &str, notes: &mut Vec<Note>| match read(root, rel) {
        Ok(t) => Some(t),
        Err(e) => {
            notes.push(Note::new(
                format!("{what} ({})", root.join(rel).display()),
                e,
            ));
            None
        }
    };
    let line = |t: Option<String>| t.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());

    fp.hostname = line(text("proc/sys/kernel/hostname", "hostname", &mut notes));
    let os = read(root, "etc/os-release").or_else(|_| read(root, "usr/lib/os-release"));
    match os {
        Ok(t) => fp.os = os_release::parse_os_release(&t),
        Err(e) => notes.push(Note::new(
            "os release (etc/os-release, usr/lib/os-release)",
            e,
        )),
    }
    fp.kernel = line(text(
        "proc/sys/kernel/osrelease",
        "kernel release",
        &mut notes,
    ));
    fp.kernel_version = line(text(
        "proc/sys/kernel/version",
        "kernel version",
        &mut notes,
    ));
    fp.arch = extras.arch;

    let cpu = text("proc/cpuinfo", "cpu model", &mut notes)
        .map(|t| cpuinfo::parse_cpuinfo(&t))
        .unwrap_or_default();
    fp.cpu_model = cpu.model;
    fp.board = cpu.board;
    let stat = read(root, "proc/stat").ok();
    fp.cpu_count = match cpu.count {
        // Some kernels list no `processor` lines; count the online cores.
        0 => stat
            .as_deref()
            .and_then(|s| parse_stat(s).ok())
            .map(|s| s.cores.len() as u32)
            .filter(|&n| n > 0),
        n => Some(n),
    };
    fp.boot_time = stat.as_deref().and_then(parse_btime);
    if fp.boot_time.is_none() {
        notes.push(Note::new("boot time (proc/stat btime)", "not found"));
    }
    fp.mem_total = text("proc/meminfo", "memory total", &mut notes)
        .and_then(|t| parse_meminfo(&t).ok())
        .map(|m| m.total);

    let environ = read_bytes(root, "proc/1/environ").ok();
    let cgroup = read(root, "proc/1/cgroup").ok();
    let vendor = read(root, "sys/class/dmi/id/sys_vendor").ok();
    let product = read(root, "sys/class/dmi/id/product_name").ok();
    let evidence = virt::Evidence {
        pid1_environ: environ.as_deref(),
        pid1_cgroup: cgroup.as_deref(),
        dockerenv: root.join(".dockerenv").exists(),
        containerenv: root.join("run/.containerenv").exists(),
        cpuinfo_hypervisor: cpu.hypervisor,
        dmi_sys_vendor: vendor.as_deref(),
        dmi_product_name: product.as_deref(),
        kernel_release: fp.kernel.as_deref(),
    };
    fp.container = virt::detect_container(&evidence);
    fp.virtualization = virt::detect_vm(&evidence);

    let mut raw = Vec::new();
    for (rel, proto) in [
        ("proc/net/tcp", Proto::Tcp),
        ("proc/net/tcp6", Proto::Tcp),
        ("proc/net/udp", Proto::Udp),
        ("proc/net/udp6", Proto::Udp),
    ] {
        if let Some(t) = text(rel, "listening sockets", &mut notes) {
            let (v, bad) = sockets::parse_listeners(&t, proto, Endian::NATIVE);
            if bad > 0 {
                notes.push(Note::new(
                    format!("listening sockets ({})", root.join(rel).display()),
                    "rows that do not parse",
                ));
            }
            raw.extend(v);
        }
    }
    let wanted: HashSet<u64> = raw.iter().map(|r| r.inode).filter(|&i| i != 0).collect();
    let owners = sockets::scan_socket_owners(&root.join("proc"), &wanted);
    fp.listening = sockets::name_owners(&raw, &owners);

    fp.firewall = extras.firewall;
    fp.docker_version = extras.docker_version;
    fp.runner_version = extras.runner_version;
    (fp, notes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    pub fn fixture_path(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/fingerprint/fixtures")
            .join(rel)
    }

    pub fn fixture(rel: &str) -> String {
        let p = fixture_path(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    pub fn sample_fingerprint() -> Fingerprint {
        let l = |proto: &str, addr: &str, port, p: &str| Listener {
            proto: proto.into(),
            addr: addr.parse().unwrap(),
            port,
            process: Some(p.into()),
        };
        let mut listening = vec![
            l("tcp", "0.0.0.0", 22, "sshd"),
            l("tcp", "::", 22, "sshd"),
            l("udp", "fe80::1", 546, "dhclient"),
            l("tcp", "127.0.0.1", 5432, "postgres"),
        ];
        listening.sort();
        Fingerprint {
            hostname: Some("web-1".into()),
            os: OsRelease {
                id: Some("debian".into()),
                version_id: Some("12".into()),
                pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            },
            kernel: Some("6.1.0".into()),
            kernel_version: Some("#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1".into()),
            arch: Some("x86_64".into()),
            cpu_model: Some("AMD EPYC 7B13".into()),
            board: None,
            cpu_count: Some(4),
            mem_total: Some(8 << 30),
            boot_time: Some(1_700_000_000),
            virtualization: Some("kvm".into()),
            container: None,
            listening,
            firewall: Some(Firewall {
                source: "iptables".into(),
                rules: vec![
                    "ip4 filter: :INPUT DROP".into(),
                    "ip4 filter: -A INPUT -i lo -j ACCEPT".into(),
                    "ip4 filter: -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT".into(),
                ],
            }),
            docker_version: Some("24.0.7".into()),
            runner_version: Some("0.1.0".into()),
        }
    }

    fn extras() -> Extras {
        Extras {
            arch: Some("x86_64".into()),
            firewall: None,
            docker_version: Some("24.0.7".into()),
            runner_version: Some("0.1.0".into()),
        }
    }

    #[test]
    fn collect_from_a_vm_tree() {
        let (fp, notes) = collect(&fixture_path("roots/debian-kvm"), extras());
        assert_eq!(notes, vec![], "{notes:?}");
        assert_eq!(fp.hostname.as_deref(), Some("web-1"));
        assert_eq!(fp.os.id.as_deref(), Some("debian"));
        assert_eq!(fp.kernel.as_deref(), Some("6.1.0-18-amd64"));
        assert_eq!(fp.cpu_model.as_deref(), Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(fp.cpu_count, Some(2));
        assert_eq!(fp.mem_total, Some(24684084 * 1024));
        assert_eq!(fp.boot_time, Some(1795869995));
        assert_eq!(fp.virtualization.as_deref(), Some("kvm"));
        assert_eq!(fp.container, None);
        let shown: Vec<String> = fp.listening.iter().map(|l| l.to_string()).collect();
        if cfg!(target_endian = "little") {
            assert_eq!(shown.len(), 13, "{shown:?}");
            assert!(shown.contains(&"tcp 127.0.0.1:5432".to_string()));
            assert!(shown.contains(&"udp [::]:51820 (kernel)".to_string()));
        }
        // The JSON has the struct's field order, and reads back equal.
        let json = serde_json::to_string(&fp).unwrap();
        assert!(json.starts_with("{\"hostname\":\"web-1\",\"os\":{\"id\":\"debian\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), fp);
    }

    #[test]
    fn collect_in_a_container_with_little_to_see() {
        let (fp, notes) = collect(&fixture_path("roots/alpine-docker"), extras());
        assert_eq!(fp.container.as_deref(), Some("docker"));
        assert_eq!(fp.virtualization, None);
        assert_eq!(fp.os.id.as_deref(), Some("alpine"));
        // s390x cpuinfo has "processor 0:" lines, not "processor": the
        // count comes from /proc/stat.
        assert_eq!(fp.cpu_count, Some(2));
        assert_eq!(fp.cpu_model, None);
        let what: Vec<&str> = notes.iter().map(|n| n.what.as_str()).collect();
        assert_eq!(what.len(), 3, "{what:?}");
        assert!(what.iter().all(|w| w.starts_with("listening sockets")));
        let shown: Vec<String> = fp.listening.iter().map(|l| l.to_string()).collect();
        if cfg!(target_endian = "little") {
            assert_eq!(shown, vec!["tcp 0.0.0.0:8080"]);
        }
    }

    #[test]
    fn collect_from_nothing_does_not_fail() {
        let (fp, notes) = collect(Path::new("/nonexistent-root"), Extras::default());
        assert_eq!(fp.listening, vec![]);
        assert!(notes.len() >= 8);
    }

    #[test]
    fn this_host() {
        let (fp, _) = collect(Path::new("/"), extras());
        assert!(fp.kernel.is_some() && fp.cpu_count.is_some());
    }

    #[test]
    fn boot_time_jitter_is_settled() {
        let prev = sample_fingerprint();
        let mut new = prev.clone();
        new.boot_time = Some(1_700_000_001);
        new.settle_boot_time(&prev);
        assert_eq!(diff(&prev, &new), vec![]);
        new.boot_time = Some(1_700_000_600);
        new.settle_boot_time(&prev);
        assert_eq!(diff(&prev, &new).len(), 1);
    }
}
