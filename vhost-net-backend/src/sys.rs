//! The crate's only `unsafe` code: receiving file descriptors over a unix socket, taking one
//! over as an eventfd, polling, waiting for a termination signal, and the effective user id.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most file descriptors one vhost-user message carries (SET_MEM_TABLE: one per region).
pub const MAX_FDS: usize = 32;

/// Receives up to `buf.len()` bytes and the file descriptors attached to them.
///
/// Returns the byte count (0 at end of stream) and the received files, which close on drop.
pub fn recv_with_files(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<File>)> {
    let mut fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the single iovec points at `buf`, which is valid for writes of `buf.len()` bytes
    // and exclusively borrowed for the duration of the call.
    let (len, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let files = fds[..nfds]
        .iter()
        // SAFETY: recvmsg returned `nfds` new descriptors that nothing else owns; each is
        // wrapped exactly once so that it is closed exactly once.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    Ok((len, files))
}

/// The signals that end the daemon's command-line process.
const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set it is given; sigaddset only adds valid
    // signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in TERMINATION_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the termination signals in the calling thread (and the threads it spawns later), so
/// that [`wait_for_termination`] can take them synchronously.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits until SIGINT, SIGTERM or SIGHUP arrives and returns its number. The signals must have
/// been blocked with [`block_termination_signals`].
pub fn wait_for_termination() -> io::Result<i32> {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid place for the result.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc == 0 {
        Ok(sig)
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Takes over a file received from the frontend as an eventfd (kick or call).
///
/// If the frontend sent some other kind of file, reads and writes on it fail or move eight
/// bytes; nothing unsafe follows from that.
pub fn eventfd_from_file(file: File) -> EventFd {
    // SAFETY: `into_raw_fd` hands over sole ownership of an open descriptor, which the EventFd
    // now owns and closes exactly once.
    unsafe { EventFd::from_raw_fd(file.into_raw_fd()) }
}

/// What [`wait_readable`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// `fd` is readable (or hung up).
    Ready,
    /// `stop` is readable: the caller should end.
    Stopped,
    /// The timeout passed.
    TimedOut,
}

/// Waits until `fd` or `stop` becomes readable, or `timeout_ms` passes (-1: no timeout).
pub fn wait_readable(
    fd: &impl AsRawFd,
    stop: &impl AsRawFd,
    timeout_ms: i32,
) -> io::Result<Readiness> {
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd entries; poll only reads the descriptor
        // numbers, which stay open while `fd` and `stop` are borrowed.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            return Ok(Readiness::Stopped);
        }
        if fds[1].revents != 0 {
            return Ok(Readiness::Ready);
        }
        return Ok(Readiness::TimedOut);
    }
}

/// The process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}
