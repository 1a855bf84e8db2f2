//! `fsprobe` (src/bin/fsprobe.rs) driven from a test: a separate process that takes and holds
//! locks on a mount, so they conflict with the test's own, wait, wake and get interrupted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// The `fsprobe` program of this build, beside the running test (`target/debug/fsprobe`).
pub fn fsprobe() -> PathBuf {
    let exe = std::env::current_exe().expect("the test program's path");
    exe.parent().and_then(Path::parent).map(|d| d.join("fsprobe")).expect("target/debug beside the test")
}

/// A running `fsprobe` (see e2e/src/bin/fsprobe.rs) and its output lines.
pub struct Probe {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Probe {
    /// `fsprobe ARGS...` with its output piped.
    pub fn start(args: &[&str]) -> Probe {
        let mut child =
            Command::new(fsprobe()).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Probe { child, out }
    }

    /// Follows the probe's `WORD N` lines on a thread of its own: the last N is in the counter;
    /// the thread ends (returning the probe's exit status) when the probe's output ends.
    pub fn follow(
        mut self,
        word: &'static str,
        last: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> std::thread::JoinHandle<std::process::ExitStatus> {
        std::thread::spawn(move || {
            let mut l = String::new();
            while self.out.read_line(&mut l).unwrap_or(0) > 0 {
                if let Some(n) = l.trim().strip_prefix(word).and_then(|n| n.trim().parse().ok()) {
                    last.store(n, std::sync::atomic::Ordering::SeqCst);
                }
                l.clear();
            }
            self.child.wait().expect("waiting for fsprobe")
        })
    }

    pub fn lock(path: &Path, kind: &str, write: bool, start: u64, len: u64, wait: bool) -> Probe {
        let mut child = Command::new(fsprobe())
            .args(["lock", &path.to_string_lossy(), kind, if write { "write" } else { "read" }])
            .args([start.to_string(), len.to_string()])
            .arg(if wait { "wait" } else { "nowait" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Probe { child, out }
    }

    /// The next line it prints (`locked`, `busy`, `eintr`).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    /// SIGKILL, and its exit status.
    pub fn kill9(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("waiting for fsprobe")
    }

    /// Lets go of the lock (closes stdin: the probe exits, closing the file).
    pub fn release(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
