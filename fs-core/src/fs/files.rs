//! Open files: open, create, close, fsync, reads and writes through the data path
//! ([`super::data`]), fallocate, SEEK_DATA/SEEK_HOLE and locks.

use super::*;

impl StratusFs {
    /// A new file has no security.capability: the kernel's question at its first write needs no
    /// round trip.
    pub(super) fn created_without_capability(&self, ino: u64) {
        self.no_capability.lock().insert(ino, std::time::Instant::now());
    }

    /// Registers an open and compares the file with what this mount saw last.
    pub(super) async fn opened(&self, c: Ctx, ino: u64, r: OpenedReply<'_>) -> FsResult<Opened> {
        let OpenedReply { open_id, attr, quota_limited, created } = r;
        self.handles.lock().insert(open_id, Handle { ino, lock_owners: HashSet::new() });
        let f = self.file(ino);
        f.opens.fetch_add(1, Ordering::Relaxed);
        let mut st = f.lock().await;
        st.quota_limited = quota_limited;
        let changed = self.data.opened(c, &mut st, attr, created).await?;
        Ok(Opened { fh: open_id, changed })
    }

    pub async fn open(&self, c: Ctx, ino: u64, flags: u32) -> FsResult<Opened> {
        self.settle(&[ino]).await?;
        if flags as i32 & libc::O_TRUNC != 0
            && let Some(f) = self.existing_file(ino)
        {
            // The server truncates at open: this mount's unflushed writes go first.
            self.data.commit(c, &mut *f.lock().await, false).await?;
        }
        let r = self.rpc().open(pb::OpenRequest { ctx: self.ctx(c), ino, flags }).await.map_err(errno_of)?.into_inner();
        let attr = r.attr.unwrap_or_default();
        let reply = OpenedReply { open_id: r.open_id, attr: &attr, quota_limited: r.quota_limited, created: false };
        self.opened(c, ino, reply).await
    }

    pub async fn create(
        &self,
        c: Ctx,
        parent: u64,
        name: &[u8],
        perm: u32,
        umask: u32,
        flags: u32,
    ) -> FsResult<(pb::Attr, Opened)> {
        let name = &*self.stored_name(parent, name)?;
        let perm = perm & !self.cfg.umask;
        if let Some(r) = self.create_here(c, parent, name, perm, umask, flags).await {
            return r;
        }
        self.settle(&[parent]).await?;
        let req = pb::MkNodRequest {
            ctx: self.ctx_once(c),
            parent,
            name: name.to_vec(),
            kind: pb::FileKind::Regular as i32,
            perm,
            umask,
            flags,
            exclusive: flags as i32 & libc::O_EXCL != 0,
            ..Default::default()
        };
        let before = self.data.attrs.epoch();
        let r = self.rpc().create(req).await;
        let r = self.named_in(parent, name, r).await?;
        self.data.attrs.remember(r.parent, before);
        let attr = r.attr.unwrap_or_default();
        if r.created {
            self.created_without_capability(attr.ino);
        }
        let reply = OpenedReply { open_id: r.open_id, attr: &attr, quota_limited: r.quota_limited, created: r.created };
        let opened = self.opened(c, attr.ino, reply).await?;
        Ok((attr, opened))
    }

    /// close(2) of one descriptor: commits the file's unflushed writes (visible to every mount
    /// from now on) and drops the POSIX locks of `lock_owner` on it.
    pub async fn flush(&self, c: Ctx, ino: u64, fh: u64, lock_owner: u64) -> FsResult<()> {
        if self.is_pending(ino) {
            // Committed when applied (another mount reaches the file only through a recall).
            return Ok(());
        }
        let known = self.handles.lock().contains_key(&fh);
        let lost = self.lost_on_close(ino, fh, known);
        self.settle(&[ino]).await?;
        let f = self.file(ino);
        let mut st = f.lock().await;
        let r = self.data.commit(c, &mut st, false).await;
        self.note_unsaved(ino, st.has_dirty());
        let r = if lost { Err(libc::EIO) } else { r };
        if st.lock_owners.remove(&lock_owner) {
            let req = pb::LockRequest {
                ctx: self.ctx(c),
                ino,
                owner: lock_owner,
                kind: pb::LockKind::Posix as i32,
                r#type: pb::LockType::Unlock as i32,
                start: 0,
                end: u64::MAX,
                wait: false,
                open_id: fh,
            };
            self.rpc().set_lock(req).await.map_err(errno_of)?;
        }
        r
    }

    /// fsync: returns when the file's blocks and block map are durable.
    pub async fn fsync(&self, c: Ctx, ino: u64) -> FsResult<()> {
        if self.lost_on_fsync(ino) {
            return Err(libc::EIO);
        }
        self.settle(&[ino]).await?;
        let f = self.file(ino);
        let mut st = f.lock().await;
        if st.has_dirty() {
            self.data.commit(c, &mut st, true).await?;
        } else {
            // Earlier commits of this file (at close) may not be durable yet.
            self.sync_all(c).await?;
        }
        self.note_unsaved(ino, st.has_dirty());
        Ok(())
    }

    /// The last close of a handle.
    pub async fn release(&self, c: Ctx, ino: u64, fh: u64) -> FsResult<()> {
        let handle = self.handles.lock().remove(&fh).unwrap_or_default();
        let f = self.file(ino);
        if self.release_here(ino, fh) {
            f.opens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1))).ok();
            return Ok(());
        }
        self.settle(&[ino]).await?;
        let r = {
            let mut st = f.lock().await;
            let r = self.data.commit(c, &mut st, false).await;
            self.note_unsaved(ino, st.has_dirty());
            for o in &handle.lock_owners {
                st.lock_owners.remove(o);
            }
            r
        };
        let req =
            pb::ReleaseRequest { ctx: self.ctx(c), open_id: fh, lock_owners: handle.lock_owners.into_iter().collect() };
        self.rpc().release(req).await.map_err(errno_of)?;
        // The other handles of this mount on the inode, if any, keep its state.
        let was = f.opens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        if was.unwrap_or(0) <= 1 {
            let mut st = f.lock().await;
            if st.has_dirty() && !st.retrying {
                // The close could not store the writes (the store or the server is down): they
                // stay here and are retried until stored.
                st.retrying = true;
                self.keep_committing(c, ino);
            }
            self.data.idle(c, &mut st).await;
            if !st.has_dirty() && st.lock_owners.is_empty() && self.files.lock().len() > MAX_IDLE_FILES {
                // Forgotten: its next open in this mount counts as changed.
                self.files.lock().remove(&ino);
            }
        }
        r
    }

    /// Commits file `ino`'s unsaved writes after its last close failed to: again and again, with
    /// backoff (1 s doubling to 30 s, jittered), until they are stored. A later open, write,
    /// fsync or close of the file commits them too; the task then finds nothing left to do.
    fn keep_committing(&self, c: Ctx, ino: u64) {
        let Some(me) = self.me.get().cloned() else { return };
        tokio::spawn(async move {
            let mut pause = std::time::Duration::from_secs(1);
            for attempt in 1u32.. {
                let jitter = rand::random_range(0.5..1.0);
                tokio::time::sleep(pause.mul_f64(jitter)).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
                // A mount that went away takes its unsaved writes with it (unmount logs them).
                let Some(fs) = me.upgrade() else { return };
                let Some(f) = fs.existing_file(ino) else { return };
                let mut st = f.lock().await;
                if !st.has_dirty() {
                    st.retrying = false;
                    return;
                }
                match fs.data.commit(c, &mut st, false).await {
                    Ok(()) => {
                        tracing::info!(ino, attempt, "writes a close could not store are stored now");
                        st.retrying = false;
                        fs.data.idle(c, &mut st).await;
                        return;
                    }
                    Err(errno) => tracing::warn!(
                        ino,
                        attempt,
                        errno,
                        "writes a close could not store are still unsaved in this mount; retrying"
                    ),
                }
            }
        });
    }

    /// At unmount: one last try to store the writes closes could not store. Returns how many
    /// files still have unsaved writes (each logged as an error: those bytes are lost).
    pub async fn commit_unsaved(&self) -> usize {
        let files: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        let mut lost = 0;
        for f in files {
            let mut st = f.lock().await;
            if !st.has_dirty() {
                continue;
            }
            if let Err(errno) = self.data.commit(Ctx::default(), &mut st, false).await {
                tracing::error!(ino = st.ino, errno, "unmounting with writes the store never took; they are lost");
                lost += 1;
            }
        }
        lost
    }

    pub async fn read(&self, c: Ctx, ino: u64, offset: u64, size: u32) -> FsResult<Vec<bytes::Bytes>> {
        let f = self.file(ino);
        self.data.read(c, &f, offset, size).await
    }

    pub async fn write(&self, c: Ctx, ino: u64, offset: u64, data: WriteData<'_>) -> FsResult<u32> {
        self.writing_here(ino, offset.saturating_add(data.len() as u64)).await?;
        let f = self.file(ino);
        let mut st = f.lock().await;
        let n = self.data.write(c, &mut st, offset, data).await?;
        self.note_unsaved(ino, st.has_dirty());
        Ok(n)
    }

    /// fallocate(2): allocation (mode 0, KEEP_SIZE), PUNCH_HOLE and ZERO_RANGE.
    pub async fn fallocate(&self, c: Ctx, ino: u64, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size) {
            return Err(libc::EOPNOTSUPP);
        }
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        self.settle(&[ino]).await?;
        let f = self.file(ino);
        let mut st = f.lock().await;
        if zero {
            self.data.zero_range(c, &mut st, offset, end).await?;
        }
        // Blocks are allocated when written (holes are not stored): allocation only moves the
        // size, and only up.
        let size = st.size();
        if !keep_size && end > size {
            self.data.commit(c, &mut st, false).await?;
            let req = pb::SetAttrRequest { ctx: self.ctx(c), ino, size: Some(end), open_id: fh, ..Default::default() };
            let r = self.rpc().set_attr(req).await;
            self.void_remembered_attrs();
            let a = r.map_err(errno_of)?.into_inner().attr.unwrap_or_default();
            self.data.truncated(c, &mut st, &a).await?;
        } else if !zero {
            // posix_fallocate changes ctime even when nothing had to be allocated.
            self.data.commit(c, &mut st, false).await?;
        }
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE.
    pub async fn lseek(&self, ino: u64, offset: u64, whence: i32) -> FsResult<u64> {
        let f = self.file(ino);
        let st = f.lock().await;
        st.seek(offset, whence, self.block_size())
    }

    // --- locks --------------------------------------------------------------------------------

    /// F_GETLK: the conflicting lock, if any (type UNLOCK when none).
    pub async fn getlk(&self, c: Ctx, ino: u64, fh: u64, lock: LockSpec) -> FsResult<pb::GetLockReply> {
        self.settle(&[ino]).await?;
        let req = lock.request(self.ctx(c), ino, fh);
        Ok(self.rpc().get_lock(req).await.map_err(errno_of)?.into_inner())
    }

    /// F_SETLK / F_SETLKW / flock. A wait ends when the server grants the lock or the call is
    /// cancelled (FUSE_INTERRUPT aborts the task, which cancels the RPC and withdraws the wait).
    pub async fn setlk(&self, c: Ctx, ino: u64, fh: u64, lock: LockSpec) -> FsResult<()> {
        self.settle(&[ino]).await?;
        if lock.kind == pb::LockKind::Posix && lock.typ != pb::LockType::Unlock {
            self.handles
                .lock()
                .entry(fh)
                .or_insert_with(|| Handle { ino, lock_owners: HashSet::new() })
                .lock_owners
                .insert(lock.owner);
            self.file(ino).lock().await.lock_owners.insert(lock.owner);
        }
        let req = lock.request(self.ctx(c), ino, fh);
        self.rpc().set_lock(req).await.map_err(errno_of)?;
        Ok(())
    }
}
