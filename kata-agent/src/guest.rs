//! Guest-wide operations the host asks for: onlining hot-plugged CPUs and memory, setting the
//! clock. Only done when the agent is the guest's init ([`crate::sandbox::Sandbox::owns_guest`]);
//! on a host they would change the host.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{AgentError, Result};

/// Writes `value` to every `<dir>/<prefix>N/<file>` whose content is not yet `value`-like;
/// returns how many it changed.
fn online_all(dir: &Path, prefix: &str, file: &str, want: &str, value: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut changed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix(prefix) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = e.path().join(file);
        match std::fs::read_to_string(&path) {
            Ok(cur) if cur.trim() != want => {
                if std::fs::write(&path, value).is_ok() {
                    changed += 1;
                } else {
                    tracing::debug!(path = %path.display(), "cannot online");
                }
            }
            _ => {}
        }
    }
    changed
}

/// Number of online CPUs.
fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| {
            s.trim()
                .split(',')
                .filter(|r| !r.is_empty())
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (
                            a.parse::<usize>().unwrap_or(0),
                            b.parse::<usize>().unwrap_or(0),
                        );
                        b.saturating_sub(a) + 1
                    }
                    None => 1,
                })
                .sum()
        })
        .unwrap_or(1)
}

/// OnlineCPUMem: onlines every offline CPU and (unless `cpu_only`) memory block. With `wait`,
/// waits (up to 10 s) until at least `nb_cpus` CPUs are online.
pub async fn online_cpu_mem(wait: bool, nb_cpus: u32, cpu_only: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        online_all(
            Path::new("/sys/devices/system/cpu"),
            "cpu",
            "online",
            "1",
            "1",
        );
        if !cpu_only {
            online_all(
                Path::new("/sys/devices/system/memory"),
                "memory",
                "state",
                "online",
                "online",
            );
        }
        let online = online_cpus();
        if !wait || nb_cpus == 0 || online >= nb_cpus as usize {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Timeout {
                what: format!("{nb_cpus} CPUs to come online ({online} are)"),
                seconds: 10,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SetGuestDateTime.
pub fn set_time(sec: i64, usec: i64) -> Result<()> {
    if !(0..1_000_000).contains(&usec) {
        return Err(AgentError::invalid(
            "Usec",
            format!("{usec} is not below 1000000"),
        ));
    }
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: (usec * 1000) as libc::c_long,
    };
    // SAFETY: clock_settime reads one timespec from a valid reference.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(AgentError::io(
            "clock_settime",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
