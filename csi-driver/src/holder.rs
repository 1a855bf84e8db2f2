//! The fd holder: a small process beside the node plugin (its own container in the node pod,
//! `stratusfs-csi --fd-holder`) that keeps duplicates of every live session's `/dev/fuse` fds and
//! what a successor needs to serve it, so that a crash of the node plugin (kill -9, OOM) leaves
//! every mount mounted: the kernel queues the pods' requests until the restarted plugin takes the
//! sessions from the holder (docs/csi.md, "Crashes").
//!
//! They talk on `<stateDir>/holder.sock` in frames (fs-core's `send_frame`): JSON messages, fds
//! attached. The plugin sends `keep` (a session's record and fds, again whenever its targets
//! change), `unsaved` (a file of a session holds writes not stored yet, or not any more) and
//! `forget` (the session ended); a plugin starting after a crash sends `list` and gets every kept
//! session back, with the files whose writes died with the crashed process.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs_core::{Handover, HandoverState, receive_frame, send_frame};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::takeover::SessionInfo;

/// Where a state directory's holder listens.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("holder.sock")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Message {
    Keep { info: SessionInfo, state: Box<HandoverState> },
    Forget { key: String },
    Unsaved { key: String, ino: u64, unsaved: bool },
    List,
}

/// A kept session as `list` returns it (its fds travel with the frame).
#[derive(Serialize, Deserialize)]
struct KeptRecord {
    info: SessionInfo,
    state: Box<HandoverState>,
    /// Files holding writes not stored when the plugin last said so.
    unsaved: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct ListHeader {
    sessions: usize,
}

/// A session the holder kept: what a plugin needs to serve it after a crash.
pub struct Kept {
    pub info: SessionInfo,
    pub handover: Handover,
    pub unsaved: Vec<u64>,
}

struct Entry {
    info: SessionInfo,
    state: Box<HandoverState>,
    fds: Vec<OwnedFd>,
    unsaved: BTreeSet<u64>,
}

/// Serves the holder on `<state_dir>/holder.sock` until the process ends (blocking).
pub fn serve(state_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(state_dir)?;
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "the fd holder keeps the node's FUSE sessions alive across node plugin crashes");
    let kept: Arc<Mutex<HashMap<String, Entry>>> = Arc::default();
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection to the fd holder");
                continue;
            }
        };
        let kept = kept.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(&conn, &kept) {
                tracing::debug!(error = %e, "a node plugin's connection to the fd holder ended");
            }
        });
    }
    Ok(())
}

fn answer(conn: &UnixStream, kept: &Mutex<HashMap<String, Entry>>) -> Result<(), fs_core::HandoverError> {
    loop {
        let (body, fds) = receive_frame(conn)?;
        let msg: Message = serde_json::from_slice(&body).map_err(|e| fs_core::HandoverError::Parse(e.to_string()))?;
        match msg {
            Message::Keep { info, state } => {
                tracing::debug!(session = %info.key, fds = fds.len(), "keeping a session");
                let mut k = kept.lock();
                let unsaved = k.remove(&info.key).map(|e| e.unsaved).unwrap_or_default();
                k.insert(info.key.clone(), Entry { info, state, fds, unsaved });
            }
            Message::Forget { key } => {
                tracing::debug!(session = %key, "forgetting a session");
                kept.lock().remove(&key);
            }
            Message::Unsaved { key, ino, unsaved } => {
                if let Some(e) = kept.lock().get_mut(&key) {
                    if unsaved {
                        e.unsaved.insert(ino);
                    } else {
                        e.unsaved.remove(&ino);
                    }
                }
            }
            Message::List => {
                let k = kept.lock();
                let header = serde_json::to_vec(&ListHeader { sessions: k.len() }).expect("serialises");
                send_frame(conn, &header, &[])?;
                for e in k.values() {
                    let record = KeptRecord {
                        info: e.info.clone(),
                        state: e.state.clone(),
                        unsaved: e.unsaved.iter().copied().collect(),
                    };
                    let raw: Vec<RawFd> = e.fds.iter().map(|f| f.as_raw_fd()).collect();
                    send_frame(conn, &serde_json::to_vec(&record).expect("serialises"), &raw)?;
                }
            }
        }
    }
}

/// The node plugin's side: one connection, made again after a break. A plugin with no holder
/// (none answers) logs it once and goes on: its sessions then end with it.
pub struct Holder {
    path: PathBuf,
    conn: Mutex<Option<UnixStream>>,
    warned: std::sync::atomic::AtomicBool,
}

impl Holder {
    pub fn new(state_dir: &Path) -> Holder {
        Holder { path: socket_path(state_dir), conn: Mutex::new(None), warned: Default::default() }
    }

    fn send(&self, msg: &Message, fds: &[RawFd]) {
        let body = serde_json::to_vec(msg).expect("a holder message serialises");
        let mut conn = self.conn.lock();
        for _ in 0..2 {
            if conn.is_none() {
                match UnixStream::connect(&self.path) {
                    Ok(c) => *conn = Some(c),
                    Err(e) => {
                        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            tracing::warn!(socket = %self.path.display(), error = %e, "no fd holder answers: a crash of this node plugin will end its sessions (the chart runs one beside it)");
                        }
                        return;
                    }
                }
            }
            match send_frame(conn.as_ref().expect("connected above"), &body, fds) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "telling the fd holder failed; connecting again");
                    *conn = None;
                }
            }
        }
    }

    /// Keeps (or updates) a session: its record and duplicates of its fds.
    pub fn keep(&self, info: SessionInfo, h: &Handover) {
        let raw: Vec<RawFd> = h.fds.iter().map(|f| f.as_raw_fd()).collect();
        self.send(&Message::Keep { info, state: Box::new(h.state.clone()) }, &raw);
    }

    pub fn forget(&self, key: &str) {
        self.send(&Message::Forget { key: key.to_string() }, &[]);
    }

    pub fn unsaved(&self, key: &str, ino: u64, unsaved: bool) {
        self.send(&Message::Unsaved { key: key.to_string(), ino, unsaved }, &[]);
    }

    /// Every session the holder keeps (`Ok(empty)` when no holder answers).
    pub fn list(&self) -> Result<Vec<Kept>, fs_core::HandoverError> {
        let conn = match UnixStream::connect(&self.path) {
            Ok(c) => c,
            Err(_) => return Ok(Vec::new()),
        };
        let body = serde_json::to_vec(&Message::List).expect("serialises");
        send_frame(&conn, &body, &[])?;
        let parse = |e: serde_json::Error| fs_core::HandoverError::Parse(e.to_string());
        let (header, _) = receive_frame(&conn)?;
        let header: ListHeader = serde_json::from_slice(&header).map_err(parse)?;
        let mut out = Vec::new();
        for _ in 0..header.sessions {
            let (body, fds) = receive_frame(&conn)?;
            let r: KeptRecord = serde_json::from_slice(&body).map_err(parse)?;
            out.push(Kept { info: r.info, handover: Handover { state: *r.state, fds }, unsaved: r.unsaved });
        }
        Ok(out)
    }
}
