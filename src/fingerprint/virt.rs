//! Virtual machine and container detection from evidence gathered by the
//! caller (pure), in the spirit of `systemd-detect-virt`:
//!
//! ```text
//! container: /proc/1/environ container=X  ▶ X (lxc, podman, systemd-nspawn, docker, …)
//!            /run/.containerenv            ▶ podman
//!            /.dockerenv                   ▶ docker
//!            /proc/1/cgroup path           ▶ kubernetes (kubepods), docker, lxc, podman (libpod)
//! vm:        DMI sys_vendor / product_name ▶ kvm, qemu, vmware, virtualbox, hyper-v, xen, amazon, …
//!            kernel release "microsoft"    ▶ wsl
//!            cpuinfo flag "hypervisor"     ▶ hypervisor (some VM we cannot name, e.g. Firecracker)
//! ```
//!
//! A container on a VM has both.

/// What the caller read; `None` / false for what is missing or unreadable.
#[derive(Debug, Clone, Default)]
pub struct Evidence<'a> {
    pub pid1_environ: Option<&'a [u8]>,
    pub pid1_cgroup: Option<&'a str>,
    pub dockerenv: bool,
    pub containerenv: bool,
    pub cpuinfo_hypervisor: bool,
    pub dmi_sys_vendor: Option<&'a str>,
    pub dmi_product_name: Option<&'a str>,
    pub kernel_release: Option<&'a str>,
}

/// The container runtime this runner is inside, if any.
pub fn detect_container(e: &Evidence<'_>) -> Option<String> {
    if let Some(env) = e.pid1_environ {
        let var = env
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"container="));
        if let Some(v) = var.and_then(|v| std::str::from_utf8(v).ok()) {
            if !v.is_empty() {
                return Some(v.to_owned());
            }
        }
    }
    if e.containerenv {
        return Some("podman".into());
    }
    if e.dockerenv {
        return Some("docker".into());
    }
    let cg = e.pid1_cgroup?;
    // Ordered: a pod's containers run under docker or containerd paths too.
    let hints: [(&str, &str); 5] = [
        ("kubepods", "kubernetes"),
        ("libpod", "podman"),
        ("/docker", "docker"),
        ("docker-", "docker"),
        ("/lxc", "lxc"),
    ];
    hints
        .iter()
        .find(|(needle, _)| cg.lines().any(|l| l.contains(needle)))
        .map(|(_, name)| (*name).to_owned())
}

/// The hypervisor this host runs on, if any.
pub fn detect_vm(e: &Evidence<'_>) -> Option<String> {
    let vendor = e.dmi_sys_vendor.unwrap_or("").trim();
    let product = e.dmi_product_name.unwrap_or("").trim();
    let has = |s: &str, needle: &str| s.to_ascii_lowercase().contains(needle);
    let by_dmi = if has(product, "kvm") || has(vendor, "kvm") {
        Some("kvm")
    } else if has(vendor, "qemu") || has(product, "qemu") {
        Some("qemu")
    } else if has(vendor, "vmware") {
        Some("vmware")
    } else if has(vendor, "innotek") || has(product, "virtualbox") {
        Some("virtualbox")
    } else if has(vendor, "microsoft") && has(product, "virtual machine") {
        Some("hyper-v")
    } else if has(vendor, "xen") {
        Some("xen")
    } else if has(vendor, "amazon ec2") {
        Some("amazon")
    } else if has(product, "google compute engine") {
        Some("google")
    } else if has(product, "openstack") || has(vendor, "openstack") {
        Some("openstack")
    } else if has(vendor, "digitalocean") {
        Some("digitalocean")
    } else if has(vendor, "hetzner") {
        Some("hetzner")
    } else if has(vendor, "parallels") {
        Some("parallels")
    } else if has(vendor, "bochs") {
        Some("bochs")
    } else if has(product, "apple virtualization") {
        Some("apple")
    } else {
        None
    };
    if let Some(v) = by_dmi {
        return Some(v.to_owned());
    }
    if e.kernel_release.is_some_and(|k| has(k, "microsoft")) {
        return Some("wsl".into());
    }
    e.cpuinfo_hypervisor.then(|| "hypervisor".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers() {
        let e = Evidence {
            pid1_environ: Some(b"PATH=/bin\0container=lxc\0TERM=linux\0"),
            dockerenv: true,
            ..Evidence::default()
        };
        assert_eq!(detect_container(&e).as_deref(), Some("lxc"));
        let e = Evidence {
            pid1_environ: Some(b"container=\0"),
            containerenv: true,
            ..Evidence::default()
        };
        assert_eq!(detect_container(&e).as_deref(), Some("podman"));
        let e = Evidence {
            dockerenv: true,
            pid1_cgroup: Some("0::/\n"),
            ..Evidence::default()
        };
        assert_eq!(detect_container(&e).as_deref(), Some("docker"));
        let cg = |c| Evidence {
            pid1_cgroup: Some(c),
            ..Evidence::default()
        };
        let k8s =
            "12:memory:/kubepods/burstable/pod1f2e/3a4b\n11:cpu:/kubepods/burstable/pod1f2e/3a4b\n";
        assert_eq!(detect_container(&cg(k8s)).as_deref(), Some("kubernetes"));
        let docker = "0::/system.slice/docker-3f1c0a9e.scope\n";
        assert_eq!(detect_container(&cg(docker)).as_deref(), Some("docker"));
        let v1 = "4:pids:/docker/3f1c0a9e\n";
        assert_eq!(detect_container(&cg(v1)).as_deref(), Some("docker"));
        assert_eq!(
            detect_container(&cg("1:name=systemd:/lxc/web1\n")).as_deref(),
            Some("lxc")
        );
        assert_eq!(detect_container(&cg("0::/init.scope\n")), None);
        assert_eq!(detect_container(&Evidence::default()), None);
    }

    #[test]
    fn vms() {
        let dmi = |v, p| Evidence {
            dmi_sys_vendor: Some(v),
            dmi_product_name: Some(p),
            cpuinfo_hypervisor: true,
            ..Evidence::default()
        };
        let cases = [
            ("QEMU\n", "Standard PC (Q35 + ICH9, 2009)\n", "qemu"),
            ("Red Hat", "KVM", "kvm"),
            ("VMware, Inc.", "VMware Virtual Platform", "vmware"),
            ("innotek GmbH", "VirtualBox", "virtualbox"),
            ("Microsoft Corporation", "Virtual Machine", "hyper-v"),
            ("Xen", "HVM domU", "xen"),
            ("Amazon EC2", "m6i.large", "amazon"),
            ("Google", "Google Compute Engine", "google"),
            ("OpenStack Foundation", "OpenStack Nova", "openstack"),
            ("DigitalOcean", "Droplet", "digitalocean"),
            ("Hetzner", "vServer", "hetzner"),
            ("Dell Inc.", "PowerEdge R640", "hypervisor"),
        ];
        for (v, p, want) in cases {
            assert_eq!(detect_vm(&dmi(v, p)).as_deref(), Some(want), "{v}/{p}");
        }
        let bare = Evidence {
            dmi_sys_vendor: Some("Dell Inc."),
            dmi_product_name: Some("PowerEdge R640"),
            ..Evidence::default()
        };
        assert_eq!(detect_vm(&bare), None);
        let wsl = Evidence {
            kernel_release: Some("5.15.146.1-microsoft-standard-WSL2"),
            cpuinfo_hypervisor: true,
            ..Evidence::default()
        };
        assert_eq!(detect_vm(&wsl).as_deref(), Some("wsl"));
    }
}
