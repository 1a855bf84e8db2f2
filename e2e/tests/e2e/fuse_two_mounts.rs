//! Two mounts of one volume in separate processes: close-to-open consistency, names, locks that
//! exclude each other and wake waiters, and concurrent writers in one block.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::probe::Probe;
use e2e::stores::{Backend, Store};
use e2e::stratusfs::{MetaServer, Mount};

on_each_backend!(
    an_open_after_a_close_on_another_mount_sees_the_new_content_and_names,
    fcntl_and_flock_locks_exclude_each_other_across_mounts_and_wake_waiters,
    two_mounts_writing_their_own_ranges_of_one_block_keep_both,
);

/// A counter from the metadata server's metrics (0 if absent).
async fn metric(meta: &MetaServer, name_and_labels: &str) -> f64 {
    let text = meta.metrics().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn an_open_after_a_close_on_another_mount_sees_the_new_content_and_names(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume_on("v", store.spec("v"), |_| {}).await.unwrap();
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

async fn fcntl_and_flock_locks_exclude_each_other_across_mounts_and_wake_waiters(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    let meta = MetaServer::start(&["--lease-secs", "3"]).await.unwrap();
    let token = meta.volume_on("v", store.spec("v"), |_| {}).await.unwrap();
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
    let status = tokio::task::spawn_blocking(move || waiter.kill9()).await.unwrap();
    assert!(!status.success());
    assert!(killed.elapsed() < Duration::from_secs(2), "a killed waiter took {:?} to die", killed.elapsed());
    holder.release();

    // kill -9 of the holding process: its locks go at once (the kernel closes its files).
    let mut holder = Probe::lock(&fa, "posix", true, 0, 100, false);
    assert_eq!(holder.line(), "locked");
    let mut waiter = Probe::lock(&fb, "posix", true, 0, 100, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    holder.kill9();
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

async fn two_mounts_writing_their_own_ranges_of_one_block_keep_both(backend: Backend) {
    let store = Store::start(backend).await.unwrap();
    let meta = MetaServer::start_in(Path::new("/dev/shm"), &[]).await.unwrap();
    let token = meta.volume_on("v", store.spec("v"), |r| r.block_size = Some(256 * 1024)).await.unwrap();
    let a = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let b = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    std::fs::write(a.path.join("f"), vec![0u8; 3 * 4096]).unwrap();
    // Each round is two block uploads: fewer over HTTP.
    let rounds: usize = if backend == Backend::Local { 1000 } else { 200 };
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
    for i in 0..rounds {
        fa.write_all_at(&[(i % 251) as u8 + 1; 4096], 0).unwrap();
        fa.sync_all().unwrap();
        to_b.send(i).unwrap();
        assert_eq!(from_b.recv().unwrap(), i);
    }
    drop(to_b);
    writer_b.join().unwrap();
    eprintln!("{rounds} alternating write+fsync rounds on two mounts in {:?}", start.elapsed());
    let last = ((rounds - 1) % 251) as u8 + 1;
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

/// A signal interrupts a process blocked in F_SETLKW however the mount's reader threads split
/// the wait and its FUSE_INTERRUPT between them (an interrupt read before the wait was registered
/// used to be dropped, leaving the process blocked until the lock freed, kill -9 included).
/// Many rounds with the signal sent at once and after short random delays, on a mount with 8
/// reader threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_always_interrupts_a_lock_wait() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &["threads=8"]).await.unwrap();
    let f = m.path.join("f");
    std::fs::write(&f, b"lock me").unwrap();
    let mut holder = Probe::lock(&f, "posix", true, 0, 100, false);
    assert_eq!(holder.line(), "locked");
    let rounds = 150u64;
    let slow = tokio::task::spawn_blocking(move || {
        let mut slow = Vec::new();
        for round in 0..rounds {
            let mut waiter = Probe::lock(&f, "posix", true, 0, 100, true);
            // From at once to 3 ms after the start: the wait's request is being read, registered,
            // or already waiting on the server when the signal comes.
            std::thread::sleep(Duration::from_micros(round * 7919 % 3000));
            let sent = Instant::now();
            let pid = nix::unistd::Pid::from_raw(waiter.pid());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let line = waiter.line();
                let _ = tx.send((line, waiter));
            });
            // The first signal may come before the probe calls fcntl (then it does nothing): it is
            // sent again until the probe answers. Once a wait was interrupted, the kernel sends no
            // second FUSE_INTERRUPT for it, so a dropped one still shows as a wait that never ends.
            let answer = loop {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1);
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(a) => break Some(a),
                    Err(_) if sent.elapsed() > Duration::from_secs(5) => break None,
                    Err(_) => {}
                }
            };
            match answer {
                // Signalled before its handler was installed, it ended without a line.
                Some((line, _)) => assert!(line == "eintr" || line.is_empty(), "round {round}: {line:?}"),
                None => panic!("round {round}: a signalled lock wait was still blocked 5 s later"),
            }
            slow.push(sent.elapsed());
        }
        slow
    })
    .await
    .unwrap();
    let worst = slow.iter().max().copied().unwrap_or_default();
    println!("{rounds} interrupted lock waits, the slowest answered in {worst:?}");
    holder.release();
}
