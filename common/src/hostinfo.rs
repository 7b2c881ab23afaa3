//! Facts and figures about the host a program runs on: memory, swap, load, CPU temperature and
//! disk from /proc, /sys and statvfs, and the OS and Raspberry Pi board from /etc/os-release
//! and the device tree.

use std::path::Path;

use crate::protocols::{HostInfo, HostStats, Timestamp};

/// Current figures; `disk` is the file system whose size and free space are reported.
/// Figures that cannot be read are reported as 0 rather than failing: the caller is usually a
/// periodic task that must not stop over a missing /sys file.
pub fn host_stats(disk: &Path, at: Timestamp) -> HostStats {
    let (mem_size, mem_free, swap_size, swap_free) = std::fs::read_to_string("/proc/meminfo").map(|s| parse_meminfo(&s)).unwrap_or_default();
    let (disk_size, disk_free) = disk_space(disk).unwrap_or_default();
    HostStats {
        at,
        disk_size,
        disk_free,
        mem_size,
        mem_free,
        swap_size,
        swap_free,
        load_average: std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| parse_loadavg(&s)).unwrap_or(0.0),
        cpu_temp: std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .map_or(0.0, |milli| milli / 1000.0),
    }
}

/// Size and free space (available to unprivileged users) of the file system holding `path`.
pub fn disk_space(path: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path)?;
    let frsize = st.fragment_size();
    Ok((st.blocks() * frsize, st.blocks_available() * frsize))
}

/// (mem total, mem available, swap total, swap free) in bytes. MemAvailable is preferred;
/// kernels without it report MemFree + Cached.
fn parse_meminfo(text: &str) -> (u64, u64, u64, u64) {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok().map(|kib| kib * 1024)
        })
    };
    let available = field("MemAvailable").or_else(|| Some(field("MemFree")? + field("Cached")?));
    (
        field("MemTotal").unwrap_or(0),
        available.unwrap_or(0),
        field("SwapTotal").unwrap_or(0),
        field("SwapFree").unwrap_or(0),
    )
}

fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Facts about this host; `label` defaults to the host name.
pub fn host_info(label: Option<&str>) -> HostInfo {
    let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into());
    let (os_name, os_version) = std::fs::read_to_string("/etc/os-release").map(|s| parse_os_release(&s)).unwrap_or_else(|_| ("Linux".into(), String::new()));
    HostInfo {
        label: label.map_or(hostname, str::to_string),
        os_name,
        os_version,
        board_revision: device_tree_hex("/proc/device-tree/system/linux,revision"),
        board_serial: device_tree_hex("/proc/device-tree/system/linux,serial"),
    }
}

/// `NAME` and `VERSION` from os-release text (shell-quoted values), defaulting to `Linux`
/// and an empty version.
fn parse_os_release(text: &str) -> (String, String) {
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let raw = line.trim().strip_prefix(key)?.strip_prefix('=')?;
            Some(unquote(raw))
        })
    };
    (value("NAME").unwrap_or_else(|| "Linux".into()), value("VERSION").unwrap_or_default())
}

fn unquote(raw: &str) -> String {
    let quoted = (raw.starts_with('"') && raw.ends_with('"') || raw.starts_with('\'') && raw.ends_with('\'')) && raw.len() >= 2;
    let inner = if quoted { &raw[1..raw.len() - 1] } else { raw };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A big-endian number from the device tree as lower-case hex without leading zeros, or
/// `unknown` when the file is absent (not a Raspberry Pi).
fn device_tree_hex(path: &str) -> String {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => {
            let value = bytes.iter().take(8).fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{value:x}")
        }
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_prefers_mem_available() {
        let text = "MemTotal: 2 kB\nMemFree: 1 kB\nMemAvailable: 1 kB\nCached: 5 kB\nSwapTotal: 4 kB\nSwapFree: 3 kB\n";
        assert_eq!(parse_meminfo(text), (2048, 1024, 4096, 3072));
        let old = "MemTotal: 8 kB\nMemFree: 1 kB\nCached: 2 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n";
        assert_eq!(parse_meminfo(old), (8192, 3072, 0, 0));
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "PRETTY_NAME=\"x\"\nNAME=\"Raspbian GNU/Linux\"\nVERSION='12 (\\\"bookworm\\\")'\n";
        assert_eq!(parse_os_release(text), ("Raspbian GNU/Linux".into(), "12 (\"bookworm\")".into()));
        assert_eq!(parse_os_release(""), ("Linux".into(), String::new()));
    }

    #[test]
    fn load_average_is_the_one_minute_figure() {
        assert_eq!(parse_loadavg("1.30 0.80 0.50 1/234 5678\n"), Some(1.3));
    }

    #[test]
    fn host_stats_reads_this_machine() {
        let stats = host_stats(Path::new("/"), chrono::Utc::now());
        assert!(stats.mem_size > 0 && stats.disk_size > 0 && stats.disk_free <= stats.disk_size, "{stats:?}");
    }
}
