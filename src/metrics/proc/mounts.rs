//! `/proc/mounts` (`source mountpoint fstype options 0 0`) and the filter
//! that keeps only real filesystems, plus a `statvfs` helper for their
//! sizes.
//!
//! Which mounts are reported:
//! * disk filesystems by type (ext4, xfs, btrfs, zfs, f2fs, vfat, ubifs,
//!   jffs2, …), and any other type whose source is a `/dev/` node;
//! * not pseudo filesystems (proc, sysfs, cgroup, tmpfs, devtmpfs, overlay,
//!   …): they are noise, and overlay duplicates the disk under it;
//! * not read-only images (squashfs, iso9660, erofs): always 100 % full;
//! * not network filesystems (nfs, cifs, 9p, fuse.*): `statvfs` on a dead
//!   server blocks, and the sampler runs on the event loop;
//! * each source once: bind mounts and btrfs subvolumes show the same
//!   device several times;
//! * not the files a container runtime binds in from the host disk
//!   (`/etc/hosts`, `/etc/resolv.conf`, …): inside a container they would
//!   report the host's disk under a file's name.
//!
//! Mount points are unescaped (`\040` is a space).

use super::{complete_lines, ParseError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub mount_point: String,
    pub fstype: String,
}

/// Types that are always disk filesystems, whatever their source says
/// (zfs sources are dataset names, ubifs ones `ubi0:rootfs`).
const DISK_FS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "vfat", "msdos", "exfat", "ntfs",
    "ntfs3", "fuseblk", "jfs", "reiserfs", "ubifs", "jffs2", "bcachefs", "nilfs2", "hfsplus",
];

/// Types never reported even when their source is a device.
const SKIP_FS: &[&str] = &[
    "squashfs",
    "iso9660",
    "udf",
    "erofs",
    "cramfs",
    "romfs",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "9p",
    "ceph",
    "glusterfs",
    "devtmpfs",
];

/// Single files that Docker, Podman and Kubernetes bind-mount into a
/// container.
const FILE_BINDS: &[&str] = &[
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run/.containerenv",
    "/dev/termination-log",
];

/// Whether a mount should be reported (see the module doc).
pub fn is_reported(source: &str, mount_point: &str, fstype: &str) -> bool {
    is_real_fs(source, fstype) && !FILE_BINDS.contains(&mount_point)
}

/// Whether a mount's type and source make it a disk filesystem.
pub fn is_real_fs(source: &str, fstype: &str) -> bool {
    if DISK_FS.contains(&fstype) {
        return true;
    }
    if SKIP_FS.contains(&fstype) || fstype.starts_with("fuse.") {
        return false;
    }
    source.starts_with("/dev/")
}

/// All mounts, in file order.
pub fn parse_mounts(text: &str) -> Result<Vec<Mount>, ParseError> {
    let mut out = Vec::new();
    for (n, line) in complete_lines(text) {
        let (source, mount_point, fstype) = fields(line, n)?;
        out.push(Mount {
            source: unescape(source),
            mount_point: unescape(mount_point),
            fstype: fstype.to_owned(),
        });
    }
    Ok(out)
}

/// The mounts to report: real filesystems, each source once (first mount
/// wins). Strings are allocated only for the mounts kept, so a Docker host
/// with hundreds of overlay and shm mounts costs little.
pub fn parse_real_filesystems(text: &str) -> Result<Vec<Mount>, ParseError> {
    let mut out: Vec<Mount> = Vec::new();
    for (n, line) in complete_lines(text) {
        let (source, mount_point, fstype) = fields(line, n)?;
        if !is_reported(source, mount_point, fstype) {
            continue;
        }
        let source = unescape(source);
        if out.iter().any(|m| m.source == source) {
            continue;
        }
        out.push(Mount {
            source,
            mount_point: unescape(mount_point),
            fstype: fstype.to_owned(),
        });
    }
    Ok(out)
}

fn fields(line: &str, n: usize) -> Result<(&str, &str, &str), ParseError> {
    let mut f = line.split_ascii_whitespace();
    match (f.next(), f.next(), f.next()) {
        (Some(s), Some(m), Some(t)) => Ok((s, m, t)),
        _ => Err(ParseError::BadLine { line: n }),
    }
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash
/// (`\040`, `\011`, `\012`, `\134`). Anything else is kept as it is.
pub fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(oct[0] - b'0') * 64
                    + u32::from(oct[1] - b'0') * 8
                    + u32::from(oct[2] - b'0');
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Sizes from `statvfs(3)`, in bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    pub size: u64,
    /// Free blocks, including those reserved for root.
    pub free: u64,
    /// Free to unprivileged users (`df`'s "Avail").
    pub avail: u64,
    /// 0 on filesystems without a fixed inode table (btrfs).
    pub inodes: u64,
    pub inodes_free: u64,
}

/// `statvfs(path)`. Blocks: do not call it on network filesystems, which
/// [`is_real_fs`] already keeps out.
#[cfg(feature = "runner")]
pub fn statvfs(path: &std::path::Path) -> std::io::Result<FsStats> {
    let st = crate::sys::fs::statvfs(path)?;
    // The field widths differ between libcs and architectures (u32 on some
    // 32-bit targets), hence the widening casts.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let (frsize, blocks, bfree, bavail, files, ffree) = (
        st.f_frsize as u64,
        st.f_blocks as u64,
        st.f_bfree as u64,
        st.f_bavail as u64,
        st.f_files as u64,
        st.f_ffree as u64,
    );
    // f_frsize is 0 on a few old kernels' filesystems; f_bsize is then the unit.
    #[allow(clippy::unnecessary_cast)]
    let unit = if frsize == 0 {
        st.f_bsize as u64
    } else {
        frsize
    };
    Ok(FsStats {
        size: blocks.saturating_mul(unit),
        free: bfree.saturating_mul(unit),
        avail: bavail.saturating_mul(unit),
        inodes: files,
        inodes_free: ffree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::proc::testutil::{each_prefix, fixture};

    fn points(ms: &[Mount]) -> Vec<&str> {
        ms.iter().map(|m| m.mount_point.as_str()).collect()
    }

    #[test]
    fn this_vm() {
        let t = fixture("hosts/x86-6.1/mounts");
        assert_eq!(parse_mounts(&t).unwrap().len(), 21);
        assert_eq!(points(&parse_real_filesystems(&t).unwrap()), vec!["/"]);
    }

    #[test]
    fn docker_host_with_bind_mounts_and_nfs() {
        let t = fixture("hosts/docker-host-5.15/mounts");
        let fs = parse_real_filesystems(&t).unwrap();
        assert_eq!(
            points(&fs),
            vec!["/", "/boot", "/boot/efi", "/srv/my data", "/var/lib/pool"]
        );
        assert_eq!(fs[3].source, "/dev/sdb1");
        assert_eq!(fs[4].fstype, "zfs");
    }

    #[test]
    fn openwrt_overlay() {
        let t = fixture("hosts/openwrt-mips-5.10/mounts");
        let fs = parse_real_filesystems(&t).unwrap();
        // /rom is squashfs (always full) and / is overlayfs on top of it.
        assert_eq!(points(&fs), vec!["/overlay"]);
        assert_eq!(fs[0].fstype, "jffs2");
    }

    #[test]
    fn container_sees_no_host_file_binds() {
        let t = fixture("hosts/container-partial/mounts");
        assert!(parse_real_filesystems(&t).unwrap().is_empty());
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("/srv/my\\040data"), "/srv/my data");
        assert_eq!(unescape("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape("trail\\04"), "trail\\04");
        assert_eq!(unescape("\\777x"), "\\777x");
        assert_eq!(unescape("\\"), "\\");
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_mounts("a b\n"), Err(ParseError::BadLine { line: 1 }));
        let t = fixture("hosts/docker-host-5.15/mounts");
        each_prefix(&t, |p| {
            let _ = parse_mounts(p);
            let _ = parse_real_filesystems(p);
        });
    }

    #[cfg(feature = "runner")]
    #[test]
    fn statvfs_of_root() {
        let s = statvfs(std::path::Path::new("/")).unwrap();
        assert!(s.size > 0 && s.free <= s.size && s.avail <= s.free);
        assert!(statvfs(std::path::Path::new("/nonexistent/x")).is_err());
    }
}
