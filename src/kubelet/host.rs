//! What the kubelet reports about its host, as Kubernetes' kubelet reads it: CPUs and memory
//! (capacity), the address other hosts reach it at, and `nodeInfo` (kernel, OS image, machine
//! and boot ids, architecture). Owns only reading these facts; the kubelet decides what to
//! register.

use k8s_openapi::api::core::v1::NodeSystemInfo;

/// Millicores of the host: its CPUs (those this process may use) × 1000.
pub fn cpu_millis() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1000
}

/// The host's memory in bytes (`MemTotal` of /proc/meminfo), if it can be read.
pub fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The address of the interface the default route leaves by (no packet is sent: a UDP
/// socket is only connected), or loopback when there is no route.
pub fn primary_ip() -> String {
    let probe = || -> std::io::Result<std::net::IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().map_or_else(|_| "127.0.0.1".to_string(), |ip| ip.to_string())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `PRETTY_NAME` of /etc/os-release.
fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Kubernetes' name of this process's architecture.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The kubelet version Miniku reports: the Kubernetes API it serves, and itself.
pub const KUBELET_VERSION: &str = concat!("v1.33.0-miniku.", env!("CARGO_PKG_VERSION"));

/// `status.nodeInfo` for a node whose engine reports `runtime_version`
/// (`docker://28.2.2`).
pub fn node_info(runtime_version: &str) -> NodeSystemInfo {
    NodeSystemInfo {
        architecture: architecture().into(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: runtime_version.into(),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        kube_proxy_version: String::new(),
        kubelet_version: KUBELET_VERSION.into(),
        machine_id: read_trimmed("/etc/machine-id"),
        operating_system: std::env::consts::OS.into(),
        os_image: os_image(),
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:       24608396 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_608_396 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
    }

    #[test]
    fn the_host_has_cpus_an_address_and_a_kernel() {
        assert!(cpu_millis() >= 1000);
        assert!(primary_ip().parse::<std::net::IpAddr>().is_ok());
        let info = node_info("docker://1");
        assert_eq!(info.operating_system, "linux");
        assert!(!info.kernel_version.is_empty());
    }
}
