//! Quotas (enforced by the server) and the garbage collector's timing.

use std::time::Duration;

use fs_core::BackendSpec;
use fs_core::blockstore::open_backend;
use fs_core::testkit::TestServer;
use fs_core::testkit::layout;
use fs_core::testkit::pb;
use object_store::{ObjectStoreExt, PutPayload};

use crate::fs::{Fs, block};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_quotas_give_edquot_statfs_and_exdev() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let fs = Fs::new(srv.session("v", &token).await);
    fs.mkdir("q").await.unwrap();
    fs.create("q/existing").await.unwrap();
    fs.mkdir("other").await.unwrap();
    srv.admin()
        .await
        .set_quota(pb::SetQuotaRequest {
            volume: "v".into(),
            path: "/q".into(),
            quota: Some(pb::Quota { max_bytes: 10_000, max_inodes: 4 }),
        })
        .await
        .unwrap();
    // q and q/existing count already: two more inodes fit.
    fs.create("q/a").await.unwrap();
    let (b, _) = fs.create_open("q/b", true).await.unwrap();
    assert_eq!(fs.create("q/c").await.unwrap_err(), libc::EDQUOT);
    assert_eq!(fs.mkdir("q/d").await.unwrap_err(), libc::EDQUOT);
    fs.create("other/free").await.unwrap();
    // Bytes: a commit past the quota is refused whole by the server.
    fs.write_block(b.ino, 0, 0, 6000, 6000, false).await.unwrap();
    assert_eq!(fs.write_block(b.ino, 1, 0, 6000, 4 * 1024 * 1024 + 6000, false).await.unwrap_err(), libc::EDQUOT);
    let attr = fs.getattr(b.ino).await.unwrap();
    assert_eq!((attr.size, attr.stored), (6000, 6000), "the refused commit changed nothing");
    // statfs inside the quota directory reports the quota.
    let st = fs.s.rpc.clone().stat_fs(pb::InodeRequest { ctx: fs.ctx(), ino: b.ino }).await.unwrap().into_inner();
    assert_eq!((st.total_bytes, st.used_bytes, st.total_inodes, st.used_inodes), (10_000, 6000, 4, 4));
    // Crossing the quota boundary by rename or link is EXDEV.
    assert_eq!(fs.rename("q/a", "other/a", 0).await.unwrap_err(), libc::EXDEV);
    assert_eq!(fs.rename("other/free", "q/free", 0).await.unwrap_err(), libc::EXDEV);
    assert_eq!(fs.link("q/a", "other/a2").await.unwrap_err(), libc::EXDEV);
    fs.rename("q/a", "q/a2", 0).await.unwrap();
    // Freeing space frees quota.
    fs.unlink("q/a2").await.unwrap();
    fs.create("q/c").await.unwrap();
    let usage = srv.admin().await.usage(pb::VolumeRef { volume: "v".into() }).await.unwrap().into_inner();
    let q = usage.quotas.iter().find(|q| q.path == "/q").unwrap();
    assert_eq!((q.used_inodes, q.used_bytes), (4, 6000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_volume_quota_binds_a_raw_client() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |r| r.quota = Some(pb::Quota { max_bytes: 1000, max_inodes: 0 })).await;
    let fs = Fs::new(srv.session("v", &token).await);
    let f = fs.create("f").await.unwrap();
    fs.write_block(f.ino, 0, 0, 1000, 1000, false).await.unwrap();
    assert_eq!(fs.write_block(f.ino, 1, 0, 1, 4 * 1024 * 1024 + 1, false).await.unwrap_err(), libc::EDQUOT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_for_unflushed_writes_count_against_the_quota() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |r| r.quota = Some(pb::Quota { max_bytes: 10_000, max_inodes: 0 })).await;
    let (a, b) = (Fs::new(srv.session("v", &token).await), Fs::new(srv.session("v", &token).await));
    let fa = a.create("a").await.unwrap();
    let fb = b.create("b").await.unwrap();
    let reserve = |fs: &Fs, ino: u64, bytes: u64| {
        let fs = fs.clone();
        async move {
            fs.s.rpc
                .clone()
                .reserve(pb::ReserveRequest { ctx: fs.ctx(), ino, bytes })
                .await
                .map_err(|s| fs_core::testkit::MetaError::from_status(&s).errno())
        }
    };
    reserve(&a, fa.ino, 6000).await.unwrap();
    // 6000 held by a: b cannot hold 5000, nor commit 5000.
    assert_eq!(reserve(&b, fb.ino, 5000).await.unwrap_err(), libc::EDQUOT);
    assert_eq!(b.write_block(fb.ino, 0, 0, 5000, 5000, false).await.unwrap_err(), libc::EDQUOT);
    // a's own commit uses its reservation (the helper commits with reserved = 0: all given back).
    a.write_block(fa.ino, 0, 0, 6000, 6000, false).await.unwrap();
    reserve(&b, fb.ino, 4000).await.unwrap();
    assert_eq!(reserve(&b, fb.ino, 4001).await.unwrap_err(), libc::EDQUOT);
    // A session's end gives its reservation back.
    b.s.close().await.unwrap();
    let c = Fs::new(srv.session("v", &token).await);
    reserve(&c, fb.ino, 4000).await.unwrap();
}

async fn put_object(srv: &TestServer, uuid: &str, id: u64) -> BackendSpec {
    let spec = BackendSpec::Local { path: srv.dir.path().join("blocks"), prefix: String::new() };
    open_backend(&spec).unwrap().put(&layout::block_key(uuid, id), PutPayload::from_static(b"block")).await.unwrap();
    spec
}

async fn exists(spec: &BackendSpec, uuid: &str, id: u64) -> bool {
    open_backend(spec).unwrap().head(&layout::block_key(uuid, id)).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_blocks_exactly_when_allowed() {
    let srv = TestServer::start(|c| c.gc_grace = Duration::from_secs(2)).await;
    let (info, token) = srv.volume("v", |r| r.retention_secs = Some(2)).await;
    let fs = Fs::new(srv.session("v", &token).await);
    let mut admin = srv.admin().await;
    let f = fs.create("f").await.unwrap();
    let alloc = |n| {
        let fs = fs.clone();
        async move {
            fs.s.rpc
                .clone()
                .allocate_blocks(pb::AllocateBlocksRequest { ctx: fs.ctx(), count: n })
                .await
                .unwrap()
                .into_inner()
                .ids
        }
    };
    let ids = alloc(3).await;
    let (old, new, abandoned) = (ids[0], ids[1], ids[2]);
    for id in &ids {
        put_object(&srv, &info.uuid, *id).await;
    }
    let spec = put_object(&srv, &info.uuid, old).await;
    fs.commit(f.ino, vec![pb::BlockChange { index: 0, base_version: 0, block: Some(block(old, 5)) }], 5, false)
        .await
        .unwrap();
    let v = fs.blocks(f.ino).await.unwrap()[0].version;
    fs.commit(f.ino, vec![pb::BlockChange { index: 0, base_version: v, block: Some(block(new, 5)) }], 5, false)
        .await
        .unwrap();
    // Right away: the replaced block is within retention, the abandoned upload within its grace.
    let r = admin.gc(pb::GcRequest { volume: "v".into(), dry_run: false }).await.unwrap().into_inner();
    assert_eq!((r.deleted, r.kept_retention, r.kept_grace), (0, 1, 1));
    assert!(exists(&spec, &info.uuid, old).await && exists(&spec, &info.uuid, abandoned).await);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = admin.gc(pb::GcRequest { volume: "v".into(), dry_run: false }).await.unwrap().into_inner();
    assert_eq!((r.deleted, r.kept_retention, r.kept_grace), (2, 0, 0));
    assert!(!exists(&spec, &info.uuid, old).await, "the replaced block went after its retention");
    assert!(!exists(&spec, &info.uuid, abandoned).await, "the abandoned upload went after its grace");
    assert!(exists(&spec, &info.uuid, new).await, "a referenced block is never deleted");
    // Unlinking the file dereferences its last block; with retention 0 it may go at once.
    admin
        .update_volume(pb::UpdateVolumeRequest { volume: "v".into(), retention_secs: Some(0), ..Default::default() })
        .await
        .unwrap();
    fs.unlink("f").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let r = admin.gc(pb::GcRequest { volume: "v".into(), dry_run: false }).await.unwrap().into_inner();
    assert_eq!(r.deleted, 1);
    assert!(!exists(&spec, &info.uuid, new).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_a_rewrite_shares_lives_until_no_block_names_it() {
    let srv = TestServer::start(|c| c.gc_grace = Duration::from_secs(60)).await;
    let (info, token) = srv.volume("v", |r| r.retention_secs = Some(0)).await;
    let fs = Fs::new(srv.session("v", &token).await);
    let mut admin = srv.admin().await;
    let mut gc = async || admin.gc(pb::GcRequest { volume: "v".into(), dry_run: false }).await.unwrap().into_inner();
    let f = fs.create("f").await.unwrap();
    let ids = fs.rpc().allocate_blocks(pb::AllocateBlocksRequest { ctx: fs.ctx(), count: 4 }).await.unwrap();
    let ids = ids.into_inner().ids;
    let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
    let mut spec = None;
    for id in &ids {
        spec = Some(put_object(&srv, &info.uuid, *id).await);
    }
    let spec = spec.unwrap();
    let version = async || fs.blocks(f.ino).await.unwrap()[0].version;
    let commit = async |id: u64, shared: Vec<u64>, base: u64| {
        let blk = pb::BlockRef { shared, ..block(id, 5) };
        fs.commit(f.ino, vec![pb::BlockChange { index: 0, base_version: base, block: Some(blk) }], 5, false).await
    };
    commit(a, vec![], 0).await.unwrap();
    // b keeps some of a's chunks: replacing a does not free a.
    commit(b, vec![a], version().await).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gc().await.deleted, 0);
    assert!(exists(&spec, &info.uuid, a).await, "a is still named by b");
    // c keeps a's chunk but none of b's: b goes, a stays.
    commit(c, vec![a], version().await).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gc().await.deleted, 1);
    assert!(!exists(&spec, &info.uuid, b).await && exists(&spec, &info.uuid, a).await);
    // A block may only name objects the block it replaces names.
    assert_eq!(commit(d, vec![b], version().await).await.unwrap_err(), libc::EINVAL);
    // The file goes: both objects it named go.
    fs.unlink("f").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gc().await.deleted, 2);
    assert!(!exists(&spec, &info.uuid, a).await && !exists(&spec, &info.uuid, c).await);
}
