//! What a token allows is enforced by the server, whatever a raw client sends.

use fs_core::testkit::Session;
use fs_core::testkit::{PROTOCOL_VERSION, pb};

use crate::fs::{Fs, errno};
use crate::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtree_token_cannot_reach_outside_its_subtree() {
    let (srv, admin_fs) = setup().await;
    admin_fs.mkdir("tenant").await.unwrap();
    admin_fs.create("tenant/mine").await.unwrap();
    let secret = admin_fs.create("secret").await.unwrap();
    let outside_dir = admin_fs.mkdir("other").await.unwrap();
    let token = srv.token("v", |r| r.subpath = "/tenant".into()).await;
    let fs = Fs::new(srv.session("v", &token).await);
    let root = fs.base;
    assert_eq!(root, admin_fs.resolve("tenant").await.unwrap(), "the session's root is the subtree");
    assert!(fs.resolve("mine").await.is_ok());
    assert_eq!(fs.lookup(root, b"..").await.unwrap().ino, root, "`..` at the subtree root returns the root");
    // Inode numbers from outside, sent by a raw client, are refused with EACCES for every kind of call.
    assert_eq!(fs.getattr(secret.ino).await.unwrap_err(), libc::EACCES);
    assert_eq!(fs.getattr(1).await.unwrap_err(), libc::EACCES, "the volume root is outside too");
    assert_eq!(fs.lookup(outside_dir.ino, b"x").await.unwrap_err(), libc::EACCES);
    assert_eq!(fs.readdir(1, 10).await.unwrap_err(), libc::EACCES);
    assert_eq!(fs.setattr(secret.ino, |r| r.perm = Some(0o777)).await.unwrap_err(), libc::EACCES);
    assert_eq!(fs.getxattr(secret.ino, "user.x").await.unwrap_err(), libc::EACCES);
    assert_eq!(fs.open(secret.ino, libc::O_RDONLY).await.unwrap_err(), libc::EACCES);
    let mine = fs.resolve("mine").await.unwrap();
    let err = fs
        .s
        .rpc
        .clone()
        .link(pb::LinkRequest { ctx: fs.ctx(), ino: mine, new_parent: outside_dir.ino, new_name: b"escape".to_vec() })
        .await
        .unwrap_err();
    assert_eq!(errno(err), libc::EACCES, "linking into a directory outside is refused");
    let err =
        fs.s.rpc
            .clone()
            .rename(pb::RenameRequest {
                ctx: fs.ctx(),
                parent: root,
                name: b"mine".to_vec(),
                new_parent: 1,
                new_name: b"out".to_vec(),
                flags: 0,
            })
            .await
            .unwrap_err();
    assert_eq!(errno(err), libc::EACCES, "renaming out of the subtree is refused");
    assert_eq!(fs.rmdir("..").await.unwrap_err(), libc::ENOTEMPTY);
    // Symlink targets are data: a link pointing outside is stored, never followed by the server.
    fs.symlink("up", "../secret").await.unwrap();
    assert_eq!(fs.readlink(fs.resolve("up").await.unwrap()).await.unwrap(), b"../secret");
    assert_eq!(admin_fs.getattr(secret.ino).await.unwrap().perm, 0o644, "nothing outside changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_changes_nothing() {
    let (srv, admin_fs) = setup().await;
    let f = admin_fs.create("f").await.unwrap();
    admin_fs.mkdir("d").await.unwrap();
    let token = srv.token("v", |r| r.read_only = true).await;
    let fs = Fs::new(srv.session("v", &token).await);
    assert!(fs.resolve("f").await.is_ok(), "reading works");
    let before = admin_fs.readdir(1, 100).await.unwrap();
    assert_eq!(fs.create("g").await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.mkdir("e").await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.symlink("s", "f").await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.unlink("f").await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.rmdir("d").await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.link("f", "f2").await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.rename("f", "f3", 0).await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.setattr(f.ino, |r| r.perm = Some(0o600)).await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.setattr(f.ino, |r| r.size = Some(0)).await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.setxattr(f.ino, "user.a", b"1", 0).await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.removexattr(f.ino, "user.a").await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.open(f.ino, libc::O_WRONLY).await.unwrap_err(), libc::EROFS);
    assert_eq!(fs.open(f.ino, libc::O_RDONLY | libc::O_TRUNC).await.unwrap_err(), libc::EROFS);
    assert!(fs.open(f.ino, libc::O_RDONLY).await.is_ok());
    let err =
        fs.s.rpc.clone().allocate_blocks(pb::AllocateBlocksRequest { ctx: fs.ctx(), count: 1 }).await.unwrap_err();
    assert_eq!(errno(err), libc::EROFS);
    assert_eq!(fs.commit(f.ino, vec![], 10, false).await.unwrap_err(), libc::EROFS);
    assert_eq!(admin_fs.readdir(1, 100).await.unwrap(), before, "the tree is unchanged");
    assert_eq!(admin_fs.getattr(f.ino).await.unwrap().perm, 0o644);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_squash_makes_root_nobody() {
    let (srv, _) = setup().await;
    let token = srv.token("v", |r| r.root_squash = true).await;
    let fs = Fs::new(srv.session("v", &token).await);
    let f = fs.create("f").await.unwrap();
    assert_eq!((f.uid, f.gid), (65534, 65534));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_ends_its_sessions_and_opens_no_new_one() {
    let (srv, _) = setup().await;
    let token = srv.token("v", |r| r.comment = "to revoke".into()).await;
    let fs = Fs::new(srv.session("v", &token).await);
    fs.create("f").await.unwrap();
    let mut admin = srv.admin().await;
    let tokens = admin.list_tokens(pb::VolumeRef { volume: "v".into() }).await.unwrap().into_inner().tokens;
    let id = tokens.iter().find(|t| t.comment == "to revoke").unwrap().id.clone();
    admin.revoke_token(pb::RevokeTokenRequest { volume: "v".into(), id }).await.unwrap();
    let err = fs.s.rpc.clone().get_attr(pb::InodeRequest { ctx: fs.ctx(), ino: 1 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "the live session ended: {err}");
    let err = Session::open(srv.channel().await, "v", &token, "again").await.err().unwrap();
    assert!(err.to_string().contains("unknown or revoked token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_and_future_protocols_are_refused_clearly() {
    let (srv, _) = setup().await;
    let err = Session::open(srv.channel().await, "v", "00000000-0000-0000-0000-000000000000", "x").await.err().unwrap();
    assert!(err.to_string().contains("unknown or revoked token"), "{err}");
    let err = Session::open(srv.channel().await, "nope", "x", "x").await.err().unwrap();
    assert!(err.to_string().contains("no volume named \"nope\""), "{err}");
    let mut raw = pb::meta_client::MetaClient::new(srv.channel().await);
    let err = raw
        .open_session(pb::OpenSessionRequest {
            protocol_version: PROTOCOL_VERSION as i32 + 1,
            volume: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("protocol version 2") && err.message().contains("upgrade the server"), "{err}");
    // A request naming no session, or a made-up one.
    let err = raw.get_attr(pb::InodeRequest { ctx: Some(pb::Context::default()), ino: 1 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = raw
        .get_attr(pb::InodeRequest { ctx: Some(pb::Context { session: vec![7; 16], ..Default::default() }), ino: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // Admin calls without or with a wrong account token.
    let err = pb::admin_client::AdminClient::new(srv.channel().await).list_volumes(pb::Empty {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut wrong = fs_core::AdminClient::new(srv.channel().await, "wrong").unwrap().raw();
    assert_eq!(wrong.list_volumes(pb::Empty {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
}
