//! A node plugin handing its live FUSE sessions to its successor (a rollout or upgrade of the
//! DaemonSet with `maxSurge: 1`): they meet on `<stateDir>/handover.sock`. docs/csi.md,
//! "Handover", has the protocol and what every failure does; in short:
//!
//! 1. The successor connects and writes `takeover`.
//! 2. The owner stops taking publishes, quiesces every session (each answers what it read, commits
//!    its data) and sends a header frame (this module's version, each session's key, directory,
//!    targets and volume) with the owner lock's fd, then each session's handover value and FUSE
//!    fds (fs-core's own version inside). A session that cannot quiesce: every one serves again
//!    and the header says `refused`.
//! 3. The successor checks both versions and prepares every session (server sessions resumed,
//!    handles taken) without reading any kernel queue, then writes `prepared` (or `refused WHY`).
//! 4. The owner writes `go`, lets go of every session and exits; the successor serves them all,
//!    then takes the CSI socket. No `prepared` (a refusal, a successor that died, a timeout): the
//!    owner serves every session again and goes on as before.
//!
//! The owner lock (`<stateDir>/owner.lock`, flock) travels with the header: the lock is never
//! free while a plugin owns the sessions, so a plugin that finds no one answering on the socket
//! and takes the lock knows that mounts under the state directory belong to no live process.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs_core::{Adopted, Handover, Mount, Quiesced, receive_frame, send_frame};
use serde::{Deserialize, Serialize};

/// The version of the header this build writes and reads.
pub const TAKEOVER_VERSION: u32 = 1;

/// How long the owner waits for each session's requests to be answered at the quiesce.
pub const QUIESCE_WAIT: Duration = Duration::from_secs(30);

/// How long the owner waits for the successor to prepare every session.
pub const PREPARE_WAIT: Duration = Duration::from_secs(120);

/// A session as the header names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub key: String,
    pub dir: PathBuf,
    pub targets: Vec<PathBuf>,
    pub volume_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u32,
    /// Why the owner keeps its sessions (a session that would not quiesce).
    refused: Option<String>,
    sessions: Vec<SessionInfo>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// A takeover that did not happen. Each message says what failed and what goes on.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error(
        "the node plugin serving now sent a handover of version {found}; this build reads version {TAKEOVER_VERSION}: \
         it keeps serving its sessions (roll out a build that reads both)"
    )]
    Version { found: u32 },
    #[error("the node plugin serving now keeps its sessions: {0}")]
    Refused(String),
    #[error("preparing the session on {mountpoint}: {why}; the node plugin serving now keeps every session")]
    Prepare { mountpoint: String, why: String },
    #[error("the node plugin serving now went away during the handover ({0}); asking again")]
    Gone(String),
    #[error("the handover's header does not parse: {0}")]
    Parse(String),
}

/// A successor's side: what it took.
pub struct Taken {
    pub lock: OwnedFd,
    pub sessions: Vec<(SessionInfo, Mount)>,
}

fn gone(e: impl std::fmt::Display) -> TakeoverError {
    TakeoverError::Gone(e.to_string())
}

fn read_line(sock: &UnixStream, timeout: Duration) -> std::io::Result<String> {
    sock.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// The successor's side on a connected socket (blocking calls: run it where blocking is
/// allowed). On success every session serves in this process.
pub async fn take(sock: &UnixStream) -> Result<Taken, TakeoverError> {
    (&*sock).write_all(b"takeover\n").map_err(gone)?;
    let (body, mut fds) = receive_frame(sock).map_err(gone)?;
    let v: VersionOnly = serde_json::from_slice(&body).map_err(|e| TakeoverError::Parse(e.to_string()))?;
    if v.version != TAKEOVER_VERSION {
        let e = TakeoverError::Version { found: v.version };
        let _ = (&*sock).write_all(format!("refused {e}\n").as_bytes());
        return Err(e);
    }
    let header: Header = serde_json::from_slice(&body).map_err(|e| TakeoverError::Parse(e.to_string()))?;
    if let Some(why) = header.refused {
        return Err(TakeoverError::Refused(why));
    }
    if fds.len() != 1 {
        return Err(TakeoverError::Parse(format!("the header came with {} fds, not the owner lock's one", fds.len())));
    }
    let lock = fds.remove(0);
    let refuse = |what: String, why: String| {
        let e = TakeoverError::Prepare { mountpoint: what, why };
        let _ = (&*sock).write_all(format!("refused {}\n", e.to_string().replace('\n', " ")).as_bytes());
        e
    };
    // Every value first (the socket is sequential), then every session prepared at once (each is
    // a connection and a session resume on its metadata server).
    let mut preparing = tokio::task::JoinSet::new();
    for (i, info) in header.sessions.into_iter().enumerate() {
        let h = match Handover::receive(sock) {
            Ok(h) => h,
            Err(fs_core::HandoverError::Io(e)) => return Err(gone(e)),
            Err(e) => return Err(refuse(info.dir.join("mnt").display().to_string(), e.to_string())),
        };
        preparing.spawn(async move { (i, info, Mount::prepare_adopt(h).await) });
    }
    let mut prepared: Vec<(usize, SessionInfo, Adopted)> = Vec::new();
    while let Some(r) = preparing.join_next().await {
        match r {
            Ok((i, info, Ok(a))) => prepared.push((i, info, a)),
            Ok((_, info, Err(e))) => return Err(refuse(info.dir.join("mnt").display().to_string(), e.to_string())),
            Err(e) => return Err(refuse("a session".into(), format!("its preparation failed: {e}"))),
        }
    }
    prepared.sort_by_key(|(i, _, _)| *i);
    (&*sock).write_all(b"prepared\n").map_err(gone)?;
    match read_line(sock, PREPARE_WAIT) {
        Ok(l) if l == "go" => {}
        Ok(l) => return Err(gone(format!("it answered {l:?} instead of go"))),
        Err(e) => return Err(gone(e)),
    }
    let sessions = prepared.into_iter().map(|(_, info, a)| (info, a.serve())).collect();
    Ok(Taken { lock, sessions })
}

/// The owner's side, once every session is quiesced: sends the header and every session, and
/// waits for the successor to prepare them. `Ok` means the successor serves them now (release
/// them); on `Err` serve them again.
pub fn give(sock: &UnixStream, lock: &OwnedFd, sessions: &[(SessionInfo, Quiesced)]) -> Result<(), String> {
    let header = Header {
        version: TAKEOVER_VERSION,
        refused: None,
        sessions: sessions.iter().map(|(i, _)| i.clone()).collect(),
    };
    let body = serde_json::to_vec(&header).expect("a header serialises");
    send_frame(sock, &body, &[lock.as_raw_fd()]).map_err(|e| format!("sending the header: {e}"))?;
    for (info, q) in sessions {
        q.send(sock).map_err(|e| format!("sending session {}: {e}", info.key))?;
    }
    match read_line(sock, PREPARE_WAIT) {
        Ok(l) if l == "prepared" => {}
        Ok(l) if l.is_empty() => return Err("the successor closed the connection (it died?)".into()),
        Ok(l) => return Err(format!("the successor {l}")),
        Err(e) => return Err(format!("no answer from the successor within {PREPARE_WAIT:?}: {e}")),
    }
    (&*sock).write_all(b"go\n").map_err(|e| format!("telling the successor to go on: {e}"))
}

/// The owner's refusal (a session would not quiesce): the successor gives up.
pub fn refuse(sock: &UnixStream, why: &str) {
    let header = Header { version: TAKEOVER_VERSION, refused: Some(why.to_string()), sessions: Vec::new() };
    let body = serde_json::to_vec(&header).expect("a header serialises");
    if let Err(e) = send_frame(sock, &body, &[]) {
        tracing::warn!(error = %e, "telling the successor that this plugin keeps its sessions failed");
    }
}

/// Reads the successor's first line: whether it asks for a takeover.
pub fn asks_takeover(sock: &UnixStream) -> bool {
    matches!(read_line(sock, Duration::from_secs(10)).as_deref(), Ok("takeover"))
}

/// Where a state directory's handover socket and owner lock are.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.sock")
}

pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("owner.lock")
}

/// Takes the owner lock if no one holds it (`None`: a live plugin holds it).
pub fn try_lock(state_dir: &Path) -> std::io::Result<Option<OwnedFd>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path(state_dir))?;
    // SAFETY: flock on an fd this function owns. The lock stays with the open file description
    // (and every duplicate of it, such as the one a handover passes) until all are closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(f.into()));
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner that sends a header of `version` and returns the successor's answer.
    fn owner(sock: UnixStream, version: u32) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            assert!(asks_takeover(&sock));
            let lock = std::fs::File::open("/dev/null").unwrap();
            let body = format!(
                r#"{{"version":{version},"refused":null,"sessions":[],"later":"a field of version {version}"}}"#
            );
            send_frame(&sock, body.as_bytes(), &[lock.as_raw_fd()]).unwrap();
            read_line(&sock, Duration::from_secs(10)).unwrap()
        })
    }

    #[tokio::test]
    async fn a_successor_refuses_a_handover_of_another_version_and_says_why() {
        let (a, b) = UnixStream::pair().unwrap();
        let answer = owner(b, 2);
        let e = take(&a).await.err().expect("version 2 is refused");
        assert!(matches!(e, TakeoverError::Version { found: 2 }), "{e}");
        let answer = answer.join().unwrap();
        assert!(answer.starts_with("refused") && answer.contains("version 2"), "{answer}");
        assert!(e.to_string().contains("keeps serving"), "{e}");
    }

    #[tokio::test]
    async fn an_owner_with_nothing_to_hand_over_is_taken_over_at_once() {
        let (a, b) = UnixStream::pair().unwrap();
        let answer = std::thread::spawn(move || {
            assert!(asks_takeover(&b));
            let lock = std::fs::File::open("/dev/null").unwrap();
            give(&b, &OwnedFd::from(lock), &[]).map(|()| "given")
        });
        let taken = take(&a).await.unwrap();
        assert!(taken.sessions.is_empty());
        assert_eq!(answer.join().unwrap(), Ok("given"));
    }

    #[test]
    fn the_owner_lock_is_held_by_one_open_file_at_a_time() {
        let dir = tempfile_dir();
        let first = try_lock(&dir).unwrap().expect("a free lock is taken");
        assert!(try_lock(&dir).unwrap().is_none(), "a held lock is not taken twice");
        // A duplicate (as a handover passes it) keeps it held after the original closes.
        let dup = first.try_clone().unwrap();
        drop(first);
        assert!(try_lock(&dir).unwrap().is_none());
        drop(dup);
        assert!(try_lock(&dir).unwrap().is_some(), "the lock is free once every copy closed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("stratusfs-takeover-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
