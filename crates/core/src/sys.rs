//! The system calls the safe wrappers we depend on lack, or make too expensive.
//!
//! nix's `readlinkat` first `fstatat`s the link to size its buffer: a second path lookup for
//! every fd of every process, which doubled the cost of the owner walk. `/proc/PID/fd/N` links
//! are short (`socket:[N]`), so one call into a caller's stack buffer does.
//!
//! nix has no wrapper for the namespace ioctl `NS_GET_OWNER_UID`, which says which user owns a
//! namespace (to cap how many of one user's namespaces are watched).
//!
//! The owner iterator (feature `ebpf`) is loaded with three `bpf(2)` commands of its own
//! (`BPF_PROG_LOAD`, `BPF_LINK_CREATE`, `BPF_ITER_CREATE`): a general loader's setup costs ten
//! times a whole listing (see `owners/bpf`).

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

/// `getdents64(dir)` into `buf`: how many bytes of `struct linux_dirent64` records it wrote,
/// 0 at the end of the directory. nix's `Dir` goes through libc's `DIR`, which costs an
/// `fcntl` and an `fstat` to open and an `lseek` to drop: three calls per process the owner
/// walk reads, more than the listing itself on a small host.
pub(crate) fn getdents64(dir: impl AsFd, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call and the kernel
    // writes at most that many; the fd is borrowed from a live `AsFd`.
    #[allow(unsafe_code)]
    let n = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_getdents64,
            dir.as_fd().as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    usize::try_from(Errno::result(n)?).map_err(|_| Errno::EINVAL)
}

/// The names in `getdents64` output (`struct linux_dirent64`: inode u64, offset i64, record
/// length u16, type u8, then the NUL-terminated name), in order. Stops at a malformed record.
pub(crate) fn dirent_names(records: &[u8]) -> impl Iterator<Item = &[u8]> {
    const NAME: usize = 19;
    let mut rest = records;
    std::iter::from_fn(move || {
        let len = usize::from(crate::bytes::u16_at(rest, 16)?);
        let record = rest.get(..len).filter(|_| len > NAME)?;
        rest = &rest[len..];
        let name = &record[NAME..];
        Some(&name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())])
    })
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

/// `bpf(2)` commands and constants from `<linux/bpf.h>` (a stable ABI).
#[cfg(feature = "ebpf")]
mod bpf_abi {
    pub(super) const BPF_PROG_LOAD: nix::libc::c_long = 5;
    pub(super) const BPF_LINK_CREATE: nix::libc::c_long = 28;
    pub(super) const BPF_ITER_CREATE: nix::libc::c_long = 33;
    pub(super) const BPF_PROG_TYPE_TRACING: u32 = 26;
    pub(super) const BPF_TRACE_ITER: u32 = 28;
}

/// The attribute block of one `bpf(2)` command: `union bpf_attr`, zeroed, written by offset
/// (the kernel requires every byte it does not know of to be zero).
#[cfg(feature = "ebpf")]
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

#[cfg(feature = "ebpf")]
impl BpfAttr {
    fn new() -> BpfAttr {
        BpfAttr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

/// Runs one `bpf(2)` command that returns a new file descriptor.
///
/// # Safety
/// Every address in `attr` must point at memory valid for the command's reads and writes of
/// the sizes given beside it, for the whole call.
#[cfg(feature = "ebpf")]
#[allow(unsafe_code)]
unsafe fn bpf_fd(
    cmd: nix::libc::c_long,
    attr: &mut BpfAttr,
) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: `attr` is a live, writable block of its size; the addresses inside are the
    // caller's promise (above).
    let r =
        unsafe { nix::libc::syscall(nix::libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    let fd = i32::try_from(Errno::result(r)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns (close-on-exec: the
    // kernel sets O_CLOEXEC on every bpf descriptor it hands out).
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `BPF_PROG_LOAD` of an `iter` tracing program (`BPF_PROG_TYPE_TRACING`, `BPF_TRACE_ITER`)
/// attached to the kernel function with BTF id `attach_btf_id` (`bpf_iter_<target>`). `insns`
/// are the program's 8-byte instructions; the verifier's log goes to `log` when one is given.
#[cfg(feature = "ebpf")]
pub(crate) fn bpf_load_iter(
    insns: &[u64],
    license: &CStr,
    name: &[u8],
    attach_btf_id: u32,
    log: Option<&mut [u8]>,
) -> Result<std::os::fd::OwnedFd, Errno> {
    use bpf_abi::*;
    let mut attr = BpfAttr::new();
    let count = u32::try_from(insns.len()).map_err(|_| Errno::E2BIG)?;
    attr.u32(0, BPF_PROG_TYPE_TRACING)
        .u32(4, count)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64);
    if let Some(log) = log {
        let size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.u32(24, 1).u32(28, size).u64(32, log.as_mut_ptr() as u64);
    }
    // prog_name: 16 bytes, NUL-terminated, [A-Za-z0-9_.] only.
    for (i, b) in name.iter().take(15).enumerate() {
        attr.0[48 + i] = *b;
    }
    attr.u32(68, BPF_TRACE_ITER).u32(108, attach_btf_id);
    // SAFETY: `insns` and `license` are borrowed for the call, of the count given (the license
    // NUL-terminated); `log`, when given, is writable for its length, which is what is passed.
    #[allow(unsafe_code)]
    unsafe {
        bpf_fd(BPF_PROG_LOAD, &mut attr)
    }
}

/// `BPF_LINK_CREATE` of a loaded iterator program: the link every read of the iterator starts
/// from.
#[cfg(feature = "ebpf")]
pub(crate) fn bpf_link_iter(prog: impl AsFd) -> Result<std::os::fd::OwnedFd, Errno> {
    use bpf_abi::*;
    let mut attr = BpfAttr::new();
    let fd = u32::try_from(prog.as_fd().as_raw_fd()).map_err(|_| Errno::EBADF)?;
    attr.u32(0, fd).u32(8, BPF_TRACE_ITER);
    // SAFETY: no address is passed (iter_info stays NULL: task iterators take none).
    #[allow(unsafe_code)]
    unsafe {
        bpf_fd(BPF_LINK_CREATE, &mut attr)
    }
}

/// `BPF_ITER_CREATE`: a new pass of the iterator, read like a file until it returns 0.
#[cfg(feature = "ebpf")]
pub(crate) fn bpf_iter_create(link: impl AsFd) -> Result<std::os::fd::OwnedFd, Errno> {
    use bpf_abi::*;
    let mut attr = BpfAttr::new();
    let fd = u32::try_from(link.as_fd().as_raw_fd()).map_err(|_| Errno::EBADF)?;
    attr.u32(0, fd);
    // SAFETY: no address is passed.
    #[allow(unsafe_code)]
    unsafe {
        bpf_fd(BPF_ITER_CREATE, &mut attr)
    }
}

/// A read-only private mapping of a whole file whose contents never change while mapped (the
/// kernel's BTF, `/sys/kernel/btf/vmlinux`: 5 MiB that sysfs reads out a page per `read`,
/// ~3 ms, where a mapping costs ~0.1 ms). Unmapped on drop.
#[cfg(feature = "ebpf")]
pub(crate) struct Mapping {
    addr: std::ptr::NonNull<nix::libc::c_void>,
    len: usize,
}

#[cfg(feature = "ebpf")]
impl Mapping {
    /// Maps the kernel's BTF, `file` (opened from `/sys/kernel/btf/vmlinux`) of `len` bytes
    /// (its size), read-only and private (sysfs refuses shared mappings of it). Only that
    /// file: its contents never change and it is never truncated, which is what makes
    /// [`Mapping::bytes`] sound; any other file could shrink under the mapping (SIGBUS). The
    /// file is checked to be it (sysfs, the path's device and inode). Callers fall back to
    /// reading the file when this fails (kernels before 6.16 cannot map it).
    pub(crate) fn vmlinux_btf(file: &std::fs::File, len: usize) -> Result<Mapping, Errno> {
        use std::os::unix::fs::MetadataExt;
        let is_it = match (file.metadata(), std::fs::metadata("/sys/kernel/btf/vmlinux")) {
            (Ok(a), Ok(b)) => {
                a.dev() == b.dev() && a.ino() == b.ino() && usize::try_from(a.len()) == Ok(len)
            }
            _ => false,
        };
        let on_sysfs = nix::sys::statfs::fstatfs(file)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::SYSFS_MAGIC);
        if len == 0 || !is_it || !on_sysfs {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a fresh mapping chosen by the kernel (NULL hint), of a live descriptor;
        // nothing else refers to the memory it returns.
        #[allow(unsafe_code)]
        let addr = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                len,
                nix::libc::PROT_READ,
                nix::libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == nix::libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let addr = std::ptr::NonNull::new(addr).ok_or(Errno::EINVAL)?;
        Ok(Mapping { addr, len })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `addr` is a live read-only mapping of `len` bytes until `self` drops, and
        // the file behind it (the kernel's own BTF, checked in `vmlinux_btf`) never changes
        // and is `len` bytes long.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.addr.as_ptr().cast::<u8>(), self.len)
        }
    }
}

#[cfg(feature = "ebpf")]
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no borrow of it outlives `self`.
        #[allow(unsafe_code)]
        unsafe {
            nix::libc::munmap(self.addr.as_ptr(), self.len);
        }
    }
}
