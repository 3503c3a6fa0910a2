//! `/proc/cpuinfo`: `key<TAB>: value` lines, one block per processor. Its
//! keys differ by architecture:
//!
//! ```text
//! x86, newer ARM   model name : Intel(R) Xeon(R) ... / ARMv7 Processor rev 4 (v7l)
//! older ARM        Processor  : ARMv7 Processor rev 10 (v7l)     Hardware : Freescale i.MX 6Quad
//! Raspberry Pi     Hardware   : BCM2835                          Model    : Raspberry Pi 3 Model B Rev 1.2
//! arm64 (often)    CPU implementer : 0x41   CPU part : 0xd0c     (no model name at all)
//! MIPS             system type : MediaTek MT7621 ver:1 eco:3     cpu model : MIPS 1004Kc V2.15
//! POWER            cpu : POWER9 (raw), altivec supported
//! RISC-V           uarch : sifive,u74-mc                         isa : rv64imafdc
//! ```
//!
//! The x86 `flags` line says `hypervisor` when running under one.

/// What the fingerprint takes from cpuinfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    pub model: Option<String>,
    /// The board or SoC (`Hardware`, `Model`, MIPS `system type`).
    pub board: Option<String>,
    /// `processor` entries: logical CPUs the kernel lists.
    pub count: u32,
    /// x86 `flags` include `hypervisor`.
    pub hypervisor: bool,
}

pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut c = CpuInfo::default();
    // Highest-priority model key seen so far (lower is better).
    let mut model_rank = usize::MAX;
    let mut board_rank = usize::MAX;
    let (mut implementer, mut part) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => c.count += 1,
            "flags" if value.split_ascii_whitespace().any(|f| f == "hypervisor") => {
                c.hypervisor = true
            }
            "CPU implementer" => implementer = implementer.or(Some(value.to_owned())),
            "CPU part" => part = part.or(Some(value.to_owned())),
            _ => {}
        }
        if value.is_empty() {
            continue;
        }
        const MODEL_KEYS: [&str; 5] = ["model name", "Processor", "cpu model", "cpu", "uarch"];
        if let Some(rank) = MODEL_KEYS.iter().position(|k| *k == key) {
            if rank < model_rank {
                model_rank = rank;
                c.model = Some(value.to_owned());
            }
        }
        const BOARD_KEYS: [&str; 3] = ["Model", "Hardware", "system type"];
        if let Some(rank) = BOARD_KEYS.iter().position(|k| *k == key) {
            if rank < board_rank {
                board_rank = rank;
                c.board = Some(value.to_owned());
            }
        }
    }
    if c.model.is_none() {
        c.model = implementer.map(|i| arm_core_name(&i, part.as_deref()));
    }
    c
}

/// A name for an arm64 core from its MIDR fields, for kernels that print
/// no model name. Only common server and board cores are named.
fn arm_core_name(implementer: &str, part: Option<&str>) -> String {
    let name = match (implementer, part.unwrap_or("")) {
        ("0x41", "0xd03") => Some("ARM Cortex-A53"),
        ("0x41", "0xd04") => Some("ARM Cortex-A35"),
        ("0x41", "0xd05") => Some("ARM Cortex-A55"),
        ("0x41", "0xd07") => Some("ARM Cortex-A57"),
        ("0x41", "0xd08") => Some("ARM Cortex-A72"),
        ("0x41", "0xd09") => Some("ARM Cortex-A73"),
        ("0x41", "0xd0a") => Some("ARM Cortex-A75"),
        ("0x41", "0xd0b") => Some("ARM Cortex-A76"),
        ("0x41", "0xd0c") => Some("ARM Neoverse-N1"),
        ("0x41", "0xd40") => Some("ARM Neoverse-V1"),
        ("0x41", "0xd49") => Some("ARM Neoverse-N2"),
        ("0x41", "0xd4f") => Some("ARM Neoverse-V2"),
        ("0xc0", "0xac3") => Some("Ampere-1"),
        _ => None,
    };
    match (name, part) {
        (Some(n), _) => n.to_owned(),
        (None, Some(p)) => format!("ARM implementer {implementer} part {p}"),
        (None, None) => format!("ARM implementer {implementer}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::tests::fixture;

    fn check(name: &str, model: &str, board: Option<&str>, count: u32, hyp: bool) {
        let c = parse_cpuinfo(&fixture(&format!("cpuinfo/{name}")));
        assert_eq!(c.model.as_deref(), Some(model), "{name}");
        assert_eq!(c.board.as_deref(), board, "{name}");
        assert_eq!(c.count, count, "{name}");
        assert_eq!(c.hypervisor, hyp, "{name}");
    }

    #[test]
    fn architectures() {
        check("x86-kvm", "Intel(R) Xeon(R) Processor", None, 2, true);
        check(
            "rpi3-armv7",
            "ARMv7 Processor rev 4 (v7l)",
            Some("Raspberry Pi 3 Model B Rev 1.2"),
            4,
            false,
        );
        check(
            "imx6-old-arm",
            "ARMv7 Processor rev 10 (v7l)",
            Some("Freescale i.MX 6Quad/DualLite (Device Tree)"),
            4,
            false,
        );
        check("graviton2-arm64", "ARM Neoverse-N1", None, 2, false);
        check(
            "mt7621-mips",
            "MIPS 1004Kc V2.15",
            Some("MediaTek MT7621 ver:1 eco:3"),
            4,
            false,
        );
        check("power9", "POWER9 (raw), altivec supported", None, 2, false);
        check("riscv-u74", "sifive,u74-mc", None, 4, false);
    }

    #[test]
    fn unknown_arm_part_and_prefixes() {
        let c = parse_cpuinfo("processor : 0\nCPU implementer : 0x51\nCPU part : 0x802\n");
        assert_eq!(c.model.as_deref(), Some("ARM implementer 0x51 part 0x802"));
        assert_eq!(parse_cpuinfo(""), CpuInfo::default());
        let t = fixture("cpuinfo/rpi3-armv7");
        for i in 0..=t.len() {
            let c = parse_cpuinfo(&t[..i]);
            assert!(c.count <= 4);
        }
    }
}
