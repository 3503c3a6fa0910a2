//! The release binaries from `build.sh`: static, and the aarch64 one runs
//! (under qemu-user on this x86_64 machine).

use std::path::PathBuf;
use std::process::Command;

fn dist(target: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(target)
        .join("tether");
    assert!(
        p.exists(),
        "{} is missing: run ./build.sh first (make test does)",
        p.display()
    );
    p
}

/// True if an ELF file has no PT_INTERP program header (no dynamic loader).
fn is_static_elf(bytes: &[u8]) -> bool {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "expected a 64-bit ELF");
    let le = bytes[5] == 1;
    let u16_at = |o: usize| {
        if le {
            u16::from_le_bytes([bytes[o], bytes[o + 1]])
        } else {
            u16::from_be_bytes([bytes[o], bytes[o + 1]])
        }
    };
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        if le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    };
    let u32_at = |o: usize| {
        let b = [bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let phoff = u64_at(0x20) as usize;
    let phentsize = u16_at(0x36) as usize;
    let phnum = u16_at(0x38) as usize;
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| u32_at(phoff + i * phentsize) != PT_INTERP)
}

#[test]
fn release_binaries_are_static() {
    for t in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        let bytes = std::fs::read(dist(t)).unwrap();
        assert!(
            is_static_elf(&bytes),
            "{t} binary asks for a dynamic loader"
        );
    }
}

#[test]
fn the_aarch64_binary_runs_under_qemu() {
    let qemu = ["qemu-aarch64-static", "qemu-aarch64"]
        .into_iter()
        .find(|q| Command::new(q).arg("--version").output().is_ok())
        .expect("qemu-user is not installed (apt-get install qemu-user-static; .ci/run does)");
    let out = Command::new(qemu)
        .arg(dist("aarch64-unknown-linux-musl"))
        .arg("version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")) && text.contains("aarch64"),
        "{text}"
    );
    let out = Command::new(qemu)
        .arg(dist("aarch64-unknown-linux-musl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("enroll"));
}
