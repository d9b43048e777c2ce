//! The one system call the safe wrappers we depend on make too expensive for the hot path.
//!
//! nix's `readlinkat` first `fstatat`s the link to size its buffer: a second path lookup for
//! every fd of every process, which doubled the cost of the owner walk. `/proc/PID/fd/N` links
//! are short (`socket:[N]`), so one call into a caller's stack buffer does.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// `readlinkat(dir, name)` into `buf`; returns the link's bytes, possibly truncated to
/// `buf.len()` (callers compare against short prefixes, so truncation only makes a long link
/// fail to parse).
pub(crate) fn readlinkat<'b>(
    dir: impl AsFd,
    name: &CStr,
    buf: &'b mut [u8],
) -> Result<&'b [u8], Errno> {
    // SAFETY: `name` is NUL-terminated by construction (CStr); `buf` is valid for writes of
    // `buf.len()` bytes for the whole call and the kernel writes at most that many; the fd is
    // borrowed from a live `AsFd`, so it cannot be closed during the call.
    #[allow(unsafe_code)]
    let n = unsafe {
        nix::libc::readlinkat(
            dir.as_fd().as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(Errno::result(n)?).map_err(|_| Errno::EINVAL)?;
    Ok(&buf[..n.min(buf.len())])
}
