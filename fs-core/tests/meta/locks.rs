//! Locks across sessions: conflicts, server-side wake-ups, cancellation, release on close and
//! on lease expiry.

use std::time::{Duration, Instant};

use fs_core::testkit::TestServer;
use fs_core::testkit::pb;

use crate::fs::{Fs, errno};

fn lock(
    fs: &Fs,
    ino: u64,
    owner: u64,
    kind: pb::LockKind,
    t: pb::LockType,
    (start, end): (u64, u64),
    wait: bool,
) -> pb::LockRequest {
    pb::LockRequest { ctx: fs.ctx(), ino, owner, kind: kind as i32, r#type: t as i32, start, end, wait, open_id: 0 }
}

fn metric(srv: &TestServer, line_start: &str) -> u64 {
    let text = srv.server().metrics.encode();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

async fn two_sessions(lease_secs: u64) -> (TestServer, Fs, Fs, u64) {
    let srv = TestServer::start(|c| c.lease = Duration::from_secs(lease_secs)).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let a = Fs::new(srv.session("v", &token).await);
    let b = Fs::new(srv.session("v", &token).await);
    let f = a.create("f").await.unwrap();
    (srv, a, b, f.ino)
}

use pb::LockKind::{Flock, Posix};
use pb::LockType::{Read, Unlock, Write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_getlk_and_a_waiter_woken_by_the_server() {
    let (srv, a, b, ino) = two_sessions(30).await;
    a.s.rpc.clone().set_lock(lock(&a, ino, 1, Posix, Write, (0, 99), false)).await.unwrap();
    let err = b.s.rpc.clone().set_lock(lock(&b, ino, 1, Posix, Write, (50, 60), false)).await.unwrap_err();
    assert_eq!(errno(err), libc::EAGAIN);
    let got = b.s.rpc.clone().get_lock(lock(&b, ino, 1, Posix, Write, (50, 60), false)).await.unwrap().into_inner();
    assert_eq!((got.r#type(), got.start, got.end), (Write, 0, 99));
    assert_eq!(
        b.s.rpc
            .clone()
            .get_lock(lock(&b, ino, 1, Posix, Write, (100, 200), false))
            .await
            .unwrap()
            .into_inner()
            .r#type(),
        Unlock
    );
    // Read locks of two sessions share.
    a.s.rpc.clone().set_lock(lock(&a, ino, 1, Posix, Read, (500, 600), false)).await.unwrap();
    b.s.rpc.clone().set_lock(lock(&b, ino, 1, Posix, Read, (550, 650), false)).await.unwrap();

    // B waits with one request; A's unlock wakes it.
    let waits_before = metric(&srv, "stratusfs_meta_lock_requests_total{result=\"waited\"}");
    let conflicts_before = metric(&srv, "stratusfs_meta_lock_requests_total{result=\"conflict\"}");
    let mut rpc = b.s.rpc.clone();
    let req = lock(&b, ino, 1, Posix, Write, (50, 60), true);
    let waiter = tokio::spawn(async move { rpc.set_lock(req).await.map(|_| Instant::now()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the lock is still held");
    let released = Instant::now();
    a.s.rpc.clone().set_lock(lock(&a, ino, 1, Posix, Unlock, (0, 99), false)).await.unwrap();
    let granted =
        tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("woken within 2 s").unwrap().unwrap();
    eprintln!("lock wake-up after release: {:?}", granted.saturating_duration_since(released));
    assert_eq!(metric(&srv, "stratusfs_meta_lock_requests_total{result=\"waited\"}"), waits_before + 1);
    assert_eq!(
        metric(&srv, "stratusfs_meta_lock_requests_total{result=\"conflict\"}"),
        conflicts_before,
        "the waiter never polled: no further conflicting requests"
    );
    let got = a.s.rpc.clone().get_lock(lock(&a, ino, 1, Posix, Write, (55, 55), false)).await.unwrap().into_inner();
    assert_eq!((got.r#type(), got.start, got.end), (Write, 50, 60), "B now holds the range");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_is_withdrawn() {
    let (srv, a, b, ino) = two_sessions(30).await;
    a.s.rpc.clone().set_lock(lock(&a, ino, 1, Posix, Write, (0, 0), false)).await.unwrap();
    let mut rpc = b.s.rpc.clone();
    let req = lock(&b, ino, 1, Posix, Write, (0, 0), true);
    let waiter = tokio::spawn(async move { rpc.set_lock(req).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    waiter.abort();
    let _ = waiter.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&srv, "stratusfs_meta_lock_requests_total{result=\"cancelled\"}"), 1);
    a.s.rpc.clone().set_lock(lock(&a, ino, 1, Posix, Unlock, (0, 0), false)).await.unwrap();
    let got = a.s.rpc.clone().get_lock(lock(&a, ino, 9, Posix, Write, (0, 0), false)).await.unwrap().into_inner();
    assert_eq!(got.r#type(), Unlock, "the cancelled waiter was not granted the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_handle_drops_its_owners_locks_and_its_flock() {
    let (_srv, a, b, ino) = two_sessions(30).await;
    let open_id = a.open(ino, libc::O_RDWR).await.unwrap();
    a.s.rpc.clone().set_lock(lock(&a, ino, 42, Posix, Write, (0, 10), false)).await.unwrap();
    let mut fl = lock(&a, ino, 43, Flock, Write, (0, u64::MAX), false);
    fl.open_id = open_id;
    a.s.rpc.clone().set_lock(fl).await.unwrap();
    let err = b.s.rpc.clone().set_lock(lock(&b, ino, 7, Flock, Write, (0, u64::MAX), false)).await.unwrap_err();
    assert_eq!(errno(err), libc::EAGAIN, "flock conflicts across sessions");
    a.release(open_id, vec![42]).await.unwrap();
    b.s.rpc.clone().set_lock(lock(&b, ino, 7, Posix, Write, (0, 10), false)).await.unwrap();
    b.s.rpc.clone().set_lock(lock(&b, ino, 7, Flock, Write, (0, u64::MAX), false)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sessions_locks_go_when_its_lease_ends() {
    let (_srv, a, b, ino) = two_sessions(2).await;
    a.s.rpc.clone().set_lock(lock(&a, ino, 1, Posix, Write, (0, u64::MAX), false)).await.unwrap();
    // A goes silent (no heartbeat task runs in this test); B waits for the lock.
    let start = Instant::now();
    let mut rpc = b.s.rpc.clone();
    let req = lock(&b, ino, 1, Posix, Write, (0, 0), true);
    let keepalive = b.s.spawn_heartbeat();
    tokio::time::timeout(Duration::from_secs(5), rpc.set_lock(req)).await.expect("granted after A's lease").unwrap();
    keepalive.abort();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(1500), "not before the lease ran out ({waited:?})");
    let err = a.s.rpc.clone().get_attr(pb::InodeRequest { ctx: a.ctx(), ino }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "A's session is gone");
}
