//! System calls the harness needs that its dependencies do not wrap safely.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// Creates an anonymous memory file (`memfd_create(2)`) of `size` bytes, close-on-exec.
pub(super) fn memfd(name: &CStr, size: u64) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the flags are
    // constants the kernel defines. The call touches no memory of ours beyond `name`.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing else owns it, so the
    // `File` becomes its only owner.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}
