//! The system calls the safe wrappers we depend on lack, or make too expensive.
//!
//! nix's `readlinkat` first `fstatat`s the link to size its buffer: a second path lookup for
//! every fd of every process, which doubled the cost of the owner walk. `/proc/PID/fd/N` links
//! are short (`socket:[N]`), so one call into a caller's stack buffer does.
//!
//! nix has no wrapper for the namespace ioctl `NS_GET_OWNER_UID`, which says which user owns a
//! namespace (to cap how many of one user's namespaces are watched).

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};

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

/// `NS_GET_USERNS` from `<linux/nsfs.h>`: `_IO(0xb7, 0x1)`.
const NS_GET_USERNS: u32 = 0xb701;
/// `NS_GET_OWNER_UID` from `<linux/nsfs.h>`: `_IO(0xb7, 0x4)`.
const NS_GET_OWNER_UID: u32 = 0xb704;

/// The uid (in the initial user namespace) of the owner of the user namespace that owns the
/// namespace open at `ns`: `NS_GET_USERNS` for that user namespace (`NS_GET_OWNER_UID` takes
/// only a user namespace: on any other it fails with `EINVAL`), then `NS_GET_OWNER_UID`.
/// Linux 4.11+; `EINVAL` for a file that is not a namespace, `ENOTTY` on older kernels,
/// `EPERM` for a user namespace outside the caller's.
pub(crate) fn ns_owner_uid(ns: impl AsFd) -> Result<u32, Errno> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new file descriptor, owned here
    // at once; the fd it is called on is borrowed from a live `AsFd`.
    #[allow(unsafe_code)]
    let userns = unsafe {
        let fd = Errno::result(nix::libc::ioctl(ns.as_fd().as_raw_fd(), NS_GET_USERNS as _))?;
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    let mut uid: nix::libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one `uid_t` through its argument, which points at
    // `uid`, alive and writable for the whole call; the fd is borrowed from a live `AsFd`.
    #[allow(unsafe_code)]
    let r = unsafe {
        nix::libc::ioctl(
            userns.as_raw_fd(),
            NS_GET_OWNER_UID as _,
            &mut uid as *mut nix::libc::uid_t,
        )
    };
    Errno::result(r)?;
    Ok(uid)
}
