//! Lifecycle: refusing bad options, several instances, detaching on drop and on SIGKILL,
//! and what an unprivileged load says.

use super::*;

#[test]
fn a_bad_ring_buffer_size_is_refused_before_touching_the_kernel() {
    for bytes in [0, 100, 4095, 4096 + 4096 * 2, 2048] {
        let err = Programs::load(&LoadOptions { ring_bytes: bytes }).expect_err("bad size");
        assert!(matches!(err, LoadError::RingBufferSize { bytes: b } if b == bytes), "{err}");
        assert_eq!(err.errno(), None);
    }
}

fn loaded_ids() -> HashSet<u32> {
    aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect()
}

fn wait_unloaded(ids: &[u32]) -> HashSet<u32> {
    // Programs are freed after an RCU grace period once the last reference goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let still: HashSet<u32> = loaded_ids().into_iter().filter(|id| ids.contains(id)).collect();
        if still.is_empty() || Instant::now() > deadline {
            return still;
        }
        std::thread::yield_now();
        let mut fds: [PollFd<'_>; 0] = [];
        let _ = poll(&mut fds, PollTimeout::from(10u16));
    }
}

#[test]
fn two_instances_both_see_events_and_drop_unloads_everything() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut a) = load(&LoadOptions::default()) else { return };
    let Some(mut b) = load(&LoadOptions::default()) else { return };
    eprintln!(
        "aya load + attach: {:?} and {:?} ({})",
        a.load_time(),
        b.load_time(),
        a.cgroup().display()
    );
    let ids: Vec<u32> = a.program_ids().into_iter().chain(b.program_ids()).collect();
    assert_eq!(ids.len(), 2 * PROGRAM_NAMES.len());
    let loaded = loaded_ids();
    assert!(ids.iter().all(|id| loaded.contains(id)));

    let child = run_child(&[], &python, ["tcp", "4", "127.0.0.1", "none", "0"]);
    for progs in [&mut a, &mut b] {
        let mut seen = Vec::new();
        collect_until(progs, &mut seen, Duration::from_secs(5), done_for(&[(&child, 2)]));
        assert_reported(
            &seen,
            &child,
            Protocol::Tcp,
            Family::Ipv4,
            &[Kind::Listen, Kind::Unlisten],
        );
    }
    drop(a);
    drop(b);
    let still = wait_unloaded(&ids);
    assert!(still.is_empty(), "programs {still:?} outlived their Programs");
}

/// Not a test on its own: the process [`sigkill_detaches_everything`] loads the programs in and
/// kills. Does nothing unless PORTWATCH_EBPF_HOLD=1.
#[test]
#[ignore = "helper process of sigkill_detaches_everything"]
fn hold_for_kill() {
    if std::env::var_os(HOLD).is_none_or(|v| v != "1") {
        return;
    }
    let progs = Programs::load(&LoadOptions::default()).expect("load in the helper");
    let ids: Vec<String> = progs.program_ids().iter().map(u32::to_string).collect();
    println!("PW_HOLD {}", ids.join(" "));
    // Block until killed: stdin is a pipe the parent never writes to.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn sigkill_detaches_everything() {
    if load(&LoadOptions::default()).is_none() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut helper = Command::new(exe)
        .args([
            "source::ebpf::tests::lifecycle::hold_for_kill",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-exec the test binary");
    let stdout = helper.stdout.take().expect("piped");
    let ids: Vec<u32> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test NAME ... " first, on the same line.
        .find_map(|l| {
            l.split_once("PW_HOLD ")
                .map(|(_, ids)| ids)
                .map(|ids| ids.split(' ').filter_map(|i| i.parse().ok()).collect())
        })
        .expect("the helper loaded the programs");
    assert_eq!(ids.len(), PROGRAM_NAMES.len());
    let loaded = loaded_ids();
    assert!(ids.iter().all(|id| loaded.contains(id)), "attached while the helper lives");

    helper.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
    let _ = helper.wait();
    let still = wait_unloaded(&ids);
    assert!(still.is_empty(), "programs {still:?} survived a SIGKILL of their owner");
}

/// Not a test on its own: [`unprivileged_load_names_the_missing_capabilities`] runs it as an
/// unprivileged user. Does nothing unless PORTWATCH_EBPF_TRY_LOAD=1.
#[test]
#[ignore = "helper process of unprivileged_load_names_the_missing_capabilities"]
fn try_load() {
    if std::env::var_os(TRY_LOAD).is_none_or(|v| v != "1") {
        return;
    }
    match Programs::load(&LoadOptions::default()) {
        Ok(_) => println!("PW_LOAD ok"),
        Err(e) => println!("PW_LOAD {e:?} / {e}"),
    }
}

/// Runs [`try_load`] as nobody with exactly `caps` (setpriv names: `bpf`, `perfmon`, ...);
/// returns what it said, or `None` (skipped) when that cannot be arranged here.
fn try_load_as_nobody_with(caps: &[&str]) -> Option<String> {
    load(&LoadOptions::default())?;
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip("setpriv (util-linux) not found");
        return None;
    }
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all{set}"))
        .arg(format!("--ambient-caps=-all{set}"))
        .arg(format!("--bounding-set=-all{set}"))
        .arg("--")
        .arg(exe)
        .args(["source::ebpf::tests::lifecycle::try_load", "--exact", "--ignored", "--nocapture"])
        .env(TRY_LOAD, "1")
        .output()
        .expect("setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    let said = text.split_once("PW_LOAD ").map(|(_, s)| s.to_owned());
    Some(said.unwrap_or_else(|| {
        panic!("the helper said nothing: {text} {}", String::from_utf8_lossy(&out.stderr))
    }))
}

#[test]
fn unprivileged_load_names_the_missing_capabilities() {
    let Some(said) = try_load_as_nobody_with(&[]) else { return };
    assert!(said.starts_with("PermissionDenied"), "{said}");
    assert!(said.contains("needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN"), "{said}");
    assert!(said.contains("missing: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"), "{said}");
    let Some(said) = try_load_as_nobody_with(&["bpf", "perfmon"]) else { return };
    assert!(said.contains("missing: CAP_NET_ADMIN;"), "{said}");
}

#[test]
fn cap_bpf_perfmon_and_net_admin_suffice_without_root() {
    let Some(said) = try_load_as_nobody_with(&["bpf", "perfmon", "net_admin"]) else { return };
    assert!(said.starts_with("ok"), "{said}");
}
