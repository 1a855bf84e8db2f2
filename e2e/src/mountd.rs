//! `mountd` (src/bin/mountd.rs) driven from a test: a process that serves a mount through the
//! library and hands it to a successor process, as the CSI node plugin will.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::stratusfs::MetaServer;

/// The `mountd` program of this build, beside the running test (`target/debug/mountd`).
pub fn mountd() -> PathBuf {
    let exe = std::env::current_exe().expect("the test program's path");
    exe.parent().and_then(Path::parent).map(|d| d.join("mountd")).expect("target/debug beside the test")
}

/// A running `mountd` and its output lines.
pub struct Mountd {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Mountd {
    fn spawn(args: &[&str]) -> Mountd {
        let mut cmd = Command::new(mountd());
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting mountd");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Mountd { child, out }
    }

    /// Mounts `VOLUME[/SUBPATH]` of `meta` on `mountpoint` with `token` and listens for a
    /// successor on `socket`; returns once it is mounted.
    pub fn serve(
        meta: &MetaServer,
        what: &str,
        token: &str,
        mountpoint: &Path,
        socket: &Path,
        options: &str,
    ) -> Mountd {
        let token_file = meta.token_file(token).expect("a token file");
        let source = format!("stratusfs://{}/{what}", meta.addr);
        let mut m = Mountd::spawn(&[
            "serve",
            &source,
            &mountpoint.to_string_lossy(),
            &token_file.to_string_lossy(),
            &meta.fingerprint,
            &socket.to_string_lossy(),
            options,
        ]);
        assert_eq!(m.line(), "mounted");
        m
    }

    /// A successor for the mount of the `mountd` listening on `socket`, started and waiting for
    /// [`Mountd::adopt`]. Start it before freezing the predecessor: a process started while a
    /// mount is frozen hangs in exec, closing the files on that mount it inherited.
    pub fn successor(socket: &Path) -> Mountd {
        let mut m = Mountd::spawn(&["adopt", &socket.to_string_lossy()]);
        assert_eq!(m.line(), "ready");
        m
    }

    /// A successor that refuses what it is handed (see [`Mountd::successor`]); [`Mountd::adopt`]
    /// then expects `refused`.
    pub fn refusing_successor(socket: &Path) -> Mountd {
        let mut m = Mountd::spawn(&["adopt", &socket.to_string_lossy(), "refuse"]);
        assert_eq!(m.line(), "ready");
        m
    }

    /// Lets a successor go: it connects and takes (or refuses) the mount; its answer
    /// (`adopted`, `refused`).
    pub fn adopt(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("piped");
        stdin.write_all(b"go\n").expect("writing to mountd");
        stdin.flush().expect("writing to mountd");
        self.line()
    }

    /// The next line it prints.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).expect("reading mountd's output");
        l.trim().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it to exit by itself (a predecessor after the handover); its exit status.
    pub fn exited(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM (it unmounts) and waits for it to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        self.child.wait().expect("waiting for mountd")
    }
}

impl Drop for Mountd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `command` to the `mountd` listening on `socket`; its one-line answer.
pub fn control(socket: &Path, command: &str) -> String {
    let mut s = UnixStream::connect(socket).expect("connecting to mountd");
    s.write_all(format!("{command}\n").as_bytes()).expect("writing to mountd");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("reading mountd's answer");
    line.trim().to_string()
}
