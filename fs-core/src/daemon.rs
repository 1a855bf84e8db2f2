//! Detaching a mount from the terminal the way mount(8) helpers do: the process forks before any
//! thread exists; the parent waits until the child reports the filesystem mounted (or why it
//! could not) and exits with that outcome; the child carries on in its own session with its
//! output in a log file.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The child's end of the report to the waiting parent.
pub struct ReadyPipe(std::fs::File);

impl ReadyPipe {
    /// The filesystem is mounted: the parent exits 0.
    pub fn ok(mut self) {
        let _ = self.0.write_all(b"ok");
    }

    /// Mounting failed: the parent prints `message` and exits 1.
    pub fn fail(mut self, message: &str) {
        let _ = self.0.write_all(format!("error: {message}").as_bytes());
    }
}

pub enum Forked {
    /// In the parent: exit with this.
    Parent(ExitCode),
    /// In the detached child: report through this.
    Child(ReadyPipe),
}

/// Where a detached mount on `mountpoint` logs by default.
pub fn default_log(mountpoint: &Path) -> PathBuf {
    let name: String = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' })
        .collect();
    let dir = PathBuf::from("/var/log/stratusfs");
    let dir = if std::fs::create_dir_all(&dir).is_ok() { dir } else { std::env::temp_dir() };
    dir.join(format!("mount-{name}.log"))
}

/// Forks. Must run before any other thread starts (no runtime yet).
pub fn daemonize(log: &Path) -> std::io::Result<Forked> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned from here on.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (the caller's contract), so the child is a full copy.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: plain syscalls on fds we own; setsid detaches from the terminal.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    libc::close(null);
                }
                use std::os::fd::AsRawFd;
                libc::dup2(out.as_raw_fd(), 1);
                libc::dup2(out.as_raw_fd(), 2);
            }
            let _ = std::env::set_current_dir("/");
            Ok(Forked::Child(ReadyPipe(std::fs::File::from(wr))))
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg == "ok" {
                return Ok(Forked::Parent(ExitCode::SUCCESS));
            }
            match msg.strip_prefix("error: ") {
                Some(m) => eprintln!("stratusfs: {m}"),
                None => eprintln!("stratusfs: the mount daemon exited before mounting; its log is {}", log.display()),
            }
            Ok(Forked::Parent(ExitCode::FAILURE))
        }
    }
}
