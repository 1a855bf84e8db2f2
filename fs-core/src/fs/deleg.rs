//! Directory delegations, the mount's side (docs/write-back-metadata.md): while this session
//! holds a directory, new regular files in it are created, written, closed and unlinked here
//! without a round trip, and reach the server in batches (`Apply`) every few milliseconds, before
//! anything of this mount needs the server to know them, and when another session's request
//! recalls the directory.
//!
//! The state is plain data behind one mutex; [`crate::fs::StratusFs`] does the talking.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::fs::Ctx;
use crate::wire::pb;

/// A directory becomes worth asking for at its second create within this time.
pub const BURST: Duration = Duration::from_secs(1);
/// Creates wait at most this long before they are applied.
pub const APPLY_AFTER: Duration = Duration::from_millis(10);
/// A delegation without a create for this long is given back.
pub const IDLE: Duration = Duration::from_secs(2);
/// Not asked for again this long after a refusal.
pub const REFUSED_COOLDOWN: Duration = Duration::from_secs(30);
/// Not asked for again this long after a recall (two mounts creating in one directory).
pub const RECALLED_COOLDOWN: Duration = Duration::from_secs(2);

/// A directory this session holds.
pub struct Dir {
    pub epoch: u64,
    /// The directory's attributes as this mount sees them (times move with local creates);
    /// `None` after a change of this mount whose reply did not say (the server is asked).
    pub attr: Option<pb::Attr>,
    /// Names the server has (as of the grant and this mount's own changes since).
    pub names: HashSet<Vec<u8>>,
    /// Names created here and not applied yet → inode.
    pub pending: HashMap<Vec<u8>, u64>,
    pub inos: Range<u64>,
    pub open_ids: Range<u64>,
    /// Being given back: nothing new is created under it.
    pub returning: bool,
    /// Creates in an Apply now (the server's answers about the directory wait for it).
    pub in_flight: usize,
    pub last_create: Instant,
}

/// A regular file created under a delegation and not applied yet.
pub struct Pending {
    pub dir: u64,
    pub attr: pb::Attr,
    pub creator: Ctx,
    /// Handles still open → their open(2) flags.
    pub opens: BTreeMap<u64, u32>,
    pub created: Instant,
    /// In an Apply now: local shortcuts no longer apply (wait for the Apply, then ask the server).
    pub applying: bool,
}

#[derive(Default)]
pub struct State {
    pub dirs: HashMap<u64, Dir>,
    pub files: HashMap<u64, Pending>,
    /// Last create (not under a delegation) per directory, to spot a burst.
    pub recent: HashMap<u64, Instant>,
    /// Directories not to ask for until then.
    pub cooldown: HashMap<u64, Instant>,
    /// The Watch stream is open (a delegation is only asked for then).
    pub watching: bool,
    /// Counts this mount's namespace changes sent synchronously (a grant that raced one is not used).
    pub changes: u64,
}

impl State {
    /// The held, not returning, directory `dir`.
    pub fn active(&mut self, dir: u64) -> Option<&mut Dir> {
        self.dirs.get_mut(&dir).filter(|d| !d.returning)
    }

    /// A pending file that local shortcuts may serve.
    pub fn pending(&mut self, ino: u64) -> Option<&mut Pending> {
        self.files.get_mut(&ino).filter(|p| !p.applying)
    }

    /// The directory whose queue must be applied before the server can answer about `ino`.
    pub fn dir_of(&self, ino: u64) -> Option<u64> {
        if self.dirs.get(&ino).is_some_and(|d| !d.pending.is_empty() || d.in_flight > 0) {
            return Some(ino);
        }
        self.files.get(&ino).map(|p| p.dir)
    }

    /// After this mount changed names in `dir` through the server (`attr`: the directory after).
    pub fn noted(&mut self, dir: u64, added: Option<&[u8]>, removed: Option<&[u8]>, attr: Option<pb::Attr>) {
        self.changes += 1;
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.attr = attr;
            if let Some(n) = removed {
                d.names.remove(n);
            }
            if let Some(n) = added {
                d.names.insert(n.to_vec());
            }
        }
    }

    /// Whether a create in `dir` should ask for a delegation (and notes this create).
    pub fn worth_asking(&mut self, dir: u64, now: Instant) -> bool {
        if !self.watching || self.dirs.contains_key(&dir) {
            return false;
        }
        if self.cooldown.get(&dir).is_some_and(|t| now < *t) {
            return false;
        }
        if self.recent.len() > 10_000 {
            self.recent.clear();
        }
        let last = self.recent.insert(dir, now);
        last.is_some_and(|t| now.duration_since(t) < BURST)
    }
}

/// Wall-clock time as the protocol has it.
pub fn now_timespec() -> pb::Timespec {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pb::Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
}

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fs::{FsResult, Opened, OpenedReply, StratusFs, errno_of};
use crate::wire::error::MetaError;

/// The setgid bit of a directory's mode.
const S_ISGID: u32 = 0o2000;

impl StratusFs {
    /// Starts the Watch stream (recalls) and the timer that applies creates and gives idle
    /// delegations back. Ends when the filesystem is dropped.
    pub fn start_delegations(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if !self.cfg.delegations || self.session.reply.read_only {
            return None;
        }
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(APPLY_AFTER);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut stream: Option<tonic::Streaming<pb::WatchEvent>> = None;
            let mut retry_at = Instant::now();
            loop {
                let Some(fs) = weak.upgrade() else { return };
                if stream.is_none() && Instant::now() >= retry_at {
                    match fs.rpc().watch(fs.session.root()).await {
                        Ok(s) => {
                            stream = Some(s.into_inner());
                            fs.deleg.lock().watching = true;
                        }
                        Err(s) => {
                            let e = MetaError::from_status(&s);
                            tracing::debug!(error = %e, "no Watch stream: directories are not delegated for now");
                            retry_at = Instant::now() + Duration::from_secs(5);
                        }
                    }
                }
                drop(fs);
                let event = match stream.as_mut() {
                    Some(s) => tokio::select! {
                        e = s.message() => Some(e),
                        _ = ticker.tick() => None,
                    },
                    None => {
                        ticker.tick().await;
                        None
                    }
                };
                let Some(fs) = weak.upgrade() else { return };
                match event {
                    Some(Ok(Some(ev))) => {
                        let fs = fs.clone();
                        tokio::spawn(async move { fs.recalled(ev.recall_dir, ev.epoch).await });
                    }
                    Some(end) => {
                        if let Err(s) = end {
                            tracing::warn!(error = %MetaError::from_status(&s), "the Watch stream broke; giving delegations back");
                        }
                        stream = None;
                        retry_at = Instant::now() + Duration::from_secs(1);
                        fs.deleg.lock().watching = false;
                        let _ = fs.give_back_all().await;
                    }
                    None => fs.tick().await,
                }
            }
        }))
    }

    /// The timer: applies creates older than [`APPLY_AFTER`], gives back idle delegations.
    async fn tick(&self) {
        let now = Instant::now();
        let (due, idle): (Vec<u64>, Vec<u64>) = {
            let st = self.deleg.lock();
            if st.dirs.is_empty() {
                return;
            }
            let due = st
                .files
                .values()
                .filter(|p| !p.applying && now.duration_since(p.created) >= APPLY_AFTER)
                .map(|p| p.dir)
                .collect::<HashSet<u64>>()
                .into_iter()
                .collect();
            let idle = st
                .dirs
                .iter()
                .filter(|(_, d)| d.pending.is_empty() && now.duration_since(d.last_create) >= IDLE)
                .map(|(i, _)| *i)
                .collect();
            (due, idle)
        };
        for dir in due {
            let _ = self.apply_dir(dir, false, false).await;
        }
        for dir in idle {
            let _ = self.apply_dir(dir, true, false).await;
        }
    }

    /// A recall from the server.
    async fn recalled(&self, dir: u64, epoch: u64) {
        let held = self.deleg.lock().dirs.get(&dir).map(|d| d.epoch);
        if held == Some(epoch) {
            let _ = self.apply_dir(dir, true, false).await;
            self.deleg.lock().cooldown.insert(dir, Instant::now() + RECALLED_COOLDOWN);
        } else {
            // Granted while this mount was not listening, or already gone: give it back as it is.
            self.end_delegation(dir, epoch).await;
        }
    }

    /// Applies every delegation's creates and gives them all back (unmount, lost stream, a
    /// handover); the first error, after trying every directory.
    pub async fn give_back_all(&self) -> FsResult<()> {
        let dirs: Vec<u64> = self.deleg.lock().dirs.keys().copied().collect();
        let mut result = Ok(());
        for dir in dirs {
            let r = self.apply_dir(dir, true, false).await;
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// The reply to a change of this mount that adds `name` to `dir`. Made: the name is noted in
    /// `dir`'s name set if the mount holds it. Failed with EIO: see [`Self::maybe_named`].
    pub(super) async fn named_in<T: AddsName>(
        &self,
        dir: u64,
        name: &[u8],
        r: Result<tonic::Response<T>, tonic::Status>,
    ) -> FsResult<T> {
        match r {
            Ok(r) => {
                let r = r.into_inner();
                if r.added() {
                    self.deleg.lock().noted(dir, Some(name), None, r.parent());
                }
                Ok(r)
            }
            Err(s) => {
                self.maybe_named(dir, &s).await;
                Err(errno_of(s))
            }
        }
    }

    /// A change of this mount that adds a name to `dir` failed. When the server may have made it
    /// although the answer was lost (EIO), a delegation on `dir` goes back: its name set could
    /// miss the name, and a local create of it would be refused at Apply.
    pub(super) async fn maybe_named(&self, dir: u64, s: &tonic::Status) {
        if MetaError::from_status(s).errno() == libc::EIO && self.deleg.lock().dirs.contains_key(&dir) {
            let _ = self.apply_dir(dir, true, false).await;
        }
    }

    /// Applies what is pending in every held directory.
    pub(super) async fn settle_all(&self) -> FsResult<()> {
        let dirs: Vec<u64> = self
            .deleg
            .lock()
            .dirs
            .iter()
            .filter(|(_, d)| !d.pending.is_empty() || d.in_flight > 0)
            .map(|(i, _)| *i)
            .collect();
        for dir in dirs {
            self.apply_dir(dir, false, false).await?;
        }
        Ok(())
    }

    /// Gives `dir` back if this mount holds it (its own change makes local answers wrong).
    pub(super) async fn give_back(&self, dir: u64) -> FsResult<()> {
        if self.deleg.lock().dirs.contains_key(&dir) {
            self.apply_dir(dir, true, false).await
        } else {
            self.settle(&[dir]).await
        }
    }

    /// Applies what is pending for any of `inos` (held directories, pending files) so that the
    /// server can answer about them.
    pub(super) async fn settle(&self, inos: &[u64]) -> FsResult<()> {
        let dirs: Vec<u64> = {
            let st = self.deleg.lock();
            if st.dirs.is_empty() && st.files.is_empty() {
                return Ok(());
            }
            inos.iter().filter_map(|i| st.dir_of(*i)).collect()
        };
        for dir in dirs {
            self.apply_dir(dir, false, false).await?;
        }
        Ok(())
    }

    /// Sends `dir`'s pending creates in one Apply (with `give_back`, ending the delegation),
    /// then commits the data of those already closed. Creates the server refuses are lost: they
    /// were never fsynced; the error says so in the log.
    ///
    /// Runs to its end even if the caller is cancelled (an interrupted lock wait that settles a
    /// directory, the delegations' timer stopped by a handover): it takes the creates out of the
    /// directory before the Apply, so a cancellation half way would lose them. It runs as a task
    /// of its own, which the caller awaits.
    pub(super) async fn apply_dir(&self, dir: u64, give_back: bool, durable: bool) -> FsResult<()> {
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(me) => tokio::spawn(async move { me.apply_dir_now(dir, give_back, durable).await })
                .await
                .unwrap_or(Err(libc::EIO)),
            // Not in an Arc (the filesystem's own unit tests): nothing cancels it there.
            None => self.apply_dir_now(dir, give_back, durable).await,
        }
    }

    async fn apply_dir_now(&self, dir: u64, give_back: bool, durable: bool) -> FsResult<()> {
        let _one = self.applying.lock().await;
        let (epoch, creates, inos) = {
            let mut st = self.deleg.lock();
            let st = &mut *st;
            let Some(d) = st.dirs.get_mut(&dir) else { return Ok(()) };
            d.returning |= give_back;
            let epoch = d.epoch;
            let pending: Vec<(Vec<u8>, u64)> = d.pending.drain().collect();
            d.in_flight = pending.len();
            let mut creates = Vec::with_capacity(pending.len());
            let mut inos = Vec::with_capacity(pending.len());
            for (name, ino) in pending {
                d.names.insert(name.clone());
                let p = st.files.get_mut(&ino).expect("a pending name has a pending file");
                p.applying = true;
                let c = p.creator;
                creates.push(pb::DelegatedCreate {
                    ctx: Some(self.session.ctx(c.uid, c.gid, c.pid)),
                    name,
                    ino,
                    perm: p.attr.perm,
                    time: p.attr.ctime,
                    open_ids: p.opens.keys().copied().collect(),
                    open_flags: p.opens.values().copied().collect(),
                });
                inos.push((ino, c));
            }
            (epoch, creates, inos)
        };
        if creates.is_empty() && !give_back && !durable {
            return Ok(());
        }
        tracing::debug!(dir, epoch, creates = creates.len(), give_back, durable, "applying");
        let names: Vec<String> = creates.iter().map(|c| String::from_utf8_lossy(&c.name).into_owned()).collect();
        // With creates to apply, the delegation ends only after their data is committed (below):
        // whoever recalled it must find the bytes.
        let end_now = give_back && creates.is_empty();
        let req = pb::ApplyRequest { ctx: Some(self.session.root()), dir, epoch, creates, give_back: end_now, durable };
        let before = self.data.attrs.epoch();
        let r = self.rpc().apply(req).await;
        let mut result = Ok(());
        let applied = match r {
            Ok(r) => {
                let r = r.into_inner();
                if let Some(a) = r.dir {
                    if let Some(d) = self.deleg.lock().dirs.get_mut(&dir) {
                        d.attr = Some(a);
                    }
                    self.data.attrs.remember(Some(a), before);
                }
                true
            }
            Err(s) => {
                let errno = errno_of(s.clone());
                if !names.is_empty() {
                    tracing::error!(
                        dir,
                        files = ?names,
                        error = %MetaError::from_status(&s),
                        "the server refused files created under a delegation; they are lost (never fsynced)"
                    );
                }
                result = Err(errno);
                false
            }
        };
        // The files stay marked as applying until their data is committed too: this mount's own
        // requests about them wait for that (settle) instead of seeing the server half way.
        let done = |inos: &[(u64, Ctx)]| {
            let mut st = self.deleg.lock();
            for (ino, _) in inos {
                st.files.remove(ino);
            }
            if let Some(d) = st.dirs.get_mut(&dir) {
                d.in_flight = 0;
            }
            if give_back || !applied {
                st.dirs.remove(&dir);
            }
        };
        if !applied {
            done(&inos);
            for (ino, _) in &inos {
                self.files.lock().remove(ino);
            }
            if !end_now {
                self.end_delegation(dir, epoch).await;
            }
            return result;
        }
        // Close-to-open: what was written to files now closed reaches the server before anyone
        // else can look (a recall waits for this).
        for &(ino, c) in &inos {
            let Some(f) = self.existing_file(ino) else { continue };
            if f.opens.load(Ordering::Relaxed) > 0 {
                continue;
            }
            let mut st = f.lock().await;
            if st.has_dirty()
                && let Err(e) = self.data.commit(c, &mut st, durable).await
            {
                tracing::error!(ino, errno = e, "committing a file created under a delegation failed");
                result = Err(e);
            }
        }
        done(&inos);
        if give_back && !end_now {
            self.end_delegation(dir, epoch).await;
        }
        result
    }

    /// Tells the server this session no longer holds `dir` (nothing left to apply).
    async fn end_delegation(&self, dir: u64, epoch: u64) {
        let req =
            pb::ApplyRequest { ctx: Some(self.session.root()), dir, epoch, give_back: true, ..Default::default() };
        if let Err(s) = self.rpc().apply(req).await {
            tracing::debug!(dir, error = %MetaError::from_status(&s), "giving a delegation back failed (it ends anyway)");
        }
    }

    /// Asks for a delegation on `dir` (a burst of creates there).
    async fn ask(&self, dir: u64) {
        let changes = self.deleg.lock().changes;
        let req = pb::DelegateRequest { ctx: Some(self.session.root()), dir };
        match self.rpc().delegate(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let epoch = r.epoch;
                if !self.install(dir, changes, r) {
                    // A change of this mount raced the grant: its names may be stale. Give it back.
                    self.end_delegation(dir, epoch).await;
                }
            }
            Err(s) => {
                tracing::debug!(dir, error = %MetaError::from_status(&s), "delegation refused");
                let mut st = self.deleg.lock();
                if st.cooldown.len() > 10_000 {
                    st.cooldown.clear();
                }
                st.cooldown.insert(dir, Instant::now() + REFUSED_COOLDOWN);
            }
        }
    }

    /// More inode numbers and open ids for a held directory (the same delegation).
    async fn renew(&self, dir: u64) {
        let req = pb::DelegateRequest { ctx: Some(self.session.root()), dir };
        match self.rpc().delegate(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let mut st = self.deleg.lock();
                if let Some(d) = st.dirs.get_mut(&dir).filter(|d| d.epoch == r.epoch) {
                    d.inos = r.ino_start..r.ino_end;
                    d.open_ids = r.open_start..r.open_end;
                }
            }
            Err(s) => tracing::debug!(dir, error = %MetaError::from_status(&s), "renewing a delegation failed"),
        }
    }

    /// Takes a grant, unless a namespace change of this mount happened since `changes` was read.
    fn install(&self, dir: u64, changes: u64, r: pb::DelegateReply) -> bool {
        let mut st = self.deleg.lock();
        if st.changes != changes || !st.watching {
            return false;
        }
        tracing::debug!(dir, epoch = r.epoch, names = r.names.len(), "directory delegated");
        st.dirs.insert(
            dir,
            Dir {
                epoch: r.epoch,
                attr: r.dir,
                names: r.names.into_iter().collect(),
                pending: HashMap::new(),
                inos: r.ino_start..r.ino_end,
                open_ids: r.open_start..r.open_end,
                returning: false,
                in_flight: 0,
                last_create: Instant::now(),
            },
        );
        true
    }

    /// A create served under a delegation, if `parent` is (or becomes) held and `name` is new.
    pub(super) async fn create_here(
        &self,
        c: Ctx,
        parent: u64,
        name: &[u8],
        perm: u32,
        umask: u32,
        flags: u32,
    ) -> Option<FsResult<(pb::Attr, Opened)>> {
        if !self.cfg.delegations {
            return None;
        }
        let now = Instant::now();
        let ask = {
            let mut st = self.deleg.lock();
            st.active(parent).is_none() && st.worth_asking(parent, now)
        };
        if ask {
            self.ask(parent).await;
        }
        let renew = self.deleg.lock().active(parent).is_some_and(|d| d.inos.is_empty() || d.open_ids.is_empty());
        if renew {
            self.renew(parent).await;
        }
        let (attr, fh) = {
            let mut st = self.deleg.lock();
            let st = &mut *st;
            let d = st.active(parent)?;
            if d.names.contains(name) || d.pending.contains_key(name) || d.inos.is_empty() || d.open_ids.is_empty() {
                tracing::trace!(
                    parent,
                    known = d.names.contains(name),
                    pending = d.pending.contains_key(name),
                    inos = d.inos.end - d.inos.start,
                    "create not served under the delegation"
                );
                return None;
            }
            let Some(dattr) = d.attr else {
                tracing::trace!(parent, "create not served under the delegation: directory attributes unknown");
                return None;
            };
            let ino = d.inos.next().expect("not empty");
            let fh = d.open_ids.next().expect("not empty");
            let t = now_timespec();
            let gid = if dattr.perm & S_ISGID != 0 { dattr.gid } else { c.gid };
            let attr = pb::Attr {
                ino,
                kind: pb::FileKind::Regular as i32,
                perm: perm & 0o7777 & !umask,
                nlink: 1,
                uid: c.uid,
                gid,
                atime: Some(t),
                mtime: Some(t),
                ctime: Some(t),
                ..Default::default()
            };
            d.pending.insert(name.to_vec(), ino);
            d.attr = Some(pb::Attr { mtime: Some(t), ctime: Some(t), ..dattr });
            d.last_create = now;
            let pending = Pending {
                dir: parent,
                attr,
                creator: c,
                opens: BTreeMap::from([(fh, flags)]),
                created: now,
                applying: false,
            };
            st.files.insert(ino, pending);
            (attr, fh)
        };
        self.created_without_capability(attr.ino);
        let reply = OpenedReply { open_id: fh, attr: &attr, quota_limited: false, created: true };
        Some(self.opened(c, attr.ino, reply).await.map(|o| (attr, o)))
    }

    /// A lookup answered from a held directory: `Some(Err(ENOENT))` for a name it does not have.
    pub(super) async fn lookup_here(&self, parent: u64, name: &[u8]) -> Option<FsResult<pb::Attr>> {
        let attr = {
            let mut st = self.deleg.lock();
            let st = &mut *st;
            let d = st.active(parent)?;
            match d.pending.get(name).copied() {
                Some(ino) => st.files.get(&ino).filter(|p| !p.applying)?.attr,
                None if !d.names.contains(name) && name != b"." && name != b".." => return Some(Err(libc::ENOENT)),
                None => return None,
            }
        };
        Some(Ok(self.local_attr(attr).await))
    }

    /// Attributes of a held directory or a pending file, from this mount.
    pub(super) async fn getattr_here(&self, ino: u64) -> Option<pb::Attr> {
        let attr = {
            let mut st = self.deleg.lock();
            match st.pending(ino) {
                Some(p) => p.attr,
                None => return st.active(ino).and_then(|d| d.attr),
            }
        };
        Some(self.local_attr(attr).await)
    }

    /// unlink of a pending file no handle has open: it never reaches the server.
    pub(super) fn unlink_here(&self, parent: u64, name: &[u8]) -> bool {
        let ino = {
            let mut st = self.deleg.lock();
            let st = &mut *st;
            let Some(d) = st.active(parent) else { return false };
            let Some(&ino) = d.pending.get(name) else { return false };
            if st.files.get(&ino).is_none_or(|p| p.applying || !p.opens.is_empty()) {
                return false;
            }
            let d = st.dirs.get_mut(&parent).expect("active");
            d.pending.remove(name);
            let t = now_timespec();
            if let Some(a) = d.attr.as_mut() {
                a.mtime = Some(t);
                a.ctime = Some(t);
            }
            st.files.remove(&ino);
            ino
        };
        self.files.lock().remove(&ino);
        self.no_capability.lock().remove(&ino);
        true
    }

    /// Whether `ino` is a pending file (its flush and release stay local).
    pub(super) fn is_pending(&self, ino: u64) -> bool {
        self.deleg.lock().pending(ino).is_some()
    }

    /// The last close of a pending file's handle: forgotten here, never sent.
    pub(super) fn release_here(&self, ino: u64, fh: u64) -> bool {
        let mut st = self.deleg.lock();
        st.pending(ino).is_some_and(|p| p.opens.remove(&fh).is_some())
    }

    /// A write to a pending file moves its times; past the first block it is applied first (its
    /// blocks will need the server).
    pub(super) async fn writing_here(&self, ino: u64, end: u64) -> FsResult<()> {
        let beyond = {
            let mut st = self.deleg.lock();
            let Some(p) = st.pending(ino) else { return Ok(()) };
            let t = now_timespec();
            p.attr.mtime = Some(t);
            p.attr.ctime = Some(t);
            end > self.block_size()
        };
        if beyond { self.settle(&[ino]).await } else { Ok(()) }
    }
}

/// A server reply to a change that may add a name to a directory.
pub(super) trait AddsName {
    /// The directory's attributes after the change.
    fn parent(&self) -> Option<pb::Attr>;
    /// Whether the name was added (a create without O_EXCL may open an existing file).
    fn added(&self) -> bool {
        true
    }
}

impl AddsName for pb::EntryReply {
    fn parent(&self) -> Option<pb::Attr> {
        self.parent
    }
}

impl AddsName for pb::CreateReply {
    fn parent(&self) -> Option<pb::Attr> {
        self.parent
    }

    fn added(&self) -> bool {
        self.created
    }
}
