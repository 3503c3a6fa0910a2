//! The release binaries from `build.sh`: static, small, built for the right
//! CPU, and working under qemu-user with CPU models of real hardware against
//! a real local server (enroll, connect, report metrics).
//!
//! x86_64 and aarch64 are built by `make test`. The four edge targets (armv7,
//! armv6, mips, mipsel) take a few minutes more to build, so their tests are
//! `#[ignore]`d and `make edge` builds the binaries and runs them.

use crate::util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn dist(target: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(target)
        .join("tether");
    assert!(
        p.exists(),
        "{} is missing: run ./build.sh {target} first (make test builds x86_64 and aarch64, \
         make edge all six)",
        p.display()
    );
    p
}

/// What the tests expect of one target's binary and how to run it.
struct Arch {
    target: &'static str,
    /// qemu-user program and the CPU model of the hardware we ship to.
    qemu: &'static str,
    cpu: &'static str,
    /// ELF: class (1 = 32-bit, 2 = 64-bit), big endian, e_machine.
    class: u8,
    big_endian: bool,
    machine: u16,
    /// `uname -m` that qemu reports for that CPU.
    uname: &'static str,
    /// The build's release name, which the runner sends as `arch`
    /// (`uname -m` cannot tell mips from mipsel).
    release: &'static str,
}

const AARCH64: Arch = Arch {
    target: "aarch64-unknown-linux-musl",
    qemu: "qemu-aarch64-static",
    cpu: "cortex-a53",
    class: 2,
    big_endian: false,
    machine: 183, // EM_AARCH64
    uname: "aarch64",
    release: "aarch64",
};
const ARMV7: Arch = Arch {
    target: "armv7-unknown-linux-musleabihf",
    qemu: "qemu-arm-static",
    cpu: "cortex-a7", // Raspberry Pi 2, Allwinner H3, i.MX6UL
    class: 1,
    big_endian: false,
    machine: 40, // EM_ARM
    uname: "armv7l",
    release: "armv7",
};
const ARMV6: Arch = Arch {
    target: "arm-unknown-linux-musleabi",
    qemu: "qemu-arm-static",
    cpu: "arm1176", // Raspberry Pi Zero/1
    class: 1,
    big_endian: false,
    machine: 40,
    uname: "armv6l",
    release: "armv6",
};
const MIPS: Arch = Arch {
    target: "mips-unknown-linux-musl",
    qemu: "qemu-mips-static",
    cpu: "24Kc", // Atheros AR9xxx / QCA routers: MIPS32r2 without an FPU
    class: 1,
    big_endian: true,
    machine: 8, // EM_MIPS
    uname: "mips",
    release: "mips",
};
const MIPSEL: Arch = Arch {
    target: "mipsel-unknown-linux-musl",
    qemu: "qemu-mipsel-static",
    cpu: "24Kc", // MediaTek MT7620 / Ralink RT3x5x routers
    class: 1,
    big_endian: false,
    machine: 8,
    uname: "mips",
    release: "mipsel",
};
const EDGE: [&Arch; 4] = [&ARMV7, &ARMV6, &MIPS, &MIPSEL];

/// The fields of an ELF header and program headers these tests look at.
struct Elf {
    class: u8,
    big_endian: bool,
    machine: u16,
    flags: u32,
    has_interp: bool,
}

fn parse_elf(b: &[u8]) -> Elf {
    assert!(b.len() > 0x40 && &b[..4] == b"\x7fELF", "not an ELF file");
    let (class, big_endian) = (b[4], b[5] == 2);
    let u16_at = |o: usize| {
        let v = [b[o], b[o + 1]];
        if big_endian {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    };
    let u32_at = |o: usize| {
        let v = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let u64_at = |o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        if big_endian {
            u64::from_be_bytes(v)
        } else {
            u64::from_le_bytes(v)
        }
    };
    // Offsets differ between ELF32 and ELF64 headers.
    let (phoff, flags, phentsize, phnum) = match class {
        1 => (
            u32_at(0x1c) as usize,
            u32_at(0x24),
            u16_at(0x2a),
            u16_at(0x2c),
        ),
        2 => (
            u64_at(0x20) as usize,
            u32_at(0x30),
            u16_at(0x36),
            u16_at(0x38),
        ),
        c => panic!("unknown ELF class {c}"),
    };
    const PT_INTERP: u32 = 3;
    let has_interp =
        (0..phnum as usize).any(|i| u32_at(phoff + i * phentsize as usize) == PT_INTERP);
    Elf {
        class,
        big_endian,
        machine: u16_at(0x12),
        flags,
        has_interp,
    }
}

/// Static (no PT_INTERP: routers have no musl loader), for the right CPU
/// and byte order, and within the 2 MiB flash budget.
fn check_binary(arch: &Arch) {
    let bytes = std::fs::read(dist(arch.target)).unwrap();
    let elf = parse_elf(&bytes);
    let t = arch.target;
    assert!(!elf.has_interp, "{t} binary asks for a dynamic loader");
    assert_eq!(elf.class, arch.class, "{t}: ELF class");
    assert_eq!(elf.big_endian, arch.big_endian, "{t}: byte order");
    assert_eq!(elf.machine, arch.machine, "{t}: e_machine");
    assert!(
        bytes.len() <= 2 * 1024 * 1024,
        "{t} binary is {} bytes, over the 2 MiB goal",
        bytes.len()
    );
    match t {
        // EF_ARM_ABI_FLOAT_HARD / _SOFT: the float calling convention must
        // match the board's userland (armhf vs armel).
        "armv7-unknown-linux-musleabihf" => {
            assert_ne!(elf.flags & 0x400, 0, "{t}: not hard-float ABI")
        }
        "arm-unknown-linux-musleabi" => {
            assert_ne!(elf.flags & 0x200, 0, "{t}: not soft-float ABI")
        }
        // EF_MIPS_ARCH (top nibble) 7 = MIPS32r2: runs on 24K/74K/1004K cores.
        "mips-unknown-linux-musl" | "mipsel-unknown-linux-musl" => {
            assert_eq!(elf.flags >> 28, 7, "{t}: not MIPS32r2 ({:#x})", elf.flags)
        }
        _ => {}
    }
}

#[test]
fn release_binaries_are_static() {
    for t in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        let bytes = std::fs::read(dist(t)).unwrap();
        assert!(
            !parse_elf(&bytes).has_interp,
            "{t} binary asks for a dynamic loader"
        );
    }
    check_binary(&AARCH64);
}

#[test]
#[ignore = "edge target: make edge builds the binaries and runs this"]
fn edge_binaries_are_static_small_and_for_the_right_cpu() {
    for arch in EDGE {
        check_binary(arch);
    }
}

/// A command that runs the target's binary under qemu-user with its CPU model.
fn qemu_cmd(arch: &Arch) -> Command {
    assert!(
        Command::new(arch.qemu).arg("--version").output().is_ok(),
        "{} is not installed (apt-get install qemu-user-static; make test's set-up does)",
        arch.qemu
    );
    let mut c = Command::new(arch.qemu);
    c.args(["-cpu", arch.cpu]).arg(dist(arch.target));
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `tether version` and `--help` answer under qemu with the target's CPU.
fn runs_under_qemu(arch: &Arch) {
    let out = qemu_cmd(arch).arg("version").output().unwrap();
    let version = text(&out);
    assert!(out.status.success(), "{}: {version}", arch.target);
    // std::env::consts::ARCH: "arm" for both ARM targets, "mips" for both
    // byte orders.
    let rust_arch = match arch.target.split('-').next().unwrap() {
        a if a.starts_with("arm") => "arm",
        "mipsel" => "mips",
        a => a,
    };
    assert!(
        version.contains(env!("CARGO_PKG_VERSION"))
            && version.contains(&format!("({}, {rust_arch}-linux-musl)", arch.release)),
        "{}: {version}",
        arch.target
    );
    let out = qemu_cmd(arch).arg("--help").output().unwrap();
    assert!(
        out.status.success() && text(&out).contains("enroll"),
        "{}: {}",
        arch.target,
        text(&out)
    );
}

/// A runner whose `bin` is a two-line script that execs the target's binary
/// under qemu, so the shared helpers start it like any other runner (and
/// signals reach it: qemu-user forwards them to the guest).
fn qemu_runner(arch: &Arch) -> (Runner, TempDir) {
    let wrap_dir = TempDir::new("qemu-wrap");
    let wrapper = wrap_dir.path().join("tether");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} -cpu {} {} \"$@\"\n",
            arch.qemu,
            arch.cpu,
            dist(arch.target).display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut runner = Runner::new();
    runner.bin = wrapper;
    (runner, wrap_dir)
}

fn series_points(tenant: &Tenant, runner: &str, series: &str) -> usize {
    let path = format!("/api/v1/runners/{runner}/metrics?since=5m&resolution=raw&series={series}");
    let (st, v) = tenant.call("GET", &path, None);
    assert_eq!(st, 200, "{path}: {v}");
    v["series"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == series))
        .and_then(|s| s["points"].as_array())
        .map_or(0, Vec::len)
}

/// The emulated binary enrolls with a one-time token over real TLS, connects,
/// reports its CPU (qemu's `uname -m` for the model) and sends metrics that
/// the API serves; SIGTERM closes the connection cleanly.
fn enrolls_and_reports_metrics_under_qemu(arch: &Arch) {
    runs_under_qemu(arch);
    let server = Server::start();
    let tenant = server.tenant("edge");
    let (mut runner, _wrap) = qemu_runner(arch);
    let (_, token) = tenant.enrollment_token(600);
    let out = runner.enroll_at(&server.url, &server.ca, &token);
    assert!(
        out.status.success(),
        "{} enroll: {}",
        arch.target,
        text(&out)
    );
    let cred: Value =
        serde_json::from_slice(&std::fs::read(runner.dir.path().join("credential.json")).unwrap())
            .unwrap();
    runner.id = cred["runner_id"].as_str().unwrap().to_string();

    runner.start(&[
        "--heartbeat",
        "1s",
        "--metrics-interval",
        "1s",
        "--docker-socket",
        "off",
    ]);
    // Emulation makes the TLS handshake slower than native: generous bound.
    tenant.wait_health(&runner.id, "active", Duration::from_secs(60));
    let r = tenant.runner(&runner.id);
    assert_eq!(r["arch"], arch.release, "{}: {r}", arch.target);
    // The kernel's own name is in the fingerprint.
    let fp = wait_for(Duration::from_secs(60), "the fingerprint", || {
        let (_, v) = tenant.call(
            "GET",
            &format!("/api/v1/runners/{}/fingerprint", runner.id),
            None,
        );
        (!v["updated_at"].is_null()).then_some(v)
    });
    assert_eq!(fp["arch"], arch.uname, "{}: {fp}", arch.target);
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");

    wait_for(Duration::from_secs(60), "three metrics samples", || {
        (series_points(&tenant, &runner.id, "cpu.busy") >= 3
            && series_points(&tenant, &runner.id, "mem.total") >= 1)
            .then_some(())
    });
    let (st, v) = tenant.call("POST", &format!("/api/v1/runners/{}/ping", runner.id), None);
    assert_eq!(st, 200, "{}: ping {v}", arch.target);

    // A script, run by the emulated runner (the shell itself is the host's).
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(serde_json::json!({ "runners": [runner.id], "command": "echo job-ok; exit 4" })),
    );
    assert_eq!(st, 201, "{}: run {v}", arch.target);
    let job = v[0]["id"].as_str().unwrap().to_owned();
    let done = wait_for(Duration::from_secs(60), "the job to complete", || {
        let (_, v) = tenant.call("GET", &format!("/api/v1/jobs/{job}"), None);
        (v["complete"] == true).then_some(v)
    });
    assert_eq!(done["exit_code"], 4, "{}: {done}", arch.target);
    let mut out = String::new();
    std::io::Read::read_to_string(
        &mut tenant.api.stream(
            &format!("/api/v1/jobs/{job}/output?stream=stdout"),
            &tenant.token,
        ),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, "job-ok\n", "{}", arch.target);

    signal(runner.child(), libc::SIGTERM);
    let st = wait_exit(runner.child(), Duration::from_secs(20)).expect("runner did not exit");
    assert!(st.success(), "{}: exit {st}\n{}", arch.target, runner.log());
    tenant.wait_health(&runner.id, "unreachable", Duration::from_secs(10));
}

#[test]
fn aarch64_runner_enrolls_and_reports_metrics_on_a_cortex_a53() {
    enrolls_and_reports_metrics_under_qemu(&AARCH64);
}

#[test]
#[ignore = "edge target: make edge builds the binaries and runs this"]
fn armv7_runner_enrolls_and_reports_metrics_on_a_cortex_a7() {
    enrolls_and_reports_metrics_under_qemu(&ARMV7);
}

#[test]
#[ignore = "edge target: make edge builds the binaries and runs this"]
fn armv6_runner_enrolls_and_reports_metrics_on_an_arm1176() {
    enrolls_and_reports_metrics_under_qemu(&ARMV6);
}

#[test]
#[ignore = "edge target: make edge builds the binaries and runs this"]
fn mips_runner_enrolls_and_reports_metrics_on_a_24kc_without_fpu() {
    enrolls_and_reports_metrics_under_qemu(&MIPS);
}

#[test]
#[ignore = "edge target: make edge builds the binaries and runs this"]
fn mipsel_runner_enrolls_and_reports_metrics_on_a_24kc_without_fpu() {
    enrolls_and_reports_metrics_under_qemu(&MIPSEL);
}

/// Coprocessor-1 (FPU) instructions in `objdump -d` output: loads, stores and
/// moves to or from FPU registers, FPU branches, and the arithmetic ops
/// (`add.s`, `cvt.d.w`, `c.lt.d` ...). Returns the offending lines.
fn fpu_instructions(disassembly: &str) -> Vec<String> {
    const C1_OPS: [&str; 20] = [
        "lwc1", "swc1", "ldc1", "sdc1", "lwxc1", "swxc1", "ldxc1", "sdxc1", "luxc1", "suxc1",
        "mfc1", "mtc1", "mfhc1", "mthc1", "cfc1", "ctc1", "bc1f", "bc1t", "bc1fl", "bc1tl",
    ];
    disassembly
        .lines()
        .filter(|line| {
            // "  400190:\tlwc1\t$f0,0(a0)" → mnemonic "lwc1", operands "$f0,0(a0)".
            let mut cols = line.split('\t').skip(1);
            let Some(op) = cols.next().map(str::trim) else {
                return false;
            };
            let args = cols.next().unwrap_or("");
            let fp_format = [".s", ".d", ".ps", ".w", ".l"]
                .iter()
                .any(|s| op.ends_with(s))
                && !op.ends_with(".hb"); // jr.hb / jalr.hb are hazard barriers
            C1_OPS.contains(&op) || fp_format || args.contains("$f")
        })
        .map(str::to_owned)
        .collect()
}

fn objdump(triple: &str, file: &Path) -> String {
    let tool = format!("{triple}-objdump");
    let out = Command::new(&tool)
        .args(["-d", "--no-show-raw-insn"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool}: {e} (packaging/cross/setup.sh installs the cross binutils)")
        });
    assert!(out.status.success(), "{tool}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Routers with a 24Kc have no FPU. Linux would trap and emulate each FPU
/// instruction (slowly) and some vendor kernels ship without the emulator,
/// so the MIPS binaries must hold none.
#[test]
#[ignore = "edge target: make edge builds the binaries and runs this"]
fn mips_binaries_hold_no_fpu_instructions() {
    // First prove the check can fail: hard-float code (the cross gcc's
    // default) compiled here must be caught.
    let tmp = TempDir::new("fpu");
    let src = tmp.path().join("f.c");
    std::fs::write(
        &src,
        "double f(double a, double b) { return a * b + 1.0; }\n",
    )
    .unwrap();
    let obj = tmp.path().join("f.o");
    let out = Command::new("mips-linux-gnu-gcc")
        .args(["-O2", "-mhard-float", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .expect("mips-linux-gnu-gcc (packaging/cross/setup.sh installs it)");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !fpu_instructions(&objdump("mips-linux-gnu", &obj)).is_empty(),
        "the FPU check misses hard-float code"
    );
    // And the qemu runs above count too: qemu's 24Kc has no FPU, so
    // hard-float code that runs there dies with SIGILL.
    let exe = tmp.path().join("f");
    std::fs::write(
        &src,
        "int main(void) { volatile double a = 1.5; a = a * a; return (int)a - 2; }\n",
    )
    .unwrap();
    let out = Command::new("mips-linux-gnu-gcc")
        .args(["-O1", "-static", "-mhard-float"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = |cpu: &str| {
        Command::new("qemu-mips-static")
            .args(["-cpu", cpu])
            .arg(&exe)
            .status()
    };
    assert!(
        run("24Kf").unwrap().success(),
        "hard-float code fails on a 24Kf (with FPU)"
    );
    use std::os::unix::process::ExitStatusExt;
    let st = run("24Kc").unwrap();
    assert!(
        st.signal() == Some(libc::SIGILL) || st.code() == Some(128 + libc::SIGILL),
        "qemu's 24Kc ran FPU code: {st}"
    );

    for (arch, triple) in [(&MIPS, "mips-linux-gnu"), (&MIPSEL, "mipsel-linux-gnu")] {
        let dis = objdump(triple, &dist(arch.target));
        assert!(
            dis.lines().count() > 100_000,
            "{}: objdump printed too little",
            arch.target
        );
        let found = fpu_instructions(&dis);
        assert!(
            found.is_empty(),
            "{}: {} FPU instructions, e.g.\n{}",
            arch.target,
            found.len(),
            found
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
