//! The few system calls the generator needs, through the `libc` crate (already in the lockfile via tokio/mio):
//! two syscalls for the file limit did not justify the `rlimit` crate as well.

use anyhow::{Context, Result};
use std::time::Duration;

/// Raises our soft RLIMIT_NOFILE to the hard limit (each client is one socket). Returns (soft, hard) after.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `want` is a valid rlimit; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim = want;
        } else {
            // An "unlimited" hard limit may exceed fs.nr_open; settle for a million.
            let want = libc::rlimit { rlim_cur: lim.rlim_max.min(1 << 20), rlim_max: lim.rlim_max };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = want;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// User + system CPU time this process has used so far (all threads).
pub fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// VmRSS of process `pid` in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vmrss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// CPU time (user + system, all threads) process `pid` has used so far, from /proc/<pid>/stat.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = parse_stat_ticks(&stat).with_context(|| format!("cannot parse {path}"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / hz))
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line; the command name in parentheses may hold spaces.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sets IP_BIND_ADDRESS_NO_PORT so that binding a client socket to a source IP defers the port choice to
/// connect(): ports are then unique per (src ip, src port, dst) 4-tuple instead of per bind, which is the point of
/// spreading clients over 127.0.0.x.
pub fn bind_address_no_port(fd: std::os::fd::RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a c_int that outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss() {
        assert_eq!(parse_vmrss("Name:\thalyard\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\n"), Some(12345));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn stat_ticks() {
        let line = "1234 (tokio (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 170 30 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(200));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert!(process_cpu(std::process::id()).is_ok());
    }

    #[test]
    fn limits_and_cpu() {
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert!(soft <= hard && soft >= 1024.min(hard));
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() > Duration::ZERO);
    }
}
