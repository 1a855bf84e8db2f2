//! The typed admin client (`fs_core::AdminClient`): what an operator and the CSI controller do,
//! checked against a real server: volumes, tokens scoped to a subtree and read-only, quotas,
//! usage with live sessions, and a claim's directory with its quota and token in one call.

use fs_core::BackendSpec;
use fs_core::admin::{ClaimSpec, Compression, Quota, TokenScope, VolumeSpec, VolumeUpdate};
use fs_core::testkit::{Session, TestServer};

use crate::fs::Fs;

/// The errno of a refused admin call.
fn errno_of(e: fs_core::ClientError) -> i32 {
    match e {
        fs_core::ClientError::Meta(m) => m.errno(),
        other => panic!("not a refusal of the server: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_tokens_quotas_and_usage_through_the_typed_client() {
    let srv = TestServer::start(|_| {}).await;
    let mut admin = srv.admin_client().await;
    let store = BackendSpec::Local { path: srv.dir.path().join("blocks"), prefix: "p".into() };
    let spec = VolumeSpec {
        block_size: Some(1 << 20),
        compression: Compression::Zstd,
        retention_secs: Some(60),
        quota: Quota { bytes: 1 << 30, inodes: 0 },
        ..VolumeSpec::new("data", store.clone())
    };
    let v = admin.create_volume(&spec).await.unwrap();
    assert_eq!(
        (v.name.as_str(), v.block_size, v.compression, v.retention_secs),
        ("data", 1 << 20, Compression::Zstd, 60)
    );
    assert_eq!((v.quota, v.block_store.clone(), v.encrypted), (spec.quota, store.clone(), false));
    assert_eq!(errno_of(admin.create_volume(&spec).await.unwrap_err()), libc::EEXIST);
    let bad = VolumeSpec { block_size: Some(3000), ..VolumeSpec::new("bad", store.clone()) };
    let e = admin.create_volume(&bad).await.unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
    // A store the server cannot use is refused before the volume exists, naming why.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = BackendSpec::S3 {
        bucket: "b".into(),
        prefix: String::new(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: None,
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
        session_token: None,
        virtual_hosted_style: false,
        server_side_encryption: None,
    };
    let e = admin.create_volume(&VolumeSpec::new("nowhere", unreachable)).await.unwrap_err();
    let said = e.to_string();
    assert!(said.contains("cannot reach") && said.contains(&format!("127.0.0.1:{port}")), "{said}");
    assert_eq!(errno_of(e), libc::EINVAL);
    assert_eq!(admin.volume("nowhere").await.unwrap(), None, "nothing was made");
    assert_eq!(admin.volume("data").await.unwrap(), Some(v.clone()));
    assert_eq!(admin.volume("nope").await.unwrap(), None);
    let v = admin.update_volume("data", &VolumeUpdate { retention_secs: Some(0), ..Default::default() }).await.unwrap();
    assert_eq!((v.retention_secs, v.quota), (0, spec.quota), "an update changes what it names only");
    // Tokens: a read-only one limited to a subtree.
    let root_token = admin.create_token("data", &TokenScope::default()).await.unwrap();
    let fs = Fs::new(srv.session("data", &root_token.token).await);
    fs.mkdir("team").await.unwrap();
    let scope = TokenScope { subpath: "/team".into(), read_only: true, comment: "reader".into(), ..Default::default() };
    let ro = admin.create_token("data", &scope).await.unwrap();
    let reader = Fs::new(srv.session("data", &ro.token).await);
    assert_eq!(reader.base, fs.resolve("team").await.unwrap(), "the token's root is its subtree");
    assert_eq!(reader.mkdir("x").await.unwrap_err(), libc::EROFS);
    let tokens = admin.tokens("data").await.unwrap();
    let listed = tokens.iter().find(|t| t.id == ro.id).unwrap();
    assert_eq!((listed.subpath.as_str(), listed.read_only, listed.comment.as_str()), ("/team", true, "reader"));
    // Quotas and usage, with the live sessions.
    admin.set_quota("data", "/team", Quota { bytes: 1 << 20, inodes: 10 }).await.unwrap();
    let u = admin.usage("data").await.unwrap();
    let q = u.quotas.iter().find(|q| q.path == "/team").unwrap();
    assert_eq!(q.quota, Quota { bytes: 1 << 20, inodes: 10 });
    assert_eq!(u.sessions.len(), 2, "{:?}", u.sessions);
    assert!(u.sessions.iter().any(|s| s.token_id == ro.id));
    assert!(u.inodes >= 2);
    // Revoking the reader's token ends its session.
    admin.revoke_token("data", &ro.id).await.unwrap();
    assert_eq!(reader.getattr(reader.base).await.unwrap_err(), libc::EACCES);
    assert_eq!(errno_of(admin.revoke_token("data", &ro.id).await.unwrap_err()), libc::ENOENT);
    admin.delete_volume("data").await.unwrap();
    assert!(admin.volumes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_gets_its_directory_quota_and_token_in_one_call() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let fs = Fs::new(srv.session("v", &token).await);
    let mut admin = srv.admin_client().await;
    let spec = ClaimSpec {
        path: "/pvc-1".into(),
        quota: Quota { bytes: 5 << 20, inodes: 100 },
        mode: 0o770,
        uid: 1000,
        gid: 2000,
        read_only: false,
    };
    let claim = admin.create_claim("v", &spec).await.unwrap();
    assert!(claim.created);
    let dir = fs.getattr(claim.ino).await.unwrap();
    assert_eq!((dir.perm, dir.uid, dir.gid), (0o770, 1000, 2000));
    assert_eq!(fs.resolve("pvc-1").await.unwrap(), claim.ino);
    let q = admin.usage("v").await.unwrap().quotas.into_iter().find(|q| q.ino == claim.ino).unwrap();
    assert_eq!(q.quota, spec.quota);
    // The claim's token reaches the directory and nothing outside it.
    let mine = Session::open(srv.channel().await, "v", &claim.token.token, "claim").await.unwrap();
    assert_eq!(mine.root_ino(), claim.ino);
    let mine = Fs::new(mine);
    mine.create("inside").await.unwrap();
    assert_eq!(mine.getattr(1).await.unwrap_err(), libc::EACCES);
    // A retried call finds the directory, revokes the first token and issues a new one.
    let again = admin.create_claim("v", &spec).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.ino, claim.ino);
    assert_ne!(again.token.token, claim.token.token);
    assert!(Session::open(srv.channel().await, "v", &claim.token.token, "stale").await.is_err());
    assert!(Session::open(srv.channel().await, "v", &again.token.token, "fresh").await.is_ok());
    let claims: Vec<_> = admin.tokens("v").await.unwrap().into_iter().filter(|t| t.subpath == "/pvc-1").collect();
    assert_eq!(claims.len(), 1, "one valid token per claim: {claims:?}");
    // Bad paths are refused with what is wrong.
    fs.create("file").await.unwrap();
    let refused = |p: &str| ClaimSpec { path: p.into(), ..ClaimSpec::default() };
    assert_eq!(errno_of(admin.create_claim("v", &refused("/file")).await.unwrap_err()), libc::ENOTDIR);
    assert_eq!(errno_of(admin.create_claim("v", &refused("/no/such")).await.unwrap_err()), libc::ENOENT);
    assert_eq!(errno_of(admin.create_claim("v", &refused("/")).await.unwrap_err()), libc::EINVAL);
    // A read-only claim token and one without a quota.
    let ro =
        admin.create_claim("v", &ClaimSpec { path: "/pvc-2".into(), read_only: true, ..ClaimSpec::default() }).await;
    let ro = ro.unwrap();
    let ro_fs = Fs::new(Session::open(srv.channel().await, "v", &ro.token.token, "ro").await.unwrap());
    assert_eq!(ro_fs.create("x").await.unwrap_err(), libc::EROFS);
    assert!(admin.usage("v").await.unwrap().quotas.iter().all(|q| q.ino != ro.ino));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_claim_loses_its_token_at_once_and_its_files_in_the_background() {
    let srv = TestServer::start(|_| {}).await;
    let (_, token) = srv.volume("v", |_| {}).await;
    let fs = Fs::new(srv.session("v", &token).await);
    let mut admin = srv.admin_client().await;
    let spec = ClaimSpec { path: "/pvc-9".into(), quota: Quota { bytes: 5 << 20, inodes: 1000 }, ..Default::default() };
    let claim = admin.create_claim("v", &spec).await.unwrap();
    let mine = Fs::new(Session::open(srv.channel().await, "v", &claim.token.token, "claim").await.unwrap());
    for d in ["a", "a/b", "a/b/c"] {
        mine.mkdir(d).await.unwrap();
    }
    for i in 0..50 {
        mine.create(&format!("a/b/c/f{i}")).await.unwrap();
        mine.create(&format!("g{i}")).await.unwrap();
    }
    let inodes_before = admin.usage("v").await.unwrap().inodes;
    admin.delete_claim("v", "/pvc-9").await.unwrap();
    // At once: the claim's token is revoked (its session ended) and its path is free.
    assert_eq!(mine.getattr(claim.ino).await.unwrap_err(), libc::EACCES);
    assert!(Session::open(srv.channel().await, "v", &claim.token.token, "again").await.is_err());
    assert_eq!(fs.resolve("pvc-9").await.unwrap_err(), libc::ENOENT);
    assert!(admin.tokens("v").await.unwrap().iter().all(|t| t.subpath != "/pvc-9"));
    // In the background: the trash is emptied, the inodes given back.
    let trash = fs.resolve(".stratusfs-trash").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left: Vec<_> = fs.readdir(trash, 100).await.unwrap().into_iter().filter(|e| e.cookie > 2).collect();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the trash still holds {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let after = admin.usage("v").await.unwrap();
    // The claim's 104 inodes are given back; the root and the (empty) trash remain.
    assert_eq!((inodes_before, after.inodes), (105, 2));
    assert!(after.quotas.iter().all(|q| q.ino != claim.ino), "{:?}", after.quotas);
    // A retried delete, and a claim of the same name made again, are fine.
    admin.delete_claim("v", "/pvc-9").await.unwrap();
    let again = admin.create_claim("v", &spec).await.unwrap();
    assert!(again.created);
    // Bad paths are refused with what is wrong.
    assert_eq!(errno_of(admin.delete_claim("v", "/").await.unwrap_err()), libc::EINVAL);
    assert_eq!(errno_of(admin.delete_claim("v", "/.stratusfs-trash").await.unwrap_err()), libc::EINVAL);
    assert_eq!(errno_of(admin.delete_claim("v", "/a/../b").await.unwrap_err()), libc::EINVAL);
}
