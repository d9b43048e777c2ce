use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::*;

fn inode_of(fd: &impl AsRawFd) -> u64 {
    let m = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    std::os::unix::fs::MetadataExt::ino(&m)
}

#[test]
fn the_committed_object_relocates_against_this_kernel() {
    let Ok(blob) = std::fs::read(BTF_PATH) else {
        return eprintln!("skipped: no kernel BTF at {BTF_PATH}");
    };
    let kernel = Btf::parse(&blob).unwrap();
    let program = Object::parse().unwrap().relocated(&kernel).unwrap();
    assert!(program.insns.len() > 10);
    assert!(kernel.find(KIND_FUNC, ATTACH_FUNC).is_some());
}

#[test]
fn one_pass_finds_this_process_as_holder() {
    let iter = match OwnerIter::load() {
        Ok(i) => i,
        Err(e) => return eprintln!("skipped: {e}"),
    };
    eprintln!("loaded in {:?}", iter.load_time);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inode = inode_of(&listener);
    let t = Instant::now();
    let pass = iter.pass(&HashSet::from([inode]), Instant::now() + Duration::from_secs(5)).unwrap();
    eprintln!("pass in {:?}", t.elapsed());
    assert_eq!(pass.holders.get(&inode), Some(&vec![std::process::id()]));
    assert_eq!(pass.stopped_at, None);
}

#[test]
fn load_cost_breakdown() {
    let mut t = Instant::now();
    let mut lap = |what: &str| {
        eprintln!("{what}: {:?}", t.elapsed());
        t = Instant::now();
    };
    let Ok(blob) = KernelBtf::open() else { return };
    lap("map btf");
    let object = Object::parse().unwrap();
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
        return;
    };
    lap("prog load");
    let link = sys::bpf_link_iter(&prog).unwrap();
    lap("link");
    let _ = sys::bpf_iter_create(&link).unwrap();
    lap("iter create");
}
