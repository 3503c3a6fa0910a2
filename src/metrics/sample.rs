//! The [`Sample`] model and the [`Sampler`] that fills it from /proc.
//!
//! The sampler owns the previous tick's counters and the buffers it reads
//! into, so a tick allocates little: one scratch buffer for every file, a
//! fixed chunk for the (possibly huge) TCP tables, and parse vectors that
//! keep their capacity. The /proc files it reads every tick stay open and
//! are read again from offset 0 ([`ProcFile`]): procfs regenerates them on
//! such a read, and the open is the dearer half of the cost.
//!
//! Read less often than every tick, repeating the last values in between:
//! TCP states (every few ticks, by their measured cost, see
//! [`TCP_BUDGET_PER_TICK_US`]; from a netlink socket-diagnostics dump where
//! the kernel has one, else the /proc tables) and the mount table (on
//! procfs only when the kernel says it changed, elsewhere every
//! [`MOUNTS_EVERY`] ticks; filesystem sizes are read every tick).
//!
//! Rates and percentages come from deltas against the previous tick:
//!
//! ```text
//! tick 1: counters ─▶ values that need no history (memory, sizes, load, totals);
//!         rates and CPU percentages are None
//! tick n: counters ─▶ Δ / Δt against tick n−1
//!         a counter that went backwards (wrap on a 32-bit kernel, device
//!         re-created, counters reset) gives None for that tick, never a
//!         huge number
//! ```
//!
//! Presence rules, which keep the wire schema stable: a group (the CPU, an
//! interface, a filesystem) is in the sample when its source is readable;
//! within a group every field is always there, and a value that cannot be
//! had this tick is `None`. A file that is missing or does not parse leaves
//! its group out and adds a [`Note`].
//!
//! Fixed-point conventions: percentages and load in hundredths (1234 =
//! 12.34 %), event rates (ops/s, packets/s, forks/s) in hundredths per
//! second, byte rates in whole bytes per second, sizes in bytes.

use crate::metrics::containers::{ContainerSampler, ContainerUsage, RunningContainer};
use crate::metrics::proc::diskstats::{self, DiskStats};
use crate::metrics::proc::loadavg::parse_loadavg;
use crate::metrics::proc::meminfo::parse_meminfo;
use crate::metrics::proc::mounts::{parse_real_filesystems, FsStats, Mount};
use crate::metrics::proc::netdev::{parse_netdev_into, NetDev};
use crate::metrics::proc::netstat::parse_netstat_ipext;
use crate::metrics::proc::snmp6::parse_snmp6;
use crate::metrics::proc::stat::{
    parse_stat_into, CpuTimes, Stat, IDLE, IOWAIT, IRQ, NICE, SOFTIRQ, STEAL, SYSTEM, USER,
};
use crate::metrics::proc::tcp::{TcpStateCounter, TcpStates, STATE_NAMES};
use crate::metrics::proc::uptime::parse_uptime;
use crate::metrics::proc::IpOctets;
use crate::metrics::wire::{SeriesSource, Unit, Visitor, MAX_VALUE};
use crate::metrics::{Note, ParseError};
use serde::Serialize;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Largest /proc file read whole. /proc/mounts on a big Kubernetes node is
/// the largest we read this way, at a few hundred KiB.
const MAX_FILE: usize = 4 << 20;
/// Most bytes read from one TCP table (about 50 000 sockets). Past this the
/// counts would be partial, so they are left out instead.
const MAX_TCP_TABLE: usize = 8 << 20;
const TCP_CHUNK: usize = 16 << 10;
/// Counting TCP states costs time in proportion to the kernel's socket
/// hash table, which is sized by RAM, not by the number of sockets: on a
/// 24 GiB VM with five sockets 1.6 ms of system time per /proc table, or
/// 0.6 ms for the one socket-diagnostics dump that covers both families
/// (used where the kernel has it); next to nothing on a router. So by
/// default they are read every N ticks, with N
/// chosen from the measured cost to spend about this much per tick on
/// average, repeating the last counts in between.
const TCP_BUDGET_PER_TICK_US: u128 = 100;
/// Longest gap between two readings of the TCP tables, in ticks (a minute
/// at the default 5 s).
const TCP_MAX_EVERY: u32 = 12;
/// The /proc tables TCP states are counted from when the kernel's socket
/// diagnostics are not used.
const TCP_TABLES: [(&str, &str); 2] = [("tcp states", "net/tcp"), ("tcp6 states", "net/tcp6")];
/// Generating /proc/mounts is one of the dearest reads (110 µs on a 2-core
/// VM) and the table rarely changes, so it is read again only when it did:
/// procfs says so by poll(2) on the open file, checked each tick. A mount
/// table that is not procfs's (a copy of /proc) cannot tell, and is read
/// again every this many ticks (a minute at 5 s). Sizes (statvfs) are read
/// every tick.
const MOUNTS_EVERY: u32 = 12;

/// One tick of host telemetry. See the module doc for units.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Wall clock, ms since the epoch.
    pub ts_ms: u64,
    pub uptime_s: Option<u64>,
    /// All CPUs together.
    pub cpu: Option<CpuUsage>,
    /// Online cores, by kernel number.
    pub cores: Vec<CoreUsage>,
    pub load: Option<Load>,
    pub procs: Option<Procs>,
    pub memory: Option<Memory>,
    /// None when no swap is configured.
    pub swap: Option<Swap>,
    pub filesystems: Vec<FsUsage>,
    pub disks: Vec<DiskRates>,
    pub net: Vec<NetRates>,
    pub ip4: Option<IpTraffic>,
    pub ip6: Option<IpTraffic>,
    pub tcp: Option<TcpStates>,
    /// Running containers known to the Docker integration, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerUsage>,
}

/// Shares of CPU time since the previous tick, in hundredths of a percent.
/// busy = user + nice + system + irq + softirq; iowait and steal apart
/// (None on kernels too old to count them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuUsage {
    pub busy: Option<u32>,
    pub iowait: Option<u32>,
    pub steal: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CoreUsage {
    pub core: u32,
    #[serde(flatten)]
    pub usage: CpuUsage,
}

/// Load averages in hundredths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Load {
    pub one: u64,
    pub five: u64,
    pub fifteen: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Procs {
    /// Processes and threads (/proc/loadavg), the cheap process count.
    pub tasks: Option<u64>,
    pub running: Option<u64>,
    /// In uninterruptible sleep (usually waiting for I/O).
    pub blocked: Option<u64>,
    /// New processes per second, in hundredths.
    pub forks: Option<u64>,
}

/// Bytes. `used` is total − available (what `free` calls used since
/// procps 3.3.10); `cache` is buffers + page cache + reclaimable slab
/// (`free`'s buff/cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub total: u64,
    pub available: Option<u64>,
    pub used: Option<u64>,
    pub cache: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Swap {
    pub total: u64,
    pub used: u64,
}

/// Bytes and inodes. `avail` is free to unprivileged users (df's Avail).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsUsage {
    pub mount: String,
    pub size: u64,
    pub used: u64,
    pub avail: u64,
    /// None on filesystems without an inode table (btrfs reports 0).
    pub inodes: Option<u64>,
    pub inodes_used: Option<u64>,
}

/// Bytes per second and operations per second (hundredths).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskRates {
    pub name: String,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_ops: Option<u64>,
    pub write_ops: Option<u64>,
}

/// Bytes per second; packets, errors and drops per second in hundredths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetRates {
    pub name: String,
    pub rx_bps: Option<u64>,
    pub tx_bps: Option<u64>,
    pub rx_pps: Option<u64>,
    pub tx_pps: Option<u64>,
    pub rx_errs: Option<u64>,
    pub tx_errs: Option<u64>,
    pub rx_drop: Option<u64>,
    pub tx_drop: Option<u64>,
}

/// IP-layer traffic of one family: bytes since boot and bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IpTraffic {
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub in_bps: Option<u64>,
    pub out_bps: Option<u64>,
}

// ---------------------------------------------------------------------------
// Series: the sample as the wire sees it.

const PCT: (Unit, f64) = (Unit::Percent, 0.01);
const LOAD: (Unit, f64) = (Unit::Load, 0.01);
const COUNT: (Unit, f64) = (Unit::Count, 1.0);
const SECS: (Unit, f64) = (Unit::Seconds, 1.0);
const BYTES: (Unit, f64) = (Unit::Bytes, 1.0);
/// Sizes go out in KiB: meminfo is in kB anyway, and a KiB delta is a
/// byte or two shorter than the same delta in bytes.
const KIB: (Unit, f64) = (Unit::Bytes, 1024.0);
const BPS: (Unit, f64) = (Unit::BytesPerSecond, 1.0);
const RATE: (Unit, f64) = (Unit::PerSecond, 0.01);

fn int(v: u64) -> Option<i64> {
    Some(i64::try_from(v).unwrap_or(MAX_VALUE))
}

fn opt(v: Option<u64>) -> Option<i64> {
    v.and_then(int)
}

fn kib(v: u64) -> Option<i64> {
    int(v / 1024)
}

fn emit(f: Visitor<'_>, name: fmt::Arguments<'_>, (unit, scale): (Unit, f64), v: Option<i64>) {
    f(&name, unit, scale, v);
}

fn cpu_series(f: Visitor<'_>, prefix: fmt::Arguments<'_>, u: &CpuUsage) {
    let p = |v: Option<u32>| v.map(i64::from);
    emit(f, format_args!("{prefix}.busy"), PCT, p(u.busy));
    emit(f, format_args!("{prefix}.iowait"), PCT, p(u.iowait));
    emit(f, format_args!("{prefix}.steal"), PCT, p(u.steal));
}

impl SeriesSource for Sample {
    fn timestamp_ms(&self) -> u64 {
        self.ts_ms
    }

    /// The order here is the schema's order; names are documented on
    /// [`crate::metrics::wire::SeriesDef`].
    fn for_each_series(&self, f: Visitor<'_>) {
        if let Some(u) = self.uptime_s {
            emit(f, format_args!("uptime"), SECS, int(u));
        }
        if let Some(c) = &self.cpu {
            cpu_series(f, format_args!("cpu"), c);
        }
        for c in &self.cores {
            cpu_series(f, format_args!("cpu{}", c.core), &c.usage);
        }
        if let Some(l) = &self.load {
            emit(f, format_args!("load.1"), LOAD, int(l.one));
            emit(f, format_args!("load.5"), LOAD, int(l.five));
            emit(f, format_args!("load.15"), LOAD, int(l.fifteen));
        }
        if let Some(p) = &self.procs {
            emit(f, format_args!("proc.tasks"), COUNT, opt(p.tasks));
            emit(f, format_args!("proc.running"), COUNT, opt(p.running));
            emit(f, format_args!("proc.blocked"), COUNT, opt(p.blocked));
            emit(f, format_args!("proc.forks"), RATE, opt(p.forks));
        }
        if let Some(m) = &self.memory {
            emit(f, format_args!("mem.total"), KIB, kib(m.total));
            emit(
                f,
                format_args!("mem.available"),
                KIB,
                m.available.and_then(kib),
            );
            emit(f, format_args!("mem.used"), KIB, m.used.and_then(kib));
            emit(f, format_args!("mem.cache"), KIB, m.cache.and_then(kib));
        }
        if let Some(s) = &self.swap {
            emit(f, format_args!("swap.total"), KIB, kib(s.total));
            emit(f, format_args!("swap.used"), KIB, kib(s.used));
        }
        for fs in &self.filesystems {
            let m = &fs.mount;
            emit(f, format_args!("fs.{m}.size"), KIB, kib(fs.size));
            emit(f, format_args!("fs.{m}.used"), KIB, kib(fs.used));
            emit(f, format_args!("fs.{m}.avail"), KIB, kib(fs.avail));
            emit(f, format_args!("fs.{m}.inodes"), COUNT, opt(fs.inodes));
            emit(
                f,
                format_args!("fs.{m}.inodes_used"),
                COUNT,
                opt(fs.inodes_used),
            );
        }
        for d in &self.disks {
            let n = &d.name;
            emit(f, format_args!("disk.{n}.read_bps"), BPS, opt(d.read_bps));
            emit(f, format_args!("disk.{n}.write_bps"), BPS, opt(d.write_bps));
            emit(f, format_args!("disk.{n}.read_ops"), RATE, opt(d.read_ops));
            emit(
                f,
                format_args!("disk.{n}.write_ops"),
                RATE,
                opt(d.write_ops),
            );
        }
        for i in &self.net {
            let n = &i.name;
            emit(f, format_args!("net.{n}.rx_bps"), BPS, opt(i.rx_bps));
            emit(f, format_args!("net.{n}.tx_bps"), BPS, opt(i.tx_bps));
            emit(f, format_args!("net.{n}.rx_pps"), RATE, opt(i.rx_pps));
            emit(f, format_args!("net.{n}.tx_pps"), RATE, opt(i.tx_pps));
            emit(f, format_args!("net.{n}.rx_errs"), RATE, opt(i.rx_errs));
            emit(f, format_args!("net.{n}.tx_errs"), RATE, opt(i.tx_errs));
            emit(f, format_args!("net.{n}.rx_drop"), RATE, opt(i.rx_drop));
            emit(f, format_args!("net.{n}.tx_drop"), RATE, opt(i.tx_drop));
        }
        for (fam, t) in [("ip4", &self.ip4), ("ip6", &self.ip6)] {
            if let Some(t) = t {
                emit(f, format_args!("{fam}.in_bytes"), BYTES, int(t.in_bytes));
                emit(f, format_args!("{fam}.out_bytes"), BYTES, int(t.out_bytes));
                emit(f, format_args!("{fam}.in_bps"), BPS, opt(t.in_bps));
                emit(f, format_args!("{fam}.out_bps"), BPS, opt(t.out_bps));
            }
        }
        if let Some(t) = &self.tcp {
            for (name, n) in STATE_NAMES.iter().zip(t.counts) {
                emit(f, format_args!("tcp.{name}"), COUNT, Some(i64::from(n)));
            }
        }
        // Last, so a container coming or going leaves the host's series
        // where they were.
        for c in &self.containers {
            let n = &c.name;
            emit(f, format_args!("ctr.{n}.cpu"), PCT, opt(c.cpu));
            emit(f, format_args!("ctr.{n}.mem"), KIB, c.mem.and_then(kib));
            emit(f, format_args!("ctr.{n}.rx_bps"), BPS, opt(c.rx_bps));
            emit(f, format_args!("ctr.{n}.tx_bps"), BPS, opt(c.tx_bps));
        }
    }
}

// ---------------------------------------------------------------------------
// The sampler

/// How the sampler learns filesystem sizes; `statvfs` in the runner, a fake
/// in tests.
pub type StatvfsFn = Box<dyn FnMut(&Path) -> io::Result<FsStats>>;

/// Reads /proc (or a copy of it) and turns counters into a [`Sample`].
pub struct Sampler {
    proc_root: PathBuf,
    statvfs: StatvfsFn,
    epoch: Instant,
    files: Files,
    /// Scratch for every /proc file; see [`ProcFile::read`].
    buf: Vec<u8>,
    /// The container sampler's (cgroup files are read whole into a String).
    ctr_buf: String,
    tcp_chunk: Vec<u8>,
    /// This tick's and the previous tick's parsed counters; swapped each
    /// tick so their allocations are reused.
    stat: Stat,
    prev_stat: Option<Stat>,
    disks: Vec<DiskStats>,
    prev_disks: Vec<DiskStats>,
    nets: Vec<NetDev>,
    prev_nets: Vec<NetDev>,
    prev_ip4: Option<IpOctets>,
    prev_ip6: Option<IpOctets>,
    prev_mono_ms: Option<u64>,
    /// Count TCP states with the kernel's socket diagnostics
    /// ([`crate::metrics::tcp_diag`]) rather than the /proc tables: on the
    /// real /proc of a kernel that has them, until a dump fails.
    #[cfg_attr(not(feature = "runner"), allow(dead_code))]
    tcp_diag: bool,
    /// Uptime from CLOCK_BOOTTIME rather than /proc/uptime: the same clock
    /// (the kernel prints it there, adjusted for the time namespace as the
    /// clock is), without a file read. On the real /proc only.
    #[cfg_attr(not(feature = "runner"), allow(dead_code))]
    uptime_clock: bool,
    /// Fixed TCP cadence in ticks, or None to adapt to the measured cost.
    tcp_every_fixed: Option<u32>,
    /// Ticks until the next reading of the TCP tables.
    tcp_countdown: u32,
    /// Counts and notes of the last reading, repeated in between.
    last_tcp: Option<TcpStates>,
    last_tcp_notes: Vec<Note>,
    /// The real filesystems from the last reading of the mount table, and
    /// whether that reading still holds; see [`Sampler::mounts_stale`].
    mounts: Vec<Mount>,
    mounts_valid: bool,
    /// The open mount table is procfs's, which tells of changes by poll(2).
    mounts_pollable: bool,
    /// Otherwise: ticks until the next reading.
    mounts_countdown: u32,
    containers: ContainerSampler,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("proc_root", &self.proc_root)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "runner")]
impl Default for Sampler {
    fn default() -> Sampler {
        Sampler::new()
    }
}

impl Sampler {
    /// Samples the real /proc, with `statvfs(3)` for filesystem sizes.
    #[cfg(feature = "runner")]
    pub fn new() -> Sampler {
        let mut s = Sampler::with_root("/proc", Box::new(crate::metrics::proc::mounts::statvfs));
        s.tcp_diag = crate::metrics::tcp_diag::kernel_supported();
        s.uptime_clock = true;
        s
    }

    /// Samples the /proc tree at `proc_root` (a fixture directory in tests;
    /// the host's /proc bind-mounted somewhere for a containerised runner).
    pub fn with_root(proc_root: impl Into<PathBuf>, statvfs: StatvfsFn) -> Sampler {
        Sampler {
            proc_root: proc_root.into(),
            statvfs,
            epoch: Instant::now(),
            files: Files::new(),
            buf: Vec::new(),
            ctr_buf: String::new(),
            tcp_chunk: Vec::new(),
            stat: Stat::default(),
            prev_stat: None,
            disks: Vec::new(),
            prev_disks: Vec::new(),
            nets: Vec::new(),
            prev_nets: Vec::new(),
            prev_ip4: None,
            prev_ip6: None,
            prev_mono_ms: None,
            tcp_diag: false,
            uptime_clock: false,
            tcp_every_fixed: None,
            tcp_countdown: 0,
            last_tcp: None,
            last_tcp_notes: Vec::new(),
            mounts: Vec::new(),
            mounts_valid: false,
            mounts_pollable: false,
            mounts_countdown: 0,
            containers: ContainerSampler::new("/sys/fs/cgroup"),
        }
    }

    /// Points container sampling at another cgroup tree (a fixture in
    /// tests; the host's /sys/fs/cgroup mounted elsewhere in a container).
    pub fn set_cgroup_root(&mut self, root: impl Into<PathBuf>) {
        self.containers.set_cgroup_root(root);
    }

    /// The running containers to sample from the next tick on (from the
    /// Docker integration; empty when Docker is unavailable).
    pub fn set_containers(&mut self, list: Vec<RunningContainer>) {
        self.containers.set_containers(list);
    }

    /// Reads the TCP tables every `n` ticks (1: every tick), or, with
    /// None (the default), as often as their measured cost allows.
    pub fn set_tcp_every(&mut self, n: Option<u32>) {
        self.tcp_every_fixed = n.map(|n| n.max(1));
        self.tcp_countdown = 0;
    }

    /// Points the sampler at another tree; counters carry over (tests feed
    /// tick after tick of recorded /proc this way).
    pub fn set_proc_root(&mut self, proc_root: impl Into<PathBuf>) {
        self.proc_root = proc_root.into();
        self.files = Files::new();
        self.mounts_valid = false;
    }

    /// One tick at wall-clock `now_ms`; rates use the monotonic clock.
    pub fn sample(&mut self, now_ms: u64) -> (Sample, Vec<Note>) {
        let mono = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.sample_at(now_ms, mono)
    }

    /// One tick with an explicit monotonic time in ms (tests).
    pub fn sample_at(&mut self, now_ms: u64, mono_ms: u64) -> (Sample, Vec<Note>) {
        let mut s = Sample {
            ts_ms: now_ms,
            ..Sample::default()
        };
        let mut notes = Vec::new();
        // Rates need a positive interval; a repeated or stale time gives none.
        let dt = self
            .prev_mono_ms
            .and_then(|p| mono_ms.checked_sub(p))
            .filter(|&d| d > 0);
        self.prev_mono_ms = Some(mono_ms);

        let read_file = |sm: &mut Sampler| {
            read_with(
                &sm.proc_root,
                &mut sm.files.uptime,
                &mut sm.buf,
                parse_uptime,
            )
        };
        #[cfg(feature = "runner")]
        let uptime = if self.uptime_clock {
            boottime_secs()
        } else {
            read_file(self)
        };
        #[cfg(not(feature = "runner"))]
        let uptime = read_file(self);
        match uptime {
            Ok(u) => s.uptime_s = Some(u),
            Err(e) => notes.push(self.note("uptime", "uptime", e)),
        }
        self.sample_stat(&mut s, dt, &mut notes);
        match read_with(
            &self.proc_root,
            &mut self.files.loadavg,
            &mut self.buf,
            parse_loadavg,
        ) {
            Ok(l) => {
                s.load = Some(Load {
                    one: l.one,
                    five: l.five,
                    fifteen: l.fifteen,
                });
                s.procs.get_or_insert_with(Procs::default).tasks = Some(l.tasks);
            }
            Err(e) => notes.push(self.note("load", "loadavg", e)),
        }
        self.sample_memory(&mut s, &mut notes);
        self.sample_filesystems(&mut s, &mut notes);
        self.sample_disks(&mut s, dt, &mut notes);
        self.sample_net(&mut s, dt, &mut notes);
        self.sample_ip(&mut s, dt, &mut notes);
        self.sample_tcp(&mut s, &mut notes);
        self.containers.sample(
            &self.proc_root,
            &mut self.ctr_buf,
            dt,
            &mut s.containers,
            &mut notes,
        );
        (s, notes)
    }

    fn note(&self, what: &str, rel: &str, why: impl fmt::Display) -> Note {
        Note::new(
            format!("{what} ({})", self.proc_root.join(rel).display()),
            why,
        )
    }

    fn sample_stat(&mut self, s: &mut Sample, dt: Option<u64>, notes: &mut Vec<Note>) {
        let parsed = read_with(&self.proc_root, &mut self.files.stat, &mut self.buf, |t| {
            parse_stat_into(t, &mut self.stat)
        });
        if let Err(e) = parsed {
            notes.push(self.note("cpu", "stat", e));
            self.prev_stat = None;
            return;
        }
        let cur = &self.stat;
        let prev = self.prev_stat.as_ref();
        s.cpu = Some(prev.map_or_else(CpuUsage::default, |p| cpu_usage(&p.cpu, &cur.cpu)));
        s.cores = cur
            .cores
            .iter()
            .enumerate()
            .map(|(i, (core, t))| {
                let before = prev.and_then(|p| {
                    // Same position first: the core list rarely changes.
                    p.cores
                        .get(i)
                        .filter(|c| c.0 == *core)
                        .or_else(|| p.cores.iter().find(|c| c.0 == *core))
                });
                CoreUsage {
                    core: *core,
                    usage: before.map_or_else(CpuUsage::default, |b| cpu_usage(&b.1, t)),
                }
            })
            .collect();
        let forks = match (prev.and_then(|p| p.processes), cur.processes, dt) {
            (Some(a), Some(b), Some(dt)) => per_sec(a, b, dt, 100),
            _ => None,
        };
        let procs = s.procs.get_or_insert_with(Procs::default);
        procs.running = cur.procs_running;
        procs.blocked = cur.procs_blocked;
        procs.forks = forks;
        // Keep this tick's counters as the next tick's "previous", and
        // reuse the old previous's allocation for the next parse.
        let fresh = self.prev_stat.take().unwrap_or_default();
        self.prev_stat = Some(std::mem::replace(&mut self.stat, fresh));
    }

    fn sample_memory(&mut self, s: &mut Sample, notes: &mut Vec<Note>) {
        let m = match read_with(
            &self.proc_root,
            &mut self.files.meminfo,
            &mut self.buf,
            parse_meminfo,
        ) {
            Ok(m) => m,
            Err(e) => {
                notes.push(self.note("memory", "meminfo", e));
                return;
            }
        };
        let cache = m
            .cached
            .map(|c| c + m.buffers.unwrap_or(0) + m.sreclaimable.unwrap_or(0));
        let used = match (m.available, m.free) {
            (Some(a), _) => Some(m.total.saturating_sub(a)),
            // Before 3.14: what old `free` printed as used minus buffers/cache.
            (None, Some(f)) => Some(m.total.saturating_sub(f + cache.unwrap_or(0))),
            (None, None) => None,
        };
        s.memory = Some(Memory {
            total: m.total,
            available: m.available,
            used,
            cache,
        });
        match (m.swap_total, m.swap_free) {
            (Some(t), Some(f)) if t > 0 => {
                s.swap = Some(Swap {
                    total: t,
                    used: t.saturating_sub(f),
                })
            }
            (Some(0), _) => notes.push(Note::new("swap", "no swap configured")),
            _ => notes.push(self.note("swap", "meminfo", "no SwapTotal/SwapFree")),
        }
    }

    fn sample_filesystems(&mut self, s: &mut Sample, notes: &mut Vec<Note>) {
        if self.mounts_stale() {
            match read_with(
                &self.proc_root,
                &mut self.files.mounts,
                &mut self.buf,
                parse_real_filesystems,
            ) {
                Ok(m) => {
                    self.mounts = m;
                    self.mounts_valid = true;
                    self.mounts_pollable = self.files.mounts.file.as_ref().is_some_and(is_procfs);
                    self.mounts_countdown = MOUNTS_EVERY;
                }
                Err(e) => {
                    // Not cached: the next tick tries again.
                    self.mounts_valid = false;
                    notes.push(self.note("filesystems", "mounts", e));
                    return;
                }
            }
        }
        self.mounts_countdown = self.mounts_countdown.saturating_sub(1);
        for m in &self.mounts {
            match (self.statvfs)(Path::new(&m.mount_point)) {
                Ok(st) => {
                    let has_inodes = st.inodes > 0;
                    s.filesystems.push(FsUsage {
                        size: st.size,
                        used: st.size.saturating_sub(st.free),
                        avail: st.avail,
                        inodes: has_inodes.then_some(st.inodes),
                        inodes_used: has_inodes.then(|| st.inodes.saturating_sub(st.inodes_free)),
                        mount: m.mount_point.clone(),
                    });
                }
                Err(e) => notes.push(Note::new(format!("filesystem {}", m.mount_point), e)),
            }
        }
    }

    fn sample_disks(&mut self, s: &mut Sample, dt: Option<u64>, notes: &mut Vec<Note>) {
        std::mem::swap(&mut self.disks, &mut self.prev_disks);
        let parsed = read_with(
            &self.proc_root,
            &mut self.files.diskstats,
            &mut self.buf,
            |t| diskstats::parse_diskstats_into(t, &mut self.disks),
        );
        if let Err(e) = parsed {
            notes.push(self.note("disks", "diskstats", e));
            self.disks.clear();
            return;
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !diskstats::is_reported(d, &self.disks) {
                continue;
            }
            let p = find_by_name(&self.prev_disks, i, &d.name, |x| &x.name);
            let rate = |f: fn(&DiskStats) -> u64, scale| match (p, dt) {
                (Some(p), Some(dt)) => per_sec(f(p), f(d), dt, scale),
                _ => None,
            };
            s.disks.push(DiskRates {
                name: d.name.clone(),
                // Sectors in diskstats are 512 bytes whatever the device.
                read_bps: rate(|x| x.sectors_read.saturating_mul(512), 1),
                write_bps: rate(|x| x.sectors_written.saturating_mul(512), 1),
                read_ops: rate(|x| x.reads, 100),
                write_ops: rate(|x| x.writes, 100),
            });
        }
    }

    fn sample_net(&mut self, s: &mut Sample, dt: Option<u64>, notes: &mut Vec<Note>) {
        std::mem::swap(&mut self.nets, &mut self.prev_nets);
        let parsed = read_with(
            &self.proc_root,
            &mut self.files.netdev,
            &mut self.buf,
            |t| parse_netdev_into(t, &mut self.nets),
        );
        if let Err(e) = parsed {
            notes.push(self.note("network interfaces", "net/dev", e));
            self.nets.clear();
            return;
        }
        for (i, d) in self.nets.iter().enumerate() {
            // Loopback is local chatter; veth ends of containers are counted
            // again on their bridge (docker0, br-*), and come and go with
            // every container, which would churn the schema. Interfaces that
            // never moved a packet (ifb, dummies, a down wlan) are noise.
            if d.name == "lo" || d.name.starts_with("veth") || d.idle_since_boot() {
                continue;
            }
            let p = find_by_name(&self.prev_nets, i, &d.name, |x| &x.name);
            let rate = |f: fn(&NetDev) -> u64, scale| match (p, dt) {
                (Some(p), Some(dt)) => per_sec(f(p), f(d), dt, scale),
                _ => None,
            };
            s.net.push(NetRates {
                name: d.name.clone(),
                rx_bps: rate(|x| x.rx_bytes, 1),
                tx_bps: rate(|x| x.tx_bytes, 1),
                rx_pps: rate(|x| x.rx_packets, 100),
                tx_pps: rate(|x| x.tx_packets, 100),
                rx_errs: rate(|x| x.rx_errs, 100),
                tx_errs: rate(|x| x.tx_errs, 100),
                rx_drop: rate(|x| x.rx_drop, 100),
                tx_drop: rate(|x| x.tx_drop, 100),
            });
        }
    }

    fn sample_ip(&mut self, s: &mut Sample, dt: Option<u64>, notes: &mut Vec<Note>) {
        let v4 = read_with(
            &self.proc_root,
            &mut self.files.netstat,
            &mut self.buf,
            parse_netstat_ipext,
        );
        match v4 {
            Ok(o) => s.ip4 = Some(ip_traffic(self.prev_ip4.replace(o), o, dt)),
            Err(e) => {
                self.prev_ip4 = None;
                notes.push(self.note("ipv4 traffic", "net/netstat", e));
            }
        }
        let v6 = read_with(
            &self.proc_root,
            &mut self.files.snmp6,
            &mut self.buf,
            parse_snmp6,
        );
        match v6 {
            Ok(o) => s.ip6 = Some(ip_traffic(self.prev_ip6.replace(o), o, dt)),
            Err(e) => {
                self.prev_ip6 = None;
                notes.push(self.note("ipv6 traffic", "net/snmp6", e));
            }
        }
    }

    fn sample_tcp(&mut self, s: &mut Sample, notes: &mut Vec<Note>) {
        if self.tcp_countdown > 0 {
            self.tcp_countdown -= 1;
            s.tcp = self.last_tcp;
            notes.extend(self.last_tcp_notes.iter().cloned());
            return;
        }
        let start = Instant::now();
        let mut total: Option<TcpStates> = None;
        self.last_tcp_notes.clear();
        #[cfg(feature = "runner")]
        if self.tcp_diag {
            match crate::metrics::tcp_diag::count(&mut self.tcp_chunk) {
                Ok(st) => total = Some(st),
                // No diag module in this kernel (routers often lack it),
                // or not allowed: the /proc tables from now on.
                Err(_) => self.tcp_diag = false,
            }
        }
        let tables = if total.is_some() {
            &[][..]
        } else {
            &TCP_TABLES[..]
        };
        for &(what, rel) in tables {
            match self.count_tcp(rel) {
                Ok(st) => total.get_or_insert_with(TcpStates::default).add(&st),
                Err(e) => self.last_tcp_notes.push(self.note(what, rel, e)),
            }
        }
        let every = self.tcp_every_fixed.unwrap_or_else(|| {
            let us = start.elapsed().as_micros();
            let n = us.div_ceil(TCP_BUDGET_PER_TICK_US).max(1);
            u32::try_from(n).unwrap_or(u32::MAX).min(TCP_MAX_EVERY)
        });
        self.tcp_countdown = every - 1;
        self.last_tcp = total;
        notes.extend(self.last_tcp_notes.iter().cloned());
        s.tcp = total;
    }

    /// Whether the mount table must be read again: on procfs when the
    /// kernel says it changed (so a new mount shows on the next tick),
    /// elsewhere (a copy of /proc, a fixture) every [`MOUNTS_EVERY`] ticks.
    fn mounts_stale(&mut self) -> bool {
        if !self.mounts_valid {
            return true;
        }
        match &self.files.mounts.file {
            Some(f) if self.mounts_pollable => mounts_changed(f),
            _ => self.mounts_countdown == 0,
        }
    }

    /// Streams one table through the state counter in fixed chunks.
    fn count_tcp(&mut self, rel: &str) -> Result<TcpStates, String> {
        let mut f = File::open(self.proc_root.join(rel)).map_err(|e| e.to_string())?;
        self.tcp_chunk.resize(TCP_CHUNK, 0);
        let mut counter = TcpStateCounter::new();
        let mut seen = 0usize;
        loop {
            match f.read(&mut self.tcp_chunk) {
                Ok(0) => return Ok(counter.states()),
                Ok(n) => {
                    counter.feed(&self.tcp_chunk[..n]);
                    seen += n;
                    if seen > MAX_TCP_TABLE {
                        return Err(format!("more than {MAX_TCP_TABLE} bytes, not counted"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Whole seconds of CLOCK_BOOTTIME: /proc/uptime's first field, truncated
/// as [`parse_uptime`] does.
#[cfg(feature = "runner")]
fn boottime_secs() -> Result<u64, String> {
    let secs = crate::sys::boottime_secs().map_err(|e| e.to_string())?;
    u64::try_from(secs).map_err(|e| e.to_string())
}

/// procfs's magic number (statfs(2)).
#[cfg(feature = "runner")]
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Whether `f` is on procfs.
#[cfg(feature = "runner")]
fn is_procfs(f: &File) -> bool {
    // f_type's width and sign differ between libcs and architectures.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    crate::sys::fs::fstatfs(f).is_ok_and(|st| st.f_type as i64 == PROC_SUPER_MAGIC)
}

#[cfg(not(feature = "runner"))]
fn is_procfs(_: &File) -> bool {
    false
}

/// Whether the mount namespace changed since `f` was opened or since the
/// last call: procfs's mount table reports POLLPRI (and POLLERR) once per
/// change, to each open file (what libmount and systemd watch). The poll
/// itself takes the event, so a true is reported once; the caller then
/// reads the table again through the same fd. An error says "changed" so
/// the caller reads (and a read error reopens the file).
#[cfg(feature = "runner")]
fn mounts_changed(f: &File) -> bool {
    crate::sys::fd::poll_pri(f)
}

#[cfg(not(feature = "runner"))]
fn mounts_changed(_: &File) -> bool {
    true
}

/// A /proc file kept open from tick to tick and read again from offset 0.
///
/// procfs builds a file's text afresh whenever it is read from offset 0, so
/// an open fd gives this tick's values; what the open costs (the path walk,
/// setting up the kernel's seq_file) is paid once instead of every tick.
/// Measured on a 2-core VM, 50 ms between ticks: open+read+close of
/// net/netstat 74 µs against 29 µs for a pread on the open fd, net/dev 51
/// against 11, uptime 60 against 5 (the first read after a sleep pays the
/// most).
///
/// Old kernels' seq_files refuse pread (ESPIPE); those get lseek(0) and
/// read. Any failure drops the fd, so the next tick opens the file again
/// (a file that was missing is looked for every tick, as before).
#[derive(Debug)]
struct ProcFile {
    rel: &'static str,
    file: Option<File>,
    /// pread was refused: seek to 0 and read instead.
    seek: bool,
}

impl ProcFile {
    const fn new(rel: &'static str) -> ProcFile {
        ProcFile {
            rel,
            file: None,
            seek: false,
        }
    }

    /// The whole file into `buf[..n]`, returning `n`. `buf` is scratch: its
    /// length only grows (to the largest file read), so a tick neither
    /// allocates nor zeroes it. More than `max` bytes is an error.
    fn read(&mut self, root: &Path, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let r = self.read_open(root, buf, max);
        if r.is_err() {
            self.file = None;
        }
        r
    }

    fn read_open(&mut self, root: &Path, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileExt;
        let mut f: &File = match &mut self.file {
            Some(f) => f,
            slot @ None => slot.insert(File::open(root.join(self.rel))?),
        };
        if self.seek {
            f.seek(SeekFrom::Start(0))?;
        }
        let mut len = 0;
        loop {
            if len > max {
                return Err(io::Error::other(format!("larger than {max} bytes")));
            }
            if len == buf.len() {
                buf.resize(len + len.clamp(4096, 64 << 10), 0);
            }
            let r = if self.seek {
                f.read(&mut buf[len..])
            } else {
                f.read_at(&mut buf[len..], len as u64)
            };
            match r {
                Ok(0) => return Ok(len),
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ESPIPE: this kernel's seq_file has no pread.
                Err(e) if e.raw_os_error() == Some(29) && !self.seek && len == 0 => {
                    self.seek = true;
                    f.seek(SeekFrom::Start(0))?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The /proc files read on every tick (and the mount table), kept open.
#[derive(Debug)]
struct Files {
    uptime: ProcFile,
    stat: ProcFile,
    loadavg: ProcFile,
    meminfo: ProcFile,
    mounts: ProcFile,
    diskstats: ProcFile,
    netdev: ProcFile,
    netstat: ProcFile,
    snmp6: ProcFile,
}

impl Files {
    const fn new() -> Files {
        Files {
            uptime: ProcFile::new("uptime"),
            stat: ProcFile::new("stat"),
            loadavg: ProcFile::new("loadavg"),
            meminfo: ProcFile::new("meminfo"),
            mounts: ProcFile::new("mounts"),
            diskstats: ProcFile::new("diskstats"),
            netdev: ProcFile::new("net/dev"),
            netstat: ProcFile::new("net/netstat"),
            snmp6: ProcFile::new("net/snmp6"),
        }
    }
}

/// Reads `file` into `buf` (scratch, shared by every file) and parses it.
/// Errors are strings so read and parse errors make the same note. A free
/// function so that `parse` may borrow other fields of the sampler.
fn read_with<T>(
    root: &Path,
    file: &mut ProcFile,
    buf: &mut Vec<u8>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, String> {
    let n = file.read(root, buf, MAX_FILE).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&buf[..n]).map_err(|e| e.to_string())?;
    parse(text).map_err(|e| e.to_string())
}

/// `list[hint]` if it has `name` (the usual case: same order as last
/// tick), else a search.
fn find_by_name<'a, T>(
    list: &'a [T],
    hint: usize,
    name: &str,
    key: fn(&T) -> &String,
) -> Option<&'a T> {
    list.get(hint)
        .filter(|x| key(x) == name)
        .or_else(|| list.iter().find(|x| key(x) == name))
}

/// (cur − prev) × scale per second over `dt_ms`; None if the counter went
/// backwards.
pub(crate) fn per_sec(prev: u64, cur: u64, dt_ms: u64, scale: u64) -> Option<u64> {
    let d = cur.checked_sub(prev)?;
    if dt_ms == 0 {
        return None;
    }
    u64::try_from(u128::from(d) * u128::from(scale) * 1000 / u128::from(dt_ms)).ok()
}

fn ip_traffic(prev: Option<IpOctets>, cur: IpOctets, dt: Option<u64>) -> IpTraffic {
    let rate = |f: fn(&IpOctets) -> u64| match (prev, dt) {
        (Some(p), Some(dt)) => per_sec(f(&p), f(&cur), dt, 1),
        _ => None,
    };
    IpTraffic {
        in_bytes: cur.in_octets,
        out_bytes: cur.out_octets,
        in_bps: rate(|o| o.in_octets),
        out_bps: rate(|o| o.out_octets),
    }
}

/// Shares of the ticks between two readings of one cpu line. Any column
/// that went backwards (seen with iowait on NO_HZ kernels) voids the tick.
fn cpu_usage(prev: &CpuTimes, cur: &CpuTimes) -> CpuUsage {
    let mut d = [0u64; STEAL + 1];
    for (i, slot) in d.iter_mut().enumerate() {
        match cur.t[i].checked_sub(prev.t[i]) {
            Some(x) => *slot = x,
            None => return CpuUsage::default(),
        }
    }
    let total: u64 = d.iter().sum();
    if total == 0 {
        // Sampled twice within one clock tick.
        return CpuUsage::default();
    }
    let pct = |x: u64| {
        let v = (u128::from(x) * 10_000 + u128::from(total / 2)) / u128::from(total);
        u32::try_from(v).ok()
    };
    debug_assert!(d[IDLE] <= total);
    CpuUsage {
        busy: pct(d[USER] + d[NICE] + d[SYSTEM] + d[IRQ] + d[SOFTIRQ]),
        iowait: if cur.has(IOWAIT) {
            pct(d[IOWAIT])
        } else {
            None
        },
        steal: if cur.has(STEAL) { pct(d[STEAL]) } else { None },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::proc::testutil::fixture_path;

    /// Every host fixture tree under src/metrics/fixtures/hosts.
    pub const HOSTS: &[&str] = &[
        "x86-6.1",
        "centos5-2.6.18",
        "rhel4-2.6.9",
        "rpi-arm-5.10",
        "openwrt-mips-5.10",
        "docker-host-5.15",
        "container-partial",
    ];

    /// A statvfs that knows three mount points and grows `/` a little on
    /// each call, like a host writing logs.
    pub fn fake_statvfs() -> StatvfsFn {
        let mut calls = 0u64;
        Box::new(move |p: &Path| {
            calls += 1;
            match p.to_str() {
                Some("/") => Ok(FsStats {
                    size: 100 << 30,
                    free: (60 << 30) - calls * 4096 * 3,
                    avail: (55 << 30) - calls * 4096 * 3,
                    inodes: 6_553_600,
                    inodes_free: 6_400_000 - calls,
                }),
                Some("/boot") | Some("/overlay") => Ok(FsStats {
                    size: 1 << 30,
                    free: 800 << 20,
                    avail: 750 << 20,
                    inodes: 65536,
                    inodes_free: 65000,
                }),
                _ => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
            }
        })
    }

    pub fn host_sampler(host: &str) -> Sampler {
        fixture_sampler(&format!("hosts/{host}"))
    }

    /// A sampler on a fixture tree, reading the TCP tables every tick so
    /// results do not depend on how fast this machine is.
    pub fn fixture_sampler(rel: &str) -> Sampler {
        let mut sm = Sampler::with_root(fixture_path(rel), fake_statvfs());
        sm.set_tcp_every(Some(1));
        sm
    }

    /// The 13 real ticks recorded 5 s apart on an idle VM (fixtures/idle).
    pub fn real_idle_ticks() -> Vec<Sample> {
        let mut sm = fixture_sampler("idle/t00");
        let mut out = Vec::new();
        for i in 0..13u64 {
            sm.set_proc_root(fixture_path(&format!("idle/t{i:02}")));
            out.push(sm.sample_at(1_795_870_000_000 + i * 5000, i * 5000).0);
        }
        out
    }

    /// The recorded VM's network was silent; a connected runner is not:
    /// its own WebSocket (metrics, heartbeats) moves a few dozen bytes a
    /// second. This adds that traffic, varying from tick to tick, to eth0
    /// and the IPv4 totals, so the size figures are not flattered.
    fn add_own_traffic(ticks: &mut [Sample]) {
        for (i, s) in ticks.iter_mut().enumerate().skip(1) {
            let k = i as u64;
            let (rx, tx) = (20 + (k * 17) % 40, 40 + (k * 29) % 50);
            if let Some(e) = s.net.iter_mut().find(|n| n.name == "eth0") {
                e.rx_bps = e.rx_bps.map(|v| v + rx);
                e.tx_bps = e.tx_bps.map(|v| v + tx);
                e.rx_pps = e.rx_pps.map(|v| v + 40 + (k * 7) % 40);
                e.tx_pps = e.tx_pps.map(|v| v + 60 + (k * 11) % 60);
            }
            if let Some(ip) = s.ip4.as_mut() {
                ip.in_bps = ip.in_bps.map(|v| v + rx - 8);
                ip.out_bps = ip.out_bps.map(|v| v + tx - 8);
            }
        }
    }

    /// `n` samples of an idle host: the real ticks plus the runner's own
    /// traffic, then ticks 1..=12 replayed in a loop with the clock, uptime
    /// and byte totals moving on, so every tick-to-tick change is one seen
    /// on a real host.
    pub fn idle_stream(n: usize) -> Vec<Sample> {
        let mut real = real_idle_ticks();
        add_own_traffic(&mut real);
        let mut out: Vec<Sample> = real.iter().take(n).cloned().collect();
        let mut i = 0;
        while out.len() < n {
            let mut s = real[1 + i % (real.len() - 1)].clone();
            i += 1;
            let last = &out[out.len() - 1];
            s.ts_ms = last.ts_ms + 5000;
            s.uptime_s = last.uptime_s.map(|u| u + 5);
            out.push(s);
        }
        // Totals follow the rates.
        for i in 1..out.len() {
            let (head, tail) = out.split_at_mut(i);
            let (prev, s) = (&head[i - 1], &mut tail[0]);
            for (ip, prev) in [(&mut s.ip4, &prev.ip4), (&mut s.ip6, &prev.ip6)] {
                if let (Some(ip), Some(prev)) = (ip.as_mut(), prev) {
                    ip.in_bytes = prev.in_bytes + ip.in_bps.unwrap_or(0) * 5;
                    ip.out_bytes = prev.out_bytes + ip.out_bps.unwrap_or(0) * 5;
                }
            }
        }
        out
    }

    /// The wire budget: an idle host's record plus 40 bytes of TLS and
    /// WebSocket framing must stay well under 200 bytes per 5 s sample.
    #[test]
    fn idle_host_bytes_per_sample() {
        use crate::metrics::wire::{Decoder, Encoder};
        let ticks = idle_stream(200);
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut sizes = Vec::new();
        let mut schema_json = 0;
        for s in &ticks {
            let mut rec = Vec::new();
            if let Some(schema) = enc.encode(s, &mut rec) {
                schema_json = schema.to_json().len();
                dec.set_schema(schema.clone()).unwrap();
            }
            let d = dec.decode(&rec).unwrap();
            assert_eq!(d.ts_ms, s.ts_ms);
            sizes.push(rec.len());
        }
        let deltas = &sizes[1..];
        let mean = deltas.iter().sum::<usize>() as f64 / deltas.len() as f64;
        let max = *deltas.iter().max().unwrap();
        let series = names(&ticks[0]).len();
        let per_s = (mean + 40.0) / 5.0 + 15.0;
        println!(
            "wire: idle host, {series} series: key record {} B, deltas mean {mean:.1} B max {max} B; \
             schema {schema_json} B once per connection; with 40 B framing per message and \
             15 B/s heartbeats: {per_s:.1} B/s",
            sizes[0]
        );
        assert!(max + 40 < 150, "{sizes:?}");
        assert!(per_s < 50.0);
    }

    fn names(s: &Sample) -> Vec<String> {
        let mut v = Vec::new();
        s.for_each_series(&mut |n, _, _, _| v.push(n.to_string()));
        v
    }

    #[test]
    fn rates_from_two_real_ticks() {
        let mut sm = fixture_sampler("idle/t00");
        let (first, notes) = sm.sample_at(1_000, 0);
        assert!(notes.iter().all(|n| n.what == "swap"), "{notes:?}");
        assert_eq!(first.cpu, Some(CpuUsage::default()));
        assert_eq!(first.cores.len(), 2);
        assert!(first.net.iter().all(|n| n.rx_bps.is_none()));
        assert_eq!(first.ip4.unwrap().in_bytes, 360087963);
        sm.set_proc_root(fixture_path("idle/t01"));
        let (s, _) = sm.sample_at(6_000, 5_000);
        let cpu = s.cpu.unwrap();
        assert!(cpu.busy.unwrap() > 0 && cpu.busy.unwrap() < 10_000);
        assert!(cpu.iowait.is_some() && cpu.steal.is_some());
        // The VM was idle: present and zero.
        let eth0 = s.net.iter().find(|n| n.name == "eth0").unwrap();
        assert_eq!(eth0.rx_bps, Some(0));
        let ifaces: Vec<&str> = s.net.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(ifaces, vec!["eth0", "docker0"]);
        assert_eq!(s.disks.len(), 1);
        assert!(s.disks[0].write_bps.is_some());
        assert!(s.ip4.unwrap().in_bps.is_some());
        assert!(s.ip6.unwrap().out_bps.is_some());
        assert_eq!(s.filesystems.len(), 1);
        assert!(s.filesystems[0].used > 0);
        assert_eq!(s.tcp.unwrap().counts[9], 1);
        assert_eq!(s.procs.unwrap().tasks, Some(108));
        assert_eq!(names(&first), names(&s), "schema stable from tick 1");
    }

    #[test]
    fn every_host_fixture_samples_without_panic() {
        for host in HOSTS {
            let mut sm = host_sampler(host);
            let (s, notes) = sm.sample_at(0, 0);
            let (s2, notes2) = sm.sample_at(5_000, 5_000);
            assert_eq!(notes, notes2, "{host}");
            assert_eq!(names(&s), names(&s2), "{host}");
            assert!(s.cpu.is_some(), "{host}");
            // Same counters twice: every rate is zero, not absent.
            for d in &s2.disks {
                assert_eq!(d.read_bps, Some(0), "{host}");
            }
            for c in &s2.cores {
                assert_eq!(c.usage, CpuUsage::default(), "{host}: no ticks elapsed");
            }
        }
    }

    fn note_whats(notes: &[Note]) -> Vec<String> {
        let mut v: Vec<String> = notes
            .iter()
            .map(|n| n.what.split(" (").next().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn partial_and_old_hosts_leave_fields_out_with_notes() {
        let (s, notes) = host_sampler("container-partial").sample_at(0, 0);
        assert_eq!(
            note_whats(&notes),
            vec![
                "disks",
                "ipv4 traffic",
                "ipv6 traffic",
                "swap",
                "tcp6 states"
            ]
        );
        assert!(s.disks.is_empty() && s.ip4.is_none() && s.ip6.is_none());
        assert_eq!(s.tcp.unwrap().counts[9], 1);
        assert!(s.filesystems.is_empty());

        let (s, notes) = host_sampler("centos5-2.6.18").sample_at(0, 0);
        assert_eq!(note_whats(&notes), vec!["ipv4 traffic", "ipv6 traffic"]);
        let m = s.memory.unwrap();
        assert_eq!(m.available, None);
        // Old `free`: total − free − buffers − cached.
        assert_eq!(m.used, Some((8166104 - 512340 - 301224 - 5102332) * 1024));
        assert_eq!(s.swap.unwrap().used, (2096472 - 2091040) * 1024);
        assert_eq!(s.procs.unwrap().blocked, Some(1));

        let (s, notes) = host_sampler("rhel4-2.6.9").sample_at(0, 0);
        assert!(s.cpu.is_some() && s.memory.is_some());
        assert_eq!(notes.len(), 7, "{notes:?}");

        let (s, notes) = host_sampler("rpi-arm-5.10").sample_at(0, 0);
        assert_eq!(
            note_whats(&notes),
            vec!["ipv6 traffic", "swap", "tcp6 states"]
        );
        assert_eq!(
            s.cores.iter().map(|c| c.core).collect::<Vec<_>>(),
            vec![0, 1, 3]
        );
        let fs: Vec<&str> = s.filesystems.iter().map(|f| f.mount.as_str()).collect();
        assert_eq!(fs, vec!["/", "/boot"]);
    }

    #[test]
    fn notes_are_stable_text() {
        let (_, notes) = host_sampler("container-partial").sample_at(0, 0);
        let n = notes.iter().find(|n| n.what.starts_with("ipv6")).unwrap();
        let text = n.to_string();
        assert!(text.starts_with("unavailable: ipv6 traffic ("), "{text}");
        assert!(
            text.ends_with("snmp6): No such file or directory (os error 2)"),
            "{text}"
        );
    }

    #[test]
    fn counters_going_backwards_give_no_rate() {
        let mut sm = fixture_sampler("idle/t12");
        sm.sample_at(0, 0);
        sm.set_proc_root(fixture_path("idle/t00"));
        let (s, _) = sm.sample_at(5_000, 5_000);
        assert_eq!(s.cpu, Some(CpuUsage::default()));
        assert!(s.cores.iter().all(|c| c.usage == CpuUsage::default()));
        assert_eq!(s.disks[0].write_bps, None);
        assert_eq!(s.disks[0].write_ops, None);
        assert_eq!(s.procs.unwrap().forks, None);
        assert!(s.ip4.unwrap().in_bytes > 0, "totals are still reported");
        // And the tick after that has rates again.
        sm.set_proc_root(fixture_path("idle/t01"));
        let (s, _) = sm.sample_at(10_000, 10_000);
        assert!(s.cpu.unwrap().busy.is_some());
        assert!(s.disks[0].write_bps.is_some());
    }

    #[test]
    fn tcp_tables_at_a_fixed_cadence() {
        let mut sm = host_sampler("docker-host-5.15");
        sm.set_tcp_every(Some(3));
        let (a, _) = sm.sample_at(0, 0);
        assert_eq!(a.tcp.unwrap().counts[9], 8);
        // Later ticks repeat the counts until the next reading, even if the
        // tables changed meanwhile.
        sm.set_proc_root(fixture_path("hosts/container-partial"));
        let (b, notes) = sm.sample_at(5000, 5000);
        assert_eq!(b.tcp, a.tcp);
        assert!(!notes.iter().any(|n| n.what.starts_with("tcp")));
        let (c, _) = sm.sample_at(10000, 10000);
        assert_eq!(c.tcp, a.tcp);
        let (d, notes) = sm.sample_at(15000, 15000);
        assert_eq!(d.tcp.unwrap().counts[9], 1);
        assert!(notes.iter().any(|n| n.what.starts_with("tcp6")));
    }

    #[test]
    fn cpu_percentages() {
        let mut a = CpuTimes {
            columns: 8,
            ..CpuTimes::default()
        };
        let mut b = a;
        a.t = [100, 0, 100, 1000, 10, 0, 0, 0, 0, 0];
        b.t = [150, 0, 120, 1100, 20, 0, 10, 10, 5, 0];
        // Δ: user 50, system 20, idle 100, iowait 10, softirq 10, steal 10 = 200
        let u = cpu_usage(&a, &b);
        assert_eq!(u.busy, Some(4000));
        assert_eq!(u.iowait, Some(500));
        assert_eq!(u.steal, Some(500));
        a.columns = 7;
        b.columns = 7;
        assert_eq!(cpu_usage(&a, &b).steal, None);
        assert_eq!(cpu_usage(&b, &a), CpuUsage::default());
        assert_eq!(per_sec(10, 5, 1000, 1), None);
        assert_eq!(per_sec(0, 5000, 5000, 1), Some(1000));
        assert_eq!(per_sec(0, 3, 5000, 100), Some(60));
        assert_eq!(per_sec(0, u64::MAX, 1, 1000), None);
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn read_text(f: &mut ProcFile, root: &Path, buf: &mut Vec<u8>) -> io::Result<String> {
        let n = f.read(root, buf, 1 << 20)?;
        Ok(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    /// The point of keeping /proc files open: a second read of the same fd
    /// is this moment's text, not the first read's. /proc/self/io counts
    /// the bytes this process read, so it grows by our own reading of it.
    #[test]
    fn kept_open_proc_file_gives_fresh_values() {
        let rchar = |t: &str| -> u64 {
            let line = t.lines().find(|l| l.starts_with("rchar:")).unwrap();
            line[6..].trim().parse().unwrap()
        };
        let root = Path::new("/proc");
        let mut f = ProcFile::new("self/io");
        let mut buf = Vec::new();
        let a = rchar(&read_text(&mut f, root, &mut buf).unwrap());
        let fd = f.file.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let b = rchar(&read_text(&mut f, root, &mut buf).unwrap());
        assert!(b > a, "{a} then {b}");
        let fd2 = f.file.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        assert_eq!(fd, fd2, "the same fd, not a reopen");
        assert!(!f.seek, "procfs takes pread");
    }

    /// The clock gives what /proc/uptime says (the same second, or the
    /// next if a second turned between the readings).
    #[cfg(feature = "runner")]
    #[test]
    fn uptime_from_the_clock_is_proc_uptimes() {
        let mut sm = Sampler::new();
        for _ in 0..3 {
            let text = std::fs::read_to_string("/proc/uptime").unwrap();
            let file = parse_uptime(&text).unwrap();
            let clock = sm.sample(0).0.uptime_s.unwrap();
            assert!(clock == file || clock == file + 1, "{clock} vs {file}");
        }
        assert!(sm.files.uptime.file.is_none(), "/proc/uptime not opened");
    }

    /// On this kernel the real sampler counts TCP states with the socket
    /// diagnostics dump, keeps using it, and has no /proc table notes.
    #[cfg(feature = "runner")]
    #[test]
    fn real_sampler_counts_tcp_with_the_diag_dump() {
        let _l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sm = Sampler::new();
        sm.set_tcp_every(Some(1));
        let diag = crate::metrics::tcp_diag::kernel_supported();
        for t in 0..2 {
            let (s, notes) = sm.sample(t);
            assert!(s.tcp.unwrap().counts[9] >= 1, "our listener");
            assert!(
                !notes.iter().any(|n| n.what.starts_with("tcp")),
                "{notes:?}"
            );
            assert_eq!(sm.tcp_diag, diag);
        }
    }

    /// Rewritten in place (like procfs's text), shorter and longer, by
    /// pread and by the lseek fallback of old kernels; a file that is
    /// missing is looked for again, and one too large drops the fd.
    #[test]
    fn kept_open_file_rereads_from_the_start() {
        let dir = scratch_dir("procfile");
        let path = dir.join("f");
        for seek in [false, true] {
            std::fs::remove_file(&path).ok();
            let mut f = ProcFile::new("f");
            f.seek = seek;
            let mut buf = Vec::new();
            let e = read_text(&mut f, &dir, &mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound);
            std::fs::write(&path, "first reading\n").unwrap();
            assert_eq!(
                read_text(&mut f, &dir, &mut buf).unwrap(),
                "first reading\n"
            );
            // Same inode: truncated and written, as a kept fd sees it.
            std::fs::write(&path, "2nd\n").unwrap();
            assert_eq!(read_text(&mut f, &dir, &mut buf).unwrap(), "2nd\n");
            let big = "x".repeat(100_000);
            std::fs::write(&path, &big).unwrap();
            assert_eq!(read_text(&mut f, &dir, &mut buf).unwrap(), big);
            assert!(f.file.is_some());
            let e = f.read(&dir, &mut buf, 50_000).unwrap_err();
            assert!(e.to_string().starts_with("larger than 50000"), "{e}");
            assert!(f.file.is_none(), "dropped after an error");
            assert_eq!(f.seek, seek);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Outside procfs (a copy of /proc, a fixture) the mount table is read
    /// again every MOUNTS_EVERY ticks: a new filesystem shows by then.
    #[test]
    fn mount_table_of_a_copy_is_read_again_every_n_ticks() {
        let dir = scratch_dir("mounts-copy");
        std::fs::write(dir.join("mounts"), "/dev/sda1 / ext4 rw 0 0\n").unwrap();
        let mut sm = Sampler::with_root(&dir, fake_statvfs());
        let points =
            |s: &Sample| -> Vec<String> { s.filesystems.iter().map(|f| f.mount.clone()).collect() };
        assert_eq!(points(&sm.sample_at(0, 0).0), ["/"]);
        assert!(!sm.mounts_pollable);
        let both = "/dev/sda1 / ext4 rw 0 0\n/dev/sda2 /boot ext4 rw 0 0\n";
        std::fs::write(dir.join("mounts"), both).unwrap();
        for i in 1..MOUNTS_EVERY {
            let t = u64::from(i) * 5000;
            assert_eq!(points(&sm.sample_at(t, t).0), ["/"], "tick {i}");
        }
        let t = u64::from(MOUNTS_EVERY) * 5000;
        assert_eq!(points(&sm.sample_at(t, t).0), ["/", "/boot"]);
        // A new root reads it at once.
        std::fs::write(dir.join("mounts"), "/dev/sda1 / ext4 rw 0 0\n").unwrap();
        sm.set_proc_root(&dir);
        assert_eq!(points(&sm.sample_at(t + 5000, t + 5000).0), ["/"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// On procfs the kernel says when the mount table changed, so a mount
    /// shows on the very next tick and goes with the unmount. Runs in a
    /// thread with its own mount namespace (root only; skipped otherwise),
    /// so nothing leaks to the host: a tmpfs whose source looks like a
    /// device, which the filter takes for a disk.
    #[cfg(feature = "runner")]
    #[test]
    fn mount_table_on_procfs_is_read_again_when_it_changes() {
        let dir = scratch_dir("mounts-procfs");
        let target = dir.clone();
        let ran = std::thread::spawn(move || {
            if crate::sys::fs::unshare_private_mounts().is_err() {
                return false;
            }
            // thread-self: /proc/self is the main thread, in the old namespace.
            let mut sm = Sampler::with_root(
                "/proc/thread-self",
                Box::new(crate::metrics::proc::mounts::statvfs),
            );
            let has = |s: &Sample| s.filesystems.iter().any(|f| Path::new(&f.mount) == target);
            assert!(!has(&sm.sample_at(0, 0).0));
            assert!(sm.mounts_pollable);
            assert!(!has(&sm.sample_at(5000, 5000).0));
            let r = crate::sys::fs::mount_plain_tmpfs("/dev/tether-test", &target);
            assert!(r.is_ok(), "{r:?}");
            let s = sm.sample_at(10_000, 10_000).0;
            assert!(has(&s), "{:?}", s.filesystems);
            assert!(has(&sm.sample_at(15_000, 15_000).0));
            assert!(crate::sys::fs::umount(&target).is_ok());
            assert!(!has(&sm.sample_at(20_000, 20_000).0));
            true
        })
        .join()
        .unwrap();
        if !ran {
            println!("skipped: no CAP_SYS_ADMIN for a mount namespace");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Prints the time of one `Sampler::sample` on this machine's real
    /// /proc. Run: `cargo test --release -- --nocapture timing`.
    #[cfg(feature = "runner")]
    #[test]
    fn timing_of_a_real_sample() {
        let mut sm = Sampler::new();
        sm.sample(0);
        let n = 200;
        let start = Instant::now();
        for i in 0..n {
            std::hint::black_box(sm.sample(i));
        }
        let per = start.elapsed() / n as u32;
        let series = names(&sm.sample(n).0).len();
        println!("timing: Sampler::sample on this host: {per:?} per tick ({series} series, TCP tables at the adaptive cadence)");
        // The same without the TCP tables, and the TCP tables alone.
        sm.set_tcp_every(Some(u32::MAX));
        sm.sample(0);
        let start = Instant::now();
        for i in 0..n {
            std::hint::black_box(sm.sample(i));
        }
        let without = start.elapsed() / n as u32;
        let start = Instant::now();
        for _ in 0..20 {
            std::hint::black_box(sm.count_tcp("net/tcp").ok());
            std::hint::black_box(sm.count_tcp("net/tcp6").ok());
        }
        let tcp = start.elapsed() / 20;
        println!("timing: without TCP tables {without:?} per tick; reading tcp+tcp6 {tcp:?}");
        // A generous bound: this is a benchmark, not a speed test.
        assert!(per < std::time::Duration::from_millis(50));
    }
}
