//! `portwatch list` against `ss -tulnpH` and `ss -xlnpH`: the same sockets with the same pids,
//! with either owner lookup (`--owners proc`, the /proc walk; `--owners bpf`, the iterator).
//!
//! Other tests open and close sockets meanwhile, so the comparison covers the sockets that both
//! `ss` runs around one `portwatch` run agree on, and is retried a few times.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use crate::util::{Holder, is_root, json_list, private_dir, skip, system_tool, tool, wait_for};

/// (proto, address or path, port) → pids.
type Table = BTreeMap<(String, String, u16), BTreeSet<u32>>;

fn ss_available() -> bool {
    system_tool("ss")
        .is_some_and(|_| tool("ss").arg("-V").output().is_ok_and(|o| o.status.success()))
}

/// Pids in `users:(("name",pid=1,fd=3),…)`.
fn ss_pids(users: &str) -> BTreeSet<u32> {
    users
        .split("pid=")
        .skip(1)
        .filter_map(|p| p.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// `ss -tulnpH`: `udp UNCONN 0 0 *:6004 *:* users:(…)`.
fn ss_inet() -> Table {
    let out = tool("ss").arg("-tulnpH").output().expect("ss runs");
    let mut t = Table::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let Some((addr, port)) = f[4].rsplit_once(':') else { continue };
        let Ok(port) = port.parse() else { continue };
        // `127.0.0.53%lo` → the address; `[::1]` → `::1`; `*` (dual-stack) → `::`.
        let addr = addr.split('%').next().unwrap_or(addr);
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr = if addr == "*" { "::" } else { addr };
        let users = f.get(6..).map(|r| r.join(" ")).unwrap_or_default();
        t.insert((f[0].to_owned(), addr.to_owned(), port), ss_pids(&users));
    }
    t
}

/// `ss -xlnpH`: `u_str LISTEN 0 4096 /path 4214 * 0 users:(…)`, stream and seqpacket only.
fn ss_unix() -> Table {
    let out = tool("ss").arg("-xlnpH").output().expect("ss runs");
    let mut t = Table::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !matches!(f[0], "u_str" | "u_seq") || f[1] != "LISTEN" {
            continue;
        }
        let users_at = f.iter().position(|x| x.starts_with("users:")).unwrap_or(f.len());
        // Path tokens run from the 5th field to three before the users (inode, `*`, `0`).
        let path = f[4..users_at.saturating_sub(3).max(4)].join(" ");
        let users = f[users_at..].join(" ");
        t.insert(("unix".to_owned(), path, 0), ss_pids(&users));
    }
    t
}

fn portwatch_table(owners: &str) -> Table {
    let mut t = Table::new();
    for s in json_list(&["--tcp", "--udp", "--unix", "--owners", owners]) {
        let proto = s["proto"].as_str().unwrap().to_owned();
        let key = if proto == "unix" {
            // Unnamed listeners show as `*` in ss; they have no path here.
            (proto, s["path"].as_str().unwrap_or("*").to_owned(), 0)
        } else {
            (proto, s["addr"].as_str().unwrap().to_owned(), s["port"].as_u64().unwrap() as u16)
        };
        let pids = s["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32);
        t.entry(key).or_default().extend(pids);
    }
    t
}

#[test]
fn matches_ss_through_proc() {
    matches_ss("proc");
}

#[test]
fn matches_ss_through_bpf() {
    if !is_root() {
        return skip("the BPF owner lookup needs root (or CAP_BPF and CAP_PERFMON)");
    }
    matches_ss("bpf");
}

fn matches_ss(owners: &str) {
    if !ss_available() {
        skip("ss (iproute2) is not installed; make deps installs it");
        return;
    }
    // Make sure there is something of each kind, some held by a child.
    let tcp = TcpListener::bind("[::]:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = private_dir();
    let path = dir.path().join("diff.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let _child = Holder::spawn(&[&udp]);

    // The comparison must cover our own sockets of each kind, not just whatever else is there.
    // Forks in other tests briefly hold every fd, so a socket is only compared once both ss
    // runs agree on it: retry until ours were.
    let mine = [
        ("tcp".to_owned(), "::".to_owned(), tcp.local_addr().unwrap().port()),
        ("udp".to_owned(), "127.0.0.1".to_owned(), udp.local_addr().unwrap().port()),
        ("unix".to_owned(), path.display().to_string(), 0),
    ];
    let compared =
        wait_for("portwatch and ss to agree on our sockets", Duration::from_secs(20), || {
            let (before_i, before_u) = (ss_inet(), ss_unix());
            let ours = portwatch_table(owners);
            let (after_i, after_u) = (ss_inet(), ss_unix());
            let mut problems = Vec::new();
            let mut compared = BTreeSet::new();
            let mut seen_by_ss = BTreeSet::new();
            for (before, after) in [(before_i, after_i), (before_u, after_u)] {
                seen_by_ss.extend(before.keys().chain(after.keys()).cloned());
                for (key, pids) in &before {
                    // Stable: the same in both ss runs.
                    if after.get(key) != Some(pids) {
                        continue;
                    }
                    match ours.get(key) {
                        Some(p) if p == pids => {
                            compared.insert(key.clone());
                        }
                        other => {
                            problems.push(format!("{key:?}: ss {pids:?}, portwatch {other:?}"))
                        }
                    }
                }
            }
            // Nothing that neither ss run saw. ss prints a unix name as it is, so one with a
            // newline (another test's hostile name) spans lines it cannot be read back from.
            let readable = |k: &&(String, String, u16)| !k.1.contains('\n');
            for key in ours.keys().filter(readable).filter(|k| !seen_by_ss.contains(*k)) {
                problems.push(format!("{key:?} only in portwatch"));
            }
            for key in mine.iter().filter(|k| !compared.contains(*k)) {
                problems.push(format!("{key:?} not stable across the two ss runs yet"));
            }
            if problems.is_empty() {
                Some(compared)
            } else {
                eprintln!("retrying (--owners {owners}), differences: {problems:#?}");
                None
            }
        });
    for key in &mine {
        assert!(compared.contains(key), "{key:?} compared; compared: {compared:?}");
    }
    drop(unix);
}
