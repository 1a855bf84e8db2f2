//! The filesystem without a kernel: a [`StratusFs`] over an in-process metadata server and an
//! in-memory block store, driven through the calls the FUSE adapter makes. What a mount does
//! is checked here first; the e2e tests check it again through the kernel.

use super::*;
use crate::blockstore::BackendSpec;
use crate::server::testkit::TestServer;

const ROOT: Ctx = Ctx { uid: 0, gid: 0, pid: 1, unique: 0 };

/// A filesystem on a fresh volume with 256 KiB blocks and its server (which must outlive it).
/// With `memory` the block store is in this filesystem's memory; otherwise a local folder
/// other filesystems on the volume share.
async fn fs(cfg: FsConfig, memory: bool) -> (TestServer, StratusFs) {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv
        .volume("v", |r| {
            r.block_size = 256 * 1024;
            if memory {
                r.backend_json = serde_json::to_string(&BackendSpec::Memory { prefix: String::new() }).unwrap();
            }
        })
        .await;
    let session = srv.session("v", &token).await;
    let fs = StratusFs::new(session, cfg, None).unwrap();
    (srv, fs)
}

async fn read_all(fs: &StratusFs, ino: u64, len: u32) -> Vec<u8> {
    fs.read(ROOT, ino, 0, len).await.unwrap().concat()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_names_without_a_kernel() {
    let (_srv, fs) = fs(FsConfig { delegations: false, ..FsConfig::default() }, true).await;
    let root = fs.root();
    let dir = NewNode { kind: pb::FileKind::Directory, perm: 0o755, umask: 0o022, rdev: 0 };
    let d = fs.mknod(ROOT, root, b"docs", dir).await.unwrap();
    assert_eq!((d.kind(), d.perm), (pb::FileKind::Directory, 0o755));
    // A file across blocks: written in pieces, read back before and after close.
    let (a, opened) = fs.create(ROOT, d.ino, b"a", 0o644, 0o022, libc::O_RDWR as u32).await.unwrap();
    let data = pattern(700 * 1024, 3);
    for (i, piece) in data.chunks(100_000).enumerate() {
        let n = fs.write(ROOT, a.ino, (i * 100_000) as u64, WriteData::Slice(piece)).await.unwrap();
        assert_eq!(n as usize, piece.len());
    }
    assert_eq!(read_all(&fs, a.ino, 1 << 20).await, data, "unflushed writes read back");
    fs.flush(ROOT, a.ino, opened.fh, 0).await.unwrap();
    fs.release(ROOT, a.ino, opened.fh).await.unwrap();
    assert_eq!(fs.getattr(ROOT, a.ino).await.unwrap().size, data.len() as u64);
    let again = fs.open(ROOT, a.ino, libc::O_RDONLY as u32).await.unwrap();
    assert_eq!(read_all(&fs, a.ino, 1 << 20).await, data, "committed bytes read back");
    fs.release(ROOT, a.ino, again.fh).await.unwrap();
    // A truncate into the second block, then a write past the end leaves a hole of zeros.
    let t = fs.setattr(ROOT, a.ino, SetAttr { size: Some(300 * 1024), ..Default::default() }).await.unwrap();
    assert_eq!(t.size, 300 * 1024);
    let h = fs.open(ROOT, a.ino, libc::O_RDWR as u32).await.unwrap();
    fs.write(ROOT, a.ino, 600 * 1024, WriteData::Slice(b"tail")).await.unwrap();
    fs.fsync(ROOT, a.ino).await.unwrap();
    fs.release(ROOT, a.ino, h.fh).await.unwrap();
    let mut want = data[..300 * 1024].to_vec();
    want.resize(600 * 1024, 0);
    want.extend_from_slice(b"tail");
    assert_eq!(read_all(&fs, a.ino, 1 << 20).await, want);
    // Names: rename across directories, hard link, symlink, readdir, unlink, rmdir.
    fs.rename(ROOT, d.ino, b"a", root, b"moved", 0).await.unwrap();
    assert_eq!(fs.lookup(ROOT, d.ino, b"a").await.unwrap_err(), libc::ENOENT);
    assert_eq!(fs.lookup(ROOT, root, b"moved").await.unwrap().ino, a.ino);
    let l = fs.link(ROOT, a.ino, d.ino, b"hard").await.unwrap();
    assert_eq!((l.ino, l.nlink), (a.ino, 2));
    let s = fs.symlink(ROOT, d.ino, b"sym", b"../moved").await.unwrap();
    assert_eq!(fs.readlink(ROOT, s.ino).await.unwrap(), b"../moved");
    let names: Vec<Vec<u8>> =
        fs.readdir(ROOT, d.ino, 0, 100, true).await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, [&b"."[..], b"..", b"hard", b"sym"]);
    assert_eq!(fs.rmdir(ROOT, root, b"docs").await.unwrap_err(), libc::ENOTEMPTY);
    fs.unlink(ROOT, d.ino, b"hard").await.unwrap();
    fs.unlink(ROOT, d.ino, b"sym").await.unwrap();
    fs.rmdir(ROOT, root, b"docs").await.unwrap();
    assert_eq!(fs.getattr(ROOT, a.ino).await.unwrap().nlink, 1);
    assert_eq!(fs.lookup(ROOT, root, &[b'n'; 256]).await.unwrap_err(), libc::ENAMETOOLONG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_handles_travel_in_a_handover() {
    let (srv, fs) = fs(FsConfig::default(), false).await;
    let root = fs.root();
    let (f, o) = fs.create(ROOT, root, b"locked", 0o644, 0, libc::O_RDWR as u32).await.unwrap();
    fs.write(ROOT, f.ino, 0, WriteData::Slice(b"unflushed")).await.unwrap();
    let lock =
        LockSpec { owner: 7, kind: pb::LockKind::Posix, typ: pb::LockType::Write, start: 0, end: 99, wait: false };
    fs.setlk(ROOT, f.ino, o.fh, lock).await.unwrap();
    fs.quiesce().await.unwrap();
    let state = fs.handles().await;
    assert_eq!(state.handles.len(), 1);
    assert_eq!((state.handles[0].fh, state.handles[0].ino, &state.handles[0].lock_owners[..]), (o.fh, f.ino, &[7][..]));
    assert_eq!(state.files.len(), 1);
    assert_eq!((state.files[0].opens, &state.files[0].lock_owners[..]), (1, &[7][..]));
    // The quiesce committed the write: a second session sees it.
    let token = srv.token("v", |_| {}).await;
    let other = StratusFs::new(srv.session("v", &token).await, FsConfig::default(), None).unwrap();
    let seen = other.open(ROOT, f.ino, libc::O_RDONLY as u32).await.unwrap();
    assert_eq!(read_all(&other, f.ino, 100).await, b"unflushed");
    // The lock still holds against another session.
    let theirs = LockSpec { owner: 8, ..lock };
    assert_eq!(other.setlk(ROOT, f.ino, seen.fh, theirs).await.unwrap_err(), libc::EAGAIN);
    // A successor on the same session takes the handles: its release drops the lock.
    let next = StratusFs::new(fs.session.clone(), FsConfig::default(), None).unwrap();
    next.adopt_handles(&state).await;
    next.flush(ROOT, f.ino, o.fh, 7).await.unwrap();
    next.release(ROOT, f.ino, o.fh).await.unwrap();
    other.setlk(ROOT, f.ino, seen.fh, theirs).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_again_under_its_kernel_request_id_is_applied_once() {
    // What a request the kernel resends after a crash (FUSE_NOTIFY_RESEND) looks like to the
    // server: the same change under the same kernel request id, from the same session.
    let (_srv, fs) = fs(FsConfig { delegations: false, ..FsConfig::default() }, true).await;
    let root = fs.root();
    let req = |unique| Ctx { unique, ..ROOT };
    let dir = NewNode { kind: pb::FileKind::Directory, perm: 0o755, umask: 0o022, rdev: 0 };
    let d = fs.mknod(req(42), root, b"d", dir).await.unwrap();
    assert_eq!(fs.mknod(req(42), root, b"d", dir).await.unwrap().ino, d.ino, "mkdir resent: the first answer");
    assert_eq!(fs.mknod(req(44), root, b"d", dir).await.unwrap_err(), libc::EEXIST, "another mkdir of the name");
    let excl = (libc::O_RDWR | libc::O_EXCL) as u32;
    let (f, opened) = fs.create(req(46), root, b"f", 0o644, 0o022, excl).await.unwrap();
    let (again, reopened) = fs.create(req(46), root, b"f", 0o644, 0o022, excl).await.unwrap();
    assert_eq!((again.ino, reopened.fh), (f.ino, opened.fh), "O_EXCL create resent: the first answer");
    fs.release(ROOT, f.ino, opened.fh).await.unwrap();
    fs.rename(req(48), root, b"d", root, b"e", 0).await.unwrap();
    fs.rename(req(48), root, b"d", root, b"e", 0).await.expect("rename resent: not ENOENT");
    fs.unlink(req(50), root, b"f").await.unwrap();
    fs.unlink(req(50), root, b"f").await.expect("unlink resent: not ENOENT");
    assert_eq!(fs.unlink(req(52), root, b"f").await.unwrap_err(), libc::ENOENT, "another unlink of the name");
    // Without a kernel request id (the mount's own calls) nothing is remembered across calls.
    assert_eq!(fs.mknod(ROOT, root, b"e", dir).await.unwrap_err(), libc::EEXIST);
}
