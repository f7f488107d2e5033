//! Leak checks: which processes name something, what is mounted under a path.

use std::path::Path;

/// The live processes (zombies left out) with their command lines, arguments joined by spaces.
pub fn cmdlines() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| {
                    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    if stat.contains(") Z") {
                        return None;
                    }
                    Some((pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The live processes whose command line contains `needle` but not `except` (the name of the
/// test binary, so that it does not find itself), with their pids and command lines.
pub fn processes_mentioning(needle: &str, except: &str) -> Vec<(u32, String)> {
    cmdlines()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(needle) && !cmdline.contains(except))
        .collect()
}

/// The mount points at or below `dir` (by prefix of the path text), from
/// `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}
