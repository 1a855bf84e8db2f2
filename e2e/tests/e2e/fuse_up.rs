//! `stratusfs up`, the README's run command: one command gives a mount; Ctrl-C stops it all; the
//! next run finds the same data.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::service::free_port;
use e2e::stratusfs::{binary, is_mounted};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn up(data: &std::path::Path, mnt: &std::path::Path) -> std::process::Child {
    up_with(data, mnt, &[])
}

/// `stratusfs up` with more flags.
fn up_with(data: &std::path::Path, mnt: &std::path::Path, extra: &[&std::ffi::OsStr]) -> std::process::Child {
    Command::new(binary().unwrap())
        .args(["up", "--mountpoint"])
        .arg(mnt)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port().unwrap())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port().unwrap())])
        .args(extra)
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

#[test]
fn up_with_a_secret_file_makes_an_encrypted_volume_that_needs_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt, secret) = (dir.path().join("data"), dir.path().join("mnt"), dir.path().join("secret"));
    std::fs::write(&secret, "up's own secret\n").unwrap();
    let with_secret = [std::ffi::OsStr::new("--encryption-secret-file"), secret.as_os_str()];
    let first = up_with(&data, &mnt, &with_secret);
    wait_mounted(&mnt);
    let text = "a plaintext line that the blocks folder must not hold".repeat(100);
    std::fs::write(mnt.join("notes.txt"), &text).unwrap();
    let (status, out) = stop(first, Signal::SIGINT);
    assert!(status.success() && out.contains("encryption"), "{status}: {out}");
    // The blocks are sealed: not a line of the file in them.
    let needle = &text.as_bytes()[..40];
    for e in e2e::files_under(&data.join("blocks")) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "plaintext in {}", e.display());
    }
    // Without the secret the next run refuses, saying why; with it the file is there.
    let out = Command::new(binary().unwrap())
        .args(["up", "--mountpoint"])
        .arg(&mnt)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port().unwrap())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port().unwrap())])
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && msg.contains("is encrypted: give its secret with --encryption-secret-file"),
        "{msg}"
    );
    assert!(!is_mounted(&mnt));
    let second = up_with(&data, &mnt, &with_secret);
    wait_mounted(&mnt);
    assert_eq!(std::fs::read_to_string(mnt.join("notes.txt")).unwrap(), text);
    let (status, out) = stop(second, Signal::SIGTERM);
    assert!(status.success(), "{status}: {out}");
}
