//! Directory delegations at the protocol level: refusals, recalls that wait for the holder's
//! Apply, revocation of a holder that does not answer, and Apply's checks.

use std::time::{Duration, Instant};

use fs_core::testkit::TestServer;
use fs_core::testkit::pb;

use crate::fs::{Fs, errno};

/// A session's Watch stream (a delegation needs one).
async fn watch(fs: &Fs) -> tonic::Streaming<pb::WatchEvent> {
    fs.rpc().watch(fs.ctx().unwrap()).await.expect("opening Watch").into_inner()
}

async fn delegate(fs: &Fs, dir: u64) -> Result<pb::DelegateReply, i32> {
    fs.rpc().delegate(pb::DelegateRequest { ctx: fs.ctx(), dir }).await.map(|r| r.into_inner()).map_err(errno)
}

fn create(fs: &Fs, name: &str, ino: u64, open_ids: Vec<u64>) -> pb::DelegatedCreate {
    let open_flags = open_ids.iter().map(|_| libc::O_RDWR as u32).collect();
    pb::DelegatedCreate {
        ctx: Some(fs.s.ctx(1000, 1000, 7)),
        name: name.into(),
        ino,
        perm: 0o640,
        time: Some(pb::Timespec { sec: 1_700_000_000, nsec: 5 }),
        open_ids,
        open_flags,
    }
}

async fn apply(
    fs: &Fs,
    dir: u64,
    epoch: u64,
    creates: Vec<pb::DelegatedCreate>,
    give_back: bool,
) -> Result<pb::ApplyReply, i32> {
    let req = pb::ApplyRequest { ctx: fs.ctx(), dir, epoch, creates, give_back, durable: false };
    fs.rpc().apply(req).await.map(|r| r.into_inner()).map_err(errno)
}

fn metric(srv: &TestServer, event: &str) -> u64 {
    let v = srv.server().volume("v").unwrap();
    v.delegations.counts().into_iter().find(|(e, _)| *e == event).map_or(0, |(_, n)| n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegations_are_refused_where_the_holder_could_not_answer_as_the_server_would() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let a = Fs::new(srv.session("v", &token).await);
    let b = Fs::new(srv.session("v", &token).await);
    let d = a.mkdir("d").await.unwrap().ino;
    // No Watch stream: the server could not recall it.
    assert_eq!(delegate(&a, d).await.unwrap_err(), libc::EPERM);
    let _wa = watch(&a).await;
    let _wb = watch(&b).await;
    // Not a directory.
    let f = a.create("f").await.unwrap().ino;
    assert_eq!(delegate(&a, f).await.unwrap_err(), libc::ENOTDIR);
    // A default ACL (inheritance is the server's to compute).
    let acl = a.mkdir("acl").await.unwrap().ino;
    let dacl =
        [2u8, 0, 0, 0, 1, 0, 7, 0, 255, 255, 255, 255, 4, 0, 5, 0, 255, 255, 255, 255, 32, 0, 5, 0, 255, 255, 255, 255];
    a.setxattr(acl, "system.posix_acl_default", &dacl, 0).await.unwrap();
    assert_eq!(delegate(&a, acl).await.unwrap_err(), libc::EPERM);
    // Held by another session.
    let granted = delegate(&a, d).await.unwrap();
    assert_eq!(granted.ino_end - granted.ino_start, 4096);
    assert_eq!(delegate(&b, d).await.unwrap_err(), libc::EBUSY);
    // Asking again while holding it renews the ranges under the same epoch.
    let again = delegate(&a, d).await.unwrap();
    assert_eq!(again.epoch, granted.epoch);
    assert!(again.ino_start >= granted.ino_end);
    // A read-only token.
    let ro = srv.token("v", |r| r.read_only = true).await;
    let r = Fs::new(srv.session("v", &ro).await);
    let _wr = watch(&r).await;
    assert_eq!(delegate(&r, d).await.unwrap_err(), libc::EROFS);
    // A volume with a quota.
    let (_, qt) = srv.volume("q", |r| r.quota = Some(pb::Quota { max_bytes: 1 << 30, max_inodes: 0 })).await;
    let q = Fs::new(srv.session("q", &qt).await);
    let _wq = watch(&q).await;
    let qd = q.mkdir("d").await.unwrap().ino;
    assert_eq!(delegate(&q, qd).await.unwrap_err(), libc::EPERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sessions_request_waits_for_the_holders_apply_and_sees_its_creates() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let a = Fs::new(srv.session("v", &token).await);
    let b = Fs::new(srv.session("v", &token).await);
    let d = a.mkdir("d").await.unwrap().ino;
    a.create("d/old").await.unwrap();
    let mut events = watch(&a).await;
    let g = delegate(&a, d).await.unwrap();
    assert_eq!(g.names, vec![b"old".to_vec()]);
    assert_eq!(metric(&srv, "granted"), 1);
    // The holder's own requests in the directory do not wait.
    a.lookup(d, b"old").await.unwrap();
    // B looks up a name the holder created and has not applied: B waits for the recall.
    let b2 = b.clone();
    let looking = tokio::spawn(async move { b2.lookup(d, b"new").await });
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((ev.recall_dir, ev.epoch), (d, g.epoch));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!looking.is_finished(), "B did not wait for the holder");
    let (ino, open_id) = (g.ino_start + 3, g.open_start);
    let r = apply(&a, d, g.epoch, vec![create(&a, "new", ino, vec![open_id])], true).await.unwrap();
    let attr = looking.await.unwrap().expect("B finds the holder's create");
    assert_eq!((attr.ino, attr.uid, attr.gid, attr.perm, attr.nlink), (ino, 1000, 1000, 0o640, 1));
    assert_eq!(attr.mtime, Some(pb::Timespec { sec: 1_700_000_000, nsec: 5 }));
    assert_eq!(r.attrs[0].ino, ino);
    assert_eq!(r.dir.unwrap().mtime, attr.mtime, "the directory's times are the create's");
    // The open id the holder gave out is open on the server: its release works, and only once.
    a.release(open_id, vec![]).await.unwrap();
    assert_eq!(metric(&srv, "recalled"), 1);
    // Given back: the holder's next Apply under that epoch is refused; B's O_EXCL create sees the name.
    assert_eq!(apply(&a, d, g.epoch, vec![], false).await.unwrap_err(), libc::ESTALE);
    assert_eq!(b.create_open("d/new", true).await.unwrap_err(), libc::EEXIST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_does_not_answer_is_revoked_after_the_lease() {
    let srv = TestServer::start(|c| c.lease = Duration::from_secs(2)).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let a = Fs::new(srv.session("v", &token).await);
    let b = Fs::new(srv.session("v", &token).await);
    let d = a.mkdir("d").await.unwrap().ino;
    let _events = watch(&a).await;
    let g = delegate(&a, d).await.unwrap();
    // A stays alive (heartbeats) but never answers the recall.
    let a2 = a.clone();
    let beat = tokio::spawn(async move {
        loop {
            let _ = a2.rpc().heartbeat(a2.ctx().unwrap()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let start = Instant::now();
    let entries = b.readdir(d, 100).await.unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10), "B waited {waited:?}");
    assert!(entries.is_empty(), "the directory is empty: {entries:?}");
    assert_eq!(metric(&srv, "revoked"), 1);
    // The holder's late Apply is refused: its creates are lost, not half applied.
    let late = apply(&a, d, g.epoch, vec![create(&a, "late", g.ino_start, vec![])], true).await;
    assert_eq!(late.unwrap_err(), libc::ESTALE);
    assert_eq!(b.lookup(d, b"late").await.unwrap_err(), libc::ENOENT);
    beat.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_checks_each_create_as_create_would() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let a = Fs::new(srv.session("v", &token).await);
    let d = a.mkdir("d").await.unwrap().ino;
    a.create("d/taken").await.unwrap();
    let _events = watch(&a).await;
    let g = delegate(&a, d).await.unwrap();
    // An inode number outside the reserved range.
    let r = apply(&a, d, g.epoch, vec![create(&a, "x", g.ino_end, vec![])], false).await;
    assert_eq!(r.unwrap_err(), libc::EPROTO);
    // An open id outside the reserved range.
    let r = apply(&a, d, g.epoch, vec![create(&a, "x", g.ino_start, vec![g.open_end])], false).await;
    assert_eq!(r.unwrap_err(), libc::EPROTO);
    // A name that exists: the whole batch is refused, nothing of it applied.
    let batch = vec![create(&a, "y", g.ino_start, vec![]), create(&a, "taken", g.ino_start + 1, vec![])];
    assert_eq!(apply(&a, d, g.epoch, batch, false).await.unwrap_err(), libc::EEXIST);
    assert_eq!(a.lookup(d, b"y").await.unwrap_err(), libc::ENOENT);
    // The same inode twice.
    let batch = vec![create(&a, "y", g.ino_start, vec![]), create(&a, "z", g.ino_start, vec![])];
    assert_eq!(apply(&a, d, g.epoch, batch, false).await.unwrap_err(), libc::EPROTO);
    // A good batch.
    let batch = vec![create(&a, "y", g.ino_start, vec![]), create(&a, "z", g.ino_start + 1, vec![])];
    let r = apply(&a, d, g.epoch, batch, true).await.unwrap();
    assert_eq!(r.attrs.len(), 2);
    assert_eq!(a.lookup(d, b"z").await.unwrap().ino, g.ino_start + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_a_quota_recalls_delegations_first() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let a = Fs::new(srv.session("v", &token).await);
    let d = a.mkdir("d").await.unwrap().ino;
    let mut events = watch(&a).await;
    let g = delegate(&a, d).await.unwrap();
    let mut admin = srv.admin().await;
    let quota = pb::SetQuotaRequest {
        volume: "v".into(),
        path: "/d".into(),
        quota: Some(pb::Quota { max_bytes: 1 << 20, max_inodes: 10 }),
    };
    let setting = tokio::spawn(async move { admin.set_quota(quota).await });
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.recall_dir, d);
    // The holder's creates are applied before the quota exists (nothing is lost to EDQUOT).
    apply(&a, d, g.epoch, vec![create(&a, "made-before", g.ino_start, vec![])], true).await.unwrap();
    setting.await.unwrap().expect("setting the quota");
    assert_eq!(a.lookup(d, b"made-before").await.unwrap().ino, g.ino_start);
    // Under the quota the directory is not delegated.
    assert_eq!(delegate(&a, d).await.unwrap_err(), libc::EPERM);
}
