//! `stratusfs up`, the README's run command: one command gives a mount; Ctrl-C stops it all; the
//! next run finds the same data.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::service::free_port;
use e2e::stratusfs::{binary, is_mounted};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn up(data: &std::path::Path, mnt: &std::path::Path) -> std::process::Child {
    Command::new(binary().unwrap())
        .args(["up", "--mountpoint"])
        .arg(mnt)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port().unwrap())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port().unwrap())])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_mounted(mnt: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(is_mounted(mnt) && std::fs::metadata(mnt).is_ok()) {
        assert!(Instant::now() < deadline, "stratusfs up did not mount {}", mnt.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops `up` with `signal`; returns its exit status and what it printed.
fn stop(mut child: std::process::Child, signal: Signal) -> (std::process::ExitStatus, String) {
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    (child.wait().unwrap(), out)
}

#[test]
fn up_mounts_with_no_configuration_stops_on_ctrl_c_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let first = up(&data, &mnt);
    wait_mounted(&mnt);
    std::fs::write(mnt.join("hello.txt"), b"kept across runs").unwrap();
    let (status, out) = stop(first, Signal::SIGINT);
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("first run"), "{out}");
    assert!(out.contains(&mnt.display().to_string()), "{out}");
    assert!(!is_mounted(&mnt), "Ctrl-C left the mount");
    // The second run reuses the data; SIGTERM stops it as cleanly.
    let second = up(&data, &mnt);
    wait_mounted(&mnt);
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"kept across runs");
    let (status, out) = stop(second, Signal::SIGTERM);
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("reusing"), "{out}");
    assert!(!is_mounted(&mnt));
    // Secrets are only the owner's.
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin.token", "default.token"] {
        let mode = std::fs::metadata(data.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}
