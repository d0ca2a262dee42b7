//! The process's peak resident memory, for benchmarks that print it (Linux).

/// Peak RSS (VmHWM) in KiB since the last [`reset_peak_rss`]; 0 when it cannot be read.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the process's peak RSS to its current RSS (`5` to `clear_refs`), so the next
/// reading is one step's peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
