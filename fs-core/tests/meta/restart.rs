//! A server restart keeps sessions, open files and locks, each with a full lease from readiness;
//! clients reconnect by themselves.

use std::time::{Duration, Instant};

use fs_core::testkit::TestServer;
use fs_core::testkit::pb;

use crate::fs::{Fs, errno};

fn posix(fs: &Fs, ino: u64, t: pb::LockType) -> pb::LockRequest {
    pb::LockRequest {
        ctx: fs.ctx(),
        ino,
        owner: 5,
        kind: pb::LockKind::Posix as i32,
        r#type: t as i32,
        start: 0,
        end: u64::MAX,
        wait: false,
        open_id: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_open_files_and_locks_survive_a_restart() {
    let srv = TestServer::start(|c| c.lease = Duration::from_secs(3)).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let a = Fs::new(srv.session("v", &token).await);
    let b = Fs::new(srv.session("v", &token).await);
    let (f, _) = a.create_open("f", true).await.unwrap();
    a.s.rpc.clone().set_lock(posix(&a, f.ino, pb::LockType::Write)).await.unwrap();
    let (g, g_open) = a.create_open("g", true).await.unwrap();
    a.write_block(g.ino, 0, 0, 10, 10, true).await.unwrap();
    a.unlink("g").await.unwrap();

    let before = srv.addr();
    let srv = srv.restart().await;
    assert_eq!(srv.addr(), before, "same port after the restart");
    let ready = Instant::now();
    for s in [&a.s, &b.s] {
        s.wait_ready(Duration::from_secs(5)).await.unwrap();
    }

    // A's session, open file and lock are still there; the channel reconnected by itself.
    assert_eq!(a.getattr(g.ino).await.unwrap().nlink, 0, "the unlinked open file survived the restart");
    let err = b.s.rpc.clone().set_lock(posix(&b, f.ino, pb::LockType::Write)).await.unwrap_err();
    assert_eq!(errno(err), libc::EAGAIN, "A's lock survived the restart");
    a.release(g_open, vec![]).await.unwrap();
    assert_eq!(a.getattr(g.ino).await.unwrap_err(), libc::ENOENT, "its last close deleted it");

    // A now goes silent; B keeps its session alive and waits for A's lock, which goes with A's
    // lease: a full lease counted from readiness, not from A's last request before the restart.
    let keepalive = b.s.spawn_heartbeat();
    let mut req = posix(&b, f.ino, pb::LockType::Write);
    req.wait = true;
    tokio::time::timeout(Duration::from_secs(6), b.s.rpc.clone().set_lock(req))
        .await
        .expect("granted after A's lease")
        .unwrap();
    keepalive.abort();
    assert!(
        ready.elapsed() >= Duration::from_millis(2500),
        "A kept its lease after the restart ({:?})",
        ready.elapsed()
    );
    drop(srv);
}

/// A request sent again under its number (a client that lost the reply) is answered with the
/// reply the server kept, not applied twice, also after a restart; a new number is a new request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_twice_under_one_number_is_applied_once_even_across_a_restart() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let a = Fs::new(srv.session("v", &token).await);
    let root = a.base;
    let mkdir = pb::MkNodRequest { ctx: a.ctx(), parent: root, name: b"d".to_vec(), perm: 0o755, ..Default::default() };
    let first = a.rpc().mk_dir(mkdir.clone()).await.unwrap().into_inner();
    let again = a.rpc().mk_dir(mkdir.clone()).await.unwrap().into_inner();
    assert_eq!(first.attr.unwrap().ino, again.attr.unwrap().ino, "the same directory, not a second one");
    let fresh = pb::MkNodRequest { ctx: a.ctx(), ..mkdir };
    assert_eq!(errno(a.rpc().mk_dir(fresh).await.unwrap_err()), libc::EEXIST, "a new number is a new request");

    let rename = pb::RenameRequest {
        ctx: a.ctx(),
        parent: root,
        name: b"d".to_vec(),
        new_parent: root,
        new_name: b"e".to_vec(),
        flags: 0,
    };
    a.rpc().rename(rename.clone()).await.unwrap();
    let srv = srv.restart().await;
    a.s.wait_ready(Duration::from_secs(5)).await.unwrap();
    a.rpc().rename(rename).await.unwrap_or_else(|s| panic!("the rename sent again after a restart: {s}"));
    let e = a.lookup(root, b"e").await.unwrap();
    assert_eq!(e.ino, first.attr.unwrap().ino);
    assert_eq!(a.lookup(root, b"d").await.unwrap_err(), libc::ENOENT);
    drop(srv);
}
