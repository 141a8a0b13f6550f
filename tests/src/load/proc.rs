//! What /proc says about a process: CPU time (the sum of its threads' run time from
//! `/proc/PID/task/*/schedstat`, in nanoseconds), memory (`smaps_rollup`), threads; and the
//! machine's CPU clock.

use std::fs;
use std::io;
use std::time::Duration;

/// CPU time the threads of process `pid` have run so far. Threads that exited are not counted,
/// so take both readings of an interval while the same threads live.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let mut total = 0u64;
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        // A thread that ended since the directory was read has no file any more.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        total += parse_schedstat(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad schedstat"))?;
    }
    Ok(Duration::from_nanos(total))
}

/// Context switches of a process's threads: how often they went to sleep (voluntary: waiting
/// for a kick, a lock, I/O) and how often the scheduler took the CPU from them (involuntary:
/// another task ran on their CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switches {
    /// Voluntary switches.
    pub voluntary: u64,
    /// Involuntary switches.
    pub involuntary: u64,
}

impl Switches {
    /// What counted from `before` to `self`.
    pub fn since(self, before: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(before.voluntary),
            involuntary: self.involuntary.saturating_sub(before.involuntary),
        }
    }
}

/// The context switches of the threads of process `pid` so far (living threads only, as
/// [`cpu_time`]).
pub fn switches(pid: u32) -> io::Result<Switches> {
    let mut total = Switches::default();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = fs::read_to_string(entry?.path().join("status")) else {
            continue;
        };
        let s = parse_switches(&text);
        total.voluntary += s.voluntary;
        total.involuntary += s.involuntary;
    }
    Ok(total)
}

/// The `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` of a status file.
fn parse_switches(text: &str) -> Switches {
    let mut s = Switches::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().parse().unwrap_or(0);
        match key {
            "voluntary_ctxt_switches" => s.voluntary = value,
            "nonvoluntary_ctxt_switches" => s.involuntary = value,
            _ => {}
        }
    }
    s
}

/// The run time (first field, ns) of a schedstat line.
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// A process's memory, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident pages, shared ones (guest memory it mapped) included.
    pub rss: u64,
    /// Proportional share of resident pages.
    pub pss: u64,
    /// Resident anonymous pages: the process's own heap and stacks.
    pub anonymous: u64,
}

/// The memory of process `pid`.
pub fn memory(pid: u32) -> io::Result<Memory> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(parse_smaps_rollup(&text))
}

fn parse_smaps_rollup(text: &str) -> Memory {
    let mut m = Memory::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "Rss:" => m.rss = kib,
            "Pss:" => m.pss = kib,
            "Anonymous:" => m.anonymous = kib,
            _ => {}
        }
    }
    m
}

/// Number of threads of process `pid`.
pub fn threads(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/task"))?.count())
}

/// The CPU clock in MHz as /proc/cpuinfo reports it (first CPU).
pub fn cpu_mhz() -> Option<f64> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schedstat_and_smaps_rollup() {
        assert_eq!(parse_schedstat("123456 789 10\n"), Some(123456));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(
            parse_switches(
                "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n"
            ),
            Switches {
                voluntary: 12,
                involuntary: 3
            }
        );
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  2048 kB\nPss:  1024 kB\n\
                    Pss_Anon: 512 kB\nAnonymous: 700 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            Memory {
                rss: 2048,
                pss: 1024,
                anonymous: 700
            }
        );
    }

    #[test]
    fn own_process_has_cpu_time_memory_and_a_thread() {
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        // The kernel adds a running thread's time at scheduler events (ticks, switches), so
        // the counter may lag a short loop: spin until it moves, for at most two seconds.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time(pid).unwrap() <= before && start.elapsed() < Duration::from_secs(2) {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(cpu_time(pid).unwrap() > before);
        assert!(memory(pid).unwrap().rss > 0);
        assert!(threads(pid).unwrap() >= 1);
    }
}
