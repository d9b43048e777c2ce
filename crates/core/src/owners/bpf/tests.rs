use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::btf::{Btf, KIND_FUNC};
use super::load::*;
use super::*;
use crate::process::Owners;
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
    let pass = iter
        .pass(Keep::Wanted(&Inodes::from_iter([inode])), Instant::now() + Duration::from_secs(5))
        .unwrap();
    eprintln!("pass in {:?}", t.elapsed());
    assert_eq!(pass.holders_of(inode), vec![std::process::id()]);
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
    let pass = iter.pass(Keep::Wanted(&Inodes::from_iter([1])), Instant::now()).unwrap();
    // One read at most, then the deadline: the pids from where it stopped were not read.
    let stopped = pass.stopped_at.expect("stopped at the deadline");
    assert!(pass.walked.keys().all(|p| *p < stopped), "{stopped} {:?}", pass.walked.keys());
}

#[test]
fn the_pass_describes_this_process_as_status_does() {
    let Some(iter) = loaded() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pass = iter
        .pass(
            Keep::Wanted(&Inodes::from_iter([inode_of(&listener)])),
            Instant::now() + Duration::from_secs(5),
        )
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

#[test]
fn the_cpu_lists_of_sysfs_are_read() {
    assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
    assert_eq!(parse_cpu_list("0,2-3,5"), Some(vec![0, 2, 3, 5]));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("x"), None);
    assert_eq!(parse_cpu_list("0-99999"), None);
}

#[test]
fn every_socket_made_after_the_inode_floor_numbers_above_it() {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    let me = nix::unistd::Pid::from_raw(0);
    let Some(floor) = inode_floor() else {
        return skip("not every online CPU is one this test may run on (a cpuset)");
    };
    let allowed = sched_getaffinity(me).unwrap();
    let cpus: Vec<usize> =
        (0..CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).collect();
    assert_eq!(sched_getaffinity(me).unwrap(), allowed, "the floor put the thread back");
    // On every CPU, several: one CPU's numbers then another's, in any order.
    let mut seen = Vec::new();
    for _ in 0..3 {
        for &cpu in &cpus {
            let mut one = CpuSet::new();
            one.set(cpu).unwrap();
            sched_setaffinity(me, &one).unwrap();
            seen.push(inode_of(&std::net::UdpSocket::bind("127.0.0.1:0").unwrap()));
        }
    }
    sched_setaffinity(me, &allowed).unwrap();
    assert!(seen.iter().all(|&i| i > floor), "floor {floor}, sockets {seen:?}");
}

/// The holders of `wanted` through `scan`, with an early pass if given.
fn scanned(iter: &OwnerIter, early: Option<Pass>, wanted: &Inodes) -> FdScan {
    let users = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let detail = Detail { cmdline: false, cgroup: false };
    let search = Search { wanted, users: &users, detail, threads: 1, deadline };
    let pids = crate::owners::list_pids(Path::new("/proc")).unwrap();
    scan(iter, early, Path::new("/proc"), &pids, &search).unwrap()
}

#[test]
fn a_socket_made_while_the_early_pass_ran_is_found_by_one_more() {
    let Some(iter) = loaded() else { return };
    let before = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let early = early_pass(&iter, inode_floor()).expect("a pass");
    // Made after the pass, as a socket made while it ran beside the dump can be.
    let after = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(early.holders_of(inode_of(&before)), vec![std::process::id()]);
    assert!(early.holders_of(inode_of(&after)).is_empty());
    let scan =
        scanned(&iter, Some(early), &Inodes::from_iter([inode_of(&before), inode_of(&after)]));
    for s in [&before, &after] {
        assert_eq!(
            scan.holders.get(&inode_of(s)).map(|p| p.to_vec()),
            Some(vec![std::process::id()])
        );
    }
}

#[test]
fn a_second_pass_is_made_only_for_a_socket_the_early_pass_may_have_missed() {
    let floor = 1000;
    let pass = Pass {
        floor: Some(floor),
        made_by_socket: Inodes::from_iter([900, 1001]),
        ..Pass::default()
    };
    assert!(!pass.may_have_missed(900), "a listener numbered before the pass: it was seen");
    assert!(pass.may_have_missed(1001), "numbered after the pass began");
    assert!(pass.may_have_missed(950), "older, but accept(2) numbers before it installs");
    let unbounded = Pass { floor: None, ..pass };
    assert!(unbounded.may_have_missed(900), "no floor known: look again");
}

#[test]
fn a_socket_older_than_the_early_pass_that_nobody_holds_is_unknown_as_the_walk_says() {
    let Some(iter) = loaded() else { return };
    // Closed before the pass: older than it and held by no process, as a kernel socket is.
    let gone = inode_of(&std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let early = early_pass(&iter, inode_floor()).expect("a pass");
    let early = Pass { made_by_socket: Inodes::from_iter([gone]), ..early };
    let wanted = Inodes::from_iter([gone]);
    let scan = scanned(&iter, Some(early), &wanted);
    let proc_dir = open_proc(Path::new("/proc")).unwrap();
    let pids = crate::owners::list_pids(Path::new("/proc")).unwrap();
    let users = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let detail = Detail { cmdline: false, cgroup: false };
    let search = Search { wanted: &wanted, users: &users, detail, threads: 1, deadline };
    let walked = crate::owners::scan_pids(&proc_dir, &pids, &search);
    assert!(matches!(scan.owners_of(gone), Owners::Unknown(_)), "{:?}", scan.owners_of(gone));
    assert_eq!(scan.owners_of(gone), walked.owners_of(gone));
}
