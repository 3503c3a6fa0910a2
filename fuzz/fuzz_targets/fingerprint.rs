//! The host fingerprint's parsers (`src/fingerprint/`) and the change lists
//! the server applies to its stored copy (`diff::apply`, called by
//! `server/src/telemetry/mod.rs` `record_fingerprint` on every report).
//!
//! Input: `[which] [text …]`. Parsers: cpuinfo, os-release, the
//! /proc/net socket tables (both byte orders), iptables-save, nft JSON,
//! virtualization evidence. Server side: the text is JSON
//! `[stored fingerprint, report]`, handled as the server does; and for
//! two fingerprints `apply(a, diff(a, b))` must give `b`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::fingerprint::sockets::{
    parse_endpoint, parse_listeners, parse_socket_link, Endian, Proto,
};
use tether::fingerprint::virt::{detect_container, detect_vm, Evidence};
use tether::fingerprint::{apply, cpuinfo, diff, firewall, os_release, Change, Fingerprint};
use tether::protocol::FingerprintReport;
use tether_fuzz::opts;

/// What the runner guarantees of a fingerprint it sends (the server's
/// copy starts from a full report): `listening` sorted, no duplicates.
fn normalized(mut fp: Fingerprint) -> Fingerprint {
    fp.listening.sort();
    fp.listening.dedup();
    fp
}

fn server_side(text: &str) {
    if let Ok((stored, report)) = serde_json::from_str::<(Fingerprint, FingerprintReport)>(text) {
        let mut copy = stored.clone();
        match &report.full {
            Some(full) => {
                let _ = diff(&stored, full);
            }
            None => {
                if apply(&mut copy, &report.changes).is_ok() {
                    let _ = serde_json::to_string(&copy).unwrap();
                }
            }
        }
        for c in &report.changes {
            let _ = c.to_string();
        }
    }
    if let Ok((a, b)) = serde_json::from_str::<(Fingerprint, Fingerprint)>(text) {
        let (a, b) = (normalized(a), normalized(b));
        let changes: Vec<Change> = diff(&a, &b);
        // What the runner sends goes through JSON.
        let json = serde_json::to_string(&changes).unwrap();
        let changes: Vec<Change> = serde_json::from_str(&json).unwrap();
        let mut c = a.clone();
        apply(&mut c, &changes).unwrap_or_else(|e| panic!("diff does not apply: {e}: {json}"));
        assert_eq!(c, b, "apply(a, diff(a, b)) is not b: {json}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((o, bytes)) = opts(data) else { return };
    let text = String::from_utf8_lossy(bytes);
    let text = text.as_ref();
    match o % 8 {
        0 => {
            let _ = cpuinfo::parse_cpuinfo(text);
        }
        1 => {
            let _ = os_release::parse_os_release(text);
        }
        2 => {
            let proto = if o & 8 == 0 { Proto::Tcp } else { Proto::Udp };
            let endian = if o & 16 == 0 {
                Endian::Little
            } else {
                Endian::Big
            };
            let (rows, _bad) = parse_listeners(text, proto, endian);
            for r in rows {
                assert_eq!(r.proto, proto);
            }
            for w in text.split_whitespace() {
                let _ = parse_endpoint(w, endian);
                let _ = parse_socket_link(w);
            }
        }
        3 => {
            let (v4, v6) = text.split_once('\0').unwrap_or((text, ""));
            let _ = firewall::from_iptables_save(Some(v4), Some(v6));
            let _ = firewall::from_iptables_save(None, Some(text));
        }
        4 => {
            let _ = firewall::from_nft_json(text);
        }
        5 => {
            let mut parts = bytes.split(|&b| b == 0xff);
            let mut next = || parts.next().and_then(|p| std::str::from_utf8(p).ok());
            let (cgroup, vendor, product, release) = (next(), next(), next(), next());
            let e = Evidence {
                pid1_environ: Some(bytes),
                pid1_cgroup: cgroup,
                dockerenv: o & 8 != 0,
                containerenv: o & 16 != 0,
                cpuinfo_hypervisor: o & 32 != 0,
                dmi_sys_vendor: vendor,
                dmi_product_name: product,
                kernel_release: release,
            };
            let _ = detect_container(&e);
            let _ = detect_vm(&e);
        }
        _ => server_side(text),
    }
});
