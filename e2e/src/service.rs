//! A service under test: a child process in its own process group with its output in a log file.

use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{HarnessError, Result};

/// A free TCP port on 127.0.0.1 (the OS picks it; the listener is closed before returning, so a
/// service started right after can bind it). Never one this process was given before: a port
/// handed out for a service not started yet is not handed out again.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(HarnessError::io("binding 127.0.0.1:0"))?;
        let port = l.local_addr().map_err(HarnessError::io("reading a bound address"))?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    Err(HarnessError::setup("finding a free port", "1000 tries gave only ports handed out before"))
}

/// A running child process. Dropping it kills its whole process group (the program and anything
/// it started) and, while a panic unwinds, prints the end of its log.
pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `cmd` as `name`, appending stdout and stderr to `DIR/NAME.log`.
    ///
    /// The child leads a new process group and gets SIGKILL if the thread that started it dies
    /// (so a test process killed with -9 leaves nothing behind); start services from the thread
    /// that owns the fixture.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Service> {
        let log = dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(HarnessError::io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(HarnessError::io(format!("duplicating {}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            service: name.to_string(),
            program: PathBuf::from(cmd.get_program()),
            source,
        })?;
        tracing::debug!(service = name, pid = child.id(), log = %log.display(), "started");
        Ok(Service { name: name.to_string(), child, log })
    }

    /// Polls `probe` every 100 ms until it returns `Ok`, the child exits, or `timeout` passes.
    /// The probe's last error goes into the message.
    pub async fn wait_ready<F, Fut>(&mut self, timeout: Duration, mut probe: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<(), String>>,
    {
        let start = Instant::now();
        loop {
            if let Some(status) =
                self.child.try_wait().map_err(HarnessError::io(format!("waiting for {}", self.name)))?
            {
                return Err(HarnessError::Exited {
                    service: self.name.clone(),
                    status,
                    log: self.log.clone(),
                    tail: self.log_tail(40),
                });
            }
            let last = match probe().await {
                Ok(()) => {
                    tracing::info!(service = %self.name, after = ?start.elapsed(), "ready");
                    return Ok(());
                }
                Err(e) => e,
            };
            if start.elapsed() > timeout {
                return Err(HarnessError::NotReady {
                    service: self.name.clone(),
                    timeout,
                    last,
                    log: self.log.clone(),
                    tail: self.log_tail(40),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, and its exit status within `within` (`None`: still running).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Whether its log holds `text` so far.
    pub fn logged(&self, text: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(text))
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let Ok(f) = File::open(&self.log) else {
            return format!("(no log at {})", self.log.display());
        };
        let lines: Vec<String> = BufReader::new(f).lines().map_while(|l| l.ok()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}) log {}, last 100 lines -----\n{}\n----- end of {} log -----",
                self.name,
                self.child.id(),
                self.log.display(),
                self.log_tail(100),
                self.name
            );
        }
    }
}

/// A probe that succeeds when `url` answers with a 2xx status.
pub async fn http_ok(client: &reqwest::Client, url: &str) -> std::result::Result<(), String> {
    match client.get(url).timeout(Duration::from_secs(2)).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("GET {url}: {}", r.status())),
        Err(e) => Err(format!("GET {url}: {e}")),
    }
}

/// A probe that succeeds when something accepts TCP connections on 127.0.0.1:`port`.
pub async fn tcp_open(port: u16) -> std::result::Result<(), String> {
    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .map(drop)
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))
}

/// A plain-HTTP client for probes and set-up requests.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("a reqwest client without TLS settings builds")
}
