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

/// `fsprobe steady` running: its count of records written, synced and read back, followed on a
/// thread of its own.
pub struct Steady {
    stdin: Option<std::process::ChildStdin>,
    pid: i32,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `lost N` and `close_lost` lines (EIO answers over writes a crash lost).
    lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
    follower: std::thread::JoinHandle<(std::process::ExitStatus, Option<u64>)>,
}

impl Steady {
    /// Starts `fsprobe steady PATH RECORD` (see e2e/src/bin/fsprobe.rs) and waits for its first
    /// record.
    pub fn start(path: &Path, record: usize) -> Steady {
        Self::spawn(path, record, false)
    }

    /// `fsprobe steady PATH RECORD lost-is-eio`: EIO over lost writes is counted, not fatal.
    pub fn tolerating_lost(path: &Path, record: usize) -> Steady {
        Self::spawn(path, record, true)
    }

    fn spawn(path: &Path, record: usize, tolerate: bool) -> Steady {
        let mut args = vec!["steady".to_string(), path.to_string_lossy().into_owned(), record.to_string()];
        if tolerate {
            args.push("lost-is-eio".into());
        }
        let mut child =
            Command::new(fsprobe()).args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = count.clone();
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lost_seen = lost.clone();
        let pid = child.id() as i32;
        let follower = std::thread::spawn(move || {
            let mut done = None;
            let mut l = String::new();
            while out.read_line(&mut l).unwrap_or(0) > 0 {
                let mut words = l.split_whitespace();
                match (words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
                    (Some("ok"), Some(n)) => seen.store(n, std::sync::atomic::Ordering::SeqCst),
                    (Some("done"), Some(n)) => done = Some(n),
                    (Some("lost"), _) | (Some("close_lost"), _) => {
                        lost_seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => {}
                }
                l.clear();
            }
            (child.wait().expect("waiting for fsprobe"), done)
        });
        let s = Steady { stdin, pid, count, lost, follower };
        s.wait_past(0, std::time::Duration::from_secs(10));
        s
    }

    /// Records written, synced and read back so far.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// EIO answers it saw over lost writes (`lost-is-eio`).
    pub fn lost(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until more than `n` records are done; panics after `timeout` (the writer is stuck).
    pub fn wait_past(&self, n: u64, timeout: std::time::Duration) {
        let start = std::time::Instant::now();
        while self.count() <= n {
            assert!(
                !self.follower.is_finished(),
                "fsprobe steady (pid {}) exited after {} records; its error is above",
                self.pid,
                self.count()
            );
            assert!(
                start.elapsed() < timeout,
                "fsprobe steady (pid {}) made no progress past record {n} in {timeout:?}",
                self.pid
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Whether it exited already (a failed call).
    pub fn exited(&self) -> bool {
        self.follower.is_finished()
    }

    /// Stops it (closes stdin): its exit status and the records it finished (`None`: it did not
    /// stop cleanly).
    pub fn stop(mut self) -> (std::process::ExitStatus, Option<u64>) {
        drop(self.stdin.take());
        self.follower.join().expect("the follower thread")
    }
}
