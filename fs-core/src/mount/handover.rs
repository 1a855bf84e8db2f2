//! The handover value: everything a successor process needs to go on serving a live mount
//! (docs/library.md, "Handover"), and its passage over a Unix socket with the `/dev/fuse` fds
//! (SCM_RIGHTS).
//!
//! The value is versioned: a reader refuses a version it does not know with a message naming
//! both, before it touches anything, so the predecessor can keep serving. It holds the volume
//! token (the successor resumes the same server session with it): pass it only over a socket
//! that no one but the node's root can reach.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use super::options::{MountOptions, Source};
use crate::fs::handover::FsHandover;
use crate::fuse::session::{InitParams, PendingRequest};
use crate::tls::ClientTrust;

/// The version of [`HandoverState`] this build writes and reads.
pub const HANDOVER_VERSION: u32 = 1;

/// Room for the most fds one SCM_RIGHTS message can carry (the kernel's SCM_MAX_FD), so a
/// message is never cut short with fds installed that no one would close. A handover passes one
/// per FUSE reader thread (`threads` is at most 64).
const MAX_FDS: usize = 253;

/// The largest handover value read (its handles and lock waits; far more than a mount holds).
const MAX_VALUE: usize = 64 << 20;

/// A handover that cannot be made, read or passed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "the handover value has version {found}, this build reads version {HANDOVER_VERSION}: \
         the predecessor must keep serving (upgrade or downgrade through a build that reads both)"
    )]
    Version { found: u32 },
    #[error("the handover value does not parse: {0}")]
    Parse(String),
    #[error("the handover names {expected} FUSE fds but {got} arrived with it")]
    Fds { expected: usize, got: usize },
    #[error("passing the handover over its socket: {0}")]
    Io(#[from] std::io::Error),
}

/// What a successor needs besides the fds (serialisable; see [`Handover`]). Its `Debug` leaves
/// the token out.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoverState {
    pub version: u32,
    pub source: Source,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    /// The volume token and how to trust the server: the successor resumes the session with them.
    pub token: String,
    pub trust: ClientTrust,
    /// What FUSE_INIT agreed (the successor never sees INIT).
    pub init: InitParams,
    /// The mount's root inode (not its path: the root may have been renamed meanwhile).
    pub root: u64,
    /// The server session (hex), resumed by the successor: open handles and locks live there.
    pub session: String,
    /// Open handles and the lock owners that used them.
    pub fs: FsHandover,
    /// Lock waits read and not answered, with their request ids and channels.
    pub pending: Vec<PendingRequest>,
    /// How many fds travel with the value: the FUSE channels, in order.
    pub fds: usize,
}

impl std::fmt::Debug for HandoverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoverState")
            .field("version", &self.version)
            .field("source", &self.source)
            .field("mountpoint", &self.mountpoint)
            .field("options", &self.options)
            .field("token", &"(hidden)")
            .field("init", &self.init)
            .field("root", &self.root)
            .field("session", &self.session)
            .field("fs", &self.fs)
            .field("pending", &self.pending)
            .field("fds", &self.fds)
            .finish()
    }
}

/// A mount handed over: the state and the `/dev/fuse` fds (one per channel, the mount's own fd
/// first). Holding the fds keeps the connection alive; dropping them all ends the mount.
#[derive(Debug)]
pub struct Handover {
    pub state: HandoverState,
    pub fds: Vec<OwnedFd>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

impl HandoverState {
    /// The value as bytes (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a handover state serialises")
    }

    /// Reads a value, refusing a version other than [`HANDOVER_VERSION`] first.
    pub fn from_bytes(bytes: &[u8]) -> Result<HandoverState, HandoverError> {
        let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| HandoverError::Parse(e.to_string()))?;
        if v.version != HANDOVER_VERSION {
            return Err(HandoverError::Version { found: v.version });
        }
        serde_json::from_slice(bytes).map_err(|e| HandoverError::Parse(e.to_string()))
    }
}

/// Sends one frame over `sock`: a 4-byte length, `body`, and `fds` attached to the first bytes
/// (SCM_RIGHTS). The fds stay open here too. The handover value travels in one; a program that
/// moves several mounts at once frames what goes with them the same way.
pub fn send_frame(sock: &UnixStream, body: &[u8], fds: &[RawFd]) -> Result<(), HandoverError> {
    let len = (body.len() as u32).to_le_bytes();
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(&len)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).map_err(std::io::Error::from)?;
    if sent != len.len() {
        (&*sock).write_all(&len[sent..])?;
    }
    (&*sock).write_all(body)?;
    Ok(())
}

/// Receives a frame sent with [`send_frame`]: its body and the fds that came with it.
pub fn receive_frame(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), HandoverError> {
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(HandoverError::Parse("the fds arrived cut short (more than a message can carry)".into()));
        }
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds in this process for us; nothing
                // else owns them.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Err(HandoverError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    (&*sock).read_exact(&mut len[got..])?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_VALUE {
        return Err(HandoverError::Parse(format!("a value of {n} bytes (at most {MAX_VALUE})")));
    }
    let mut body = vec![0u8; n];
    (&*sock).read_exact(&mut body)?;
    Ok((body, fds))
}

impl Handover {
    /// Sends the value and its fds over `sock` (one frame, [`send_frame`]). The fds stay open
    /// here too until this value is dropped.
    pub fn send(&self, sock: &UnixStream) -> Result<(), HandoverError> {
        let raw: Vec<RawFd> = self.fds.iter().map(|f| f.as_raw_fd()).collect();
        send_frame(sock, &self.state.to_bytes(), &raw)
    }

    /// Receives a value sent with [`Handover::send`], checking its version and fd count.
    pub fn receive(sock: &UnixStream) -> Result<Handover, HandoverError> {
        let (body, fds) = receive_frame(sock)?;
        let state = HandoverState::from_bytes(&body)?;
        if state.fds != fds.len() || fds.is_empty() {
            return Err(HandoverError::Fds { expected: state.fds, got: fds.len() });
        }
        Ok(Handover { state, fds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(fds: usize) -> HandoverState {
        HandoverState {
            version: HANDOVER_VERSION,
            source: "stratusfs://127.0.0.1:7480/v/sub".parse().unwrap(),
            mountpoint: "/mnt/x".into(),
            options: MountOptions::parse(&["threads=2,attr_ttl=3".into()]).unwrap(),
            token: "t".into(),
            trust: ClientTrust { ca_file: None, fingerprint: Some("ab".into()), ..Default::default() },
            init: InitParams { minor: 31, flags: 7, max_write: 1 << 20, max_readahead: 1 << 20, max_pages: 256 },
            root: 42,
            session: "00ff".into(),
            fs: FsHandover::default(),
            pending: vec![PendingRequest { unique: 9, channel: 1, bytes: vec![1, 2, 3] }],
            fds,
        }
    }

    #[test]
    fn a_handover_crosses_a_socket_with_its_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let (keep, pass) = UnixStream::pair().unwrap();
        let h = Handover { state: state(2), fds: vec![pass.into(), std::fs::File::open("/dev/null").unwrap().into()] };
        h.send(&a).unwrap();
        let got = Handover::receive(&b).unwrap();
        assert_eq!(got.state, h.state);
        assert_eq!(got.fds.len(), 2);
        // The first fd is the same socket: what is written to it arrives at its peer.
        let passed = UnixStream::from(got.fds.into_iter().next().unwrap());
        drop(h);
        (&passed).write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        (&keep).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn an_unknown_version_is_refused_naming_both() {
        let mut s = state(1);
        s.version = 99;
        let e = HandoverState::from_bytes(&s.to_bytes()).unwrap_err();
        assert!(matches!(e, HandoverError::Version { found: 99 }), "{e}");
        assert!(e.to_string().contains("version 99") && e.to_string().contains("version 1"), "{e}");
        let e = HandoverState::from_bytes(b"{\"version\":1}").unwrap_err();
        assert!(matches!(e, HandoverError::Parse(_)), "{e}");
    }

    #[test]
    fn a_value_without_its_fds_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let h = Handover { state: state(3), fds: vec![std::fs::File::open("/dev/null").unwrap().into()] };
        h.send(&a).unwrap();
        let e = Handover::receive(&b).unwrap_err();
        assert!(matches!(e, HandoverError::Fds { expected: 3, got: 1 }), "{e}");
    }
}
