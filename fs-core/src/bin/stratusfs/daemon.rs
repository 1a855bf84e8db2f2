//! Detaching a mount from the terminal the way mount(8) helpers do: the process forks before any
//! thread exists; the parent waits until the child reports the filesystem mounted (or why it
//! could not) and exits with that outcome; the child carries on in its own session with its
//! output in a log file.

use std::io::{Read, Write};
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
    use nix::unistd::{ForkResult, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid};
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let (rd, wr) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: no other thread exists yet (the caller's contract), so the child is a full copy.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(rd);
            setsid()?;
            if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                dup2_stdin(&null)?;
            }
            dup2_stdout(&out)?;
            dup2_stderr(&out)?;
            let _ = std::env::set_current_dir("/");
            Ok(Forked::Child(ReadyPipe(std::fs::File::from(wr))))
        }
        ForkResult::Parent { .. } => {
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
