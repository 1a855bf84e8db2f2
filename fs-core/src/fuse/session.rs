//! A FUSE session over `/dev/fuse`: the INIT handshake, reader threads, replies, FUSE_INTERRUPT
//! delivered to the filesystem as the cancellation of the request's task, and the stop that a
//! handover needs (stop reading, answer what was read, hand the lock waits over).
//!
//! stratusfs owns this thin layer instead of using fuser or fuse-backend-rs because it needs two
//! things neither crate offers together (docs/decisions.md): interrupts reaching the filesystem
//! (fuser answers FUSE_INTERRUPT with ENOSYS; fuse-backend-rs ignores it), and adopting a connection
//! another process already initialised (fuser's `Session::from_fd` redoes INIT). The negotiated
//! [`InitParams`] are kept in the mount state so a successor process can adopt the fds.
//!
//! Threads: one reader thread per channel (the mount's fd and its clones made with
//! FUSE_DEV_IOC_CLONE), each reading requests and handing them to the tokio runtime; replies are
//! written from the tasks, each on the channel its request came from (the kernel looks a reply up
//! in that fd's list of requests being processed). Contract: exactly one reply per request.
//!
//! Interrupts: only requests the handler calls interruptible (lock waits) are registered by their
//! `unique` id; FUSE_INTERRUPT aborts such a task and answers EINTR, and whoever removes the
//! registration first is the one that replies. The kernel sends one FUSE_INTERRUPT per request,
//! and another reader may read it before the reader that read the request has registered it: such
//! an interrupt is kept (`early`) and the request is answered EINTR when it registers.
//!
//! Stopping ([`Session::stop`]): readers wait in a blocking read(2), where the kernel hands each
//! request to the reader that has waited longest (so work spreads over the threads). To make them
//! leave, the stop makes the kernel queue one token request per reader: threads of this process
//! each ask the mount's root for an extended attribute whose name carries the stop's nonce
//! (`user.stratusfs-stop.NONCE`), queued behind the requests already pending. A reader that reads
//! one answers it ENODATA and leaves, so each reader reads at most up to its token: what the kernel
//! queues behind the tokens stays queued for whoever reads the fds next (a token of another run is
//! answered ENODATA like any unknown attribute, its nonce being another's). Until kernel 6.18.44
//! the tokens were FUSE_NOTIFY_RETRIEVE replies for the root; kernels now refuse a retrieval of
//! anything but a regular file (EINVAL), and no regular file is sure to be in the kernel's cache.
//! docs/decisions.md tells why not epoll.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::abi::{self, InHeader, OutHeader, Wire, init, opcode};

/// What the kernel and this daemon agreed in FUSE_INIT. A process adopting a live connection
/// needs exactly this (it never sees the INIT request again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitParams {
    pub minor: u32,
    /// The capability flags both sides agreed on (flags | flags2 << 32).
    pub flags: u64,
    pub max_write: u32,
    pub max_readahead: u32,
    pub max_pages: u16,
}

impl InitParams {
    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }
}

/// What we ask the kernel for; it grants the intersection with what it offers.
#[derive(Clone, Copy, Debug)]
pub struct InitWanted {
    pub flags: u64,
    pub max_write: u32,
    pub max_readahead: u32,
}

/// One request as read from the kernel: its header, the rest of it contiguous, and a WRITE's
/// payload apart, in the pieces it was read into (see [`ReadBuffers`]).
pub struct Request {
    pub header: InHeader,
    body: Vec<u8>,
    payload: Vec<Vec<u8>>,
}

impl Request {
    /// A request from its bytes as the kernel sent them (an adopted lock wait; tests).
    pub fn from_bytes(bytes: &[u8]) -> Option<Request> {
        let header = InHeader::read(bytes)?;
        Some(Request { header, body: bytes[std::mem::size_of::<InHeader>()..].to_vec(), payload: Vec::new() })
    }

    /// The bytes after the header (for a WRITE: only its `fuse_write_in`).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// A WRITE's payload: pieces of the session's piece size, the last one shorter.
    pub fn take_payload(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.payload)
    }

    /// The header and body as the kernel sent them (a WRITE without its payload).
    fn to_bytes(&self) -> Vec<u8> {
        [self.header.bytes(), &self.body[..]].concat()
    }
}

/// The bytes of a WRITE request before its payload.
const HEAD: usize = std::mem::size_of::<InHeader>() + std::mem::size_of::<abi::WriteIn>();

/// A reader thread's buffers: one read(2) scatters a request over `head` and then `pieces`, so a
/// WRITE's payload starts at the start of a piece. A WRITE takes the pieces its payload filled
/// and they are replaced; the bytes of any other request are copied out (they are small).
struct ReadBuffers {
    head: [u8; HEAD],
    pieces: Vec<Vec<u8>>,
    piece: usize,
}

impl ReadBuffers {
    fn new(p: &InitParams, piece: usize) -> ReadBuffers {
        // The kernel wants room for the largest write and its headers; the rest is margin.
        let count = (p.max_write as usize + 64 * 1024).div_ceil(piece);
        ReadBuffers { head: [0; HEAD], pieces: (0..count).map(|_| Vec::with_capacity(piece)).collect(), piece }
    }

    /// Reads one request.
    fn read(&mut self, chan: &Channel) -> std::io::Result<Read> {
        let mut iov = Vec::with_capacity(self.pieces.len() + 1);
        iov.push(libc::iovec { iov_base: self.head.as_mut_ptr().cast(), iov_len: HEAD });
        for p in &mut self.pieces {
            iov.push(libc::iovec { iov_base: p.spare_capacity_mut().as_mut_ptr().cast(), iov_len: self.piece });
        }
        loop {
            // nix's readv takes initialised slices; the pieces are fresh, uninitialised capacity
            // (a WRITE takes them as they are), so this one call stays raw.
            // SAFETY: every iovec points at memory owned by `self` for its whole length, which
            // outlives the call; the kernel only writes into it.
            let n = unsafe { libc::readv(chan.raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if n >= 0 {
                return Ok(Read::Request(n as usize));
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // ENOENT: the request was interrupted before we read it.
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                Some(libc::ENODEV) => return Ok(Read::Unmounted),
                _ => return Err(e),
            }
        }
    }

    /// The request the last read of `n` bytes brought (`None`: shorter than a header).
    fn request(&mut self, n: usize) -> Option<Request> {
        let hl = std::mem::size_of::<InHeader>();
        let header = InHeader::read(&self.head[..n.min(HEAD)])?;
        let in_head = n.min(HEAD);
        let rest = n - in_head;
        let mut body = self.head[hl..in_head].to_vec();
        let mut payload = Vec::new();
        let piece = self.piece;
        for (i, p) in self.pieces.iter_mut().enumerate().take(rest.div_ceil(piece)) {
            let filled = (rest - i * piece).min(piece);
            // SAFETY: the kernel wrote the first `filled` bytes of this piece's spare capacity
            // (readv fills its iovecs in order), and u8 has no invalid values.
            unsafe { p.set_len(filled) };
            if header.opcode == opcode::WRITE {
                payload.push(std::mem::replace(p, Vec::with_capacity(piece)));
            } else {
                body.extend_from_slice(p);
                p.clear();
            }
        }
        Some(Request { header, body, payload })
    }
}

/// What one read brought.
enum Read {
    Request(usize),
    /// The filesystem was unmounted (ENODEV).
    Unmounted,
}

/// The daemon's end of a FUSE connection (one fd; clones share the connection).
pub struct Channel {
    fd: OwnedFd,
}

// FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t)
nix::ioctl_read!(fuse_dev_ioc_clone, 229, 0, u32);

impl Channel {
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Another fd on the same connection, so several threads read in parallel. The kernel
    /// expects each reply on the fd its request was read from.
    pub fn clone_channel(&self) -> std::io::Result<Channel> {
        let f = open_dev_fuse()?;
        let mut master: u32 = self.fd.as_raw_fd() as u32;
        // SAFETY: FUSE_DEV_IOC_CLONE reads a u32 fd from the pointer we pass.
        unsafe { fuse_dev_ioc_clone(f.as_raw_fd(), &mut master) }.map_err(std::io::Error::from)?;
        Ok(Channel { fd: f })
    }

    /// A duplicate of the fd (for a successor process, which must hold the same open file: the
    /// kernel keeps the requests being processed per open file).
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Makes reads wait for a request. The flag belongs to the open file, which a predecessor
    /// shares with us after a handover, so it is set rather than assumed.
    fn set_blocking(&self) -> std::io::Result<()> {
        let flags = OFlag::from_bits_retain(fcntl(&self.fd, FcntlArg::F_GETFL)?);
        if flags.contains(OFlag::O_NONBLOCK) {
            fcntl(&self.fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
        }
        Ok(())
    }

    /// Reads one request, waiting for one. `Ok(None)`: the filesystem was unmounted (ENODEV).
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        loop {
            match nix::unistd::read(&self.fd, buf) {
                Ok(n) => return Ok(Some(n)),
                // ENOENT: the request was interrupted before we read it.
                Err(nix::Error::EINTR | nix::Error::ENOENT) => continue,
                Err(nix::Error::ENODEV) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes a reply (or notification) made of `parts` in one write(2). ENOENT means the kernel
    /// no longer waits for it (interrupted); that is not an error.
    pub fn write_parts(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let iov: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
        match nix::sys::uio::writev(&self.fd, &iov) {
            Ok(_) | Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn send(&self, unique: u64, error: i32, parts: &[&[u8]]) -> std::io::Result<()> {
        let len = std::mem::size_of::<OutHeader>() + parts.iter().map(|p| p.len()).sum::<usize>();
        let h = OutHeader { len: len as u32, error, unique };
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(h.bytes());
        all.extend_from_slice(parts);
        self.write_parts(&all)
    }
}

/// A lock wait (F_SETLKW) read but not answered when the session stopped: handed to whoever
/// serves the connection next, who answers it on the same channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    /// The kernel's request id.
    pub unique: u64,
    /// Index of the channel (fd) it was read from: its reply must go there.
    pub channel: usize,
    /// The request's bytes as the kernel sent them.
    pub bytes: Vec<u8>,
}

/// An interruptible request being served.
struct Waiting {
    task: tokio::task::AbortHandle,
    channel: usize,
    bytes: Vec<u8>,
}

/// How long an interrupt that matched no registered request is kept for one that registers late.
const EARLY_INTERRUPT_KEPT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Interrupts {
    /// Interruptible requests in flight, by `unique`.
    waiting: HashMap<u64, Waiting>,
    /// FUSE_INTERRUPTs that found no registered request, by target `unique`: either it finished
    /// (or is not interruptible), or its reader has not registered it yet.
    early: HashMap<u64, Instant>,
}

impl Interrupts {
    fn keep_early(&mut self, unique: u64) {
        let now = Instant::now();
        if self.early.len() >= 1024 {
            self.early.retain(|_, at| now.duration_since(*at) < EARLY_INTERRUPT_KEPT);
        }
        self.early.insert(unique, now);
    }
}

/// Requests read and not answered yet (interruptible ones apart), and who waits for none.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Counts one request as in flight until dropped (with its reply).
struct ActiveGuard(Arc<Active>);

impl ActiveGuard {
    fn new(a: &Arc<Active>) -> ActiveGuard {
        a.count.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(a.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Answers one request on the channel it was read from; exactly one reply per request.
pub struct Replier {
    unique: u64,
    chan: Arc<Channel>,
    interrupts: Option<Arc<Mutex<Interrupts>>>,
    _active: Option<ActiveGuard>,
    replied: bool,
}

impl Drop for Replier {
    /// A request whose handler ended without answering (it panicked, or its task was dropped
    /// with the runtime) gets EIO, unless an interrupt or a stop took the reply: the kernel must
    /// never wait for an answer no one will send.
    fn drop(&mut self) {
        if !self.replied && self.take() {
            tracing::error!(unique = self.unique, "a request ended without a reply; answering EIO");
            self.send(-libc::EIO, &[]);
        }
    }
}

impl Replier {
    fn new(
        unique: u64,
        chan: Arc<Channel>,
        interrupts: Option<Arc<Mutex<Interrupts>>>,
        active: Option<ActiveGuard>,
    ) -> Replier {
        Replier { unique, chan, interrupts, _active: active, replied: false }
    }

    /// Whether this replier still owns the reply (an interrupt or a stop may have taken it).
    fn take(&self) -> bool {
        match &self.interrupts {
            Some(map) => map.lock().waiting.remove(&self.unique).is_some(),
            None => true,
        }
    }

    /// Sends `parts` as the reply.
    pub fn ok(mut self, parts: &[&[u8]]) {
        self.replied = true;
        if self.take() {
            self.send(0, parts);
        }
    }

    /// Sends an error reply (`errno` positive).
    pub fn err(mut self, errno: i32) {
        self.replied = true;
        if self.take() {
            self.send(-errno.abs(), &[]);
        }
    }

    /// The reply was sent without this replier (an interrupt before the task started).
    fn replied_elsewhere(mut self) {
        self.replied = true;
    }

    fn send(&self, error: i32, parts: &[&[u8]]) {
        tracing::trace!(unique = self.unique, error, "reply");
        if let Err(e) = self.chan.send(self.unique, error, parts) {
            tracing::warn!(unique = self.unique, error = %e, "writing a FUSE reply failed");
        }
    }
}

/// Sends unsolicited messages (cache invalidations) to the kernel.
#[derive(Clone)]
pub struct Notifier {
    chan: Arc<Channel>,
}

impl Notifier {
    /// Sends notification `code` (see [`abi::notify`]) with `parts` as its body.
    pub fn notify(&self, code: i32, parts: &[&[u8]]) -> std::io::Result<()> {
        self.chan.send(0, code, parts)
    }
}

/// The filesystem side: handles one request and answers it through the replier.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request, reply: Replier) -> impl std::future::Future<Output = ()> + Send;
    /// Requests the kernel sends without expecting an answer (FORGET, BATCH_FORGET).
    fn forget(&self, _req: &Request) {}
    /// Whether a FUSE_INTERRUPT may cancel this request (its task is aborted and EINTR
    /// answered). Only requests that can wait unboundedly (lock waits) should say yes: an
    /// aborted task stops at an arbitrary await point. A stop hands such requests over instead
    /// of waiting for them.
    fn interruptible(&self, _header: &InHeader) -> bool {
        false
    }
    /// The size of the pieces a WRITE's payload is read into (see [`Request::take_payload`]).
    fn payload_piece(&self) -> usize {
        64 * 1024
    }
}

/// Performs the INIT handshake on a freshly mounted connection.
pub fn handshake(chan: &Channel, wanted: InitWanted) -> std::io::Result<InitParams> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = chan.read(&mut buf)?.ok_or_else(|| std::io::Error::other("unmounted before FUSE_INIT"))?;
        let h = InHeader::read(&buf[..n]).ok_or_else(|| std::io::Error::other("short FUSE request"))?;
        let body = &buf[std::mem::size_of::<InHeader>()..n];
        if h.opcode != opcode::INIT {
            // Nothing else may come before INIT; answer EIO and keep waiting.
            chan.send(h.unique, -libc::EIO, &[])?;
            continue;
        }
        let i = abi::InitIn::read(body).ok_or_else(|| std::io::Error::other("short FUSE_INIT"))?;
        if i.major != abi::KERNEL_VERSION {
            chan.send(h.unique, -libc::EPROTO, &[])?;
            return Err(std::io::Error::other(format!("kernel speaks FUSE {}.{}, we speak 7.x", i.major, i.minor)));
        }
        let offered = i.flags as u64 | if i.flags as u64 & init::INIT_EXT != 0 { (i.flags2 as u64) << 32 } else { 0 };
        let flags = offered & (wanted.flags | init::INIT_EXT);
        let max_pages = (wanted.max_write.div_ceil(4096)).min(u16::MAX as u32) as u16;
        let params = InitParams {
            minor: i.minor.min(abi::KERNEL_MINOR_VERSION),
            flags,
            max_write: wanted.max_write,
            max_readahead: wanted.max_readahead.min(i.max_readahead),
            max_pages,
        };
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION,
            max_readahead: params.max_readahead,
            flags: flags as u32,
            max_background: 64,
            congestion_threshold: 48,
            max_write: params.max_write,
            time_gran: 1,
            max_pages,
            flags2: (flags >> 32) as u32,
            ..Default::default()
        };
        chan.send(h.unique, 0, &[out.bytes()])?;
        tracing::info!(
            minor = i.minor,
            flags = format!("{flags:#x}"),
            max_write = params.max_write,
            "FUSE connection initialised"
        );
        return Ok(params);
    }
}

/// The readers' stop switch for one [`Session::run`].
struct Stop {
    stopping: AtomicBool,
    /// In the name of the attribute the stop's token requests ask for: random, so that a token of
    /// another run (or process) is told apart.
    nonce: u64,
}

impl Stop {
    fn new() -> Stop {
        Stop { stopping: AtomicBool::new(false), nonce: rand::random() }
    }

    /// The attribute name the tokens ask the root for.
    fn token_name(&self) -> String {
        format!("user.stratusfs-stop.{:016x}", self.nonce)
    }

    /// The attribute name a GETXATTR of the root asks for.
    fn asked_name(req: &Request) -> Option<&[u8]> {
        let h = &req.header;
        if h.opcode != opcode::GETXATTR || h.nodeid != abi::ROOT_ID {
            return None;
        }
        let name = req.body().get(std::mem::size_of::<abi::GetxattrIn>()..)?;
        name.split(|&b| b == 0).next()
    }

    /// Whether a request is one of this run's stop tokens.
    fn is_token(&self, req: &Request) -> bool {
        Self::asked_name(req).is_some_and(|n| n == self.token_name().as_bytes())
    }

    /// Whether a request is any run's stop token.
    fn is_any_token(req: &Request) -> bool {
        Self::asked_name(req).is_some_and(|n| n.starts_with(b"user.stratusfs-stop."))
    }

    /// Sets the switch (once; later calls return `false`).
    fn set(&self) -> bool {
        !self.stopping.swap(true, Ordering::SeqCst)
    }

    /// Asks the root of the mount at `root` for the token attribute `n` times at once, each on a
    /// thread of its own (each call returns once a reader answered it).
    fn queue_tokens(&self, root: &std::path::Path, n: usize) {
        use std::os::unix::ffi::OsStrExt;
        let (Ok(path), Ok(name)) =
            (std::ffi::CString::new(root.as_os_str().as_bytes()), std::ffi::CString::new(self.token_name()))
        else {
            tracing::error!(root = %root.display(), "a mount point with a NUL byte: no stop token queued");
            return;
        };
        for _ in 0..n {
            let (path, name) = (path.clone(), name.clone());
            let spawned = std::thread::Builder::new().name("fuse-stop".into()).spawn(move || {
                // SAFETY: both strings are NUL-terminated and live through the call; a null buffer
                // of size 0 asks for the value's size only.
                let r = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
                let e = std::io::Error::last_os_error();
                if r >= 0 || e.raw_os_error() != Some(libc::ENODATA) {
                    // Unmounted meanwhile: the readers leave on ENODEV.
                    tracing::debug!(error = %e, "a stop token was not answered as a token");
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a stop token's thread failed");
            }
        }
    }
}

/// Why [`Session::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// [`Session::stop`]: the connection lives on for whoever reads it next.
    Stopped,
    /// The filesystem was unmounted (or the kernel sent DESTROY).
    Unmounted,
}

/// Points where a test can hold a reader (to order what two readers do).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    /// A reader read an interruptible request and is about to register it.
    BeforeRegister(u64),
    /// A reader handled a FUSE_INTERRUPT for this request.
    AfterInterrupt(u64),
}

/// A session on an initialised connection: reader threads (one per channel) feeding a handler on
/// a tokio runtime.
pub struct Session {
    pub params: InitParams,
    chans: Arc<Vec<Arc<Channel>>>,
    interrupts: Arc<Mutex<Interrupts>>,
    active: Arc<Active>,
    /// The switch of the next (or running) [`Session::run`].
    stop: Mutex<Arc<Stop>>,
    #[cfg(test)]
    hook: Option<Arc<dyn Fn(Hook) + Send + Sync>>,
}

impl Session {
    /// A session on an initialised connection: after [`handshake`] (the mount's fd and its
    /// clones), or adopting the fds of a connection another process initialised (with the
    /// parameters it recorded, the fds in the same order). One reader runs per channel.
    pub fn new(chans: Vec<Channel>, params: InitParams) -> std::io::Result<Session> {
        if chans.is_empty() {
            return Err(std::io::Error::other("a FUSE session needs at least one channel"));
        }
        for c in &chans {
            c.set_blocking()?;
        }
        Ok(Session {
            params,
            chans: Arc::new(chans.into_iter().map(Arc::new).collect()),
            interrupts: Default::default(),
            active: Default::default(),
            stop: Mutex::new(Arc::new(Stop::new())),
            #[cfg(test)]
            hook: None,
        })
    }

    #[cfg(test)]
    pub(crate) fn set_hook(&mut self, hook: impl Fn(Hook) + Send + Sync + 'static) {
        self.hook = Some(Arc::new(hook));
    }

    pub fn notifier(&self) -> Notifier {
        Notifier { chan: self.chans[0].clone() }
    }

    /// Duplicates of every channel's fd, in order (for a successor).
    pub fn dup_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.chans.iter().map(|c| c.try_clone_fd()).collect()
    }

    pub fn channels(&self) -> usize {
        self.chans.len()
    }

    /// Serves requests, one reader thread per channel, until the filesystem is unmounted (or
    /// DESTROY), or [`Session::stop`]. Blocks the calling thread; tasks run on `rt`.
    pub fn run<H: Handler>(&self, handler: Arc<H>, rt: tokio::runtime::Handle) -> std::io::Result<Ended> {
        let stop = self.stop.lock().clone();
        let mut readers = Vec::new();
        for i in 0..self.chans.len() {
            let reader = Reader {
                index: i,
                chans: self.chans.clone(),
                interrupts: self.interrupts.clone(),
                active: self.active.clone(),
                stop: stop.clone(),
                params: self.params,
                #[cfg(test)]
                hook: self.hook.clone(),
            };
            let (handler, rt) = (handler.clone(), rt.clone());
            readers.push(std::thread::Builder::new().name(format!("fuse-{i}")).spawn(move || reader.run(handler, rt))?);
        }
        let mut result = Ok(());
        for r in readers {
            if let Ok(Err(e)) = r.join() {
                result = Err(e);
            }
        }
        result?;
        Ok(if stop.stopping.load(Ordering::SeqCst) { Ended::Stopped } else { Ended::Unmounted })
    }

    /// A fresh stop switch for the next [`Session::run`] (after a stop, to serve again). Call it
    /// before starting `run`, so that a [`Session::stop`] right after cannot miss the readers.
    pub fn arm(&self) {
        *self.stop.lock() = Arc::new(Stop::new());
    }

    /// Makes the readers of the running (or next) [`Session::run`] leave (it returns once they
    /// have): each reads at most the requests the kernel queued before this call. Requests
    /// already read go on and are answered. `root` is where the connection is mounted (the
    /// tokens are requests on it).
    pub fn stop(&self, root: &std::path::Path) {
        let s = self.stop.lock().clone();
        if s.set() {
            s.queue_tokens(root, self.chans.len());
        }
    }

    /// Asks the kernel to queue again every request read on this connection and not answered
    /// (FUSE_NOTIFY_RESEND): after a crash of the process that read them, its successor gets them.
    /// Their `unique` then has bit 63 set; answers use it as it came.
    pub fn resend(&self) -> std::io::Result<()> {
        self.chans[0].send(0, abi::notify::RESEND, &[])
    }

    /// Sets the stop switch without queuing tokens; the name the tokens ask for (tests send
    /// them as the kernel would).
    #[cfg(test)]
    fn stop_switch(&self) -> String {
        let s = self.stop.lock().clone();
        s.set();
        s.token_name()
    }

    /// After a stop: the interruptible requests still waiting, taken from their tasks (aborted,
    /// never answered here) so that whoever serves the connection next answers them.
    pub fn take_waiting(&self) -> Vec<PendingRequest> {
        let taken: Vec<(u64, Waiting)> = self.interrupts.lock().waiting.drain().collect();
        let mut out: Vec<PendingRequest> = taken
            .into_iter()
            .map(|(unique, w)| {
                w.task.abort();
                PendingRequest { unique, channel: w.channel, bytes: w.bytes }
            })
            .collect();
        out.sort_by_key(|p| p.unique);
        out
    }

    /// Waits until every request read so far, interruptible ones apart, has been answered.
    pub async fn drained(&self) {
        loop {
            let idle = self.active.idle.notified();
            if self.active.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Serves requests a predecessor read and did not answer (see [`Session::take_waiting`]),
    /// before this session's readers start, so that an interrupt for one finds it.
    pub fn resume_waiting<H: Handler>(
        &self,
        handler: &Arc<H>,
        rt: &tokio::runtime::Handle,
        pending: Vec<PendingRequest>,
    ) {
        for p in pending {
            let (Some(chan), Some(req)) = (self.chans.get(p.channel), Request::from_bytes(&p.bytes)) else {
                tracing::warn!(
                    unique = p.unique,
                    channel = p.channel,
                    "a handed-over request names no channel of this session"
                );
                continue;
            };
            let reply = Replier::new(p.unique, chan.clone(), Some(self.interrupts.clone()), None);
            let mut g = self.interrupts.lock();
            let task = rt.spawn(handler.clone().handle(req, reply));
            g.waiting.insert(p.unique, Waiting { task: task.abort_handle(), channel: p.channel, bytes: p.bytes });
        }
    }
}

/// One reader thread's share of the session.
struct Reader {
    index: usize,
    chans: Arc<Vec<Arc<Channel>>>,
    interrupts: Arc<Mutex<Interrupts>>,
    active: Arc<Active>,
    stop: Arc<Stop>,
    params: InitParams,
    #[cfg(test)]
    hook: Option<Arc<dyn Fn(Hook) + Send + Sync>>,
}

impl Reader {
    #[cfg(test)]
    fn hook(&self, h: Hook) {
        if let Some(f) = &self.hook {
            f(h)
        }
    }

    #[cfg(not(test))]
    fn hook(&self, _: Hook) {}

    fn run<H: Handler>(self, handler: Arc<H>, rt: tokio::runtime::Handle) -> std::io::Result<()> {
        let chan = self.chans[self.index].clone();
        let mut bufs = ReadBuffers::new(&self.params, handler.payload_piece());
        crate::blocking::allow_on_this_thread();
        loop {
            if self.stop.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            let n = match bufs.read(&chan)? {
                Read::Request(n) => n,
                Read::Unmounted => return Ok(()),
            };
            let Some(req) = bufs.request(n) else {
                tracing::warn!(bytes = n, "a FUSE request shorter than its header");
                continue;
            };
            let header = req.header;
            match header.opcode {
                opcode::FORGET | opcode::BATCH_FORGET => handler.forget(&req),
                opcode::INTERRUPT => {
                    let Some(target) = abi::InterruptIn::read(req.body()) else { continue };
                    self.interrupt(target.unique);
                    self.hook(Hook::AfterInterrupt(target.unique));
                }
                opcode::GETXATTR if self.stop.is_token(&req) => {
                    let _ = chan.send(header.unique, -libc::ENODATA, &[]);
                    return Ok(());
                }
                opcode::GETXATTR if Stop::is_any_token(&req) => {
                    // Another run's token (its reader had left): not an attribute of the volume.
                    let _ = chan.send(header.unique, -libc::ENODATA, &[]);
                }
                opcode::NOTIFY_REPLY => {
                    // A retrieval nobody here asked for.
                    tracing::trace!(unique = header.unique, "FUSE_NOTIFY_REPLY ignored");
                }
                opcode::DESTROY => {
                    let _ = chan.send(header.unique, 0, &[]);
                    return Ok(());
                }
                _ => {
                    let unique = header.unique;
                    if handler.interruptible(&header) {
                        self.hook(Hook::BeforeRegister(unique));
                        let reply = Replier::new(unique, chan.clone(), Some(self.interrupts.clone()), None);
                        // Register before the task can run, so its reply finds the registration.
                        let mut g = self.interrupts.lock();
                        if g.early.remove(&unique).is_some() {
                            drop(g);
                            reply.replied_elsewhere();
                            // Interrupted before it was registered: nothing was done yet.
                            let _ = chan.send(unique, -libc::EINTR, &[]);
                            tracing::debug!(unique, "interrupted before it started");
                            continue;
                        }
                        let bytes = req.to_bytes();
                        let task = rt.spawn(handler.clone().handle(req, reply));
                        g.waiting.insert(unique, Waiting { task: task.abort_handle(), channel: self.index, bytes });
                    } else {
                        let reply = Replier::new(unique, chan.clone(), None, Some(ActiveGuard::new(&self.active)));
                        run_inline_first(&rt, handler.clone().handle(req, reply));
                    }
                }
            }
        }
    }

    /// FUSE_INTERRUPT for request `target`.
    fn interrupt(&self, target: u64) {
        let mut g = self.interrupts.lock();
        match g.waiting.remove(&target) {
            Some(w) => {
                drop(g);
                w.task.abort();
                // We took the registration, so this is the one reply the kernel gets.
                let _ = self.chans[w.channel].send(target, -libc::EINTR, &[]);
                tracing::debug!(unique = target, "interrupted");
            }
            // The request finished, is not interruptible (it will be answered normally), or its
            // reader has not registered it yet: kept for that case.
            None => g.keep_early(target),
        }
    }
}

/// Polls a request's task once on the reader thread, and spawns it on the runtime only if it has
/// to wait: a request answered from memory (a cached chunk, remembered attributes) then costs no
/// hand-over between threads, which on small requests cost more than the work itself. A task
/// that waits is polled again by the runtime with its own waker (futures may change wakers
/// between polls), so nothing it waits for is lost.
fn run_inline_first(rt: &tokio::runtime::Handle, task: impl Future<Output = ()> + Send + 'static) {
    let _in_runtime = rt.enter();
    let mut task = Box::pin(task);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if task.as_mut().poll(&mut cx).is_pending() {
        rt.spawn(task);
    }
}

/// Opens `/dev/fuse`.
pub fn open_dev_fuse() -> std::io::Result<OwnedFd> {
    Ok(nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Barrier;

    /// A handler whose lock waits never end by themselves.
    struct Waits;

    impl Handler for Waits {
        async fn handle(self: Arc<Self>, req: Request, reply: Replier) {
            if req.header.opcode == opcode::SETLKW {
                std::future::pending::<()>().await;
            }
            reply.ok(&[]);
        }

        fn interruptible(&self, h: &InHeader) -> bool {
            h.opcode == opcode::SETLKW
        }
    }

    fn request(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
        let len = (std::mem::size_of::<InHeader>() + body.len()) as u32;
        let h = InHeader { len, opcode, unique, nodeid: 1, ..Default::default() };
        [h.bytes(), body].concat()
    }

    /// A reply read from the kernel's side of a channel, within 5 s.
    fn reply(k: &UnixDatagram) -> Option<OutHeader> {
        k.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = k.recv(&mut buf).ok()?;
        OutHeader::read(&buf[..n])
    }

    /// Sends one stop token per reader, as the kernel queues them for the stop's getxattr calls.
    /// A reader that saw the switch before reading leaves without reading its token (the kernel
    /// keeps it for whoever reads next): see [`drain_stop_replies`].
    fn answer_stop(name: &str, readers: &[&UnixDatagram]) {
        for (i, k) in readers.iter().enumerate() {
            let unique = 1000 + 2 * i as u64;
            let body = [abi::GetxattrIn { size: 0, padding: 0 }.bytes(), name.as_bytes(), &[0]].concat();
            k.send(&request(opcode::GETXATTR, unique, &body)).unwrap();
        }
    }

    /// After the readers left: the tokens they read were answered ENODATA, and nothing else.
    fn drain_stop_replies(k: &UnixDatagram) {
        k.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 256];
        while let Ok(n) = k.recv(&mut buf) {
            let r = OutHeader::read(&buf[..n]).unwrap();
            assert!(r.unique >= 1000 && r.error == -libc::ENODATA, "a token is answered ENODATA: {r:?}");
        }
    }

    fn params() -> InitParams {
        InitParams { minor: 31, flags: 0, max_write: 128 * 1024, max_readahead: 0, max_pages: 32 }
    }

    #[test]
    fn an_interrupt_read_before_its_request_is_registered_still_interrupts_it() {
        // Two channels, as two fds of one connection: the lock wait is read on A; its interrupt
        // is read on B while A's reader is held between reading the wait and registering it.
        let (a, ka) = UnixDatagram::pair().unwrap();
        let (b, kb) = UnixDatagram::pair().unwrap();
        let chans = vec![Channel::from_fd(a.into()), Channel::from_fd(b.into())];
        let mut session = Session::new(chans, params()).unwrap();
        let read = Arc::new(Barrier::new(2));
        let interrupted = Arc::new(Barrier::new(2));
        let (r, i) = (read.clone(), interrupted.clone());
        session.set_hook(move |h| match h {
            Hook::BeforeRegister(10) => {
                r.wait();
                i.wait();
            }
            Hook::AfterInterrupt(10) => {
                i.wait();
            }
            _ => {}
        });
        let session = Arc::new(session);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let s = session.clone();
        let handle = rt.handle().clone();
        let serving = std::thread::spawn(move || s.run(Arc::new(Waits), handle));
        ka.send(&request(opcode::SETLKW, 10, &[0; std::mem::size_of::<abi::LkIn>()])).unwrap();
        read.wait();
        kb.send(&request(opcode::INTERRUPT, 11, abi::InterruptIn { unique: 10 }.bytes())).unwrap();
        let r = reply(&ka).expect("the lock wait is answered on the channel it was read from");
        assert_eq!((r.unique, r.error), (10, -libc::EINTR));
        assert!(session.interrupts.lock().waiting.is_empty(), "nothing is left registered");
        // A later request is served as usual, and the stop ends the readers.
        ka.send(&request(opcode::GETATTR, 12, &[0; 16])).unwrap();
        assert_eq!(reply(&ka).map(|r| (r.unique, r.error)), Some((12, 0)));
        // Another run's token is answered and ignored.
        let other =
            [abi::GetxattrIn { size: 0, padding: 0 }.bytes(), b"user.stratusfs-stop.0000000000000001\0"].concat();
        kb.send(&request(opcode::GETXATTR, 13, &other)).unwrap();
        assert_eq!(reply(&kb).map(|r| (r.unique, r.error)), Some((13, -libc::ENODATA)));
        let name = session.stop_switch();
        answer_stop(&name, &[&ka, &kb]);
        assert_eq!(serving.join().unwrap().unwrap(), Ended::Stopped);
        drain_stop_replies(&ka);
        drain_stop_replies(&kb);
    }

    #[test]
    fn a_stop_answers_what_was_read_and_hands_lock_waits_over() {
        let (a, ka) = UnixDatagram::pair().unwrap();
        let session = Arc::new(Session::new(vec![Channel::from_fd(a.into())], params()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let (s, handle) = (session.clone(), rt.handle().clone());
        let serving = std::thread::spawn(move || s.run(Arc::new(Waits), handle));
        let wait = request(opcode::SETLKW, 20, &[7; std::mem::size_of::<abi::LkIn>()]);
        ka.send(&wait).unwrap();
        ka.send(&request(opcode::GETATTR, 21, &[0; 16])).unwrap();
        assert_eq!(reply(&ka).map(|r| r.unique), Some(21));
        std::thread::sleep(Duration::from_millis(50));
        let name = session.stop_switch();
        answer_stop(&name, &[&ka]);
        // Queued after the stop's token: nobody reads it.
        ka.send(&request(opcode::GETATTR, 22, &[0; 16])).unwrap();
        assert_eq!(serving.join().unwrap().unwrap(), Ended::Stopped);
        drain_stop_replies(&ka);
        rt.block_on(session.drained());
        let pending = session.take_waiting();
        assert_eq!(pending, vec![PendingRequest { unique: 20, channel: 0, bytes: wait.clone() }]);
        ka.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(ka.recv(&mut [0u8; 64]).is_err(), "neither the wait nor the queued request is answered");
        // A successor serves the queued request and resumes the wait, which its interrupt ends.
        let next =
            Arc::new(Session::new(vec![Channel::from_fd(session.dup_fds().unwrap().remove(0))], params()).unwrap());
        drop(session);
        let handler = Arc::new(Waits);
        next.resume_waiting(&handler, rt.handle(), pending);
        let (s, handle) = (next.clone(), rt.handle().clone());
        let serving = std::thread::spawn(move || s.run(handler, handle));
        assert_eq!(reply(&ka).map(|r| r.unique), Some(22));
        ka.send(&request(opcode::INTERRUPT, 23, abi::InterruptIn { unique: 20 }.bytes())).unwrap();
        assert_eq!(reply(&ka).map(|r| (r.unique, r.error)), Some((20, -libc::EINTR)));
        let name = next.stop_switch();
        answer_stop(&name, &[&ka]);
        assert_eq!(serving.join().unwrap().unwrap(), Ended::Stopped);
        drain_stop_replies(&ka);
    }
}
