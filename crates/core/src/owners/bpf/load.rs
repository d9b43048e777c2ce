//! Loading the owner iterator: the committed object taken apart, relocated against the
//! running kernel's BTF, and loaded and linked with three `bpf(2)` calls (see the module
//! above for why not aya), or why it cannot be ([`Unavailable`]).

use std::ffi::CStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::btf::{self, Btf, BtfError, KIND_FUNC};
use super::elf;
use crate::bytes;
use crate::sys;

/// The iterator's object, built from `crates/core/bpf/owners.bpf.c` by `make bpf`.
pub(super) static OBJECT: &[u8] = include_bytes!("../../../bpf/owners.bpf.o");

/// Its program: ELF section, kernel name, and the kernel function it attaches to.
pub(super) const SECTION: &[u8] = b"iter/task_file";
pub(super) const PROGRAM_NAME: &[u8] = b"pw_owners";
pub(super) const ATTACH_FUNC: &[u8] = b"bpf_iter_task_file";
pub(super) const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// `PROC_PID_INIT_INO`: the inode of the initial pid namespace, the same on every kernel.
pub(super) const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// Why the owner iterator cannot be used here. Each says what would fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Unavailable {
    /// This process lacks the capabilities for a tracing program.
    #[error(
        "the BPF owner lookup needs root, or CAP_BPF + CAP_PERFMON (missing: {})",
        missing.join(", ")
    )]
    Permission {
        /// Missing capabilities, by name.
        missing: Vec<&'static str>,
    },
    /// The kernel offers no BTF.
    #[error(
        "no kernel BTF at {BTF_PATH} ({source}): needs a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf {
        /// What reading it said.
        source: std::io::Error,
    },
    /// The kernel's BTF lacks what the program needs (too old a kernel, or an unusual one).
    #[error("this kernel cannot run the BPF owner lookup ({0}): Linux 5.11 or later is needed")]
    Unsupported(String),
    /// Not in the initial pid namespace: the iterator would see only this namespace's
    /// processes and name them by their pids outside it.
    #[error(
        "portwatch runs in a pid namespace of its own: the BPF owner lookup needs the host's \
         (docker run --pid=host)"
    )]
    PidNamespace,
    /// The kernel refused the program or its link.
    #[error("the kernel refused the BPF owner lookup ({step}: {errno}){}", log_tail(verifier_log))]
    Refused {
        /// What was refused.
        step: &'static str,
        /// The error.
        errno: Errno,
        /// The verifier's log, when it said something.
        verifier_log: String,
    },
    /// The committed object is out of step with this code.
    #[error("the BPF owner lookup's object does not match this build ({0}): run make bpf")]
    Object(String),
}

impl Unavailable {
    /// Whether this is a defect of this build (the object out of step with the code) rather
    /// than a condition of the host: missing capabilities, BTF or kernel support, a pid
    /// namespace, a kernel that refuses the program (lockdown, an LSM). A host's condition
    /// holds on every run, and the `/proc` walk gives the same answers, so it is no news.
    pub(crate) fn is_defect(&self) -> bool {
        matches!(self, Unavailable::Object(_))
    }
}

/// The end of the verifier's log, where it says why (the whole log runs to 64 KiB).
pub(super) fn log_tail(log: &str) -> String {
    const LINES: usize = 6;
    let lines: Vec<&str> = log.trim().lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
    format!("; the verifier log ends:\n{tail}")
}

/// The loaded iterator: a link from which each pass starts. Dropping it unloads the program.
#[derive(Debug)]
pub(crate) struct OwnerIter {
    pub(super) link: OwnedFd,
    /// How long loading took (read and index the kernel's BTF, relocate, verify, link).
    pub(crate) load_time: Duration,
}

impl OwnerIter {
    /// Loads and links the iterator. `verifier_log`: when the kernel refuses the program,
    /// load it again asking for the verifier's log, which says why (a second load, and a
    /// slower one: worth it only when the refusal is reported).
    pub(crate) fn load(verifier_log: bool) -> Result<OwnerIter, Unavailable> {
        let start = Instant::now();
        OwnerIter::permitted()?;
        let object = Object::parse(OBJECT)?;
        let kernel_blob = KernelBtf::open().map_err(|source| Unavailable::NoBtf { source })?;
        let (program, attach) = object.prepare(kernel_blob.bytes())?;
        let license = c"Dual MIT/GPL";
        let prog = match sys::bpf_load_iter(&program.insns, license, PROGRAM_NAME, attach, None) {
            Ok(fd) => fd,
            Err(errno) if !verifier_log => {
                return Err(refused("loading the program", errno, String::new()));
            }
            Err(errno) => {
                // Again with the verifier's log, which says why: only on failure, as asking
                // for it makes the verifier slower.
                let mut log = vec![0u8; 64 << 10];
                let again = sys::bpf_load_iter(
                    &program.insns,
                    license,
                    PROGRAM_NAME,
                    attach,
                    Some(&mut log),
                );
                let log = CStr::from_bytes_until_nul(&log)
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(refused("loading the program", again.err().unwrap_or(errno), log));
            }
        };
        let link = sys::bpf_link_iter(&prog)
            .map_err(|errno| refused("linking it", errno, String::new()))?;
        Ok(OwnerIter { link, load_time: start.elapsed() })
    }

    /// What refuses a load before it starts, told without one: this process in a pid
    /// namespace other than the host's, or without the capabilities.
    pub(crate) fn permitted() -> Result<(), Unavailable> {
        if std::fs::metadata("/proc/self/ns/pid")
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) != INIT_PID_NS)
        {
            return Err(Unavailable::PidNamespace);
        }
        let missing = missing_caps();
        if !missing.is_empty() {
            return Err(Unavailable::Permission { missing });
        }
        Ok(())
    }
}

/// The kernel's BTF: mapped where the kernel allows it (6.16+), else read.
pub(super) enum KernelBtf {
    Mapped(sys::Mapping),
    Read(Vec<u8>),
}

impl KernelBtf {
    pub(super) fn open() -> std::io::Result<KernelBtf> {
        let file = std::fs::File::open(BTF_PATH)?;
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(0);
        match sys::Mapping::vmlinux_btf(&file, len) {
            Ok(m) => Ok(KernelBtf::Mapped(m)),
            Err(_) => {
                let mut bytes = Vec::with_capacity(len);
                (&file).read_to_end(&mut bytes)?;
                Ok(KernelBtf::Read(bytes))
            }
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            KernelBtf::Mapped(m) => m.bytes(),
            KernelBtf::Read(v) => v,
        }
    }
}

pub(super) fn refused(step: &'static str, errno: Errno, verifier_log: String) -> Unavailable {
    match errno {
        Errno::EPERM | Errno::EACCES if !missing_caps().is_empty() => {
            Unavailable::Permission { missing: missing_caps() }
        }
        _ => Unavailable::Refused { step, errno, verifier_log },
    }
}

/// Capabilities missing for loading a tracing program (no cgroup hook), by name.
pub(super) fn missing_caps() -> Vec<&'static str> {
    crate::source::ebpf::host::missing_caps_of_self(false)
}

/// The program's instructions, relocated for the running kernel.
pub(super) struct Program {
    pub(super) insns: Vec<u64>,
}

/// The object (the committed one, [`OBJECT`]), taken apart: the program's code, its BTF and
/// CO-RE relocations.
pub(super) struct Object<'a> {
    pub(super) code: &'a [u8],
    pub(super) local: Btf<'a>,
    pub(super) relos: Vec<btf::CoreRelo>,
}

impl<'a> Object<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Object<'a>, Unavailable> {
        let object = |what: &str| Unavailable::Object(what.to_owned());
        let elf = elf::Elf::parse(bytes).ok_or_else(|| object("not an ELF64 object"))?;
        let code = elf.section(SECTION).ok_or_else(|| object("no iter/task_file section"))?;
        // A relocation section would mean maps or calls to patch, which this loader does not do.
        if elf.has(&[b".rel", SECTION].concat()) {
            return Err(object("the program needs ELF relocations"));
        }
        if code.len() % 8 != 0 {
            return Err(object("instructions are not 8-byte aligned"));
        }
        let local_blob = elf.section(b".BTF").ok_or_else(|| object("no .BTF"))?;
        let ext = elf.section(b".BTF.ext").ok_or_else(|| object("no .BTF.ext"))?;
        let local = Btf::parse(local_blob).map_err(|e| object(&format!(".BTF: {e}")))?;
        let relos = btf::core_relos(ext, &local, SECTION).map_err(|e| object(&e.to_string()))?;
        Ok(Object { code, local, relos })
    }

    /// Everything the loader does with the kernel's BTF (`kernel_blob`): index it for the
    /// types the relocations need, relocate the program, find the function it attaches to.
    pub(super) fn prepare(&self, kernel_blob: &[u8]) -> Result<(Program, u32), Unavailable> {
        let mut names = self.local.relocated_names(&self.relos);
        names.push(ATTACH_FUNC);
        let kernel = Btf::parse_naming(kernel_blob, &names)
            .map_err(|e| Unavailable::Unsupported(format!("kernel BTF: {e}")))?;
        let program = self.relocated(&kernel)?;
        let attach = kernel.find(KIND_FUNC, ATTACH_FUNC).ok_or_else(|| {
            Unavailable::Unsupported("no task_file iterator (bpf_iter_task_file)".into())
        })?;
        Ok((program, attach))
    }

    /// The instructions with every field offset the kernel's BTF gives.
    pub(super) fn relocated(&self, kernel: &Btf<'_>) -> Result<Program, Unavailable> {
        let mut insns: Vec<u64> =
            self.code.chunks_exact(8).map(|c| bytes::u64_at(c, 0).unwrap_or_default()).collect();
        for relo in &self.relos {
            let offset = btf::field_offset(relo, &self.local, kernel)
                .map_err(|e: BtfError| Unavailable::Unsupported(e.to_string()))?;
            let insn = insns
                .get_mut(relo.insn_off as usize / 8)
                .ok_or_else(|| Unavailable::Object("relocation outside the program".into()))?;
            patch(insn, offset).map_err(Unavailable::Object)?;
        }
        Ok(Program { insns })
    }
}

/// Writes a field's offset into the instruction that uses it: the 16-bit offset of a load or
/// store, or the immediate of an `add`.
pub(super) fn patch(insn: &mut u64, offset: u32) -> Result<(), String> {
    let mut b = insn.to_ne_bytes();
    match b[0] & 0x07 {
        // BPF_LDX, BPF_ST, BPF_STX: off is bytes 2..4.
        1..=3 => {
            let off = i16::try_from(offset).map_err(|_| format!("offset {offset} too large"))?;
            b[2..4].copy_from_slice(&off.to_ne_bytes());
        }
        // BPF_ALU, BPF_ALU64 with an immediate: imm is bytes 4..8.
        4 | 7 if b[0] & 0x08 == 0 => b[4..8].copy_from_slice(&offset.to_ne_bytes()),
        _ => return Err(format!("cannot relocate instruction {:#04x}", b[0])),
    }
    *insn = u64::from_ne_bytes(b);
    Ok(())
}
