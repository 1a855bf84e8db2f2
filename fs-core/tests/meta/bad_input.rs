//! Bad input gets a precise error and changes nothing.

use fs_core::testkit::pb;

use crate::fs::errno;
use crate::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused_and_change_nothing() {
    let (_srv, fs) = setup().await;
    let before = fs.readdir(1, 100).await.unwrap();
    for (name, want) in [
        (b"a/b".to_vec(), libc::EINVAL),
        (b"a\0b".to_vec(), libc::EINVAL),
        (vec![b'x'; 256], libc::ENAMETOOLONG),
        (Vec::new(), libc::EINVAL),
    ] {
        let err =
            fs.s.rpc
                .clone()
                .mk_nod(pb::MkNodRequest {
                    ctx: fs.ctx(),
                    parent: 1,
                    name: name.clone(),
                    kind: pb::FileKind::Regular as i32,
                    perm: 0o644,
                    ..Default::default()
                })
                .await
                .unwrap_err();
        assert_eq!(errno(err.clone()), want, "{:?}: {err}", String::from_utf8_lossy(&name));
    }
    assert!(fs.create(&"x".repeat(255)).await.is_ok(), "255 bytes is allowed");
    fs.unlink(&"x".repeat(255)).await.unwrap();
    assert_eq!(fs.readdir(1, 100).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() {
    let (_srv, fs) = setup().await;
    let f = fs.create("f").await.unwrap();
    let err =
        fs.s.rpc
            .clone()
            .set_xattr(pb::SetXattrRequest {
                ctx: fs.ctx(),
                ino: f.ino,
                name: b"user.huge".to_vec(),
                value: vec![0; 5 << 20],
                flags: 0,
                acl_kill_sgid: false,
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert_eq!(fs.listxattr(f.ino).await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_an_unknown_schema_is_refused_with_a_message() {
    use fs_core::testkit::{META, SCHEMA_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema_version", (SCHEMA_VERSION + 1).to_le_bytes().as_slice()).unwrap();
        txn.open_table(META).unwrap().insert("kind", b"volume".as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let err = fs_core::testkit::VolumeDb::open_db(&path, false).err().unwrap().to_string();
    assert!(
        err.contains(&format!("schema version {}", SCHEMA_VERSION + 1)) && err.contains("newer stratusfs"),
        "{err}"
    );
}
