//! A live mount handed from one process to another (the library calls the CSI node plugin will
//! use: `Mount::quiesce`, `Quiesced::handover`, `Handover::send`/`receive`, `Mount::adopt`).
//! What a user of the mount must not notice: a request made while the old process is frozen at
//! the quiesce point waits and is answered by the successor; a file held open with writes and an
//! fcntl lock sees no error; the lock still excludes another mount; a process blocked in
//! F_SETLKW is woken by the successor when the lock frees; a rename of the mount's root
//! directory meanwhile changes nothing for it.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use e2e::mountd::{Mountd, control};
use e2e::probe::Probe;
use e2e::stratusfs::{AbortOnPanic, MetaServer, Mount};

/// F_SETLK of `[start, start + len)` on `f` (`typ`: F_WRLCK, F_UNLCK); the errno on failure.
fn setlk(f: &std::fs::File, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    // SAFETY: a zeroed flock is valid; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fcntl with a valid flock pointer on an fd we own.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) }
}

/// Runs `f` on a thread of its own (it may block on the frozen mount); its result arrives on
/// the returned channel.
fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// What the user side holds across the handover: a file open with unflushed writes and an fcntl
/// lock on `[0, 100)` (this process), and a waiter blocked in F_SETLKW on the same range
/// (`fsprobe`, another process).
struct User {
    file: std::fs::File,
    /// The waiter's first line and the waiter, once it holds the lock.
    waiter_line: mpsc::Receiver<(String, Probe)>,
}

impl User {
    fn start(dir: &Path) -> User {
        let path = dir.join("held");
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.write_all(b"before ").unwrap();
        setlk(&file, libc::F_WRLCK, 0, 100).unwrap();
        let mut waiter = Probe::lock(&path, "posix", true, 0, 100, true);
        let pid = waiter.pid();
        let waiter_line = in_thread(move || {
            let l = waiter.line();
            (l, waiter)
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(waiter_line.try_recv().is_err(), "the waiter (pid {pid}) got the lock this process holds");
        User { file, waiter_line }
    }

    /// After the handover: more writes and an fsync succeed, the lock still excludes `other`
    /// (another mount of the volume), and freeing it wakes the waiter.
    fn finish(mut self, other: &Path) {
        self.file.write_all(b"after").unwrap();
        self.file.sync_all().unwrap();
        let mut other_lock = Probe::lock(&other.join("held"), "posix", true, 0, 100, false);
        assert_eq!(other_lock.line(), "busy", "another mount took the lock this process holds");
        other_lock.release();
        setlk(&self.file, libc::F_UNLCK, 0, 100).unwrap();
        let (line, waiter) =
            self.waiter_line.recv_timeout(Duration::from_secs(10)).expect("the waiter was not woken after the unlock");
        assert_eq!(line, "locked");
        waiter.release();
        self.file.seek(SeekFrom::Start(0)).unwrap();
        let mut back = String::new();
        self.file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "before after");
    }
}

/// The parts of a test: a metadata server, a volume with a directory `team` (the handed-over
/// mount's root) and another mount of the whole volume in its own process.
async fn world() -> (MetaServer, String, Mount) {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let other = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    std::fs::create_dir(other.path.join("team")).unwrap();
    (meta, token, other)
}

/// A mount point in a fresh directory (the handed-over mount's).
fn mountpoint() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("stratusfs-handover-").tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    (dir, mp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_handed_to_another_process_keeps_files_locks_and_waiters() {
    let (meta, token, other) = world().await;
    let (dir, mp) = mountpoint();
    let socket = dir.path().join("handover.sock");
    let holder = Mountd::serve(&meta, "v/team", &token, &mp, &socket, "allow_other,threads=3");
    // A failure while the holder is frozen must not leave this process closing files on it.
    let _abort = AbortOnPanic(mp.clone());
    let user = User::start(&mp);
    // Successors are started before the holder freezes (see `Mountd::successor`).
    let mut refuser = Mountd::refusing_successor(&socket);
    let mut successor = Mountd::successor(&socket);
    // Freeze the holder at the quiesce point: one lock wait (the waiter's) travels on.
    assert_eq!(control(&socket, "quiesce"), "quiesced 1");
    // A create and a readdir made now wait: nobody reads the kernel's queue.
    let (created, listed) = (mp.join("made-meanwhile"), mp.clone());
    let create = in_thread(move || std::fs::write(&created, b"queued"));
    let stat = in_thread(move || std::fs::read_dir(&listed).map(|d| d.count()));
    std::thread::sleep(Duration::from_millis(200));
    assert!(create.try_recv().is_err(), "a create was answered while the holder was frozen");
    assert!(stat.try_recv().is_err(), "a readdir was answered while the holder was frozen");
    // A successor that refuses the value leaves the holder serving: the waiting requests are
    // answered by it.
    assert_eq!(refuser.adopt(), "refused");
    create.recv_timeout(Duration::from_secs(10)).expect("the holder did not serve again").unwrap();
    stat.recv_timeout(Duration::from_secs(10)).expect("the holder did not serve again").unwrap();
    // Frozen again, with a request waiting; the mount's root directory is renamed meanwhile
    // (through another mount): the successor keeps it.
    assert_eq!(control(&socket, "quiesce"), "quiesced 1");
    let created = mp.join("made-while-frozen");
    let create = in_thread(move || std::fs::write(&created, b"queued"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(create.try_recv().is_err(), "a create was answered while the holder was frozen");
    std::fs::rename(other.path.join("team"), other.path.join("team-renamed")).unwrap();
    assert_eq!(successor.adopt(), "adopted");
    assert!(holder.exited(Duration::from_secs(10)).is_some_and(|s| s.success()), "the holder did not exit cleanly");
    create.recv_timeout(Duration::from_secs(10)).expect("the queued create was not answered").unwrap();
    user.finish(&other.path.join("team-renamed"));
    for f in ["made-meanwhile", "made-while-frozen"] {
        assert_eq!(std::fs::read(other.path.join("team-renamed").join(f)).unwrap(), b"queued", "{f}");
    }
    assert_eq!(std::fs::read(other.path.join("team-renamed/held")).unwrap(), b"before after");
    assert!(successor.terminate().success());
    assert!(!e2e::stratusfs::is_mounted(&mp), "the successor's SIGTERM left the mount behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_handed_over_within_a_process_keeps_files_locks_and_waiters() {
    let (meta, token, other) = world().await;
    let (_dir, mp) = mountpoint();
    let spec = fs_core::MountSpec {
        source: format!("stratusfs://{}/v/team", meta.addr).parse().unwrap(),
        mountpoint: mp.clone(),
        options: fs_core::MountOptions::parse(&["allow_other,threads=2".into()]).unwrap(),
        credentials: fs_core::Credentials { token: token.clone(), trust: meta.trust() },
    };
    let m = fs_core::Mount::start(spec).await.unwrap();
    // This process serves the mount: a failure must not leave it closing files on it.
    let _abort = AbortOnPanic(mp.clone());
    let mp2 = mp.clone();
    let user = tokio::task::spawn_blocking(move || User::start(&mp2)).await.unwrap();
    let q = m.quiesce(Duration::from_secs(30)).await.map_err(|(_, e)| e).unwrap();
    assert_eq!(q.pending_lock_waits(), 1);
    let created = mp.join("made-meanwhile");
    let create = in_thread(move || std::fs::write(&created, b"queued"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(create.try_recv().is_err(), "a create was answered while the mount was quiesced");
    std::fs::rename(other.path.join("team"), other.path.join("team-renamed")).unwrap();
    let h = q.handover().unwrap();
    assert_eq!(h.fds.len(), 2, "one fd per reader thread");
    let m = fs_core::Mount::adopt(h).await.unwrap();
    create.recv_timeout(Duration::from_secs(10)).expect("the queued create was not answered").unwrap();
    let other_dir = other.path.join("team-renamed");
    tokio::task::spawn_blocking(move || user.finish(&other_dir)).await.unwrap();
    assert_eq!(std::fs::read(other.path.join("team-renamed/made-meanwhile")).unwrap(), b"queued");
    m.unmount().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mounts_in_one_process_keep_their_own_caches_and_threads() {
    let (meta, token, other) = world().await;
    let mount = |mp: PathBuf, opts: &str| fs_core::MountSpec {
        source: format!("stratusfs://{}/v", meta.addr).parse().unwrap(),
        mountpoint: mp,
        options: fs_core::MountOptions::parse(&[opts.into()]).unwrap(),
        credentials: fs_core::Credentials { token: token.clone(), trust: meta.trust() },
    };
    let ((_da, a_mp), (_db, b_mp)) = (mountpoint(), mountpoint());
    let a = fs_core::Mount::start(mount(a_mp.clone(), "threads=1,cache_mib=16")).await.unwrap();
    let _abort_a = AbortOnPanic(a_mp.clone());
    let b = fs_core::Mount::start(mount(b_mp.clone(), "threads=3,cache_mib=64,dirty_mib=8")).await.unwrap();
    let _abort_b = AbortOnPanic(b_mp.clone());
    assert_eq!((a.stats().channels, b.stats().channels), (1, 3), "each mount has the readers its options ask for");
    assert_ne!(a.session_id(), b.session_id());
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    std::fs::write(other.path.join("shared"), &data).unwrap();
    let (pa, want) = (a_mp.join("shared"), data.clone());
    tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            assert_eq!(std::fs::read(&pa).unwrap(), want);
            // Past the kernel's page cache: the next read asks the mount again.
            std::fs::File::open(&pa).unwrap().sync_all().unwrap();
            std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        }
    })
    .await
    .unwrap();
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.l1_fetches > 0 && sa.l1_hits > 0, "A read through its own cache: {sa:?}");
    assert_eq!((sb.l1_fetches, sb.l1_hits), (0, 0), "B's cache saw none of A's reads: {sb:?}");
    a.unmount().await.unwrap();
    // B serves on after A is gone.
    assert_eq!(tokio::task::spawn_blocking(move || std::fs::read(b_mp.join("shared")).unwrap()).await.unwrap(), data);
    b.unmount().await.unwrap();
}
