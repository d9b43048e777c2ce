//! What ships beside the binary: shell completions, man pages and the systemd unit.

use std::net::TcpListener;

use crate::util::{is_root, json, private_dir, run, skip, system_tool, tool};

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        // Generated from the flags themselves: the newest ones are there.
        for word in ["portwatch", "interval", "comm"] {
            assert!(script.contains(word), "{shell} completion mentions {word}");
        }
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_pages_for_the_tool_and_each_command() {
    let dir = private_dir();
    let out = run(&["man", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (page, says) in [
        ("portwatch.1", "list"),
        ("portwatch-list.1", "\\-\\-user"),
        ("portwatch-watch.1", "SCAN_INTERVAL"),
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH "), "{page} is a man page: {text}");
        assert!(text.contains(says), "{page} says {says}: {text}");
    }
}

/// The unit with its ExecStart pointed at the binary under test.
fn unit_for_test() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/portwatch.service"
    ))
    .unwrap();
    let dir = private_dir();
    let path = dir.path().join("portwatch.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/portwatch", env!("CARGO_BIN_EXE_portwatch")),
    )
    .unwrap();
    (dir, path, unit)
}

#[test]
fn systemd_unit_verifies() {
    if system_tool("systemd-analyze").is_none() {
        skip("systemd-analyze is not installed (make deps installs systemd)");
        return;
    }
    let (_dir, path, _) = unit_for_test();
    // The man page is installed apart from the unit (make man): not checked here.
    let out = tool("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    // It exits 0 on an unknown or misspelt directive, only saying so: nothing may be said.
    assert!(err.trim().is_empty(), "systemd-analyze verify has remarks: {err}");
}

#[test]
fn the_units_capabilities_are_enough_to_name_owners() {
    if !is_root() {
        skip("needs root to run portwatch as nobody with chosen capabilities");
        return;
    }
    if system_tool("setpriv").is_none() {
        skip("setpriv (util-linux) is not installed");
        return;
    }
    let (_dir, _, unit) = unit_for_test();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants ambient capabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    let caps = format!("-all,{}", caps.join(","));
    // As the unit runs it: not root, these capabilities only, no new privileges.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let list = list_as_nobody(&caps, port);
    let s = &list[0];
    assert_eq!(s["port"], port, "{list}");
    let me = std::process::id();
    assert!(s["pids"].as_array().unwrap().iter().any(|p| p == me), "owner named: {list}");
    // And without them the owner is unknown: the capabilities are what names it.
    let none = list_as_nobody("-all", port);
    assert_eq!(none[0]["owner_unknown_reason"], "permission_denied", "{none}");
}

/// `portwatch list --format json --port PORT` as nobody, with no new privileges and only the
/// capabilities `caps` (setpriv's syntax: `-all,+sys_ptrace`).
fn list_as_nobody(caps: &str, port: u16) -> serde_json::Value {
    let out = tool("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--no-new-privs"])
        .args(["--inh-caps", caps, "--ambient-caps", caps, "--bounding-set", caps])
        .arg(env!("CARGO_BIN_EXE_portwatch"))
        .args(["list", "--format", "json", "--port", &port.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "caps {caps}: {}", String::from_utf8_lossy(&out.stderr));
    json(&String::from_utf8_lossy(&out.stdout))
}
