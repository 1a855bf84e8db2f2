//! Two mounts of one volume in separate processes: close-to-open consistency, names, locks that
//! exclude each other and wake waiters, and concurrent writers in one block.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::stratusfs::{MetaServer, Mount};

/// A running `fsprobe` (see e2e/src/bin/fsprobe.rs) and its output lines.
struct Probe {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Probe {
    fn lock(path: &Path, kind: &str, write: bool, start: u64, len: u64, wait: bool) -> Probe {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fsprobe"))
            .args(["lock", &path.to_string_lossy(), kind, if write { "write" } else { "read" }])
            .args([start.to_string(), len.to_string()])
            .arg(if wait { "wait" } else { "nowait" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Probe { child, out }
    }

    /// The next line it prints (`locked`, `busy`, `eintr`).
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    /// Lets go of the lock (closes stdin: the probe exits, closing the file).
    fn release(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A counter from the metadata server's metrics (0 if absent).
async fn metric(meta: &MetaServer, name_and_labels: &str) -> f64 {
    let text = meta.metrics().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_after_a_close_on_another_mount_sees_the_new_content_and_names() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let a = Mount::start(&meta, "v", &token, &["attr_ttl=60"]).await.unwrap();
    let b = Mount::start(&meta, "v", &token, &["attr_ttl=60"]).await.unwrap();
    std::fs::write(a.path.join("f"), b"first").unwrap();
    // B caches the attributes (60 s) and the pages of the first version.
    assert_eq!(std::fs::read(b.path.join("f")).unwrap(), b"first");
    assert_eq!(std::fs::metadata(b.path.join("f")).unwrap().len(), 5);
    std::fs::write(a.path.join("f"), b"the second version, longer").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // open(2) revalidates: new size and bytes, although the attribute TTL has not run out.
    let f = std::fs::File::open(b.path.join("f")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 26, "the size B sees after open");
    let mut buf = vec![0u8; 64];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"the second version, longer");
    drop(f);
    // A shorter rewrite: no stale tail.
    std::fs::write(a.path.join("f"), b"3rd").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(std::fs::read(b.path.join("f")).unwrap(), b"3rd");
    // Names: a rename and an unlink on A are seen on B once the entry TTL (1 s) has passed.
    std::fs::rename(a.path.join("f"), a.path.join("g")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!b.path.join("f").exists(), "B still sees the old name");
    assert_eq!(std::fs::read(b.path.join("g")).unwrap(), b"3rd");
    std::fs::remove_file(a.path.join("g")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!b.path.join("g").exists(), "B still sees the unlinked file");
    assert_eq!(std::fs::read_dir(&b.path).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcntl_and_flock_locks_exclude_each_other_across_mounts_and_wake_waiters() {
    e2e::init();
    let meta = MetaServer::start(&["--lease-secs", "3"]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let a = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let mut b = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    std::fs::write(a.path.join("f"), b"lock me").unwrap();
    let (fa, fb) = (a.path.join("f"), b.path.join("f"));

    for kind in ["posix", "flock"] {
        // Exclusion: B cannot take what A holds; a shared lock is shared.
        let mut holder = Probe::lock(&fa, kind, true, 0, 100, false);
        assert_eq!(holder.line(), "locked", "{kind}");
        let mut other = Probe::lock(&fb, kind, true, 0, 100, false);
        assert_eq!(other.line(), "busy", "{kind}: B took a lock A holds");
        drop(other);
        if kind == "posix" {
            // A range that does not overlap is free.
            let mut free = Probe::lock(&fb, kind, true, 100, 100, false);
            assert_eq!(free.line(), "locked");
            free.release();
        }
        // A waiter is woken by the server when the holder lets go: one request, no polling.
        let waited = metric(&meta, "stratusfs_meta_lock_requests_total{result=\"waited\"}").await;
        let setlk = metric(&meta, "stratusfs_meta_rpc_seconds_count{op=\"setlk\"}").await;
        let mut waiter = Probe::lock(&fb, kind, true, 0, 100, true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let released = Instant::now();
        holder.release();
        let (line, woke) =
            tokio::task::spawn_blocking(move || (waiter.line(), (waiter, released.elapsed()))).await.unwrap();
        let (waiter, wake) = woke;
        assert_eq!(line, "locked", "{kind}");
        eprintln!("{kind}: waiter woken {wake:?} after the release");
        assert!(wake < Duration::from_secs(2), "{kind}: woken only after {wake:?}");
        assert_eq!(metric(&meta, "stratusfs_meta_lock_requests_total{result=\"waited\"}").await, waited + 1.0);
        // The holder's lock + unlock at close, the waiter's one request.
        let calls = metric(&meta, "stratusfs_meta_rpc_seconds_count{op=\"setlk\"}").await - setlk;
        assert!(calls <= 3.0, "{kind}: {calls} lock requests for one wait: the client polls");
        waiter.release();
    }

    // A signal interrupts a blocked wait with EINTR, and the server withdraws it.
    for kind in ["posix", "flock"] {
        let mut holder = Probe::lock(&fa, kind, true, 0, 100, false);
        assert_eq!(holder.line(), "locked");
        let cancelled = metric(&meta, "stratusfs_meta_lock_requests_total{result=\"cancelled\"}").await;
        let mut waiter = Probe::lock(&fb, kind, true, 0, 100, true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(waiter.pid()), nix::sys::signal::Signal::SIGUSR1).unwrap();
        let line = tokio::task::spawn_blocking(move || waiter.line()).await.unwrap();
        assert_eq!(line, "eintr", "{kind}: the signal did not interrupt the wait");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            metric(&meta, "stratusfs_meta_lock_requests_total{result=\"cancelled\"}").await,
            cancelled + 1.0,
            "{kind}: the server still holds the interrupted wait"
        );
        holder.release();
    }

    // kill -9 ends a process blocked in F_SETLKW at once (the wait is withdrawn).
    let mut holder = Probe::lock(&fa, "posix", true, 0, 100, false);
    assert_eq!(holder.line(), "locked");
    let mut waiter = Probe::lock(&fb, "posix", true, 0, 100, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    waiter.child.kill().unwrap();
    let status = tokio::task::spawn_blocking(move || waiter.child.wait().unwrap()).await.unwrap();
    assert!(!status.success());
    assert!(killed.elapsed() < Duration::from_secs(2), "a killed waiter took {:?} to die", killed.elapsed());
    holder.release();

    // kill -9 of the holding process: its locks go at once (the kernel closes its files).
    let mut holder = Probe::lock(&fa, "posix", true, 0, 100, false);
    assert_eq!(holder.line(), "locked");
    let mut waiter = Probe::lock(&fb, "posix", true, 0, 100, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    holder.child.kill().unwrap();
    let line = tokio::task::spawn_blocking(move || waiter.line()).await.unwrap();
    assert_eq!(line, "locked");
    assert!(killed.elapsed() < Duration::from_secs(2), "{:?}", killed.elapsed());

    // kill -9 of the holder's mount: its session's locks go when the lease (3 s) runs out.
    let mut on_b = Probe::lock(&fb, "posix", true, 200, 100, false);
    assert_eq!(on_b.line(), "locked");
    let mut waiter = Probe::lock(&fa, "posix", true, 200, 100, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    b.kill9();
    let line = tokio::task::spawn_blocking(move || waiter.line()).await.unwrap();
    assert_eq!(line, "locked");
    let after = killed.elapsed();
    eprintln!("lock of a killed mount released after {after:?} (lease 3 s)");
    assert!(after < Duration::from_secs(3 + 3), "released only after {after:?}");
    drop(on_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mounts_writing_their_own_ranges_of_one_block_keep_both() {
    e2e::init();
    let meta = MetaServer::start_in(Path::new("/dev/shm"), &[]).await.unwrap();
    let token = meta.volume("v", |r| r.block_size = 256 * 1024).await.unwrap();
    let a = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let b = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    std::fs::write(a.path.join("f"), vec![0u8; 3 * 4096]).unwrap();
    const ROUNDS: usize = 1000;
    let open = |m: &Mount, start: i64| {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(m.path.join("f")).unwrap();
        // Each writer locks its own 4 KiB range (POSIX, waiting).
        let fl = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: start,
            l_len: 4096,
            l_pid: 0,
        };
        // SAFETY: fcntl with a valid flock.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLKW, &fl) }, 0);
        f
    };
    let (fa, fb) = (open(&a, 0), open(&b, 4096));
    let start = Instant::now();
    let (to_b, from_a) = std::sync::mpsc::channel::<usize>();
    let (to_a, from_b) = std::sync::mpsc::channel::<usize>();
    let writer_b = std::thread::spawn(move || {
        for i in from_a {
            fb.write_all_at(&[(i % 251) as u8 + 1; 4096], 4096).unwrap();
            fb.sync_all().unwrap();
            if to_a.send(i).is_err() {
                break;
            }
        }
    });
    for i in 0..ROUNDS {
        fa.write_all_at(&[(i % 251) as u8 + 1; 4096], 0).unwrap();
        fa.sync_all().unwrap();
        to_b.send(i).unwrap();
        assert_eq!(from_b.recv().unwrap(), i);
    }
    drop(to_b);
    writer_b.join().unwrap();
    eprintln!("{ROUNDS} alternating write+fsync rounds on two mounts in {:?}", start.elapsed());
    let last = ((ROUNDS - 1) % 251) as u8 + 1;
    for m in [&a, &b] {
        let data = std::fs::read(m.path.join("f")).unwrap();
        assert_eq!(data.len(), 3 * 4096);
        assert!(data[..4096].iter().all(|&x| x == last), "A's range lost its last write on {}", m.path.display());
        assert!(data[4096..8192].iter().all(|&x| x == last), "B's range lost its last write on {}", m.path.display());
        assert!(data[8192..].iter().all(|&x| x == 0));
    }
    drop(fa);
    let _ = std::io::stderr().flush();
}
