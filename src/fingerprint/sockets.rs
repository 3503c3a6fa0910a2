//! Listening sockets: which ports this host serves, and who owns them.
//!
//! `/proc/net/{tcp,tcp6,udp,udp6}` rows (pure parse):
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//!    0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   113        0 20002 ...
//! ```
//!
//! * TCP: state `0A` (LISTEN). UDP has no listen state: a bound,
//!   unconnected socket is state `07` (CLOSE) with a zero remote address.
//! * Addresses are the kernel's in-memory bytes printed as 32-bit words in
//!   host byte order: `0100007F` is 127.0.0.1 on little-endian hosts and
//!   `7F000001` on big-endian ones (MIPS routers). IPv6 is four such words,
//!   each reversed on its own on little-endian. The port is a plain number.
//!
//! Owners (small I/O function): the socket's inode is matched against the
//! `socket:[INODE]` links in `/proc/<pid>/fd/`, and the process named by
//! `/proc/<pid>/comm`. Inode 0 means a kernel socket (WireGuard, NFS).

use crate::fingerprint::Listener;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Byte order of the host that wrote the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

impl Endian {
    pub const NATIVE: Endian = if cfg!(target_endian = "big") {
        Endian::Big
    } else {
        Endian::Little
    };
}

/// A listening socket before its owner is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawListener {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// The listening sockets of one table. Malformed rows are skipped (and
/// counted in the second value) rather than failing the whole table.
pub fn parse_listeners(text: &str, proto: Proto, endian: Endian) -> (Vec<RawListener>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    // The header is the first line; a cut-off last line is ignored.
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    for line in text[..end].lines().skip(1) {
        match parse_row(line, proto, endian) {
            Ok(Some(l)) => out.push(l),
            Ok(None) => {}
            Err(()) => bad += 1,
        }
    }
    (out, bad)
}

fn parse_row(line: &str, proto: Proto, endian: Endian) -> Result<Option<RawListener>, ()> {
    let f: Vec<&str> = line.split_ascii_whitespace().take(10).collect();
    if f.len() < 10 {
        return Err(());
    }
    let (local, remote, st, inode) = (f[1], f[2], f[3], f[9]);
    let listening = match proto {
        Proto::Tcp => st == "0A",
        Proto::Udp => st == "07" && remote.bytes().all(|b| b == b'0' || b == b':'),
    };
    if !listening {
        return Ok(None);
    }
    let (addr, port) = parse_endpoint(local, endian).ok_or(())?;
    let inode = inode.parse::<u64>().map_err(|_| ())?;
    Ok(Some(RawListener {
        proto,
        addr,
        port,
        inode,
    }))
}

/// `0100007F:1538` → (127.0.0.1, 5432) on a little-endian host.
pub fn parse_endpoint(s: &str, endian: Endian) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex, 16).ok()?;
        Some(match endian {
            Endian::Little => w.to_le_bytes(),
            Endian::Big => w.to_be_bytes(),
        })
    };
    if !addr.is_ascii() {
        return None;
    }
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&addr[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// `socket:[12345]` → 12345.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Maps each wanted socket inode to the name (`comm`) of the lowest-numbered
/// process holding it, by reading `<proc_root>/<pid>/fd/*` links. Processes
/// that vanish or deny access are skipped; stops early once all are found.
pub fn scan_socket_owners(proc_root: &Path, wanted: &HashSet<u64>) -> HashMap<u64, (u32, String)> {
    let mut found: HashMap<u64, (u32, String)> = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return found;
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // Lowest pid first, so the owner of a socket shared across a fork (a
    // master and its workers) is the master.
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target.to_str().and_then(parse_socket_link) else {
                continue;
            };
            if !wanted.contains(&inode) || found.contains_key(&inode) {
                continue;
            }
            let name = comm
                .get_or_insert_with(|| {
                    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
                        .map(|s| s.trim_end().to_owned())
                        .unwrap_or_default()
                })
                .clone();
            found.insert(inode, (pid, name));
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    found
}

/// Names the owner of each socket: the process, `kernel` for inode 0, or
/// None when no process could be seen holding it (another pid namespace,
/// no permission). Sorted and without duplicates (SO_REUSEPORT groups show
/// one row per socket).
pub fn name_owners(raw: &[RawListener], owners: &HashMap<u64, (u32, String)>) -> Vec<Listener> {
    let mut out: Vec<Listener> = raw
        .iter()
        .map(|r| Listener {
            proto: match r.proto {
                Proto::Tcp => "tcp".into(),
                Proto::Udp => "udp".into(),
            },
            addr: r.addr,
            port: r.port,
            process: if r.inode == 0 {
                Some("kernel".into())
            } else {
                owners
                    .get(&r.inode)
                    .map(|(_, c)| c.clone())
                    .filter(|c| !c.is_empty())
            },
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::tests::fixture;

    fn shown(text: &str, proto: Proto, endian: Endian) -> Vec<String> {
        let (raw, bad) = parse_listeners(text, proto, endian);
        assert_eq!(bad, 0);
        name_owners(&raw, &HashMap::new())
            .iter()
            .map(|l| l.to_string())
            .collect()
    }

    #[test]
    fn endpoints_in_both_byte_orders() {
        let le = Endian::Little;
        let be = Endian::Big;
        let v4 = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
        assert_eq!(
            parse_endpoint("0100007F:1538", le),
            Some((v4([127, 0, 0, 1]), 5432))
        );
        assert_eq!(
            parse_endpoint("7F000001:0016", be),
            Some((v4([127, 0, 0, 1]), 22))
        );
        assert_eq!(
            parse_endpoint("C0A80101:0035", be),
            Some((v4([192, 168, 1, 1]), 53))
        );
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            ("00000000000000000000000001000000:0016", le, "::1"),
            ("00000000000000000000000000000001:0016", be, "::1"),
            ("B80D0120000000000000000001000000:01BB", le, "2001:db8::1"),
            ("20010DB8000000000000000000000001:01BB", be, "2001:db8::1"),
            (
                "0000000000000000FFFF00000500000A:0050",
                le,
                "::ffff:10.0.0.5",
            ),
            (
                "FE800000000000000211AAFFFEBBCCDD:0050",
                be,
                "fe80::211:aaff:febb:ccdd",
            ),
            (
                "000080FE00000000FFAA1102DDCCBBFE:0050",
                le,
                "fe80::211:aaff:febb:ccdd",
            ),
        ];
        for (s, e, want) in cases {
            assert_eq!(parse_endpoint(s, e).map(|x| x.0), Some(v6(want)), "{s}");
        }
        for bad in [
            "",
            "0100007F",
            "0100007F:",
            "0100007F:1FFFF",
            "0100007:0016",
            "ZZ00007F:0016",
            "é100007F:0016",
        ] {
            assert_eq!(parse_endpoint(bad, le), None, "{bad}");
        }
    }

    #[test]
    fn tcp_and_udp_tables_little_endian() {
        let tcp = shown(&fixture("net/le/tcp"), Proto::Tcp, Endian::Little);
        assert_eq!(
            tcp,
            vec![
                "tcp 0.0.0.0:22",
                "tcp 0.0.0.0:80",
                "tcp 0.0.0.0:443",
                "tcp 127.0.0.1:5432",
                "tcp 127.0.0.53:53",
            ]
        );
        let tcp6 = shown(&fixture("net/le/tcp6"), Proto::Tcp, Endian::Little);
        assert_eq!(tcp6, vec!["tcp [::]:22", "tcp [::]:80", "tcp [::1]:6379"]);
        let udp = shown(&fixture("net/le/udp"), Proto::Udp, Endian::Little);
        assert_eq!(
            udp,
            vec![
                "udp 0.0.0.0:51820 (kernel)",
                "udp 10.0.0.5:68",
                "udp 127.0.0.53:53"
            ]
        );
        let udp6 = shown(&fixture("net/le/udp6"), Proto::Udp, Endian::Little);
        assert_eq!(
            udp6,
            vec![
                "udp [::]:51820 (kernel)",
                "udp [fe80::211:aaff:febb:ccdd]:546"
            ]
        );
    }

    #[test]
    fn big_endian_router() {
        let tcp = shown(&fixture("net/be/tcp"), Proto::Tcp, Endian::Big);
        assert_eq!(
            tcp,
            vec!["tcp 0.0.0.0:53", "tcp 0.0.0.0:80", "tcp 192.168.1.1:22"]
        );
        let tcp6 = shown(&fixture("net/be/tcp6"), Proto::Tcp, Endian::Big);
        assert_eq!(tcp6, vec!["tcp [::]:53", "tcp [fd00::1]:80"]);
    }

    #[test]
    fn odd_rows_and_prefixes() {
        let (v, bad) = parse_listeners(
            "header\n 0: 0100007F:1538 00000000:0000 0A x\n 1: 0100007F:1538 00000000:0000 0A 0 0 0 0 0 7\n 2: 01:1 0:0 0A 0 0 0 0 0 7\n",
            Proto::Tcp,
            Endian::Little,
        );
        assert_eq!(v.len(), 1);
        assert_eq!(bad, 2);
        let t = fixture("net/le/tcp6");
        for i in 0..=t.len() {
            let (v, _) = parse_listeners(&t[..i], Proto::Tcp, Endian::Little);
            assert!(v.len() <= 3);
        }
        assert_eq!(parse_socket_link("socket:[20001]"), Some(20001));
        assert_eq!(parse_socket_link("pipe:[20001]"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    /// A /proc made of real directories and symlinks in a temp dir.
    #[test]
    fn owners_from_fd_links() {
        let root = std::env::temp_dir().join(format!("tether-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |pid: u32, comm: &str, links: &[&str]| {
            let fd = root.join(pid.to_string()).join("fd");
            std::fs::create_dir_all(&fd).unwrap();
            std::fs::write(root.join(pid.to_string()).join("comm"), format!("{comm}\n")).unwrap();
            for (i, l) in links.iter().enumerate() {
                std::os::unix::fs::symlink(l, fd.join(i.to_string())).unwrap();
            }
        };
        mk(
            812,
            "nginx",
            &["/dev/null", "socket:[20003]", "socket:[20004]"],
        );
        mk(813, "nginx", &["socket:[20003]"]);
        mk(90, "sshd", &["socket:[20001]", "pipe:[5]"]);
        mk(1, "systemd", &["socket:[999]"]);
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::create_dir_all(root.join("2000")).unwrap(); // no fd dir
        let wanted: HashSet<u64> = [20001, 20003, 20004, 20005].into();
        let owners = scan_socket_owners(&root, &wanted);
        assert_eq!(owners.get(&20001), Some(&(90, "sshd".to_string())));
        assert_eq!(owners.get(&20003), Some(&(812, "nginx".to_string())));
        assert_eq!(owners.get(&20004).map(|o| o.0), Some(812));
        assert_eq!(owners.get(&20005), None);
        assert_eq!(owners.len(), 3);
        let (raw, _) = parse_listeners(&fixture("net/le/tcp"), Proto::Tcp, Endian::Little);
        let named: Vec<String> = name_owners(&raw, &owners)
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(named[0], "tcp 0.0.0.0:22 (sshd)");
        assert_eq!(named[2], "tcp 0.0.0.0:443 (nginx)");
        assert_eq!(named[4], "tcp 127.0.0.53:53");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The real machine: whatever listens here, parsing and scanning work.
    #[test]
    fn this_host() {
        let proc = Path::new("/proc");
        let mut raw = Vec::new();
        for (f, p) in [
            ("tcp", Proto::Tcp),
            ("tcp6", Proto::Tcp),
            ("udp", Proto::Udp),
            ("udp6", Proto::Udp),
        ] {
            if let Ok(t) = std::fs::read_to_string(proc.join("net").join(f)) {
                let (v, bad) = parse_listeners(&t, p, Endian::NATIVE);
                assert_eq!(bad, 0, "{f}");
                raw.extend(v);
            }
        }
        let wanted: HashSet<u64> = raw.iter().map(|r| r.inode).filter(|&i| i != 0).collect();
        let owners = scan_socket_owners(proc, &wanted);
        assert!(owners.len() <= wanted.len());
        let _ = name_owners(&raw, &owners);
    }
}
