//! A child process a test owns (a QEMU guest, the daemon): its output on a [`Console`], waits
//! for lines, SIGKILL and restart with the same command line. It is killed when dropped, and
//! also gets SIGKILL if the thread that started it goes away (`setpriv --pdeathsig`), so a test
//! that dies without running destructors leaves nothing behind.

use std::io;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::console::{Console, ConsoleError, Stream};

/// Errors running a child process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {name} ({program})")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("waiting for or killing {name}")]
    Wait {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} still running after {timeout:?}")]
    ExitTimeout { name: String, timeout: Duration },
    #[error(transparent)]
    Console(#[from] ConsoleError),
}

/// A running child process with its output.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: String,
    args: Vec<String>,
    child: Child,
    console: Arc<Console>,
    /// Stdout lines before this index were consumed by [`Process::expect`].
    cursor: usize,
}

impl Process {
    /// Starts `program` with `args`; `name` tags its output and its errors.
    pub fn start(name: &str, program: &str, args: Vec<String>) -> Result<Self, ProcessError> {
        let (child, console) = spawn(name, program, &args)?;
        Ok(Process {
            name: name.to_string(),
            program: program.to_string(),
            args,
            child,
            console,
            cursor: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (the program's: wrappers exec it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next stdout line (after the last one `expect` returned) that contains
    /// `prefix`, and returns it from `prefix` on.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, ProcessError> {
        let (index, line) = self.console.wait_for(self.cursor, prefix, timeout)?;
        self.cursor = index + 1;
        Ok(line)
    }

    /// Stdout lines containing `prefix` printed so far (since the last start), from `prefix` on.
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.console
            .stdout_lines(0)
            .into_iter()
            .filter_map(|line| line.find(prefix).map(|at| line[at..].to_string()))
            .collect()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> Result<bool, ProcessError> {
        Ok(self
            .child
            .try_wait()
            .map_err(|e| self.wait_error(e))?
            .is_none())
    }

    /// Waits until the process exits by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| self.wait_error(e))? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::ExitTimeout {
                    name: self.name.clone(),
                    timeout,
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) -> Result<(), ProcessError> {
        if self.is_running()? {
            self.child.kill().map_err(|e| self.wait_error(e))?;
            self.child.wait().map_err(|e| self.wait_error(e))?;
        }
        Ok(())
    }

    /// Kills the process and starts it again with the same command line and a fresh console.
    pub fn restart(&mut self) -> Result<(), ProcessError> {
        self.kill()?;
        let (child, console) = spawn(&self.name, &self.program, &self.args)?;
        self.child = child;
        self.console = console;
        self.cursor = 0;
        Ok(())
    }

    fn wait_error(&self, source: io::Error) -> ProcessError {
        ProcessError::Wait {
            name: self.name.clone(),
            source,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    name: &str,
    program: &str,
    args: &[String],
) -> Result<(Child, Arc<Console>), ProcessError> {
    let mut child = Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", program])
        .args(args)
        // Plain logs: the daemon's tracing output is read by tests and people.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            name: name.to_string(),
            program: program.to_string(),
            source,
        })?;
    let console = Console::new(name);
    if let Some(stdout) = child.stdout.take() {
        console.follow(Stream::Stdout, stdout);
    }
    if let Some(stderr) = child.stderr.take() {
        console.follow(Stream::Stderr, stderr);
    }
    Ok((child, console))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Process {
        Process::start("sh", "sh", vec!["-c".into(), script.into()]).unwrap()
    }

    #[test]
    fn expect_consumes_lines_in_order_and_sees_the_exit() {
        let mut p = sh("echo one; echo two >&2; echo three; exit 3");
        assert_eq!(p.expect("t", Duration::from_secs(10)).unwrap(), "three");
        assert_eq!(
            p.wait_exit(Duration::from_secs(10)).unwrap().code(),
            Some(3)
        );
        let err = p.expect("one", Duration::from_secs(10)).unwrap_err();
        assert!(
            err.to_string().contains("two"),
            "the error shows stderr: {err}"
        );
        assert_eq!(p.lines_with("o"), ["one"]);
    }

    #[test]
    fn kill_then_restart_runs_the_command_again() {
        let mut p = sh("echo started; sleep 600");
        p.expect("started", Duration::from_secs(10)).unwrap();
        p.kill().unwrap();
        assert!(!p.is_running().unwrap());
        p.restart().unwrap();
        assert!(p.is_running().unwrap());
        p.expect("started", Duration::from_secs(10)).unwrap();
    }
}
