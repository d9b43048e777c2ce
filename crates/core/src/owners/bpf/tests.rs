use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::*;
use crate::source::ebpf::tests::skip;

/// Loads the iterator, or says why this test cannot run here (failing instead under
/// `PORTWATCH_REQUIRE_PRIVILEGED=1`, as CI runs).
fn loaded() -> Option<OwnerIter> {
    OwnerIter::load(true).map_err(|e| skip(&e.to_string())).ok()
}

fn inode_of(fd: &impl AsRawFd) -> u64 {
    let m = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    std::os::unix::fs::MetadataExt::ino(&m)
}

#[test]
fn the_committed_object_relocates_against_this_kernel() {
    let Ok(blob) = std::fs::read(BTF_PATH) else {
        return skip(&format!("no kernel BTF at {BTF_PATH}"));
    };
    let kernel = Btf::parse(&blob).unwrap();
    let program = Object::parse(OBJECT).unwrap().relocated(&kernel).unwrap();
    assert!(program.insns.len() > 10);
    assert!(kernel.find(KIND_FUNC, ATTACH_FUNC).is_some());
}

#[test]
fn one_pass_finds_this_process_as_holder() {
    let Some(iter) = loaded() else { return };
    eprintln!("loaded in {:?}", iter.load_time);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inode = inode_of(&listener);
    let t = Instant::now();
    let pass = iter.pass(&HashSet::from([inode]), Instant::now() + Duration::from_secs(5)).unwrap();
    eprintln!("pass in {:?}", t.elapsed());
    assert_eq!(pass.holders.get(&inode), Some(&vec![std::process::id()]));
    assert_eq!(pass.stopped_at, None);
}

/// Each step of a load, timed (`cargo test --release loads_step_by_step -- --nocapture`:
/// the figures in BENCHMARKS.md); no timing is asserted.
#[test]
fn loads_step_by_step() {
    let mut t = Instant::now();
    let mut lap = |what: &str| {
        eprintln!("{what}: {:?}", t.elapsed());
        t = Instant::now();
    };
    let Ok(blob) = KernelBtf::open() else { return skip("no kernel BTF") };
    lap("map btf");
    let object = Object::parse(OBJECT).unwrap();
    lap("object");
    let mut names = object.local.relocated_names(&object.relos);
    names.push(ATTACH_FUNC);
    let kernel = Btf::parse_naming(blob.bytes(), &names).unwrap();
    lap("index btf");
    let program = object.relocated(&kernel).unwrap();
    lap("relocate");
    let attach = kernel.find(KIND_FUNC, ATTACH_FUNC).unwrap();
    lap("find attach");
    let Ok(prog) = sys::bpf_load_iter(&program.insns, c"Dual MIT/GPL", PROGRAM_NAME, attach, None)
    else {
        return skip("the kernel refused the program (not root?)");
    };
    lap("prog load");
    let link = sys::bpf_link_iter(&prog).unwrap();
    lap("link");
    let _ = sys::bpf_iter_create(&link).unwrap();
    lap("iter create");
}

#[test]
fn a_pass_past_its_deadline_stops_and_says_where() {
    let Some(iter) = loaded() else { return };
    let pass = iter.pass(&HashSet::from([1]), Instant::now()).unwrap();
    // One read at most, then the deadline: the pids from where it stopped were not read.
    let stopped = pass.stopped_at.expect("stopped at the deadline");
    assert!(pass.walked.keys().all(|p| *p < stopped), "{stopped} {:?}", pass.walked.keys());
}

#[test]
fn the_pass_describes_this_process_as_status_does() {
    let Some(iter) = loaded() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pass = iter
        .pass(&HashSet::from([inode_of(&listener)]), Instant::now() + Duration::from_secs(5))
        .unwrap();
    let me = pass.walked[&std::process::id()].as_ref().expect("fds 0-2 open");
    let status = crate::owners::parse_status(&std::fs::read("/proc/self/status").unwrap()).unwrap();
    assert_eq!(crate::owners::status_name(&me.comm), status.name);
    assert_eq!((Some(me.ppid), me.uid, me.level), (status.ppid, status.uid, 0));
}

#[test]
fn damaged_objects_and_blobs_are_errors_not_panics() {
    let elf = elf::Elf::parse(OBJECT).unwrap();
    let blob = elf.section(b".BTF").unwrap();
    let ext = elf.section(b".BTF.ext").unwrap();
    for cut in 0..OBJECT.len().min(4096) {
        let _ = elf::Elf::parse(&OBJECT[..cut]);
    }
    for cut in 0..blob.len() {
        if let Ok(b) = Btf::parse(&blob[..cut]) {
            let _ = btf::core_relos(ext, &b, SECTION);
        }
    }
    let local = Btf::parse(blob).unwrap();
    for cut in 0..ext.len() {
        let _ = btf::core_relos(&ext[..cut], &local, SECTION);
    }
    assert!(Btf::parse(b"not btf at all").is_err());
    assert!(elf::Elf::parse(b"\x7fELF").is_none());
}

#[test]
fn a_holder_is_proven_by_the_socket_at_the_fd_the_pass_saw() {
    let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (fd, ino) = (sock.as_raw_fd() as u32, inode_of(&sock));
    let proc_dir = open_proc(Path::new("/proc")).unwrap();
    let me = open_pid(&proc_dir, std::process::id()).unwrap();
    assert!(still_holds(&me, Some((fd, ino))));
    // Another socket at that fd (the pid reused, the fd reused): not the holder the pass saw.
    assert!(!still_holds(&me, Some((fd, ino + 1))));
    assert!(!still_holds(&me, Some((u32::MAX, ino))), "no such fd");
    assert!(!still_holds(&me, None), "no proof");
}

#[test]
fn a_refusal_quotes_the_end_of_the_verifier_log_only() {
    let log: String =
        (1..=500).map(|i| format!("{i}: insn\n")).collect::<String>() + "R1 invalid mem access\n";
    let said = log_tail(&log);
    assert!(said.ends_with("R1 invalid mem access"), "{said}");
    assert_eq!(said.lines().count(), 7, "a lead-in and the last six lines: {said}");
    assert_eq!(log_tail("  \n"), "");
}
