//! A FUSE session over `/dev/fuse`: the INIT handshake, reader threads, replies, and
//! FUSE_INTERRUPT delivered to the filesystem as the cancellation of the request's task.
//!
//! stratusfs owns this thin layer instead of using fuser or fuse-backend-rs because it needs two
//! things neither crate offers together (docs/decisions.md): interrupts reaching the filesystem
//! (fuser answers FUSE_INTERRUPT with ENOSYS; fuse-backend-rs ignores it), and adopting a connection
//! another process already initialised (fuser's `Session::from_fd` redoes INIT). The negotiated
//! [`InitParams`] are kept in the mount state so a successor process can adopt the fd.
//!
//! Threads: `threads` reader threads each block in read(2) on their own clone of the fd
//! (FUSE_DEV_IOC_CLONE) and hand every request to the tokio runtime as a task; replies are written
//! from the tasks. A request's task is registered by its `unique` id; FUSE_INTERRUPT aborts it and
//! answers EINTR, and whoever removes the registration first is the one that replies.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

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
    /// The bytes after the header (for a WRITE: only its `fuse_write_in`).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// A WRITE's payload: pieces of [`PIECE`] bytes, the last one shorter.
    pub fn take_payload(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.payload)
    }
}

/// The bytes of a WRITE request before its payload.
const HEAD: usize = std::mem::size_of::<InHeader>() + std::mem::size_of::<abi::WriteIn>();
/// A payload piece is one chunk of the block store, so the pieces of a chunk-aligned write become
/// the file's chunks as they are (docs/decisions.md, "Writes without a copy").
pub const PIECE: usize = crate::blockstore::codec::CHUNK_SIZE;

/// A reader thread's buffers: one read(2) scatters a request over `head` and then `pieces`, so a
/// WRITE's payload starts at the start of a piece. A WRITE takes the pieces its payload filled
/// and they are replaced; the bytes of any other request are copied out (they are small).
struct ReadBuffers {
    head: [u8; HEAD],
    pieces: Vec<Vec<u8>>,
}

impl ReadBuffers {
    fn new(p: &InitParams) -> ReadBuffers {
        // The kernel wants room for the largest write and its headers; the rest is margin.
        let count = (p.max_write as usize + 64 * 1024).div_ceil(PIECE);
        ReadBuffers { head: [0; HEAD], pieces: (0..count).map(|_| Vec::with_capacity(PIECE)).collect() }
    }

    /// Reads one request. `Ok(None)`: the filesystem was unmounted (ENODEV).
    fn read(&mut self, chan: &Channel) -> std::io::Result<Option<usize>> {
        let mut iov = Vec::with_capacity(self.pieces.len() + 1);
        iov.push(libc::iovec { iov_base: self.head.as_mut_ptr().cast(), iov_len: HEAD });
        for p in &mut self.pieces {
            iov.push(libc::iovec { iov_base: p.spare_capacity_mut().as_mut_ptr().cast(), iov_len: PIECE });
        }
        loop {
            // SAFETY: every iovec points at memory owned by `self` for its whole length, which
            // outlives the call; the kernel only writes into it.
            let n = unsafe { libc::readv(chan.raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // ENOENT: the request was interrupted before we read it.
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                Some(libc::ENODEV) => return Ok(None),
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
        for (i, p) in self.pieces.iter_mut().enumerate().take(rest.div_ceil(PIECE)) {
            let filled = (rest - i * PIECE).min(PIECE);
            // SAFETY: the kernel wrote the first `filled` bytes of this piece's spare capacity
            // (readv fills its iovecs in order), and u8 has no invalid values.
            unsafe { p.set_len(filled) };
            if header.opcode == opcode::WRITE {
                payload.push(std::mem::replace(p, Vec::with_capacity(PIECE)));
            } else {
                body.extend_from_slice(p);
                p.clear();
            }
        }
        Some(Request { header, body, payload })
    }
}

/// The daemon's end of a FUSE connection (one fd; clones share the connection).
pub struct Channel {
    file: File,
}

const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500; // _IOR(229, 0, uint32_t)

impl Channel {
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { file: File::from(fd) }
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Another fd on the same connection, so several threads read in parallel. The kernel
    /// expects each reply on the fd its request was read from.
    pub fn clone_channel(&self) -> std::io::Result<Channel> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
        let mut master: u32 = self.file.as_raw_fd() as u32;
        // SAFETY: FUSE_DEV_IOC_CLONE reads a u32 fd from the pointer we pass.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FUSE_DEV_IOC_CLONE, &mut master) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Channel { file: f })
    }

    /// Reads one request. `Ok(None)`: the filesystem was unmounted (ENODEV).
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        loop {
            match (&self.file).read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) => match e.raw_os_error() {
                    // ENOENT: the request was interrupted before we read it.
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                    Some(libc::ENODEV) => return Ok(None),
                    _ => return Err(e),
                },
            }
        }
    }

    /// Writes a reply (or notification) made of `parts` in one write(2). ENOENT means the kernel
    /// no longer waits for it (interrupted); that is not an error.
    pub fn write_parts(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let iov: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
        match (&self.file).write_vectored(&iov) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn send(&self, unique: u64, error: i32, parts: &[&[u8]]) -> std::io::Result<()> {
        let len = std::mem::size_of::<OutHeader>() + parts.iter().map(|p| p.len()).sum::<usize>();
        let h = OutHeader { len: len as u32, error, unique };
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(h.bytes());
        all.extend_from_slice(parts);
        self.write_parts(&all)
    }
}

/// Requests in flight that a FUSE_INTERRUPT may cancel, by `unique`: the task to abort and the
/// channel the request came from (where its EINTR reply must go).
type Inflight = Arc<Mutex<HashMap<u64, (tokio::task::AbortHandle, Arc<Channel>)>>>;

/// Answers one request on the channel it was read from; exactly one reply per request.
pub struct Replier {
    unique: u64,
    chan: Arc<Channel>,
    inflight: Option<Inflight>,
}

impl Replier {
    /// Whether this replier still owns the reply (an interrupt may have answered it).
    fn take(&self) -> bool {
        match &self.inflight {
            Some(map) => map.lock().remove(&self.unique).is_some(),
            None => true,
        }
    }

    /// Sends `parts` as the reply.
    pub fn ok(self, parts: &[&[u8]]) {
        if self.take() {
            self.send(0, parts);
        }
    }

    /// Sends an error reply (`errno` positive).
    pub fn err(self, errno: i32) {
        if self.take() {
            self.send(-errno.abs(), &[]);
        }
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
    /// aborted task stops at an arbitrary await point.
    fn interruptible(&self, _header: &InHeader) -> bool {
        false
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

/// A running session: reader threads feeding a handler on a tokio runtime.
pub struct Session {
    pub params: InitParams,
    chan: Arc<Channel>,
    inflight: Inflight,
}

impl Session {
    /// A session on an initialised connection: after [`handshake`], or adopting the fd of a
    /// connection another process initialised (with the parameters it recorded).
    pub fn new(chan: Channel, params: InitParams) -> Session {
        Session { params, chan: Arc::new(chan), inflight: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub fn notifier(&self) -> Notifier {
        Notifier { chan: self.chan.clone() }
    }

    pub fn raw_fd(&self) -> i32 {
        self.chan.raw_fd()
    }

    /// Serves requests with `threads` readers until the filesystem is unmounted (or DESTROY).
    /// Blocks the calling thread; tasks run on `rt`.
    pub fn run<H: Handler>(&self, handler: Arc<H>, rt: tokio::runtime::Handle, threads: usize) -> std::io::Result<()> {
        let mut readers = Vec::new();
        for i in 0..threads.max(1) {
            let chan = if i == 0 { self.chan.clone() } else { Arc::new(self.chan.clone_channel()?) };
            let (handler, rt, params, inflight) = (handler.clone(), rt.clone(), self.params, self.inflight.clone());
            readers.push(
                std::thread::Builder::new()
                    .name(format!("fuse-{i}"))
                    .spawn(move || reader_loop(chan, handler, rt, inflight, params))?,
            );
        }
        let mut result = Ok(());
        for r in readers {
            if let Ok(Err(e)) = r.join() {
                result = Err(e);
            }
        }
        result
    }
}

fn reader_loop<H: Handler>(
    chan: Arc<Channel>,
    handler: Arc<H>,
    rt: tokio::runtime::Handle,
    inflight: Inflight,
    params: InitParams,
) -> std::io::Result<()> {
    let mut bufs = ReadBuffers::new(&params);
    crate::blocking::allow_on_this_thread();
    loop {
        let Some(n) = bufs.read(&chan)? else { return Ok(()) };
        let Some(req) = bufs.request(n) else {
            tracing::warn!(bytes = n, "a FUSE request shorter than its header");
            continue;
        };
        let header = req.header;
        match header.opcode {
            opcode::FORGET | opcode::BATCH_FORGET => handler.forget(&req),
            opcode::INTERRUPT => {
                let Some(target) = abi::InterruptIn::read(req.body()) else { continue };
                let entry = inflight.lock().remove(&target.unique);
                if let Some((task, target_chan)) = entry {
                    task.abort();
                    // We took the registration, so this is the one reply the kernel gets.
                    let _ = target_chan.send(target.unique, -libc::EINTR, &[]);
                    tracing::debug!(unique = target.unique, "interrupted");
                }
                // Otherwise the request already finished, or is not interruptible: it will be
                // answered normally.
            }
            opcode::DESTROY => {
                let _ = chan.send(header.unique, 0, &[]);
                return Ok(());
            }
            _ => {
                let unique = header.unique;
                if handler.interruptible(&header) {
                    let reply = Replier { unique, chan: chan.clone(), inflight: Some(inflight.clone()) };
                    // Register before the task can run, so its reply finds the registration.
                    let mut map = inflight.lock();
                    let task = rt.spawn(handler.clone().handle(req, reply));
                    map.insert(unique, (task.abort_handle(), chan.clone()));
                } else {
                    let reply = Replier { unique, chan: chan.clone(), inflight: None };
                    run_inline_first(&rt, handler.clone().handle(req, reply));
                }
            }
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
    // SAFETY: open(2) with a static C string; the fd is owned from here on.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
