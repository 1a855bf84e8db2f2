//! The metadata server's connection breaking at the worst instant: after the server applied a
//! request and before its reply reached the mount. The mount sends the request again once
//! reconnected, the server recognises it by its number and answers with the reply it kept: each
//! change is applied exactly once and the process sees success.

use std::time::Duration;

use e2e::proxy::CuttingProxy;
use e2e::stratusfs::{MetaServer, Mount};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_reply_was_lost_is_applied_once_and_succeeds() {
    e2e::init();
    let meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let proxy = CuttingProxy::start(&meta.addr).await.unwrap();
    // One round trip per operation: no write-back creates under directory delegations.
    // Names and attributes stay cached long enough that the kernel's first request for each
    // operation is the change itself (its lookups were answered just before, see below).
    let m =
        Mount::start_at(&meta, &proxy.addr, "v", &token, &["nodelegations,entry_ttl=60,attr_ttl=60,negative_ttl=60"])
            .await
            .unwrap();
    let p = |name: &str| m.path.join(name);
    std::fs::write(p("before"), b"x").unwrap();
    // (operation, the names it looks up first, the lookups the kernel sends anyway, the call)
    type Op<'a> = (&'a str, [&'a str; 2], u64, Box<dyn Fn() -> std::io::Result<()> + 'a>);
    let ops: Vec<Op> = vec![
        ("mkdir", ["dir", ""], 1, Box::new(|| std::fs::create_dir(p("dir")))),
        ("rename", ["before", "after"], 1, Box::new(|| std::fs::rename(p("before"), p("after")))),
        (
            "create (O_EXCL)",
            ["new", ""],
            1,
            Box::new(|| std::fs::File::options().write(true).create_new(true).open(p("new")).map(drop)),
        ),
        ("link", ["after", "second-name"], 1, Box::new(|| std::fs::hard_link(p("after"), p("second-name")))),
        ("unlink", ["after", ""], 0, Box::new(|| std::fs::remove_file(p("after")))),
    ];
    for (i, (name, names, lookups, op)) in ops.iter().enumerate() {
        // The lookups the operation needs, answered now (negative ones too) and cached.
        for n in names.iter().filter(|n| !n.is_empty()) {
            let _ = std::fs::symlink_metadata(p(n));
        }
        // The kernel looks the new name up again before an exclusive create or a rename onto it
        // (FUSE revalidates such lookups): that exchange passes, the change's reply is cut.
        proxy.cut_reply(*lookups);
        // The cut is in the proxy's own tasks; this thread blocks in the syscall meanwhile.
        let r = tokio::task::block_in_place(op);
        r.unwrap_or_else(|e| panic!("{name} failed after its reply was lost: {e}\n{}", m.log_tail(30)));
        assert_eq!(proxy.cuts(), i as u64 + 1, "{name}: the proxy broke no connection");
    }
    assert!(p("dir").is_dir());
    assert!(!p("before").exists() && !p("after").exists());
    assert!(p("new").is_file());
    assert_eq!(std::fs::read(p("second-name")).unwrap(), b"x");
    let names: Vec<String> = {
        let mut v: Vec<String> =
            std::fs::read_dir(&m.path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    };
    assert_eq!(names, ["dir", "new", "second-name"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let replays = meta.log_tail(2000).matches("a retried request was applied before").count();
    eprintln!("5 replies lost: {} connections broken, {replays} requests answered from kept replies", proxy.cuts());
    assert_eq!(replays, 5, "{}", meta.log_tail(60));
    assert!(m.log_tail(400).contains("sent again and answered"), "{}", m.log_tail(40));
}

/// The metadata server away for 45 s (killed, restarted 45 s later): a process reading a file it
/// has open and cached goes on reading, a process writing and fsyncing waits at its fsync and
/// then goes on, neither sees an error, and every byte is there afterwards. A mount with a
/// shorter `meta_wait` gets EIO past it and works again once the server is back.
///
/// The reader and the writer are processes of their own (`fsprobe`): this test starts the server
/// again while they hold files open on the mount, and a process that forks while it holds such
/// a file would flush it at its child's exec, waiting for the server itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_45_second_metadata_outage_is_a_pause_not_an_error() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use e2e::probe::Probe;

    e2e::init();
    let mut meta = MetaServer::start(&[]).await.unwrap();
    let token = meta.volume("v", |_| {}).await.unwrap();
    let m = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let impatient = Mount::start(&meta, "v", &token, &["meta_wait=5"]).await.unwrap();
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (cached, log) = (m.path.join("cached"), m.path.join("log"));
    std::fs::write(&cached, &data).unwrap();

    let mut reader = Probe::start(&["reader", &cached.to_string_lossy()]);
    assert_eq!(reader.line(), "ready");
    let (reads, synced) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader_pid = reader.pid();
    let reading = reader.follow("reads", reads.clone());
    const RECORD: usize = 65536;
    let writer = Probe::start(&["writer", &log.to_string_lossy(), &RECORD.to_string()]);
    let writer_pid = writer.pid();
    let writing = writer.follow("synced", synced.clone());
    while synced.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    meta.kill9();
    let down = Instant::now();
    let (reads_at_kill, synced_at_kill) = (reads.load(Ordering::SeqCst), synced.load(Ordering::SeqCst));
    // Past meta_wait=5 a request fails with EIO, and that mount lives on.
    let dir = impatient.path.join("impatient");
    let err = tokio::task::spawn_blocking(move || std::fs::create_dir(dir)).await.unwrap().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    eprintln!("meta_wait=5: EIO after {:?}", down.elapsed());
    tokio::time::sleep(Duration::from_secs(45).saturating_sub(down.elapsed())).await;
    let read_while_down = reads.load(Ordering::SeqCst) - reads_at_kill;
    // The writer's fsync of the record after the kill waits (one more may have been on its way).
    let synced_while_down = synced.load(Ordering::SeqCst) - synced_at_kill;
    assert!(!reading.is_finished() && !writing.is_finished(), "a probe died while the server was away");
    meta.restart().await.unwrap();
    let back = Instant::now();
    while synced.load(Ordering::SeqCst) < synced_at_kill + synced_while_down + 3 {
        assert!(!writing.is_finished(), "the writer died after the server came back");
        assert!(back.elapsed() < Duration::from_secs(30), "the writer's fsync still waits 30 s after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "45 s outage: {read_while_down} cached reads of 64 KiB went on while the server was away; \
         the writer fsynced {synced_while_down} records then, and its fsync went on {:?} after the restart",
        back.elapsed()
    );
    assert!(synced_while_down <= 1, "{synced_while_down} fsyncs returned while the server was away");
    assert!(read_while_down > 100, "the reader stalled while the server was away ({read_while_down} reads)");
    for pid in [reader_pid, writer_pid] {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    for (name, t) in [("reader", reading), ("writer", writing)] {
        let status = tokio::task::spawn_blocking(move || t.join().unwrap()).await.unwrap();
        assert!(status.code().is_none(), "the {name} exited by itself ({status}): it saw an error");
    }
    std::fs::create_dir(impatient.path.join("after")).unwrap_or_else(|e| panic!("the impatient mount after: {e}"));
    // Every fsynced record, through a mount that did not exist before.
    let n = synced.load(Ordering::SeqCst) as usize;
    let fresh = Mount::start(&meta, "v", &token, &[]).await.unwrap();
    let got = std::fs::read(fresh.path.join("log")).unwrap();
    assert!(got.len() >= n * RECORD, "{} bytes, {n} records fsynced", got.len());
    for i in 0..n {
        assert!(got[i * RECORD..(i + 1) * RECORD].iter().all(|&b| b == (i % 251) as u8), "record {i} differs");
    }
    assert!(std::fs::read(fresh.path.join("cached")).unwrap() == data);
}
