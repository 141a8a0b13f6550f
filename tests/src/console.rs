//! The output of a child process (a guest's serial console, a daemon's log), read line by
//! line, with waits that time out.
//!
//! A reader thread per stream (stdout, stderr) appends lines to a [`Console`]; a test waits for
//! a stdout line containing a prefix with [`Console::wait_for`]. Each line is also echoed to the
//! test's output, tagged with the process's name and the time it was read (UTC, as the daemon's
//! log), so a failing test shows what it printed and when.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Errors waiting on a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{guest}: no line starting with {prefix:?} within {timeout:?}\n{tail}")]
    Timeout {
        guest: String,
        prefix: String,
        timeout: Duration,
        tail: String,
    },
    #[error("{guest}: exited before a line starting with {prefix:?}\n{tail}")]
    Closed {
        guest: String,
        prefix: String,
        tail: String,
    },
}

/// Which stream of a child process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output: a guest's serial console, or a daemon's output. Waits look here.
    Stdout,
    /// Standard error: QEMU's own messages, or a daemon's log.
    Stderr,
}

#[derive(Debug, Default)]
struct Lines {
    stdout: Vec<String>,
    stderr: Vec<String>,
    /// Streams still open.
    open: usize,
}

/// The lines a guest printed so far.
#[derive(Debug)]
pub struct Console {
    guest: String,
    lines: Mutex<Lines>,
    changed: Condvar,
}

/// The time of day, UTC, as `HH:MM:SS.mmm`.
fn time_of_day() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

/// How many lines of each stream an error message shows.
const TAIL_LINES: usize = 40;

impl Console {
    /// An empty console for the process called `guest`.
    pub fn new(guest: &str) -> Arc<Self> {
        Arc::new(Console {
            guest: guest.to_string(),
            lines: Mutex::new(Lines::default()),
            changed: Condvar::new(),
        })
    }

    /// Reads `input` line by line on a new thread until it closes.
    pub fn follow(self: &Arc<Self>, stream: Stream, input: impl Read + Send + 'static) {
        self.lock().open += 1;
        let console = Arc::clone(self);
        thread::spawn(move || {
            let mut input = BufReader::new(input);
            let mut line = Vec::new();
            while input.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                console.push(stream, &String::from_utf8_lossy(&line));
                line.clear();
            }
            console.lock().open -= 1;
            console.changed.notify_all();
        });
    }

    /// Appends one line of `stream`.
    pub fn push(&self, stream: Stream, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']).replace('\r', "");
        let tag = match stream {
            Stream::Stdout => "",
            Stream::Stderr => " stderr",
        };
        eprintln!("[{}{tag} {}] {line}", self.guest, time_of_day());
        let mut lines = self.lock();
        match stream {
            Stream::Stdout => lines.stdout.push(line),
            Stream::Stderr => lines.stderr.push(line),
        }
        self.changed.notify_all();
    }

    /// Waits for a stdout line at index `from` or later that contains `prefix`; returns its
    /// index and the line from `prefix` on (kernel messages may share the line).
    pub fn wait_for(
        &self,
        from: usize,
        prefix: &str,
        timeout: Duration,
    ) -> Result<(usize, String), ConsoleError> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lock();
        loop {
            let found = lines
                .stdout
                .iter()
                .enumerate()
                .skip(from)
                .find_map(|(i, line)| line.find(prefix).map(|at| (i, line[at..].to_string())));
            if let Some(found) = found {
                return Ok(found);
            }
            if lines.open == 0 {
                return Err(ConsoleError::Closed {
                    guest: self.guest.clone(),
                    prefix: prefix.to_string(),
                    tail: tail(&lines),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConsoleError::Timeout {
                    guest: self.guest.clone(),
                    prefix: prefix.to_string(),
                    timeout,
                    tail: tail(&lines),
                });
            }
            lines = self
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The stdout lines from index `from` on.
    pub fn stdout_lines(&self, from: usize) -> Vec<String> {
        self.lock().stdout.iter().skip(from).cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn tail(lines: &Lines) -> String {
    let last = |v: &[String]| v[v.len().saturating_sub(TAIL_LINES)..].join("\n");
    format!(
        "--- stdout (last lines; a guest's serial console) ---\n{}\n--- stderr ---\n{}",
        last(&lines.stdout),
        last(&lines.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_prefix_after_kernel_noise_and_from_an_index() {
        let console = Console::new("vm");
        console.follow(
            Stream::Stdout,
            &b"[ 1.0] boot\r\nGUEST UP mac=none\r\n[ 2.0] x GUEST PING ok\nGUEST PING again\n"[..],
        );
        let (i, line) = console
            .wait_for(0, "GUEST PING", Duration::from_secs(5))
            .unwrap();
        assert_eq!((i, line.as_str()), (2, "GUEST PING ok"));
        let (i, line) = console
            .wait_for(i + 1, "GUEST PING", Duration::from_secs(5))
            .unwrap();
        assert_eq!((i, line.as_str()), (3, "GUEST PING again"));
        assert_eq!(
            console.stdout_lines(1),
            [
                "GUEST UP mac=none",
                "[ 2.0] x GUEST PING ok",
                "GUEST PING again"
            ]
        );
    }

    #[test]
    fn a_closed_console_fails_the_wait_at_once() {
        let console = Console::new("vm");
        console.follow(Stream::Stdout, &b"GUEST UP\n"[..]);
        let started = Instant::now();
        let err = console
            .wait_for(0, "GUEST DONE", Duration::from_secs(60))
            .unwrap_err();
        assert!(matches!(err, ConsoleError::Closed { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(err.to_string().contains("GUEST UP"), "{err}");
    }

    #[test]
    fn a_wait_times_out_while_the_stream_is_open() {
        let console = Console::new("vm");
        let (reader, _writer) = std::io::pipe().unwrap();
        console.follow(Stream::Stdout, reader);
        console.push(Stream::Stderr, "qemu-system-x86_64: warning");
        let err = console
            .wait_for(0, "GUEST", Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, ConsoleError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("qemu-system-x86_64: warning"),
            "{err}"
        );
    }
}
