//! The Prometheus text exposition (version 0.0.4) of the newest sample of
//! each runner: pure, values in, text out.
//!
//! A series name is `group[.instance].metric`; it is split at the first and
//! the last dot (an instance may hold dots: `fs./var/lib.used`). The group
//! and metric make the metric name, the unit its suffix, and the instance
//! a label named for the group:
//!
//! ```text
//! cpu.busy          percent   tether_cpu_busy_percent{…,cpu="total"}
//! cpu3.busy         percent   tether_cpu_busy_percent{…,cpu="3"}
//! load.1            load      tether_load_1{…}
//! uptime            seconds   tether_uptime_seconds{…}
//! mem.used          bytes     tether_mem_used_bytes{…}
//! fs./var/lib.used  bytes     tether_fs_used_bytes{…,mount="/var/lib"}
//! disk.sda.read_bps bytes/s   tether_disk_read_bytes_per_second{…,device="sda"}
//! net.eth0.rx_pps   per sec   tether_net_rx_packets_per_second{…,iface="eth0"}
//! other.x.y         …         tether_other_y{…,instance="x"}
//! ```
//!
//! Every sample carries `runner_id` and `runner` (its name). Everything is
//! a gauge: the exposition is the newest value, not a counter the server
//! keeps. Samples carry no timestamp (Prometheus refuses samples older
//! than its head block, which an offline runner's would be); instead
//! `tether_metrics_timestamp_seconds` says how fresh each runner's are.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use tether::metrics::wire::Unit;

use crate::db::metrics::LatestSample;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One runner's part of the exposition.
pub struct RunnerSample<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// Health is `active`.
    pub up: bool,
    pub latest: &'a LatestSample,
}

/// The metric name and the instance label of a dotted series name.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapped {
    pub metric: String,
    pub label: Option<(&'static str, String)>,
    /// The series name with the instance replaced by `<label>`, for HELP.
    pub pattern: String,
}

pub fn map_series(name: &str, unit: Unit) -> Mapped {
    let (group, instance, metric) = match (name.find('.'), name.rfind('.')) {
        (Some(first), Some(last)) if first < last => (
            &name[..first],
            Some(&name[first + 1..last]),
            Some(&name[last + 1..]),
        ),
        (Some(first), _) => (&name[..first], None, Some(&name[first + 1..])),
        _ => (name, None, None),
    };
    // `cpu` is the total, `cpu3` one core: one metric, told apart by label.
    let core = group
        .strip_prefix("cpu")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let (group, label) = match (core, instance) {
        (Some(n), None) => ("cpu", Some(("cpu", n.to_owned()))),
        (None, None) if group == "cpu" && metric.is_some() => {
            ("cpu", Some(("cpu", "total".to_owned())))
        }
        (_, Some(i)) => (group, Some((label_for(group), i.to_owned()))),
        _ => (group, None),
    };
    let mut metric_name = format!("tether_{}", sanitize(group));
    if let Some(m) = metric {
        metric_name.push('_');
        metric_name.push_str(&sanitize(m));
    }
    add_unit(&mut metric_name, unit);
    let pattern = match (&label, instance) {
        (Some((l, _)), Some(_)) => format!("{group}.<{l}>.{}", metric.unwrap_or_default()),
        _ => name.to_owned(),
    };
    Mapped {
        metric: metric_name,
        label,
        pattern,
    }
}

fn label_for(group: &str) -> &'static str {
    match group {
        "net" => "iface",
        "fs" => "mount",
        "disk" => "device",
        "ctr" => "container",
        "cpu" => "cpu",
        _ => "instance",
    }
}

fn add_unit(name: &mut String, unit: Unit) {
    let strip = |name: &mut String, tail: &str| {
        if name.ends_with(tail) {
            name.truncate(name.len() - tail.len());
            true
        } else {
            false
        }
    };
    match unit {
        Unit::Percent => name.push_str("_percent"),
        Unit::Seconds => {
            if !name.ends_with("_seconds") {
                name.push_str("_seconds");
            }
        }
        Unit::Bytes => {
            if !name.ends_with("_bytes") {
                name.push_str("_bytes");
            }
        }
        Unit::BytesPerSecond => {
            strip(name, "_bps");
            name.push_str("_bytes_per_second");
        }
        Unit::PerSecond => {
            if strip(name, "_pps") {
                name.push_str("_packets");
            }
            name.push_str("_per_second");
        }
        Unit::Load | Unit::Count => {}
    }
}

/// Metric names allow `[a-zA-Z0-9_:]`; anything else becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Label values: backslash, double quote and newline are escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and newline are escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Percent => "percent",
        Unit::Load => "load average",
        Unit::Count => "count",
        Unit::Seconds => "seconds",
        Unit::Bytes => "bytes",
        Unit::BytesPerSecond => "bytes per second",
        Unit::PerSecond => "per second",
    }
}

struct Family {
    name: String,
    help: String,
    lines: String,
}

#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
    /// (family, labels) already written: a later duplicate is dropped.
    seen: HashSet<(usize, String)>,
}

impl Exposition {
    fn sample(&mut self, name: &str, help: impl FnOnce() -> String, labels: String, value: f64) {
        let next = self.families.len();
        let i = *self.index.entry(name.to_owned()).or_insert(next);
        if i == next {
            self.families.push(Family {
                name: name.to_owned(),
                help: help(),
                lines: String::new(),
            });
        }
        if !self.seen.insert((i, labels.clone())) {
            return;
        }
        let f = &mut self.families[i];
        // `{}` of an f64 is the shortest exact decimal, never an exponent.
        let _ = writeln!(f.lines, "{}{{{labels}}} {value}", f.name);
    }

    fn finish(self) -> String {
        if self.families.is_empty() {
            // An empty body reads as a failure to people and some tools.
            return "# no runner of this tenant has stored metrics yet\n".into();
        }
        let mut out = String::new();
        for f in self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} gauge", f.name);
            out.push_str(&f.lines);
        }
        out
    }
}

pub fn render(runners: &[RunnerSample<'_>]) -> String {
    let mut x = Exposition::default();
    for r in runners {
        let base = format!(
            "runner_id=\"{}\",runner=\"{}\"",
            escape_label(r.id),
            escape_label(r.name)
        );
        x.sample(
            "tether_runner_up",
            || "1 if the runner has a live connection (health active), else 0".into(),
            base.clone(),
            if r.up { 1.0 } else { 0.0 },
        );
        x.sample(
            "tether_metrics_timestamp_seconds",
            || "Unix time of the runner's newest stored metrics sample".into(),
            base.clone(),
            r.latest.ts as f64 / 1000.0,
        );
        for (def, value) in r.latest.series() {
            let Some(value) = value else { continue };
            let m = map_series(&def.name, def.unit);
            let labels = match &m.label {
                Some((l, v)) => format!("{base},{l}=\"{}\"", escape_label(v)),
                None => base.clone(),
            };
            let help = || format!("{} ({})", m.pattern, unit_name(def.unit));
            x.sample(&m.metric, help, labels, value);
        }
    }
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, unit: Unit) -> (String, Option<(&'static str, String)>) {
        let m = map_series(name, unit);
        (m.metric, m.label)
    }

    #[test]
    fn names_map_to_metrics_and_labels() {
        let l = |k: &'static str, v: &str| Some((k, v.to_owned()));
        let cases = [
            (
                "cpu.busy",
                Unit::Percent,
                "tether_cpu_busy_percent",
                l("cpu", "total"),
            ),
            (
                "cpu12.iowait",
                Unit::Percent,
                "tether_cpu_iowait_percent",
                l("cpu", "12"),
            ),
            ("load.1", Unit::Load, "tether_load_1", None),
            ("uptime", Unit::Seconds, "tether_uptime_seconds", None),
            ("mem.used", Unit::Bytes, "tether_mem_used_bytes", None),
            (
                "proc.forks",
                Unit::PerSecond,
                "tether_proc_forks_per_second",
                None,
            ),
            ("ip4.in_bytes", Unit::Bytes, "tether_ip4_in_bytes", None),
            ("tcp.time_wait", Unit::Count, "tether_tcp_time_wait", None),
            (
                "fs./var/lib.used",
                Unit::Bytes,
                "tether_fs_used_bytes",
                l("mount", "/var/lib"),
            ),
            (
                "fs./.inodes_used",
                Unit::Count,
                "tether_fs_inodes_used",
                l("mount", "/"),
            ),
            (
                "net.eth0.100.rx_bps",
                Unit::BytesPerSecond,
                "tether_net_rx_bytes_per_second",
                l("iface", "eth0.100"),
            ),
            (
                "net.wlan0.tx_pps",
                Unit::PerSecond,
                "tether_net_tx_packets_per_second",
                l("iface", "wlan0"),
            ),
            (
                "disk.nvme0n1.write_ops",
                Unit::PerSecond,
                "tether_disk_write_ops_per_second",
                l("device", "nvme0n1"),
            ),
            (
                "ctr.web-1.mem",
                Unit::Bytes,
                "tether_ctr_mem_bytes",
                l("container", "web-1"),
            ),
            (
                "gpu.0.temp-c",
                Unit::Count,
                "tether_gpu_temp_c",
                l("instance", "0"),
            ),
        ];
        for (name, unit, metric, label) in cases {
            assert_eq!(m(name, unit), (metric.to_owned(), label), "{name}");
        }
        assert_eq!(
            map_series("fs./srv.used", Unit::Bytes).pattern,
            "fs.<mount>.used"
        );
    }

    #[test]
    fn nothing_to_expose_is_a_comment() {
        let text = render(&[]);
        assert!(text.starts_with("# ") && text.ends_with('\n'), "{text:?}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
