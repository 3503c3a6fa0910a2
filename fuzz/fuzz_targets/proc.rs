//! The runner's /proc and cgroup parsers (`src/metrics/proc/`,
//! `src/metrics/cgroup.rs`) and the sock_diag dump reader
//! (`src/metrics/tcp_diag.rs`). Their input is the kernel's, but a
//! container runtime or a FUSE-mounted /proc can put anything there, and a
//! panic would take the whole runner down.
//!
//! Input: `[which] [text …]`: `which` picks the parser (and how the TCP
//! table is cut: its counter must give the same counts for any cut).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::metrics::cgroup::{parse_first_pid, parse_keyed, parse_single};
use tether::metrics::proc::{
    diskstats, loadavg, meminfo, mounts, netdev, netstat, snmp6, stat, tcp, uptime,
};
use tether::metrics::tcp_diag::{release_at_least, DumpCounter, Fed};
use tether_fuzz::{opts, pieces};

fuzz_target!(|data: &[u8]| {
    let Some((o, bytes)) = opts(data) else { return };
    let text = String::from_utf8_lossy(bytes);
    let text = text.as_ref();
    match o % 13 {
        0 => {
            if let Ok(disks) = diskstats::parse_diskstats(text) {
                for d in &disks {
                    let _ = diskstats::is_reported(d, &disks);
                    for p in &disks {
                        let _ = diskstats::is_partition_of(&d.name, &p.name);
                    }
                }
            }
        }
        1 => {
            let _ = loadavg::parse_loadavg(text);
        }
        2 => {
            let _ = meminfo::parse_meminfo(text);
        }
        3 => {
            if let Ok(ms) = mounts::parse_mounts(text) {
                for m in ms {
                    let _ = mounts::is_reported(&m.source, &m.mount_point, &m.fstype);
                }
            }
            let _ = mounts::parse_real_filesystems(text);
            let _ = mounts::unescape(text);
        }
        4 => {
            let _ = netdev::parse_netdev(text);
        }
        5 => {
            let _ = netstat::parse_netstat_ipext(text);
        }
        6 => {
            let _ = snmp6::parse_snmp6(text);
        }
        7 => {
            let _ = stat::parse_stat(text);
            let _ = stat::parse_btime(text);
        }
        8 => {
            // Fed in chunks as the sampler reads it: any cut, same counts.
            let whole = tcp::count_tcp_states(text);
            let mut c = tcp::TcpStateCounter::new();
            for p in pieces(text.as_bytes(), o / 13) {
                c.feed(p);
            }
            assert_eq!(c.states(), whole, "TCP counts depend on the cuts");
        }
        9 => {
            let _ = uptime::parse_uptime(text);
        }
        10 => {
            let _ = parse_keyed(text, "usage_usec");
            let _ = parse_single(text, "memory.current");
            let _ = parse_first_pid(text);
        }
        11 => {
            let mut c = DumpCounter::default();
            // One datagram per piece, as recv() hands them over.
            for p in pieces(bytes, o / 13) {
                match c.feed(p) {
                    Ok(Fed::More) => {}
                    Ok(Fed::Done(_)) | Err(_) => break,
                }
            }
        }
        _ => {
            let _ = release_at_least(bytes, (4, 4));
        }
    }
});
