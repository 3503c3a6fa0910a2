//! Per-container CPU, memory and network figures, read from the kernel's
//! own accounting (cgroup files and the container's /proc/<pid>/net/dev)
//! rather than Docker's stats API, which costs the engine far more per call.
//!
//! The Docker client says which containers run ([`RunningContainer`]); this
//! finds each one's cgroup once and then reads a few small files a tick:
//!
//! ```text
//! set_containers(list) ─▶ tracked (≤ MAX_CONTAINERS, by name; history kept by id)
//! tick, per container:
//!   no cgroup found yet ─▶ locate: v2 system.slice/docker-<id>.scope | v2 docker/<id>
//!                                  | v1 cpuacct,memory/docker/<id> (cgroupfs or systemd)
//!   cpu file unreadable  ─▶ container left out this tick (it just exited); cgroup forgotten
//!   else                 ─▶ cpu (Δusage / Δt), memory (usage − inactive file, as
//!                           `docker stats`), pid (cgroup.procs, kept) ─▶ net/dev, non-lo summed
//! ```
//!
//! A container that shares the host's network namespace (`--network host`)
//! gets no network figures: its counters are the host's.

use crate::metrics::cgroup::{parse_first_pid, parse_keyed, parse_single};
use crate::metrics::proc::netdev::{parse_netdev_into, NetDev};
use crate::metrics::{Note, ParseError};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Containers sampled at most; past this the first by name are kept, so
/// the schema and the record stay small.
pub const MAX_CONTAINERS: usize = 64;
/// Largest cgroup or net/dev file read (memory.stat is about 1.5 KiB).
const MAX_FILE: u64 = 64 << 10;

/// A running container as the Docker client knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    /// The full 64-hex id: cgroup directories are named by it.
    pub id: String,
    pub name: String,
}

/// One container's figures for a tick; see [`crate::metrics::sample`] for
/// units (cpu in hundredths of a percent of one core).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ContainerUsage {
    pub name: String,
    pub cpu: Option<u64>,
    /// Bytes.
    pub mem: Option<u64>,
    pub rx_bps: Option<u64>,
    pub tx_bps: Option<u64>,
}

/// Where a container's accounting lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cgroup {
    V2(PathBuf),
    V1 { cpuacct: PathBuf, memory: PathBuf },
}

#[derive(Debug)]
struct Tracked {
    c: RunningContainer,
    cgroup: Option<Cgroup>,
    /// A process of the container; None: not found yet or host network.
    pid: Option<u32>,
    host_net: bool,
    prev_cpu_usec: Option<u64>,
    prev_net: Option<(u64, u64)>,
}

/// Samples the containers it is told about; owned by the
/// [`crate::metrics::sample::Sampler`].
#[derive(Debug)]
pub struct ContainerSampler {
    cgroup_root: PathBuf,
    tracked: Vec<Tracked>,
    /// More containers ran than [`MAX_CONTAINERS`].
    over_limit: bool,
    nets: Vec<NetDev>,
}

impl ContainerSampler {
    pub fn new(cgroup_root: impl Into<PathBuf>) -> ContainerSampler {
        ContainerSampler {
            cgroup_root: cgroup_root.into(),
            tracked: Vec::new(),
            over_limit: false,
            nets: Vec::new(),
        }
    }

    pub fn set_cgroup_root(&mut self, root: impl Into<PathBuf>) {
        self.cgroup_root = root.into();
        for t in &mut self.tracked {
            t.cgroup = None;
        }
    }

    /// The running containers from now on. Ones already tracked keep their
    /// cgroup and counters, so their rates carry on.
    pub fn set_containers(&mut self, mut list: Vec<RunningContainer>) {
        // By name: a stable schema order, and the same ones kept when over.
        list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        list.dedup_by(|a, b| a.id == b.id);
        self.over_limit = list.len() > MAX_CONTAINERS;
        list.truncate(MAX_CONTAINERS);
        let mut old = std::mem::take(&mut self.tracked);
        self.tracked = list
            .into_iter()
            .map(|c| match old.iter().position(|t| t.c.id == c.id) {
                Some(i) => {
                    let mut t = old.swap_remove(i);
                    t.c.name = c.name;
                    t
                }
                None => Tracked {
                    c,
                    cgroup: None,
                    pid: None,
                    host_net: false,
                    prev_cpu_usec: None,
                    prev_net: None,
                },
            })
            .collect();
    }

    /// One tick: figures of every tracked container whose cgroup is there.
    /// `dt` is the tick's interval in ms (None on the first tick).
    pub fn sample(
        &mut self,
        proc_root: &Path,
        buf: &mut String,
        dt: Option<u64>,
        out: &mut Vec<ContainerUsage>,
        notes: &mut Vec<Note>,
    ) {
        if self.over_limit {
            notes.push(Note::new(
                "containers",
                format!("more than {MAX_CONTAINERS} running; sampling the first {MAX_CONTAINERS} by name"),
            ));
        }
        for t in &mut self.tracked {
            if t.cgroup.is_none() {
                t.cgroup = locate(&self.cgroup_root, &t.c.id);
                t.pid = None;
                t.host_net = false;
            }
            let Some(cg) = &t.cgroup else {
                // Not started yet, or on a layout we do not know.
                t.prev_cpu_usec = None;
                t.prev_net = None;
                continue;
            };
            let cpu = match read_cpu_usec(cg, buf) {
                Ok(v) => v,
                Err(e) => {
                    if !matches!(e, Fail::Gone) {
                        notes.push(Note::new(format!("container {}", t.c.name), e.text()));
                    }
                    // Exited (cgroup removed) or unreadable: left out, and
                    // found afresh should it come back.
                    t.cgroup = None;
                    t.prev_cpu_usec = None;
                    t.prev_net = None;
                    continue;
                }
            };
            let mut u = ContainerUsage {
                name: t.c.name.clone(),
                mem: read_mem(cg, buf),
                ..ContainerUsage::default()
            };
            if let (Some(p), Some(dt)) = (t.prev_cpu_usec, dt) {
                // µs per ms of wall time × 10 = hundredths of a percent.
                u.cpu = cpu
                    .checked_sub(p)
                    .and_then(|d| u64::try_from(u128::from(d) * 10 / u128::from(dt)).ok());
            }
            t.prev_cpu_usec = Some(cpu);

            if t.pid.is_none() && !t.host_net {
                t.pid = read_pid(cg, buf);
                if let Some(pid) = t.pid {
                    t.host_net = shares_host_net(proc_root, pid);
                }
            }
            let net = match t.pid.filter(|_| !t.host_net) {
                Some(pid) => {
                    let rel = format!("{pid}/net/dev");
                    let r = read(&proc_root.join(rel), buf)
                        .and_then(|s| parse_netdev_into(s, &mut self.nets).map_err(Fail::Parse));
                    match r {
                        Ok(()) => Some(sum_non_lo(&self.nets)),
                        Err(_) => {
                            // That process ended: look again next tick.
                            t.pid = None;
                            None
                        }
                    }
                }
                None => None,
            };
            if let (Some((rx, tx)), Some((prx, ptx)), Some(dt)) = (net, t.prev_net, dt) {
                u.rx_bps = super::sample::per_sec(prx, rx, dt, 1);
                u.tx_bps = super::sample::per_sec(ptx, tx, dt, 1);
            }
            t.prev_net = net;
            out.push(u);
        }
    }
}

/// The cgroup directory of container `id` under `root`, trying the layouts
/// Docker uses: cgroup v2 with the systemd or cgroupfs driver, then v1.
fn locate(root: &Path, id: &str) -> Option<Cgroup> {
    // Ids come from the engine; refuse anything that could leave `root`.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let scope = format!("docker-{id}.scope");
    for dir in [
        root.join("system.slice").join(&scope),
        root.join("docker").join(id),
    ] {
        // memory.current too: on a hybrid host `unified/` has cpu.stat only.
        if dir.join("cpu.stat").is_file() && dir.join("memory.current").is_file() {
            return Some(Cgroup::V2(dir));
        }
    }
    for rel in [
        Path::new("docker").join(id),
        Path::new("system.slice").join(&scope),
    ] {
        let cpuacct = root.join("cpuacct").join(&rel);
        if cpuacct.join("cpuacct.usage").is_file() {
            return Some(Cgroup::V1 {
                cpuacct,
                memory: root.join("memory").join(&rel),
            });
        }
    }
    None
}

enum Fail {
    /// The file is not there: the container is gone.
    Gone,
    Io(io::Error),
    TooLarge,
    Parse(ParseError),
}

impl Fail {
    fn text(&self) -> String {
        match self {
            Fail::Gone => "gone".into(),
            Fail::Io(e) => e.to_string(),
            Fail::TooLarge => format!("larger than {MAX_FILE} bytes"),
            Fail::Parse(e) => e.to_string(),
        }
    }
}

/// Reads `path` into `buf` (reused) and returns it.
fn read<'b>(path: &Path, buf: &'b mut String) -> Result<&'b str, Fail> {
    buf.clear();
    let r = File::open(path).and_then(|f| f.take(MAX_FILE + 1).read_to_string(buf));
    match r {
        Ok(n) if n as u64 > MAX_FILE => Err(Fail::TooLarge),
        Ok(_) => Ok(buf),
        // ENODEV: the cgroup was removed while its file was open.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(19) => {
            Err(Fail::Gone)
        }
        Err(e) => Err(Fail::Io(e)),
    }
}

fn read_cpu_usec(cg: &Cgroup, buf: &mut String) -> Result<u64, Fail> {
    match cg {
        Cgroup::V2(dir) => parse_keyed(read(&dir.join("cpu.stat"), buf)?, "usage_usec"),
        Cgroup::V1 { cpuacct, .. } => {
            parse_single(read(&cpuacct.join("cpuacct.usage"), buf)?, "cpuacct.usage")
                .map(|ns| ns / 1000)
        }
    }
    .map_err(Fail::Parse)
}

/// Usage less inactive page cache: what `docker stats` shows, and what
/// the kernel would not give back without pressure. Usage alone if the
/// stat file is unreadable.
fn read_mem(cg: &Cgroup, buf: &mut String) -> Option<u64> {
    let (usage, stat, key) = match cg {
        Cgroup::V2(dir) => (
            dir.join("memory.current"),
            dir.join("memory.stat"),
            "inactive_file",
        ),
        Cgroup::V1 { memory, .. } => (
            memory.join("memory.usage_in_bytes"),
            memory.join("memory.stat"),
            "total_inactive_file",
        ),
    };
    let used = parse_single(read(&usage, buf).ok()?, "memory usage").ok()?;
    let inactive = read(&stat, buf)
        .ok()
        .and_then(|s| parse_keyed(s, key).ok())
        .unwrap_or(0);
    Some(used.saturating_sub(inactive))
}

fn read_pid(cg: &Cgroup, buf: &mut String) -> Option<u32> {
    let dir = match cg {
        Cgroup::V2(dir) => dir,
        Cgroup::V1 { cpuacct, .. } => cpuacct,
    };
    parse_first_pid(read(&dir.join("cgroup.procs"), buf).ok()?).ok()
}

/// Whether `pid` is in the network namespace of pid 1 (the host's when
/// /proc is the host's). Unknown (no ns links, as in fixtures): no.
fn shares_host_net(proc_root: &Path, pid: u32) -> bool {
    let ns = |p: String| std::fs::read_link(proc_root.join(p)).ok();
    match (ns(format!("{pid}/ns/net")), ns("1/ns/net".into())) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Received and sent bytes over every interface but loopback.
fn sum_non_lo(nets: &[NetDev]) -> (u64, u64) {
    nets.iter()
        .filter(|n| n.name != "lo")
        .fold((0u64, 0u64), |(rx, tx), n| {
            (rx.wrapping_add(n.rx_bytes), tx.wrapping_add(n.tx_bytes))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::fixture_path;
    use crate::metrics::sample::tests::fixture_sampler;
    use crate::metrics::sample::Sampler;
    use crate::metrics::wire::SeriesSource;

    const WEB: &str = "aaaa000000000000000000000000000000000000000000000000000000000001";
    const DB: &str = "bbbb000000000000000000000000000000000000000000000000000000000002";
    const GONE: &str = "cccc000000000000000000000000000000000000000000000000000000000003";

    fn ctr(id: &str, name: &str) -> RunningContainer {
        RunningContainer {
            id: id.into(),
            name: name.into(),
        }
    }

    fn at(sm: &mut Sampler, t: &str) {
        sm.set_proc_root(fixture_path(&format!("containers/{t}/proc")));
        sm.set_cgroup_root(fixture_path(&format!("containers/{t}/cgroup")));
    }

    fn ctr_names(s: &crate::metrics::sample::Sample) -> Vec<String> {
        let mut v = Vec::new();
        s.for_each_series(&mut |n, _, _, _| {
            let n = n.to_string();
            if n.starts_with("ctr.") {
                v.push(n)
            }
        });
        v
    }

    #[test]
    fn figures_from_v2_and_v1_fixture_trees() {
        let mut sm = fixture_sampler("containers/t0/proc");
        at(&mut sm, "t0");
        sm.set_containers(vec![ctr(WEB, "web"), ctr(GONE, "gone"), ctr(DB, "db")]);
        let (s, notes) = sm.sample_at(1_000, 0);
        assert!(
            !notes.iter().any(|n| n.what.starts_with("container")),
            "{notes:?}"
        );
        // Sorted by name; the one without a cgroup is left out.
        let first = s.containers.clone();
        assert_eq!(
            first,
            vec![
                ContainerUsage {
                    name: "db".into(),
                    mem: Some(1_000_000 - 200_000),
                    ..ContainerUsage::default()
                },
                ContainerUsage {
                    name: "web".into(),
                    mem: Some(761_856 - 110_592),
                    ..ContainerUsage::default()
                },
            ]
        );
        at(&mut sm, "t1");
        let (s, _) = sm.sample_at(6_000, 5_000);
        let db = &s.containers[0];
        // v1: 500 ms of CPU (cpuacct.usage in ns) in 5 s = 10 %.
        assert_eq!(db.cpu, Some(1000));
        assert_eq!(db.mem, Some(1_200_000 - 200_000));
        // eth0 and wg0 summed, both idle.
        assert_eq!((db.rx_bps, db.tx_bps), (Some(0), Some(0)));
        let web = &s.containers[1];
        // v2: 250 000 µs in 5 s = 5 %.
        assert_eq!(web.cpu, Some(500));
        // lo left out: it moved nothing, eth0 50 000 / 100 000 bytes.
        assert_eq!((web.rx_bps, web.tx_bps), (Some(10_000), Some(20_000)));
        assert_eq!(
            ctr_names(&s),
            [
                "ctr.db.cpu",
                "ctr.db.mem",
                "ctr.db.rx_bps",
                "ctr.db.tx_bps",
                "ctr.web.cpu",
                "ctr.web.mem",
                "ctr.web.rx_bps",
                "ctr.web.tx_bps"
            ]
        );
        assert_eq!(ctr_names(&s).len(), 8, "same schema as tick 1");
        assert_eq!(first.len(), 2);

        // db stops: it leaves the schema; web's history carries on.
        sm.set_containers(vec![ctr(WEB, "web")]);
        let (s, _) = sm.sample_at(11_000, 10_000);
        assert_eq!(s.containers.len(), 1);
        assert_eq!(s.containers[0].cpu, Some(0));
    }

    #[test]
    fn exited_container_drops_out_without_a_note() {
        let mut sm = fixture_sampler("containers/t0/proc");
        at(&mut sm, "t0");
        sm.set_containers(vec![ctr(WEB, "web")]);
        assert_eq!(sm.sample_at(0, 0).0.containers.len(), 1);
        // Its cgroup is removed before Docker's "die" event is seen.
        sm.set_cgroup_root(fixture_path("containers/none"));
        let (s, notes) = sm.sample_at(5_000, 5_000);
        assert!(s.containers.is_empty());
        assert!(!notes.iter().any(|n| n.what.starts_with("container")));
        // Docker unavailable: no containers, no series, no notes.
        sm.set_containers(Vec::new());
        let (s, _) = sm.sample_at(10_000, 10_000);
        assert!(ctr_names(&s).is_empty());
    }

    #[test]
    fn bounded_with_one_stable_note() {
        let mut cs = ContainerSampler::new(fixture_path("containers/t0/cgroup"));
        let list: Vec<_> = (0..MAX_CONTAINERS + 6)
            .map(|i| ctr(&format!("{i:064x}"), &format!("c{i:03}")))
            .collect();
        cs.set_containers(list);
        assert_eq!(cs.tracked.len(), MAX_CONTAINERS);
        assert_eq!(cs.tracked[0].c.name, "c000");
        let (mut out, mut notes, mut buf) = (Vec::new(), Vec::new(), String::new());
        cs.sample(
            Path::new("/nonexistent"),
            &mut buf,
            None,
            &mut out,
            &mut notes,
        );
        let mut again = Vec::new();
        cs.sample(
            Path::new("/nonexistent"),
            &mut buf,
            None,
            &mut out,
            &mut again,
        );
        assert_eq!(notes.len(), 1);
        assert_eq!(notes, again, "the same text each tick, so logged once");
    }

    #[test]
    fn ids_that_could_escape_the_root_are_refused() {
        let root = fixture_path("containers/t0/cgroup");
        assert!(locate(&root, WEB).is_some());
        assert_eq!(locate(&root, "../docker"), None);
        assert_eq!(locate(&root, ""), None);
        assert!(matches!(locate(&root, DB), Some(Cgroup::V1 { .. })));
    }

    /// Against the real engine and kernel: needs dockerd and the image
    /// `tether-test/busybox:1`. Run with `cargo test -- --ignored ctr_smoke`.
    #[cfg(feature = "runner")]
    #[test]
    #[ignore]
    fn ctr_smoke_real_container() {
        use std::process::Command;
        let out = Command::new("docker")
            .args(["run", "-d", "--rm", "tether-test/busybox:1"])
            .args(["sh", "-c", "while :; do :; done"])
            .output()
            .expect("docker");
        assert!(out.status.success(), "{out:?}");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut sm = Sampler::new();
        sm.set_containers(vec![ctr(&id, "smoke")]);
        sm.sample(0);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let (s, _) = sm.sample(1);
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        println!("ctr smoke: {:?}", s.containers);
        let c = s.containers.first().expect("container sampled");
        assert!(c.cpu.is_some_and(|v| v > 5000), "a busy loop: {c:?}");
        assert!(c.mem.is_some_and(|v| v > 0));
        assert!(c.rx_bps.is_some() && c.tx_bps.is_some(), "{c:?}");
    }
}
